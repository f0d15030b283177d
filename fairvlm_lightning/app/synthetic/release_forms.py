"""Write a FairVLMed folder (e.g. the synthetic twin) again in one of the forms the release takes.

Harvard-FairVLMed circulates in several shapes: CSVs in ``ReadMe/`` or in the root, splits as
folders (``Test`` or ``Testing``), as a ``use`` column or as ``split_files.csv``, images as uint8
or float, npz files with or without a ``note`` field. :func:`write_release_form` rewrites a
canonical folder (``Training/``, ``Validation/``, ``Test/`` and ``gpt-4_summarized_notes.csv``,
as :func:`~fairvlm_lightning.app.synthetic.write_synthetic_fairvlmed` writes it) in one of
:data:`RELEASE_FORMS`, so that a test can check that the loader reads every form to the same
samples.

Every form also carries the release's ``data_summary.csv`` (``filename, age, gender, race,
ethnicity, language, maritalstatus, note, gpt4_summary, glaucoma, use``) and gives each npz a
``maritalstatus`` field (a deterministic function of the file number, ``-1..4``) and the source's
``age`` (when it has one).
"""

from __future__ import annotations

import csv
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fairvlm_lightning.schema import (
    ATTRIBUTES,
    IMAGE_FIELD,
    LABEL_FIELD,
    META_FOLDER,
    NOTE_FIELD,
    NOTES_FILENAMES,
    SPLIT_FILES_FILENAME,
    SUMMARY_FILENAME,
)

__all__ = ["RELEASE_FORMS", "write_release_form"]

#: The forms :func:`write_release_form` writes, with what sets each apart.
RELEASE_FORMS: dict[str, str] = {
    "readme": "the dataset card's layout: CSVs in ReadMe/, Training/Validation/Test folders",
    "root": "CSVs in the root, the test folder named Testing",
    "use_column": "all npz in one folder, splits from data_summary.csv's 'use' column",
    "split_files": "all npz in one folder, splits from split_files.csv, no notes CSV",
    "float01": "images float32 in 0-1",
    "float255": "images float64 in 0-255",
    "hw1": "images uint8 (H, W, 1)",
    "rgb": "images uint8 (H, W, 3), the grey value in every channel",
    "int64": "images int64",
    "no_npz_note": "npz files without a 'note' field, summaries only in data_summary.csv",
}

_FOLDERS = {"train": "Training", "val": "Validation", "test": "Test"}
_USE = {"train": "training", "val": "validation", "test": "test"}
_SUMMARY_COLUMNS = (
    "filename",
    "age",
    "gender",
    "race",
    "ethnicity",
    "language",
    "maritalstatus",
    "note",
    "gpt4_summary",
    LABEL_FIELD,
    "use",
)


def _marital(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits or 0) % 6 - 1


def _image(image: np.ndarray, form: str) -> np.ndarray:
    if form == "float01":
        return (image.astype(np.float32) / 255.0).astype(np.float32)
    if form == "float255":
        return image.astype(np.float64)
    if form == "hw1":
        return image[:, :, None]
    if form == "rgb":
        return np.repeat(image[:, :, None], 3, axis=2)
    if form == "int64":
        return image.astype(np.int64)
    return image


def _read_notes(path: Path) -> dict[str, tuple[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return {os.path.basename(r[0]): (r[1], r[2]) for r in reader if r}


def _write_csv(path: Path, header: Any, rows: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_release_form(
    src_root: str | os.PathLike[str], dst_root: str | os.PathLike[str], form: str = "readme"
) -> Path:
    """Write the FairVLMed folder ``src_root`` to ``dst_root`` in the published ``form``.

    ``dst_root`` appears whole or not at all: the folder is written under a temporary name next
    to it and renamed at the end.

    Args:
        src_root: a canonical folder (split folders ``Training``/``Validation``/``Test`` and
            ``gpt-4_summarized_notes.csv`` in the root).
        dst_root: the folder to write; must not exist.
        form: one of :data:`RELEASE_FORMS`.

    Returns:
        ``dst_root``.

    Raises:
        ValueError: unknown ``form``.
        FileExistsError: ``dst_root`` exists.
        FileNotFoundError: ``src_root`` lacks the notes CSV or every split folder.

    Example:
        >>> import tempfile
        >>> from fairvlm_lightning.app.synthetic import write_synthetic_fairvlmed
        >>> src = write_synthetic_fairvlmed(Path(tempfile.mkdtemp()) / "canon",
        ...     sizes={"train": 4, "val": 2, "test": 2}, image_shape=(16, 16))
        >>> dst = write_release_form(src, src.parent / "release", "readme")
        >>> sorted(p.name for p in (dst / "ReadMe").iterdir())
        ['data_description.txt', 'data_summary.csv', 'gpt-4_summarized_notes.csv']
    """
    if form not in RELEASE_FORMS:
        raise ValueError(f"form must be one of {list(RELEASE_FORMS)}, got {form!r}")
    src, dst = Path(src_root), Path(dst_root)
    if dst.exists():
        raise FileExistsError(f"{dst} exists; write_release_form writes a new folder")
    notes_path = src / NOTES_FILENAMES[0]
    if not notes_path.is_file():
        raise FileNotFoundError(f"{src} has no {NOTES_FILENAMES[0]}")
    notes = _read_notes(notes_path)
    splits = {s: src / f for s, f in _FOLDERS.items() if (src / f).is_dir()}
    if not splits:
        raise FileNotFoundError(f"{src} has none of the folders {list(_FOLDERS.values())}")
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        _write(tmp, splits, notes, form)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dst


def _write(
    dst: Path, splits: Mapping[str, Path], notes: Mapping[str, tuple[str, str]], form: str
) -> None:
    flat = form in ("use_column", "split_files")
    meta = dst / META_FOLDER if form != "root" else dst
    summary: list[list[Any]] = []
    listing: list[list[str]] = []
    note_rows: list[list[str]] = []
    for split, folder in splits.items():
        name = "Testing" if (split == "test" and form == "root") else _FOLDERS[split]
        out = dst / "data" if flat else dst / name
        out.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("*.npz")):
            with np.load(path, allow_pickle=False) as npz:
                fields = {k: npz[k] for k in npz.files}
            long_note, summary_note = notes.get(path.name, (str(fields.get(NOTE_FIELD, "")), ""))
            fields[IMAGE_FIELD] = _image(fields[IMAGE_FIELD], form)
            fields["maritalstatus"] = np.array(_marital(path.name), dtype=np.int64)
            if form == "no_npz_note":
                fields.pop(NOTE_FIELD, None)
            np.savez(out / path.name, **fields)
            age = float(fields["age"]) if "age" in fields else float("nan")
            row = {
                "filename": path.name,
                "age": "" if np.isnan(age) else f"{age:g}",
                **{a: int(fields[a]) for a in ATTRIBUTES},
                "maritalstatus": _marital(path.name),
                "note": long_note,
                "gpt4_summary": summary_note,
                LABEL_FIELD: int(fields[LABEL_FIELD]),
                "use": _USE[split],
            }
            summary.append([row[c] for c in _SUMMARY_COLUMNS])
            listing.append([path.name, _USE[split]])
            note_rows.append([path.name, long_note, summary_note])
    _write_csv(meta / SUMMARY_FILENAME, _SUMMARY_COLUMNS, summary)
    if form not in ("split_files", "no_npz_note"):
        _write_csv(meta / NOTES_FILENAMES[0], ["filename", "note", "gpt4_summary"], note_rows)
    if form == "split_files":
        _write_csv(meta / SPLIT_FILES_FILENAME, ["filename", "split"], listing)
    if form == "readme":
        (meta / "data_description.txt").write_text(
            "Harvard-FairVLMed (synthetic twin): " + RELEASE_FORMS[form] + "\n", encoding="utf-8"
        )
