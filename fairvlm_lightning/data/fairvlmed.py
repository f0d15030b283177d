"""Reader for the Harvard-FairVLMed layout (the real dataset and its synthetic twin).

On disk::

    root/
      gpt-4_summarized_notes.csv   # or gpt4_...; column 0 file name, column 2 note
      Training/    data_00001.npz ...
      Validation/  data_07001.npz ...
      Test/        data_08001.npz ...  (the released dataset names this folder ``Testing``)

Every ``.npz`` holds ``slo_fundus`` (uint8, H x W), ``glaucoma``, ``race``, ``gender``,
``ethnicity``, ``language`` (0-d integer arrays, ``-1`` = unknown) and ``note`` (a 0-d string
array); the synthetic twin adds ``is_bad_pair`` (0-d bool) and ``cdr`` (0-d float).

:func:`load_fairvlmed` validates every file and writes one split into an Arrow file under a cache
folder (memory-mapped, so 10,000 full-size fundus images cost disk, not RAM, and all DDP ranks
share the page cache).

The cache file is ``<cache_dir>/fairvlmed-<split>-<key>.arrow``. Its key hashes the cache format
version, the absolute split folder, the attributes whose unknowns are dropped, whether notes come
from a CSV or from the npz files, and, for every npz file and the notes CSV, its name, size and
modification time in nanoseconds (``cache_check="stat"``, the default) or additionally a SHA-256
of its bytes (``cache_check="content"``). So an edited, added or removed file is read again; only
a rewrite that keeps a file's size and modification time (``cp -p``, ``rsync -t``, some
archive tools) is missed by the default, and the content check catches it at the cost of reading
every file once per load. A sidecar ``<name>.arrow.json`` records the row count; a cache file
that cannot be read or holds fewer rows (a crash or a full disk while copying it, a truncation)
is rebuilt with a warning.
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

from fairvlm_lightning.schema import (
    ATTRIBUTE_GROUPS,
    ATTRIBUTES,
    BAD_PAIR_FIELD,
    IMAGE_FIELD,
    LABEL_FIELD,
    NOTE_FIELD,
    NOTES_FILENAMES,
    SPLIT_FOLDERS,
)

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_GROUPS",
    "NOTES_FILENAMES",
    "SPLIT_FOLDERS",
    "load_fairvlmed",
    "split_folder",
]

_CACHE_VERSION = "fairvlmed-arrow-v1"
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


def _resolve_notes(root: Path, notes: str | os.PathLike[str] | None) -> Path | None:
    """Path of the notes CSV, or ``None`` to use the npz ``note`` field."""
    if notes is None:
        return None
    path = Path(notes)
    if not path.is_absolute():
        path = root / path
    if path.is_file():
        return path
    if path.name in NOTES_FILENAMES and path.parent == root:
        for name in NOTES_FILENAMES:
            if (root / name).is_file():
                return root / name
        warnings.warn(
            f"no summarised-notes CSV ({' or '.join(NOTES_FILENAMES)}) in {root}; using the "
            "'note' field of each .npz instead (pass notes=None to silence this)",
            UserWarning,
            stacklevel=3,
        )
        return None
    raise FileNotFoundError(f"notes CSV not found: {path}")


def _decode_error(e: UnicodeDecodeError, data: bytes) -> str:
    """``byte 0xe9 at position 24 (line 2)`` for an error while decoding ``data``."""
    line = data.count(b"\n", 0, e.start) + 1
    return f"byte 0x{data[e.start]:02x} at position {e.start} (line {line})"


def _read_notes_csv(path: Path) -> dict[str, str]:
    """Map npz file name (column 0) to note (column 2); the first row is a header."""
    out: dict[str, str] = {}
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"notes CSV {path} is not UTF-8 text: {_decode_error(e, raw)}; a latin-1 or "
            "binary file? Convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if "\0" in text:
        at = text.index("\0")
        raise ValueError(
            f"notes CSV {path}, line {text.count(chr(10), 0, at) + 1}: NUL byte at position "
            f"{at}; a binary file, not a text CSV?"
        )
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        try:
            next(reader)
        except StopIteration:
            raise ValueError(f"notes CSV {path} is empty") from None
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 3:
                raise ValueError(
                    f"notes CSV {path}, line {reader.line_num}: expected >= 3 columns "
                    f"(file name, original note, summary), got {len(row)}"
                )
            name = os.path.basename(row[0].strip())
            note = row[2].strip()
            if name in out and out[name] != note:
                raise ValueError(
                    f"notes CSV {path}: file {name!r} listed twice with different notes"
                )
            out[name] = note
    return out


def _scalar(npz: Any, field: str, path: Path, kinds: str) -> Any:
    """Read a size-1 array field of one of the numpy dtype ``kinds`` and return its item."""
    arr = _field(npz, field, path)
    if arr.dtype.kind not in kinds:
        want = {"iu": "an integer", "iub": "an integer or bool", "f": "a float"}.get(kinds, kinds)
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


def _read_sample(
    path: Path, notes: Mapping[str, str] | None, notes_path: Path | None
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
        image = _field(npz, IMAGE_FIELD, path)
        if image.dtype != np.uint8:
            raise TypeError(f"{path}: field {IMAGE_FIELD!r} must be uint8, got dtype {image.dtype}")
        if image.ndim != 2 or 0 in image.shape:
            raise ValueError(
                f"{path}: field {IMAGE_FIELD!r} must be a 2-D (H, W) grayscale image, got shape "
                f"{image.shape}"
            )
        row["image"] = image
        if notes is None:
            note = _read_note(npz, path)
            where = "its 'note' field"
        else:
            note = notes.get(path.name, "")
            where = f"notes CSV {notes_path}"
        if not note:
            raise ValueError(f"missing note for {path.name}: empty or absent in {where}")
        row["note"] = note
        if BAD_PAIR_FIELD in npz.files:
            row[BAD_PAIR_FIELD] = bool(_scalar(npz, BAD_PAIR_FIELD, path, "iub"))
    return row


def _features(image_shape: tuple[int, int], with_bad_pair: bool) -> Any:
    from datasets import Array2D, Features, Value

    cols: dict[str, Any] = {
        "index": Value("int64"),
        "filename": Value("string"),
        "image": Array2D(shape=image_shape, dtype="uint8"),
        "note": Value("string"),
        "label": Value("int64"),
    }
    cols.update({attr: Value("int64") for attr in ATTRIBUTES})
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
    notes_path: Path | None,
    drop: tuple[str, ...],
    content: bool = False,
) -> str:
    """The cache file's key (see the module docstring); ``content`` adds each file's SHA-256."""
    h = hashlib.sha256()
    h.update(_CACHE_VERSION.encode())
    h.update(str(folder.resolve()).encode())
    h.update(json.dumps(drop).encode())
    for p in [*files, *([notes_path] if notes_path is not None else [])]:
        st = p.stat()
        h.update(f"\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        if content:
            with open(p, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    h.update(b"csv" if notes_path is not None else b"npz-note")
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
    notes: Mapping[str, str] | None,
    notes_path: Path | None,
    drop: tuple[str, ...],
) -> Iterator[dict[str, Any]]:
    """Validated rows, unknown-attribute samples dropped, ``index`` numbered after dropping.

    Raises ``ValueError`` at the end when every sample was dropped (an empty split would only
    fail much later, deep in ``datasets``).
    """
    index = 0
    first: dict[str, Any] | None = None
    unknown = dict.fromkeys(drop, 0)
    for path in files:
        row = _read_sample(path, notes, notes_path)
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


def load_fairvlmed(
    root: str | os.PathLike[str],
    split: str,
    *,
    notes: str | os.PathLike[str] | None = NOTES_FILENAMES[0],
    drop_unknown: bool | Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    keep_in_memory: bool = False,
    cache_check: Literal["stat", "content"] = "stat",
) -> Any:
    """Read one split of a Harvard-FairVLMed folder into a :class:`datasets.Dataset`.

    Files are read with ``np.load(..., allow_pickle=False)`` in file-name order and validated
    (fields present, types and value ranges). Columns: ``index`` (position in the returned split,
    ``0..n-1``, stable: Dynamic Bad Pair Mining keys on it), ``filename``, ``image`` (uint8 H x W,
    :class:`datasets.Array2D`), ``note`` (str), ``label`` (the ``glaucoma`` field), ``race``,
    ``gender``, ``ethnicity``, ``language`` (``-1`` = unknown) and ``is_bad_pair`` when the files
    carry it. The dataset is returned in ``numpy`` format (``datasets`` hands integer arrays out as
    int64; the stored image is uint8).

    Args:
        root: dataset root holding ``Training/``, ``Validation/``, ``Test/`` (or ``Testing/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        notes: the summarised-notes CSV (column 0 = npz file name, column 2 = note, first row a
            header), relative to ``root`` or absolute. If it is one of the two usual names
            (``gpt-4_summarized_notes.csv``, ``gpt4_summarized_notes.csv``) either spelling is
            accepted, and when neither exists the ``note`` field of each npz is used with a
            warning. Any other missing path is an error. ``None`` uses the npz ``note`` field.
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
        FileNotFoundError: missing root, split folder or notes CSV; no ``.npz`` file.
        ValueError: unknown split or attribute; corrupt or truncated npz (the file is named);
            missing field or note; a note or notes CSV that is not UTF-8 text; value out of
            range; image shapes differ within the split; no sample left after dropping
            unknown attributes. A damaged cache file is not an error: it is rebuilt (with a
            warning).
        TypeError: a field of the wrong dtype (e.g. a float label, a non-uint8 image).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()) / "fairvlmed"
        >>> (root / "Training").mkdir(parents=True)
        >>> fields = dict(glaucoma=1, race=2, gender=0, ethnicity=-1, language=0)
        >>> np.savez(root / "Training" / "data_00001.npz",
        ...          slo_fundus=np.zeros((6, 4), np.uint8), note=np.array("c/d 0.8, glaucoma"),
        ...          **{k: np.array(v) for k, v in fields.items()})
        >>> ds = load_fairvlmed(root, "train", notes=None, keep_in_memory=True)
        >>> row = ds[0]
        >>> int(row["index"]), str(row["note"]), int(row["label"]), int(row["ethnicity"])
        (0, 'c/d 0.8, glaucoma', 1, -1)
        >>> row["image"].shape, ds.features["image"].dtype
        ((6, 4), 'uint8')
    """
    from datasets import Dataset

    if cache_check not in ("stat", "content"):
        raise ValueError(f"cache_check must be 'stat' or 'content', got {cache_check!r}")
    root = Path(root)
    folder = split_folder(root, split)
    drop = _drop_attributes(drop_unknown, split)
    files = sorted(p for p in folder.iterdir() if p.suffix == ".npz" and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .npz files in {folder}")
    notes_path = _resolve_notes(root, notes)
    note_map = _read_notes_csv(notes_path) if notes_path is not None else None

    # The first file fixes the schema (image shape, is_bad_pair); _rows checks the others.
    probe = _read_sample(files[0], note_map, notes_path)
    features = _features(probe["image"].shape, BAD_PAIR_FIELD in probe)
    names = list(features)

    if keep_in_memory:
        cols: dict[str, list[Any]] = {name: [] for name in names}
        for row in _rows(files, note_map, notes_path, drop):
            for name in names:
                cols[name].append(row[name])
        return Dataset.from_dict(cols, features=features).with_format("numpy")

    from datasets.arrow_writer import ArrowWriter

    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = _cache_key(folder, files, notes_path, drop, content=cache_check == "content")
    target = cache / f"fairvlmed-{split}-{key}.arrow"
    cached = _open_cache(target, folder)
    if cached is not None:
        return cached.with_format("numpy")
    tag = f"tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.with_name(f"{target.name}.{tag}")
    meta = target.with_name(f"{target.name}.json")
    tmp_meta = meta.with_name(f"{meta.name}.{tag}")
    try:
        with ArrowWriter(features=features, path=str(tmp)) as writer:
            for batch in _batched(_rows(files, note_map, notes_path, drop), _WRITE_BATCH):
                writer.write_batch(_columns(batch, names))
            num_rows, _ = writer.finalize()
        tmp_meta.write_text(json.dumps({"num_rows": int(num_rows)}) + "\n")
        # The sidecar first, then the data, each atomically: a reader sees either no cache, or
        # a complete one (concurrent DDP ranks never see a partial file).
        os.replace(tmp_meta, meta)
        os.replace(tmp, target)
    finally:
        for path in (tmp, tmp_meta):
            path.unlink(missing_ok=True)
    return Dataset.from_file(str(target)).with_format("numpy")
