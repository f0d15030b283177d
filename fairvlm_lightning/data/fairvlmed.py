"""Reader for Harvard-FairVLMed in every published form (the real dataset and its synthetic twin).

The forms read (:func:`load_fairvlmed`; see ``docs/howto/fairvlmed.md``)::

    root/
      gpt-4_summarized_notes.csv   # or gpt4_...; column 0 file name, 1 note, 2 summary
      data_summary.csv             # optional: filename, age, ..., note, gpt4_summary, glaucoma, use
      split_files.csv              # optional: filename + split (or use) columns
      ReadMe/                      # the release puts the three CSVs here instead of the root
      Training/    data_00001.npz ...
      Validation/  data_07001.npz ...
      Test/        data_08001.npz ...  (or ``Testing/``)

* **Splits** come from the folders ``Training/``, ``Validation/``, ``Test/`` or ``Testing/``;
  without them from ``split_files.csv`` (root or ``ReadMe/``), else from the ``use`` column of
  ``data_summary.csv`` (values ``training``/``train``, ``validation``/``val``/``valid``,
  ``test``/``testing``, any case), the npz files then lying in ``root`` or any folder directly
  under it. ``split_source`` forces one of the three.
* **Notes** (``note_source="summary"``, the default, as the paper trains): the summarised-notes CSV
  (either spelling, root or ``ReadMe/``), else ``data_summary.csv``'s ``gpt4_summary`` column;
  ``note_source="note"``: the full clinical note, from ``data_summary.csv``'s ``note`` column,
  the notes CSV's column 1 or each npz's ``note`` field. Sources are tried in that order for
  every sample, so a note missing from one is taken from the next; a sample no source gives a
  note is an error naming the file and the sources.
* **Images** (``slo_fundus``): any integer or float dtype, ``(H, W)``, ``(H, W, 1)`` or
  ``(H, W, 3)``, made uint8 grey by the rule of :func:`~fairvlm_lightning.data.to_grey_uint8`
  (integers within 0-255 kept, floats with maximum <= 1 scaled by 255 and rounded, floats within
  0-255 rounded, RGB by PIL's luma; anything else an error naming the file and the range).
* **Fields**: ``glaucoma``, ``race``, ``gender``, ``ethnicity``, ``language`` (0-d integer
  arrays, ``-1`` = unknown); on request (``extra_attributes``) ``age`` binned as ``age_60`` /
  ``age_decade`` and ``maritalstatus``, from the npz or else from ``data_summary.csv``. The
  synthetic twin adds ``is_bad_pair`` (0-d bool).

:func:`load_fairvlmed` validates every file and writes one split into an Arrow file under a cache
folder (memory-mapped, so 10,000 full-size fundus images cost disk, not RAM, and all DDP ranks
share the page cache); images are stored as uint8, whatever their dtype on disk.

The cache file is ``<cache_dir>/fairvlmed-<split>-<key>.arrow``. Its key hashes the cache format
version, the absolute split folder (or root and split listing), the attributes whose unknowns are
dropped, the extra attributes, the note source, and, for every npz file and every CSV read, its
name, size and modification time in nanoseconds (``cache_check="stat"``, the default) or
additionally a SHA-256 of its bytes (``cache_check="content"``). So an edited, added or removed
file is read again; only a rewrite that keeps a file's size and modification time (``cp -p``,
``rsync -t``, some archive tools) is missed by the default, and the content check catches it at
the cost of reading every file once per load. A sidecar ``<name>.arrow.json`` records the row
count; a cache file that cannot be read or holds fewer rows (a crash or a full disk while copying
it, a truncation) is rebuilt with a warning.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fairvlm_lightning.data.images import to_grey_uint8
from fairvlm_lightning.schema import (
    ATTRIBUTE_GROUPS,
    ATTRIBUTES,
    BAD_PAIR_FIELD,
    IMAGE_FIELD,
    LABEL_FIELD,
    META_FOLDER,
    NOTE_FIELD,
    NOTES_FILENAMES,
    OPTIONAL_ATTRIBUTE_GROUPS,
    SPLIT_FILES_FILENAME,
    SPLIT_FOLDERS,
    SPLIT_VALUES,
    SUMMARY_FILENAME,
)

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_GROUPS",
    "NOTES_FILENAMES",
    "SPLIT_FOLDERS",
    "SPLIT_SOURCES",
    "load_fairvlmed",
    "split_files",
    "split_folder",
]

_CACHE_VERSION = "fairvlmed-arrow-v2"
#: Accepted ``split_source`` values of :func:`load_fairvlmed`.
SPLIT_SOURCES: tuple[str, ...] = ("auto", "folders", "split_files", "use")
_FILENAME_COLUMNS = ("filename", "file", "file_name", "name")
_SPLIT_COLUMNS = ("split", "use", "set")
_WRITE_BATCH = 64


def split_folder(root: str | os.PathLike[str], split: str) -> Path:
    """Return the folder of ``split`` under ``root``.

    Args:
        root: dataset root.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        The existing folder (``Test`` or ``Testing`` for the test split).

    Raises:
        ValueError: unknown split, or both ``Test`` and ``Testing`` exist.
        FileNotFoundError: ``root`` or the split folder does not exist.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "Testing").mkdir()
        >>> split_folder(root, "test").name
        'Testing'
    """
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"FairVLMed root folder not found: {root}")
    found = [root / name for name in SPLIT_FOLDERS[split] if (root / name).is_dir()]
    if not found:
        names = " or ".join(repr(n) for n in SPLIT_FOLDERS[split])
        raise FileNotFoundError(f"split folder {names} for split {split!r} not found under {root}")
    if len(found) > 1:
        raise ValueError(f"ambiguous {split!r} split: both {found[0]} and {found[1]} exist")
    return found[0]


def _find_meta(root: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` that exists in ``root`` or ``root/ReadMe``."""
    for folder in (root, root / META_FOLDER):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _decode_error(e: UnicodeDecodeError, data: bytes) -> str:
    """``byte 0xe9 at position 24 (line 2)`` for an error while decoding ``data``."""
    line = data.count(b"\n", 0, e.start) + 1
    return f"byte 0x{data[e.start]:02x} at position {e.start} (line {line})"


def _read_csv_rows(path: Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line, row)`` pairs of a UTF-8 CSV; blank rows skipped."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} {path} is not UTF-8 text: {_decode_error(e, raw)}; a latin-1 or "
            "binary file? Convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if "\0" in text:
        at = text.index("\0")
        raise ValueError(
            f"{what} {path}, line {text.count(chr(10), 0, at) + 1}: NUL byte at position "
            f"{at}; a binary file, not a text CSV?"
        )
    rows: list[tuple[int, list[str]]] = []
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [c.strip() for c in next(reader)]
        except StopIteration:
            raise ValueError(f"{what} {path} is empty") from None
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            rows.append((reader.line_num, row))
    return header, rows


def _read_notes_csv(path: Path, column: int = 2) -> dict[str, str]:
    """Map npz file name (column 0) to note (``column``: 1 the note, 2 the summary)."""
    out: dict[str, str] = {}
    _, rows = _read_csv_rows(path, "notes CSV")
    for line, row in rows:
        if len(row) < 3:
            raise ValueError(
                f"notes CSV {path}, line {line}: expected >= 3 columns "
                f"(file name, original note, summary), got {len(row)}"
            )
        name = os.path.basename(row[0].strip())
        note = row[column].strip()
        if name in out and out[name] != note:
            raise ValueError(f"notes CSV {path}: file {name!r} listed twice with different notes")
        out[name] = note
    return out


def _read_table(path: Path) -> dict[str, dict[str, str]]:
    """``data_summary.csv`` (or a split listing) as ``{npz file name: {column: value}}``."""
    header, rows = _read_csv_rows(path, "CSV")
    lower = [h.lower() for h in header]
    key = next((lower.index(c) for c in _FILENAME_COLUMNS if c in lower), None)
    if key is None:
        raise ValueError(
            f"CSV {path}: no file-name column (one of {list(_FILENAME_COLUMNS)}); "
            f"columns found: {header}"
        )
    out: dict[str, dict[str, str]] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(
                f"CSV {path}, line {line}: {len(row)} columns, the header has {len(header)}"
            )
        name = os.path.basename(row[key].strip())
        if not name.endswith(".npz"):
            name += ".npz"
        if name in out:
            raise ValueError(f"CSV {path}, line {line}: file {name!r} listed twice")
        out[name] = {h: v.strip() for h, v in zip(lower, row, strict=True)}
    return out


class _Meta:
    """The CSVs of one dataset root, each read at most once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.summary_path = _find_meta(root, (SUMMARY_FILENAME,))
        self._summary: dict[str, dict[str, str]] | None = None

    def summary(self) -> dict[str, dict[str, str]]:
        if self._summary is None:
            self._summary = _read_table(self.summary_path) if self.summary_path is not None else {}
        return self._summary

    def summary_columns(self) -> list[str]:
        table = self.summary()
        return list(next(iter(table.values()))) if table else []

    def summary_has(self, column: str) -> bool:
        return column in self.summary_columns()


class _NoteSources:
    """Where each sample's note comes from: CSV columns in order, then maybe the npz field."""

    def __init__(self, csvs: list[tuple[str, Mapping[str, str]]], npz: bool, files: list[Path]):
        self.csvs, self.npz, self.files = csvs, npz, files

    def describe(self) -> str:
        names = [what for what, _ in self.csvs] + (["its 'note' field"] if self.npz else [])
        return ", ".join(names)

    def key(self) -> str:
        return json.dumps([[what for what, _ in self.csvs], self.npz])


def _note_sources(
    root: Path,
    notes: str | os.PathLike[str] | None,
    note_source: str,
    meta: _Meta,
) -> _NoteSources:
    """Resolve ``notes`` / ``note_source`` into the ordered note sources (see module docstring)."""
    if note_source not in ("summary", "note"):
        raise ValueError(f"note_source must be 'summary' or 'note', got {note_source!r}")
    if notes is None:
        return _NoteSources([], True, [])
    path = Path(notes)
    if path.is_absolute() or path.name not in NOTES_FILENAMES or path.parent != Path("."):
        full = path if path.is_absolute() else root / path
        if not full.is_file() and not path.is_absolute() and (root / META_FOLDER / path).is_file():
            full = root / META_FOLDER / path
        if not full.is_file():
            raise FileNotFoundError(f"notes CSV not found: {full}")
        return _NoteSources([(f"notes CSV {full}", _read_notes_csv(full))], False, [full])
    notes_csv = _find_meta(root, (path.name, *(n for n in NOTES_FILENAMES if n != path.name)))
    csvs: list[tuple[str, Mapping[str, str]]] = []
    files: list[Path] = []
    summary = meta.summary_path
    if note_source == "summary":
        if notes_csv is not None:
            csvs.append((f"notes CSV {notes_csv}", _read_notes_csv(notes_csv, 2)))
            files.append(notes_csv)
        if summary is not None and meta.summary_has("gpt4_summary"):
            table = meta.summary()
            column = {k: v["gpt4_summary"] for k, v in table.items()}
            csvs.append((f"{summary} column 'gpt4_summary'", column))
            files.append(summary)
        if not csvs:
            raise FileNotFoundError(
                f"no summarised notes for {root}: none of {' or '.join(NOTES_FILENAMES)} in "
                f"{root} or {root / META_FOLDER}, and no {SUMMARY_FILENAME} with a "
                "'gpt4_summary' column there. Pass note_source='note' to train on the full "
                f"clinical notes ({SUMMARY_FILENAME}'s 'note' column or each npz's 'note' field), "
                "or notes=<path> to name a notes CSV"
            )
        return _NoteSources(csvs, False, files)
    if summary is not None and meta.summary_has("note"):
        table = meta.summary()
        csvs.append((f"{summary} column 'note'", {k: v["note"] for k, v in table.items()}))
        files.append(summary)
    if notes_csv is not None:
        csvs.append((f"notes CSV {notes_csv} column 1", _read_notes_csv(notes_csv, 1)))
        files.append(notes_csv)
    return _NoteSources(csvs, True, files)


def _has_split_folders(root: Path) -> bool:
    return any((root / name).is_dir() for names in SPLIT_FOLDERS.values() for name in names)


def _npz_index(root: Path) -> dict[str, Path]:
    """Every ``*.npz`` in ``root`` and the folders directly under it, by file name."""
    index: dict[str, Path] = {}
    for folder in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        for p in folder.glob("*.npz"):
            if p.name in index:
                raise ValueError(f"file name {p.name!r} found twice: {index[p.name]} and {p}")
            index[p.name] = p
    return index


def _split_of(value: str, where: str) -> str:
    v = value.strip().lower()
    for split, names in SPLIT_VALUES.items():
        if v in names:
            return split
    raise ValueError(
        f"{where}: split value {value!r} unknown; accepted (any case): "
        + ", ".join(f"{s}: {'/'.join(n)}" for s, n in SPLIT_VALUES.items())
    )


def _listed_split(root: Path, split: str, listing: Path, column: str) -> list[Path]:
    table = _read_table(listing)
    if not table:
        raise FileNotFoundError(f"{listing} lists no file")
    first = next(iter(table.values()))
    col = column if column in first else next((c for c in _SPLIT_COLUMNS if c in first), None)
    if col is None:
        raise ValueError(
            f"CSV {listing}: no split column (one of {list(_SPLIT_COLUMNS)}); "
            f"columns found: {list(first)}"
        )
    names = [
        name for name, row in table.items() if _split_of(row[col], f"{listing}, {name}") == split
    ]
    if not names:
        raise FileNotFoundError(f"no file of split {split!r} in {listing} (column {col!r})")
    index = _npz_index(root)
    missing = [n for n in names if n not in index]
    if missing:
        raise FileNotFoundError(
            f"{listing} lists {len(missing)} file(s) of split {split!r} not found in {root} or "
            f"the folders directly under it, e.g. {missing[0]!r}"
        )
    return sorted((index[n] for n in names), key=lambda p: p.name)


def _split_listing(
    root: Path, split: str, split_source: str
) -> tuple[list[Path], Path, Path | None]:
    """``(files in name order, folder for the cache key, listing CSV or None)`` of ``split``."""
    if split_source not in SPLIT_SOURCES:
        raise ValueError(f"split_source must be one of {list(SPLIT_SOURCES)}, got {split_source!r}")
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"FairVLMed root folder not found: {root}")
    source = split_source
    if source == "auto":
        if _has_split_folders(root):
            source = "folders"
        elif _find_meta(root, (SPLIT_FILES_FILENAME,)) is not None:
            source = "split_files"
        else:
            summary = _find_meta(root, (SUMMARY_FILENAME,))
            if summary is not None and "use" in _Meta(root).summary_columns():
                source = "use"
            else:
                source = "folders"
    if source == "folders":
        try:
            folder = split_folder(root, split)
        except FileNotFoundError as e:
            if split_source == "auto" and not _has_split_folders(root):
                raise FileNotFoundError(
                    f"{e}; no {SPLIT_FILES_FILENAME} and no {SUMMARY_FILENAME} with a 'use' column "
                    f"in {root} or {root / META_FOLDER} either"
                ) from None
            raise
        files = sorted(p for p in folder.iterdir() if p.suffix == ".npz" and p.is_file())
        if not files:
            raise FileNotFoundError(f"no .npz files in {folder}")
        return files, folder, None
    name = SPLIT_FILES_FILENAME if source == "split_files" else SUMMARY_FILENAME
    listing = _find_meta(root, (name,))
    if listing is None:
        raise FileNotFoundError(
            f"split_source={split_source!r}: no {name} in {root} or {root / META_FOLDER}"
        )
    files = _listed_split(root, split, listing, "split" if source == "split_files" else "use")
    return files, root, listing


def split_files(
    root: str | os.PathLike[str], split: str, *, split_source: str = "auto"
) -> list[Path]:
    r"""The npz files of ``split`` under ``root``, in name order (see the module docstring).

    Args:
        root: dataset root.
        split: ``"train"``, ``"val"`` or ``"test"``.
        split_source: ``"auto"`` (folders, else ``split_files.csv``, else ``data_summary.csv``'s
            ``use`` column), ``"folders"``, ``"split_files"`` or ``"use"``.

    Returns:
        The files of the split.

    Raises:
        FileNotFoundError: no such split (folder, listing or listed file missing).
        ValueError: unknown split, source or split value; a file name found twice.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("data_00001.npz", "data_00002.npz"):
        ...     _ = (root / name).write_bytes(b"")
        >>> _ = (root / "data_summary.csv").write_text(
        ...     "filename,use\ndata_00001.npz,training\ndata_00002.npz,test\n")
        >>> [p.name for p in split_files(root, "test")]
        ['data_00002.npz']
    """
    files, _, _ = _split_listing(Path(root), split, split_source)
    return files


def _scalar(npz: Any, field: str, path: Path, kinds: str) -> Any:
    """Read a size-1 array field of one of the numpy dtype ``kinds`` and return its item."""
    arr = _field(npz, field, path)
    if arr.dtype.kind not in kinds:
        want = {"iub": "an integer or bool", "iuf": "a number"}.get(kinds, kinds)
        raise TypeError(f"{path}: field {field!r} must be {want} array, got dtype {arr.dtype}")
    if arr.size != 1 or arr.ndim > 1:
        raise ValueError(
            f"{path}: field {field!r} must be a scalar (0-d) array, got shape {arr.shape}"
        )
    return arr.reshape(()).item()


def _field(npz: Any, field: str, path: Path) -> np.ndarray:
    if field not in npz.files:
        raise ValueError(f"{path}: missing field {field!r} (fields present: {sorted(npz.files)})")
    try:
        return npz[field]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise TypeError(
                f"{path}: field {field!r} is an object (pickled) array; expected a plain numpy "
                "array (files are read with allow_pickle=False)"
            ) from e
        raise ValueError(f"{path}: corrupt or truncated .npz file ({e})") from e
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise ValueError(f"{path}: corrupt or truncated .npz file ({type(e).__name__}: {e})") from e


def _read_note(npz: Any, path: Path) -> str:
    arr = _field(npz, NOTE_FIELD, path)
    if arr.dtype.kind not in "US":
        raise TypeError(f"{path}: field 'note' must be a string array, got dtype {arr.dtype}")
    if arr.size != 1:
        raise ValueError(
            f"{path}: field 'note' must be a scalar (0-d) array, got shape {arr.shape}"
        )
    note = arr.reshape(()).item()
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path}: field 'note' is not UTF-8 text: {_decode_error(e, note)}; a latin-1 "
                "note? Re-save it as a str (unicode) array or as UTF-8 bytes"
            ) from None
    return str(note).strip()


def _npz_note(npz: Any, path: Path) -> str:
    return _read_note(npz, path) if NOTE_FIELD in npz.files else ""


def _extra_value(npz: Any, path: Path, attr: str, meta: _Meta) -> int:
    """The group code of an optional attribute (``-1`` unknown) from the npz or the summary."""
    field = "age" if attr.startswith("age_") else attr
    if field in npz.files:
        raw: Any = _scalar(npz, field, path, "iuf" if field == "age" else "iub")
        where = f"{path}: field {field!r}"
    else:
        row = meta.summary().get(path.name)
        if row is None or field not in row:
            src = meta.summary_path or f"{SUMMARY_FILENAME} (absent)"
            raise ValueError(
                f"{path}: attribute {attr!r} needs the field {field!r}, absent from the npz and "
                f"from {src}"
            )
        where = f"{meta.summary_path}: column {field!r} of {path.name}"
        text = row[field]
        try:
            raw = float(text) if text.strip() else float("nan")
        except ValueError:
            raise ValueError(f"{where}: not a number: {text!r}") from None
    if field == "age":
        age = float(raw)
        if not np.isfinite(age) or age < 0:
            return -1
        if attr == "age_60":
            return int(age >= 60)
        return int(min(max(age - 30, 0) // 10, 5))  # <40, 40s, 50s, 60s, 70s, >=80
    value = float(raw)
    n = OPTIONAL_ATTRIBUTE_GROUPS[attr]
    if not np.isfinite(value):
        return -1
    if value != int(value) or not -1 <= value < n:
        raise ValueError(f"{where} must be in [-1, {n - 1}] (-1 = unknown), got {raw}")
    return int(value)


def _read_sample(
    path: Path, notes: _NoteSources, extras: Sequence[str] = (), meta: _Meta | None = None
) -> dict[str, Any]:
    """Read and validate one npz file into a row dict (without ``index``)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{path}: corrupt or truncated .npz file ({type(e).__name__}: {e})") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz archive (np.load returned {type(npz).__name__})")
    with npz:
        row: dict[str, Any] = {"filename": path.name}
        label = _scalar(npz, LABEL_FIELD, path, "iub")
        if label not in (0, 1):
            raise ValueError(f"{path}: field {LABEL_FIELD!r} must be 0 or 1, got {label}")
        row["label"] = int(label)
        for attr, n_groups in ATTRIBUTE_GROUPS.items():
            value = _scalar(npz, attr, path, "iub")
            if not -1 <= value < n_groups:
                raise ValueError(
                    f"{path}: field {attr!r} must be in [-1, {n_groups - 1}] (-1 = unknown), "
                    f"got {value}"
                )
            row[attr] = int(value)
        for attr in extras:
            row[attr] = _extra_value(npz, path, attr, meta or _Meta(path.parent))
        row["image"] = to_grey_uint8(
            _field(npz, IMAGE_FIELD, path), f"{path}: field {IMAGE_FIELD!r}"
        )
        note = ""
        for _, mapping in notes.csvs:
            note = mapping.get(path.name, "")
            if note:
                break
        if not note and notes.npz:
            note = _npz_note(npz, path) if notes.csvs else _read_note(npz, path)
        if not note:
            raise ValueError(f"missing note for {path.name}: empty or absent in {notes.describe()}")
        row["note"] = note
        if BAD_PAIR_FIELD in npz.files:
            row[BAD_PAIR_FIELD] = bool(_scalar(npz, BAD_PAIR_FIELD, path, "iub"))
    return row


def _features(image_shape: tuple[int, int], with_bad_pair: bool, extras: Sequence[str] = ()) -> Any:
    from datasets import Array2D, Features, Value

    cols: dict[str, Any] = {
        "index": Value("int64"),
        "filename": Value("string"),
        "image": Array2D(shape=image_shape, dtype="uint8"),
        "note": Value("string"),
        "label": Value("int64"),
    }
    cols.update({attr: Value("int64") for attr in (*ATTRIBUTES, *extras)})
    if with_bad_pair:
        cols[BAD_PAIR_FIELD] = Value("bool")
    return Features(cols)


def _drop_attributes(drop_unknown: bool | Sequence[str] | None, split: str) -> tuple[str, ...]:
    if drop_unknown is None:
        drop_unknown = split != "train"
    if isinstance(drop_unknown, bool):
        return ATTRIBUTES if drop_unknown else ()
    if isinstance(drop_unknown, str):
        drop_unknown = (drop_unknown,)
    attrs = tuple(drop_unknown)
    bad = [a for a in attrs if a not in ATTRIBUTE_GROUPS]
    if bad:
        raise ValueError(f"drop_unknown names unknown attributes {bad}; known: {list(ATTRIBUTES)}")
    return attrs


def _default_cache_dir() -> Path:
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "fairvlm_lightning"


def _cache_key(
    folder: Path,
    files: Sequence[Path],
    meta_files: Sequence[Path],
    settings: Any,
    content: bool = False,
) -> str:
    """The cache file's key (see the module docstring); ``content`` adds each file's SHA-256."""
    h = hashlib.sha256()
    h.update(_CACHE_VERSION.encode())
    h.update(str(folder.resolve()).encode())
    h.update(json.dumps(settings).encode())
    for p in [*files, *meta_files]:
        st = p.stat()
        h.update(f"\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        if content:
            with open(p, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:24] + ("-c" if content else "")


def _open_cache(target: Path, folder: Path) -> Any:
    """The cached split, or ``None`` when absent or damaged (then removed, with a warning)."""
    from datasets import Dataset

    meta = target.with_name(target.name + ".json")
    if not target.is_file():
        return None
    try:
        expected = int(json.loads(meta.read_text())["num_rows"])
        ds = Dataset.from_file(str(target))
        if len(ds) != expected:
            raise ValueError(f"it holds {len(ds)} rows, its sidecar {meta.name} says {expected}")
        return ds
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ...
        warnings.warn(
            f"FairVLMed cache file {target} is damaged or incomplete ({type(e).__name__}: {e}); "
            f"rebuilding it from {folder}",
            UserWarning,
            stacklevel=3,
        )
        for path in (target, meta):
            path.unlink(missing_ok=True)
        return None


def _rows(
    files: Sequence[Path],
    notes: _NoteSources,
    drop: tuple[str, ...],
    extras: Sequence[str],
    meta: _Meta,
) -> Iterator[dict[str, Any]]:
    """Validated rows, unknown-attribute samples dropped, ``index`` numbered after dropping.

    Raises ``ValueError`` at the end when every sample was dropped (an empty split would only
    fail much later, deep in ``datasets``).
    """
    index = 0
    first: dict[str, Any] | None = None
    unknown = dict.fromkeys(drop, 0)
    for path in files:
        row = _read_sample(path, notes, extras, meta)
        if first is None:
            first = row
        else:
            if row["image"].shape != first["image"].shape:
                raise ValueError(
                    f"{path}: image shape {row['image'].shape} differs from "
                    f"{first['image'].shape} of {first['filename']}; a split must use one size"
                )
            if (BAD_PAIR_FIELD in row) != (BAD_PAIR_FIELD in first):
                raise ValueError(
                    f"{path}: field 'is_bad_pair' present in only some files of the split "
                    f"(compare {first['filename']})"
                )
        if any(row[a] == -1 for a in drop):
            for a in drop:
                unknown[a] += row[a] == -1
            continue
        row["index"] = index
        index += 1
        yield row
    if index == 0 and files:
        counts = ", ".join(f"{a}: {n}" for a, n in unknown.items() if n)
        raise ValueError(
            f"no samples left in {files[0].parent}: all {len(files)} samples have an unknown (-1) "
            f"value of an attribute that is dropped ({counts} samples unknown). Pass "
            "drop_unknown=False, or the attributes to filter on, e.g. drop_unknown=['race']"
        )


def _batched(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _columns(batch: list[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in batch] for name in names}


def _extras(extra_attributes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extra_attributes, str):
        extra_attributes = (extra_attributes,)
    extras = tuple(extra_attributes)
    bad = [a for a in extras if a not in OPTIONAL_ATTRIBUTE_GROUPS]
    if bad:
        raise ValueError(
            f"extra_attributes {bad} unknown; choose from {list(OPTIONAL_ATTRIBUTE_GROUPS)}"
        )
    return extras


def load_fairvlmed(
    root: str | os.PathLike[str],
    split: str,
    *,
    notes: str | os.PathLike[str] | None = NOTES_FILENAMES[0],
    note_source: Literal["summary", "note"] = "summary",
    split_source: Literal["auto", "folders", "split_files", "use"] = "auto",
    extra_attributes: Sequence[str] = (),
    drop_unknown: bool | Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    keep_in_memory: bool = False,
    cache_check: Literal["stat", "content"] = "stat",
) -> Any:
    """Read one split of a Harvard-FairVLMed folder, in any published form, into a Dataset.

    Files are read with ``np.load(..., allow_pickle=False)`` in file-name order and validated
    (fields present, types and value ranges). Columns: ``index`` (position in the returned split,
    ``0..n-1``, stable: Dynamic Bad Pair Mining keys on it), ``filename``, ``image`` (uint8 H x W,
    :class:`datasets.Array2D`, converted by the image rule of the module docstring), ``note``
    (str), ``label`` (the ``glaucoma`` field), ``race``, ``gender``, ``ethnicity``, ``language``
    (``-1`` = unknown), the ``extra_attributes`` asked for, and ``is_bad_pair`` when the files
    carry it. The dataset is returned in ``numpy`` format.

    Args:
        root: dataset root (see the module docstring for the forms read).
        split: ``"train"``, ``"val"`` or ``"test"``.
        notes: the summarised-notes CSV name or path. One of the two usual names
            (``gpt-4_summarized_notes.csv``, ``gpt4_summarized_notes.csv``; the default) means
            "the release's notes": either spelling, in ``root`` or ``root/ReadMe``, with the
            other sources of ``note_source``. Any other path (relative to ``root`` or
            ``root/ReadMe``, or absolute) must exist and is the only source (column 0 = file
            name, column 2 = note). ``None`` uses each npz's ``note`` field only.
        note_source: ``"summary"`` (the GPT-4 summaries the paper trains on: the notes CSV, else
            ``data_summary.csv``'s ``gpt4_summary``; an error when neither exists) or ``"note"``
            (the full note: ``data_summary.csv``'s ``note``, the notes CSV's column 1, the npz's
            ``note`` field, in that order per sample).
        split_source: ``"auto"`` (split folders, else ``split_files.csv``, else
            ``data_summary.csv``'s ``use`` column), or one of ``"folders"``, ``"split_files"``,
            ``"use"``.
        extra_attributes: optional attributes to add as columns: ``"age_60"``, ``"age_decade"``
            (from the ``age`` field) and ``"maritalstatus"``
            (:data:`~fairvlm_lightning.schema.OPTIONAL_ATTRIBUTE_GROUPS`), read from the npz or
            else ``data_summary.csv``. They are never used to drop samples.
        drop_unknown: drop samples whose attributes are unknown (``-1``): ``True`` for all four
            attributes, a sequence of attribute names for those, ``False`` to keep all. ``None``
            (default) drops on all four for ``val``/``test`` and keeps all for ``train``, as the
            paper and its reference code.
        cache_dir: where the Arrow file is written; default
            ``$HF_DATASETS_CACHE/fairvlm_lightning``.
        keep_in_memory: build the dataset in RAM instead of an Arrow file (small data, tests).
        cache_check: how the cache key sees the files (see the module docstring): ``"stat"``
            (default) by name, size and modification time; ``"content"`` also by a SHA-256 of
            every file's bytes, which catches a rewrite that keeps size and modification time
            but reads the whole split once per call.

    Returns:
        The split as a :class:`datasets.Dataset`.

    Raises:
        FileNotFoundError: missing root, split (folder, listing, listed file) or notes; no
            ``.npz`` file.
        ValueError: unknown split, source or attribute; corrupt or truncated npz (the file is
            named); missing field or note; a CSV that is not UTF-8 text; value out of range
            (an image's range is named); image shapes differ within the split; no sample left
            after dropping unknown attributes. A damaged cache file is not an error: it is
            rebuilt (with a warning).
        TypeError: a field of the wrong dtype (e.g. a float label, a string image).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()) / "fairvlmed"
        >>> (root / "Training").mkdir(parents=True)
        >>> fields = dict(glaucoma=1, race=2, gender=0, ethnicity=-1, language=0, age=71.5)
        >>> np.savez(root / "Training" / "data_00001.npz",
        ...          slo_fundus=np.full((6, 4), 0.5, np.float32), note=np.array("c/d 0.8"),
        ...          **{k: np.array(v) for k, v in fields.items()})
        >>> ds = load_fairvlmed(root, "train", notes=None, extra_attributes=["age_60"],
        ...                     keep_in_memory=True)
        >>> row = ds[0]
        >>> int(row["index"]), str(row["note"]), int(row["label"]), int(row["age_60"])
        (0, 'c/d 0.8', 1, 1)
        >>> row["image"].shape, int(row["image"][0, 0]), ds.features["image"].dtype
        ((6, 4), 128, 'uint8')
    """
    from datasets import Dataset

    if cache_check not in ("stat", "content"):
        raise ValueError(f"cache_check must be 'stat' or 'content', got {cache_check!r}")
    root = Path(root)
    files, folder, listing = _split_listing(root, split, split_source)
    drop = _drop_attributes(drop_unknown, split)
    extras = _extras(extra_attributes)
    meta = _Meta(root)
    note_sources = _note_sources(root, notes, note_source, meta)
    meta_files = [*note_sources.files, *([listing] if listing is not None else [])]
    if extras and meta.summary_path is not None:
        meta_files.append(meta.summary_path)

    # The first file fixes the schema (image shape, is_bad_pair); _rows checks the others.
    probe = _read_sample(files[0], note_sources, extras, meta)
    features = _features(probe["image"].shape, BAD_PAIR_FIELD in probe, extras)
    names = list(features)

    if keep_in_memory:
        cols: dict[str, list[Any]] = {name: [] for name in names}
        for row in _rows(files, note_sources, drop, extras, meta):
            for name in names:
                cols[name].append(row[name])
        return Dataset.from_dict(cols, features=features).with_format("numpy")

    from datasets.arrow_writer import ArrowWriter

    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    settings = [split, drop, extras, note_sources.key(), str(listing)]
    key = _cache_key(
        folder, files, sorted(set(meta_files)), settings, content=cache_check == "content"
    )
    target = cache / f"fairvlmed-{split}-{key}.arrow"
    cached = _open_cache(target, folder)
    if cached is not None:
        return cached.with_format("numpy")
    tag = f"tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.with_name(f"{target.name}.{tag}")
    meta_json = target.with_name(f"{target.name}.json")
    tmp_meta = meta_json.with_name(f"{meta_json.name}.{tag}")
    try:
        with ArrowWriter(features=features, path=str(tmp)) as writer:
            for batch in _batched(_rows(files, note_sources, drop, extras, meta), _WRITE_BATCH):
                writer.write_batch(_columns(batch, names))
            num_rows, _ = writer.finalize()
        tmp_meta.write_text(json.dumps({"num_rows": int(num_rows)}) + "\n")
        # The sidecar first, then the data, each atomically: a reader sees either no cache, or
        # a complete one (concurrent DDP ranks never see a partial file).
        os.replace(tmp_meta, meta_json)
        os.replace(tmp, target)
    finally:
        for path in (tmp, tmp_meta):
            path.unlink(missing_ok=True)
    return Dataset.from_file(str(target)).with_format("numpy")
