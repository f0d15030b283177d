"""Lightning data modules: any image-text ``datasets`` source, and its Harvard-FairVLMed preset.

The heavy work happens once per split and is cached on disk by ``datasets``: every grayscale
fundus image is resized and centre-cropped to the model's input size as uint8 (vectorised
``torch`` interpolation that follows the model's Hugging Face image processor: shortest-edge or
fixed-size resize, bicubic with antialiasing as PIL, centre crop), and every note is tokenised
to ``max_length``. A batch then only costs one Arrow ``take`` plus the float conversion and
normalisation of the stacked uint8 images.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from fairvlm_lightning.atomic import check_export_folder
from fairvlm_lightning.data.fairvlmed import SPLIT_SOURCES, load_fairvlmed, split_files
from fairvlm_lightning.data.images import to_grey_uint8
from fairvlm_lightning.data.sampling import (
    EpochShuffleSampler,
    GroupBalancedSampler,
    ResumableDataLoader,
    UnpaddedDistributedSampler,
)
from fairvlm_lightning.data.transforms import ImageTransform
from fairvlm_lightning.metrics.groups import (
    Intersection,
    add_intersection_groups,
    expand_attributes,
    parse_intersections,
    reported_group_names,
)
from fairvlm_lightning.schema import (
    ATTRIBUTE_GROUPS,
    ATTRIBUTES,
    BAD_PAIR_FIELD,
    GROUP_NAMES,
    NOTES_FILENAMES,
    OPTIONAL_ATTRIBUTE_GROUPS,
    SYNTHETIC_MARKER,
)

__all__ = [
    "SOURCE_SPLITS",
    "FairVLMedDataModule",
    "ImageTextDataModule",
    "ImageTransform",
    "PairDataModule",
]

_PREPROCESS_VERSION = "fairvlm-preprocess-v1"
_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "val", "test"),
}


def _seq(value: Any, n: int) -> Any:
    """A fixed-length list feature (``datasets.List``; ``Sequence`` before datasets 4)."""
    try:
        from datasets import List

        return List(value, length=n)
    except ImportError:  # pragma: no cover - datasets < 4
        from datasets import Sequence as HFSequence

        return HFSequence(value, length=n)


def _global_seed() -> int:
    """The seed of Lightning's last ``seed_everything`` (``PL_GLOBAL_SEED``), else 0."""
    value = os.environ.get("PL_GLOBAL_SEED")
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _drop_damaged_map_cache(ds: Any, fingerprint: str) -> None:
    """Remove ``datasets``' cached ``map`` output of ``ds`` if it is unreadable or short.

    ``Dataset.map`` names its cache file ``cache-<fingerprint>.arrow`` next to the input's file
    and loads it without checking; a truncated file would fail with a bare ``ArrowInvalid`` (or
    silently hold fewer rows) on every run. Removed, it is simply computed again.
    """
    from datasets import Dataset

    files = getattr(ds, "cache_files", None)
    if not files:
        return
    path = Path(files[0]["filename"]).parent / f"cache-{fingerprint}.arrow"
    if not path.is_file():
        return
    try:
        rows = len(Dataset.from_file(str(path)))
        if rows != len(ds):
            raise ValueError(f"it holds {rows} rows, the split {len(ds)}")
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ...
        warnings.warn(
            f"FairVLMed preprocessed cache file {path} is damaged or incomplete "
            f"({type(e).__name__}: {e}); rebuilding it",
            UserWarning,
            stacklevel=3,
        )
        path.unlink(missing_ok=True)


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the tokenizer's vocabulary and pipeline, not of its current padding/truncation."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("padding", None)  # set by the last call, not part of the tokenizer's identity
        state.pop("truncation", None)
        body = json.dumps(state, sort_keys=True)
    else:  # pragma: no cover - slow tokenizers
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = [type(tokenizer).__name__, tokenizer.pad_token_id, tokenizer.padding_side]
    return hashlib.sha256((body + json.dumps(extra)).encode()).hexdigest()


def _column_to_tensor(column: Any) -> torch.Tensor:
    """One Arrow column of a batch -> tensor (uint8 images stay uint8, token ids become long)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(arr.type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
        values = arr.flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(values.reshape(len(arr), -1).astype(np.int64))
    values = np.asarray(arr.to_numpy(zero_copy_only=False))
    if values.dtype == np.bool_:
        return torch.from_numpy(values.copy())
    if values.dtype != np.uint8:
        values = values.astype(np.int64)
    elif not values.flags.writeable:
        values = values.copy()
    return torch.from_numpy(values)


class _SplitDataset(Dataset):
    """Map-style view of a preprocessed split; ``__getitems__`` fetches a batch in one Arrow take.

    Items and batches are dicts of tensors: ``pixels`` uint8, the other columns long (bool for
    ``is_bad_pair``). Reading the Arrow table directly skips ``datasets``' per-value formatting.
    """

    def __init__(self, ds: Any, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.ds = ds.select_columns(self.columns).with_format("arrow")

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        table = self.ds[[int(i) for i in indices]]
        return {name: _column_to_tensor(table.column(name)) for name in self.columns}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


class _Collate:
    """Stack rows (or take a pre-batched dict) and turn uint8 pixels into ``pixel_values``."""

    def __init__(
        self,
        transform: ImageTransform,
        attributes: Mapping[str, int] | None = None,
        intersections: Sequence[tuple[str, ...]] = (),
    ) -> None:
        self.transform = transform
        self.attributes = dict(attributes or {})
        self.intersections = list(intersections)

    def __call__(
        self, batch: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        if not isinstance(batch, Mapping):
            batch = {k: torch.stack([row[k] for row in batch]) for k in batch[0]}
        out = dict(batch)
        out["pixel_values"] = self.transform.normalize(out.pop("pixels"))
        if BAD_PAIR_FIELD in out:
            out[BAD_PAIR_FIELD] = out[BAD_PAIR_FIELD].to(torch.bool)
        if self.intersections:
            out = add_intersection_groups(out, self.attributes, self.intersections)
        return out


#: Split names accepted in a ``datasets`` source, for each of the data module's splits.
SOURCE_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("validation", "val", "valid", "dev"),
    "test": ("test", "testing"),
}

AttributeSpec = int | Mapping[str, int] | Sequence[str]


def _attribute_codes(attributes: Any) -> tuple[dict[str, int], dict[str, dict[str, int] | None]]:
    """``({name: number of groups}, {name: value -> code mapping or None})`` of ``attributes``."""
    if attributes is None:
        return {}, {}
    if isinstance(attributes, str) or not isinstance(attributes, Mapping):
        raise TypeError(
            "attributes must be a dict {column: number of groups | {value: code} | [values]}, "
            f"got {attributes!r}"
        )
    groups: dict[str, int] = {}
    maps: dict[str, dict[str, int] | None] = {}
    for name, spec in attributes.items():
        if isinstance(spec, bool) or spec is None:
            raise TypeError(
                f"attributes[{name!r}]: expected an int, a mapping or a list, got {spec!r}"
            )
        if isinstance(spec, int):
            if spec < 1:
                raise ValueError(f"attributes[{name!r}]: number of groups must be >= 1, got {spec}")
            groups[name], maps[name] = int(spec), None
            continue
        if isinstance(spec, Mapping):
            mapping = {str(k): int(v) for k, v in spec.items()}
        elif isinstance(spec, Sequence) and not isinstance(spec, str):
            mapping = {str(v): i for i, v in enumerate(spec)}
        else:
            raise TypeError(
                f"attributes[{name!r}]: expected an int, a mapping or a list, got {spec!r}"
            )
        codes = sorted(set(mapping.values()))
        if not codes or codes != list(range(len(codes))):
            raise ValueError(
                f"attributes[{name!r}]: codes must be 0..n-1 with none skipped, got {mapping}"
            )
        groups[name], maps[name] = len(codes), mapping
    return groups, maps


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def _code(value: Any, n: int, mapping: Mapping[str, int] | None, where: str) -> int:
    """One attribute value -> its group code (``-1`` for missing or ``-1``)."""
    if _is_missing(value):
        return -1
    if mapping is not None:
        key = str(value)
        if key not in mapping:
            if key == "-1":
                return -1
            raise ValueError(
                f"{where}: value {value!r} is not in the attribute's mapping {mapping}"
            )
        return mapping[key]
    if isinstance(value, str) or isinstance(value, bool) or int(value) != value:
        raise ValueError(
            f"{where}: value {value!r} is not a group code 0..{n - 1} (-1 = unknown); for "
            "string values give a mapping, e.g. attributes={'sex': {'F': 0, 'M': 1}}"
        )
    code = int(value)
    if not -1 <= code < n:
        raise ValueError(f"{where}: group code {code} outside 0..{n - 1} (-1 = unknown)")
    return code


def _label(values: Sequence[Any], where: str, num_classes: int | None) -> Any:
    """A label value (or the values of several label columns) -> int or list of 0/1 ints."""
    out = []
    for v in values:
        if _is_missing(v) or isinstance(v, str) or int(v) != v:
            raise ValueError(f"{where}: label {v!r} is not an integer class")
        out.append(int(v))
    if len(out) > 1 or num_classes is None:
        bad = [v for v in out if v not in (0, 1)] if len(out) > 1 else []
        if bad:
            raise ValueError(f"{where}: multi-label targets must be 0 or 1, got {out}")
    if len(out) == 1:
        hi = num_classes if num_classes is not None else 2
        if not 0 <= out[0] < hi:
            raise ValueError(f"{where}: label {out[0]} outside 0..{hi - 1}")
        return out[0]
    return out


def _image_key(value: Any, row: int) -> tuple[Any, str]:
    """``(image, key)`` of one undecoded ``datasets.Image`` value, an array, or a PIL image."""
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        from PIL import Image

        data, path = value.get("bytes"), value.get("path")
        image = Image.open(io.BytesIO(data) if data is not None else str(path))
        image.load()
        key = os.path.basename(path) if path else hashlib.sha256(data or b"").hexdigest()[:20]
        return image, key
    return value, f"row-{row}"


def _resize_all(transform: ImageTransform, images: Sequence[np.ndarray]) -> np.ndarray:
    """Resize a list of uint8 (H, W) images of possibly different sizes, grouping equal shapes."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(im.shape, []).append(i)
    out: np.ndarray | None = None
    for idx in by_shape.values():
        resized = transform.resize(np.stack([images[i] for i in idx])).numpy()
        if out is None:
            out = np.empty((len(images), *resized.shape[1:]), dtype=np.uint8)
        if resized.shape[1:] != out.shape[1:]:
            raise ValueError(
                "images resize to different sizes; set image_size (a square crop) or use a "
                "processor with a centre crop or a fixed size"
            )
        out[idx] = resized
    assert out is not None
    return out


def _label_settings(
    label_column: str | Sequence[str], num_classes: int | None
) -> tuple[tuple[str, ...], bool, int | None]:
    """``(label columns, multi-label?, number of classes)`` of the label arguments, checked."""
    if isinstance(label_column, str):
        columns: tuple[str, ...] = (label_column,)
        multi_label = False
    else:
        columns = tuple(str(c) for c in label_column)
        multi_label = True
        if not columns:
            raise ValueError("label_column: an empty list of columns")
    if num_classes is not None and (multi_label or int(num_classes) < 2):
        raise ValueError(
            f"num_classes must be >= 2 and only with a single label column, got {num_classes}"
        )
    return columns, multi_label, int(num_classes) if num_classes is not None else None


def _drop_unknown_names(
    drop_unknown: bool | Sequence[str], groups: Mapping[str, int]
) -> tuple[str, ...]:
    """The attributes whose unknown val/test rows are dropped (``True``: all of ``groups``)."""
    if isinstance(drop_unknown, bool):
        return tuple(groups) if drop_unknown else ()
    names = (drop_unknown,) if isinstance(drop_unknown, str) else tuple(drop_unknown)
    bad = [a for a in names if a not in groups]
    if bad:
        raise ValueError(f"drop_unknown names {bad}, not among the attributes {list(groups)}")
    return names


def _require_columns(raw: Any, needed: Sequence[str], split: str, source: str) -> None:
    """Raise a ``ValueError`` naming split, source and columns when ``raw`` lacks one."""
    missing = [c for c in needed if c not in raw.column_names]
    if missing:
        raise ValueError(
            f"split {split!r} of {source} has no column(s) {missing}; its "
            f"columns: {raw.column_names}"
        )


def _row_features(
    attributes: Sequence[str],
    label_width: int | None,
    truth: bool,
    pixels_shape: tuple[int, ...],
    length: int,
) -> Any:
    """The ``datasets.Features`` of preprocessed rows (``label_width`` ``None``: one label)."""
    from datasets import Array2D, Features, Value

    label = _seq(Value("int64"), label_width) if label_width is not None else Value("int64")
    cols: dict[str, Any] = {
        "index": Value("int64"),
        "key": Value("string"),
        "label": label,
        **{a: Value("int64") for a in attributes},
    }
    if truth:
        cols[BAD_PAIR_FIELD] = Value("bool")
    return Features(
        cols
        | {
            "pixels": Array2D(shape=pixels_shape, dtype="uint8"),
            "input_ids": _seq(Value("int32"), length),
            "attention_mask": _seq(Value("int8"), length),
        }
    )


def _drop_unknown_rows(ds: Any, attributes: Sequence[str]) -> Any:
    """``ds`` without the rows where any of ``attributes`` is ``-1``, re-indexed ``0..n-1``."""
    values = ds.select_columns(list(attributes)).with_format("numpy")
    known = np.ones(len(ds), dtype=bool)
    for a in attributes:
        known &= np.asarray(values[a]) != -1
    if known.all():
        return ds
    kept = ds.select(np.flatnonzero(known)).remove_columns("index")
    return kept.add_column("index", np.arange(int(known.sum()), dtype=np.int64))


class _RowPreprocessor:
    """Source rows -> training pairs: the picklable ``datasets.map`` function of one split.

    Called as ``(batch, indices)`` (``with_indices=True``); ``where`` names the source and the
    split in errors, e.g. ``"DatasetDict, split 'train'"``.
    """

    def __init__(
        self,
        *,
        where: str,
        transform: ImageTransform,
        tokenizer: Any,
        max_length: int,
        image_column: str,
        text_column: str,
        label_columns: Sequence[str],
        num_classes: int | None,
        id_column: str | None,
        truth_column: str | None,
        attribute_groups: Mapping[str, int],
        attribute_maps: Mapping[str, Mapping[str, int] | None],
    ) -> None:
        self.where, self.transform, self.tokenizer = where, transform, tokenizer
        self.max_length = max_length
        self.image_column, self.text_column = image_column, text_column
        self.label_columns, self.num_classes = tuple(label_columns), num_classes
        self.id_column, self.truth_column = id_column, truth_column
        self.attribute_groups, self.attribute_maps = dict(attribute_groups), dict(attribute_maps)

    def _images(
        self, batch: Mapping[str, list[Any]], indices: Sequence[int]
    ) -> tuple[list[np.ndarray], list[str]]:
        """The batch's images as uint8 grey (not yet resized) and their sample keys."""
        images: list[np.ndarray] = []
        keys: list[str] = []
        for value, i in zip(batch[self.image_column], indices, strict=True):
            where = f"{self.where}, row {i}, column {self.image_column!r}"
            image, key = _image_key(value, i)
            images.append(
                to_grey_uint8(np.asarray(image) if isinstance(image, list) else image, where)
            )
            keys.append(
                str(batch[self.id_column][len(keys)]) if self.id_column is not None else key
            )
        return images, keys

    def _texts(self, batch: Mapping[str, list[Any]], indices: Sequence[int]) -> list[str]:
        """The batch's texts, each checked to be a non-empty string."""
        texts = []
        for t, i in zip(batch[self.text_column], indices, strict=True):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(
                    f"{self.where}, row {i}, column {self.text_column!r}: empty or "
                    f"non-text value {t!r}"
                )
            texts.append(t)
        return texts

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, Any]:
        images, keys = self._images(batch, indices)
        enc = self.tokenizer(
            self._texts(batch, indices),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=True,
        )
        label_cols = self.label_columns
        out: dict[str, Any] = {
            "index": list(indices),
            "key": keys,
            "label": [
                _label(
                    [batch[c][j] for c in label_cols],
                    f"{self.where}, row {i}, column(s) {list(label_cols)}",
                    self.num_classes,
                )
                for j, i in enumerate(indices)
            ],
            "pixels": _resize_all(self.transform, images),
            "input_ids": np.asarray(enc["input_ids"], dtype=np.int32),
            "attention_mask": np.asarray(enc["attention_mask"], dtype=np.int8),
        }
        for a, n in self.attribute_groups.items():
            out[a] = [
                _code(v, n, self.attribute_maps[a], f"{self.where}, row {i}, column {a!r}")
                for v, i in zip(batch[a], indices, strict=True)
            ]
        if self.truth_column is not None:
            out[BAD_PAIR_FIELD] = [bool(v) for v in batch[self.truth_column]]
        return out


class PairDataModule(LightningDataModule):
    """The shared machinery of the image-text data modules: settings, caches, loaders.

    It checks and stores the settings (:meth:`_configure`), loads the tokenizer and image
    processor, runs the Lightning hooks (``prepare_data``, ``setup``), builds the loaders
    (epoch-seeded or group-balanced training order, resumable; unpadded DDP evaluation) and
    offers :meth:`tokenize` and :meth:`train_fingerprint`. A subclass says where its rows come
    from: ``_has_split(split)`` and ``_preprocessed(split)`` (the split as rows ``pixels``,
    ``input_ids``, ``attention_mask``, ``index``, ``label``, one column per attribute and the
    :attr:`key_column`, stored in ``self.datasets[split]``), and the class attributes
    :attr:`fingerprint_tag` and :attr:`key_column`. :class:`ImageTextDataModule` (any
    ``datasets`` source) and :class:`FairVLMedDataModule` are its data modules.

    Example:
        >>> issubclass(ImageTextDataModule, PairDataModule)
        True
        >>> issubclass(FairVLMedDataModule, PairDataModule)
        True
    """

    #: Prefix of :meth:`train_fingerprint`'s hash input (which kind of sample key is hashed).
    fingerprint_tag: str
    #: The column of the loaded split that names each sample.
    key_column: str

    # ------------------------------------------------------------------ shared set-up
    def _configure(
        self,
        *,
        model: str | os.PathLike[str],
        attribute_groups: Mapping[str, int],
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        image_size: int | None,
        max_length: int,
        balance_attribute: str | None,
        seed: int | None,
        cache_dir: str | os.PathLike[str] | None,
        drop_bad_pairs: bool,
        intersections: Sequence[Intersection] | None = None,
    ) -> None:
        """Check and store the settings every image-text data module shares."""
        if not isinstance(drop_bad_pairs, bool):
            raise TypeError(f"drop_bad_pairs must be a bool, got {drop_bad_pairs!r}")
        self.drop_bad_pairs = drop_bad_pairs
        # A relative local folder is recorded as its absolute path, as the module records it
        # (Lightning refuses a hyper-parameter ``model`` that differs between the two).
        self.model = os.path.abspath(model) if os.path.isdir(model) else str(model)
        for name, v in (("batch_size", batch_size), ("max_length", max_length)):
            if int(v) <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if eval_batch_size is not None and int(eval_batch_size) <= 0:
            raise ValueError(f"eval_batch_size must be positive, got {eval_batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self._attribute_groups = dict(attribute_groups)
        self.intersections = parse_intersections(intersections, self._attribute_groups)
        if balance_attribute is not None and balance_attribute not in self._attribute_groups:
            raise ValueError(
                f"balance_attribute {balance_attribute!r} unknown; "
                f"choose from {list(self._attribute_groups)}"
            )
        self.batch_size = int(batch_size)
        self.eval_batch_size = (
            int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        )
        self.num_workers = int(num_workers)
        self.image_size = image_size
        self.max_length = int(max_length)
        self.attributes = tuple(self._attribute_groups)
        self.balance_attribute = balance_attribute
        if seed is None:
            seed = _global_seed()
        if isinstance(seed, bool) or not hasattr(seed, "__index__"):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        self.seed = int(seed)
        self.cache_dir: Path | None = Path(cache_dir) if cache_dir is not None else None
        self.tokenizer: Any = None
        self.image_processor: Any = None
        self.image_transform: ImageTransform | None = None
        self.datasets: dict[str, Any] = {}
        self._splits: dict[str, _SplitDataset] = {}

    @property
    def attribute_groups(self) -> dict[str, int]:
        """``{attribute: number of groups}``: the attributes, then each intersection's cells."""
        return expand_attributes(self._attribute_groups, self.intersections)

    def _display_names(self) -> dict[str, Sequence[str]]:
        """Display names of the groups of the configured attributes (codes where none)."""
        names: dict[str, Sequence[str]] = {}
        for attribute, mapping in getattr(self, "attribute_maps", {}).items():
            if mapping:
                by_code = {code: str(value) for value, code in mapping.items()}
                names[attribute] = [by_code.get(g, f"group {g}") for g in range(len(by_code))]
        return names

    @property
    def group_names(self) -> dict[str, tuple[str, ...]]:
        """Display names of every group of :attr:`attribute_groups` (``"Black Female"``)."""
        return reported_group_names(
            self._attribute_groups, self.intersections, self._display_names()
        )

    def _load_processors(self) -> None:
        if self.tokenizer is not None:
            return
        from transformers import AutoImageProcessor, AutoTokenizer

        check_export_folder(self.model)  # a `fairvlm export` folder must be complete
        tokenizer = AutoTokenizer.from_pretrained(self.model)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError(f"tokenizer of {self.model} has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        limit = getattr(tokenizer, "model_max_length", None)
        if limit is not None and limit < 1_000_000 and self.max_length > limit:
            raise ValueError(
                f"max_length {self.max_length} exceeds the tokenizer's model_max_length "
                f"{limit} for {self.model}"
            )
        processor = AutoImageProcessor.from_pretrained(self.model)
        self.image_transform = ImageTransform.from_processor(processor, self.image_size)
        self.tokenizer, self.image_processor = tokenizer, processor

    def _has_split(self, split: str) -> bool:
        """Whether the data have the ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define _has_split")

    def _preprocessed(self, split: str) -> Any:
        """The ``split`` as preprocessed rows (cached), also stored in ``self.datasets``."""
        raise NotImplementedError(f"{type(self).__name__} does not define _preprocessed")

    def _where(self) -> str:
        """The data's name in error messages."""
        return type(self).__name__

    def _prepare_source(self) -> None:
        """Hook run first by ``prepare_data`` and ``setup`` (a subclass writes its data here)."""

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Fill the on-disk caches of every split the source has (rank 0 only)."""
        self._prepare_source()
        self._load_processors()
        for split in ("train", "val", "test"):
            if self._has_split(split):
                self._preprocessed(split)

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer, image processor and the splits that ``stage`` needs."""
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {list(_STAGE_SPLITS)}")
        self._prepare_source()
        self._load_processors()
        for split in _STAGE_SPLITS[stage]:
            if split in self._splits:
                continue
            ds = self._preprocessed(split)
            if split == "train" and self.drop_bad_pairs:
                ds = self._without_bad_pairs(ds)
            columns = ["pixels", "input_ids", "attention_mask", "index", "label", *self.attributes]
            if BAD_PAIR_FIELD in ds.column_names:
                columns.append(BAD_PAIR_FIELD)
            self._splits[split] = _SplitDataset(ds, columns)

    def _without_bad_pairs(self, ds: Any) -> Any:
        """The training split without its known bad pairs, re-indexed ``0..n-1``."""
        if BAD_PAIR_FIELD not in ds.column_names:
            raise ValueError(
                f"drop_bad_pairs=True needs the field {BAD_PAIR_FIELD!r} in the training split of "
                f"{self._where()} (the synthetic twin has it; for other data set truth_column); "
                "this dataset has none"
            )
        bad = np.asarray(ds.with_format("numpy")[BAD_PAIR_FIELD], dtype=bool)
        keep = np.flatnonzero(~bad)
        if len(keep) == 0:
            raise ValueError(f"drop_bad_pairs=True leaves no training pair in {self._where()}")
        raw = self.datasets["train"].select(keep)
        self.datasets["train"] = raw.remove_columns("index").add_column(
            "index", np.arange(len(keep), dtype=np.int64)
        )
        kept = ds.select(keep).remove_columns("index")
        return kept.add_column("index", np.arange(len(keep), dtype=np.int64))

    # ------------------------------------------------------------- public API
    def tokenize(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise texts (e.g. class prompts) as the notes: ``input_ids``, ``attention_mask``."""
        if self.tokenizer is None:
            self._load_processors()
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def train_fingerprint(self) -> str:
        """Which sample each training ``index`` means, as a SHA-256 hex digest.

        The hash of the training split's sample keys (file names, or ``id_column``) in index
        order, and their number: it changes when samples are renamed, added, removed or
        reordered. :class:`~fairvlm_lightning.callbacks.DynamicBadPairMining` keeps it with its
        per-pair memory and refuses to resume that memory onto other samples.

        Raises:
            RuntimeError: before :meth:`setup` loaded the training split.

        Example:
            >>> import tempfile
            >>> from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
            >>> dm = SyntheticFairVLMedDataModule(tempfile.mkdtemp(),
            ...     synthetic_kwargs={"sizes": {"train": 8, "val": 4, "test": 4},
            ...                       "image_shape": (32, 32), "warm_start_steps": 0})
            >>> dm.setup("fit")
            >>> len(dm.train_fingerprint())
            64
        """
        ds = self.datasets.get("train")
        if ds is None:
            raise RuntimeError(
                f"{type(self).__name__}.train_fingerprint: the training split is not loaded; "
                "call setup('fit') first"
            )
        digest = hashlib.sha256(f"{self.fingerprint_tag}:{ds.num_rows}\n".encode())
        for name in ds.select_columns([self.key_column]).to_dict()[self.key_column]:
            digest.update(name.encode("utf-8") + b"\n")
        return digest.hexdigest()

    def split_dataset(self, split: str) -> _SplitDataset:
        """The preprocessed map-style dataset of ``split`` (after :meth:`setup`)."""
        if split not in self._splits:
            raise RuntimeError(
                f"split {split!r} not set up; call setup() with a stage that loads it"
            )
        return self._splits[split]

    def _loader(
        self, split: str, batch_size: int, sampler: Any = None, cls: type[DataLoader] = DataLoader
    ) -> DataLoader:
        assert self.image_transform is not None
        ds = self.split_dataset(split)
        return cls(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=_Collate(self.image_transform, self._attribute_groups, self.intersections),
            persistent_workers=self.num_workers > 0,
            pin_memory=self._pin_memory(),
        )

    def _pin_memory(self) -> bool:
        from lightning.pytorch.accelerators import CUDAAccelerator

        trainer = getattr(self, "trainer", None)
        return trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator)

    def train_dataloader(self) -> DataLoader:
        """Training batches; order a pure function of ``(seed, epoch)``."""
        ds = self.split_dataset("train")
        if self.balance_attribute is not None:
            groups = np.asarray(self.datasets["train"][self.balance_attribute])
            sampler: Any = GroupBalancedSampler(groups, seed=self.seed)
        else:
            sampler = EpochShuffleSampler(len(ds), seed=self.seed)
        return self._loader("train", self.batch_size, sampler, cls=ResumableDataLoader)

    def _eval_sampler(self, split: str) -> UnpaddedDistributedSampler | None:
        """Under a multi-process trainer: this rank's shard of ``split``, without padding."""
        trainer = getattr(self, "trainer", None)
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
        if not kwargs or kwargs["num_replicas"] <= 1:
            return None
        return UnpaddedDistributedSampler(self.split_dataset(split), **kwargs)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in source order (under DDP each rank a shard, none repeated)."""
        return self._loader("val", self.eval_batch_size, self._eval_sampler("val"))

    def test_dataloader(self) -> DataLoader:
        """Test batches in source order (under DDP each rank a shard, none repeated)."""
        return self._loader("test", self.eval_batch_size, self._eval_sampler("test"))

    def predict_dataloader(self) -> DataLoader:
        """The test split, for ``Trainer.predict``."""
        return self._loader("test", self.eval_batch_size)


class ImageTextDataModule(PairDataModule):
    """Any image-text dataset readable by Hugging Face ``datasets``, as batches for a dual encoder.

    The source (``dataset``) is a ``datasets.DatasetDict``, a folder written by
    ``DatasetDict.save_to_disk``, a local folder ``load_dataset`` reads (an ``imagefolder`` with
    ``metadata.csv``/``metadata.jsonl``, Parquet/CSV/JSON files), a builder name with
    ``data_files`` (e.g. ``"parquet"``), or a Hub dataset name (passed to ``load_dataset`` as is).
    Its splits ``train``/``training``, ``validation``/``val``/``valid``/``dev`` and
    ``test``/``testing`` (:data:`SOURCE_SPLITS`) become the module's train, val and test splits.

    Each row is made a training pair once per split and cached by ``datasets``: the image is
    converted to uint8 grey by the rule of :func:`~fairvlm_lightning.data.to_grey_uint8`, resized
    and centre-cropped as the model's image processor, the text tokenised to ``max_length``.
    Batches are those of :class:`FairVLMedDataModule`: ``pixel_values`` (B, 3, H, W) float32,
    ``input_ids`` and ``attention_mask`` (B, ``max_length``), ``index`` (B,) long (the row's
    position in its split, stable: Dynamic Bad Pair Mining keys on it), ``label`` (B,) long —
    or (B, L) long 0/1 when ``label_column`` names L columns — one (B,) long per attribute
    (``-1`` = unknown) and ``is_bad_pair`` (B,) bool when ``truth_column`` is given. Training
    order, group-balanced sampling, resumable loading and unpadded DDP evaluation are those of
    :class:`FairVLMedDataModule` (both inherit them, :meth:`~PairDataModule.tokenize` and
    :meth:`~PairDataModule.train_fingerprint` from :class:`PairDataModule`).

    Attributes are columns of the source, given as ``{column: spec}``: an ``int`` ``n`` when the
    column holds the codes ``0..n-1`` (``-1`` or missing = unknown); a mapping ``{value: code}``
    or a list of values (code = position) when it holds strings (a missing value is unknown, a
    value outside the mapping an error naming split, row and column).

    Args:
        dataset: the source (see above).
        model: folder or Hub name whose tokenizer and image processor are used (required; the
            ``fairvlm`` command fills it from ``model.model``).
        image_column: column of the images (``datasets.Image``, arrays or nested lists).
        text_column: column of the texts paired with the images.
        label_column: the class column (integers ``0..C-1``; binary by default), or a list of
            0/1 columns for a multi-label target.
        attributes: protected attributes (see above); default none.
        num_classes: number of classes of a single label column (default 2, binary).
        truth_column: a bool/0-1 column that marks known bad pairs (becomes ``is_bad_pair``,
            enables ``drop_bad_pairs``).
        id_column: a column that names each sample (file name, record id) for
            :meth:`train_fingerprint`; default the image file name when the images are files,
            else the row number.
        data_files: passed to ``load_dataset`` (e.g. ``{"train": "train.parquet", ...}``).
        load_kwargs: further keyword arguments of ``load_dataset``.
        drop_unknown: drop val/test rows with an unknown value of these attributes (``True``
            for all); default keep all (the metrics leave unknowns out of the groups).
        batch_size: training batch size.
        eval_batch_size: val/test/predict batch size (default ``batch_size``).
        num_workers: DataLoader worker processes.
        image_size: override the processor's input size (shortest-edge resize + square crop).
        max_length: token length of texts (padded and truncated to it).
        balance_attribute: draw training batches balanced over this attribute's groups.
        seed: seed of the training order; ``None`` takes ``PL_GLOBAL_SEED``, else 0.
        cache_dir: ``datasets`` cache folder for ``load_dataset`` (default its own).
        drop_bad_pairs: train without the rows whose ``truth_column`` is true.
        intersections: intersectional groups added to every batch, e.g. ``[["race", "sex"]]``
            (or ``["race*sex"]``): a key ``"race*sex"`` whose cell of (race r, sex s) is
            ``r * n_sex + s`` (``-1`` where either is unknown), usable by the metrics, the
            Sinkhorn term and DBPM like any attribute.

    Example:
        >>> import tempfile
        >>> from datasets import Dataset, DatasetDict
        >>> from fairvlm_lightning.app.synthetic import build_tiny_dual_encoder
        >>> model = build_tiny_dual_encoder(tempfile.mkdtemp(), ["a b c"] * 4)
        >>> part = Dataset.from_dict({"image": [np.zeros((8, 8), np.uint8)] * 4,
        ...     "text": ["a", "b", "c", "a"], "label": [0, 1, 0, 1], "sex": ["F", "M", "M", None]})
        >>> dm = ImageTextDataModule(DatasetDict(train=part, validation=part), model=model,
        ...     attributes={"sex": {"F": 0, "M": 1}}, batch_size=2)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.val_dataloader()))
        >>> batch["sex"].tolist(), batch["pixel_values"].shape[1]
        ([0, 1], 3)
    """

    #: Prefix of :meth:`train_fingerprint`'s hash input (which kind of sample key is hashed).
    fingerprint_tag = "image-text-train"
    #: The column of the loaded split that names each sample.
    key_column = "key"

    def __init__(
        self,
        dataset: Any,
        *,
        model: str | os.PathLike[str] | None = None,
        image_column: str = "image",
        text_column: str = "text",
        label_column: str | Sequence[str] = "label",
        attributes: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
        truth_column: str | None = None,
        id_column: str | None = None,
        data_files: Any = None,
        load_kwargs: dict[str, Any] | None = None,
        drop_unknown: bool | Sequence[str] = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
        max_length: int = 64,
        balance_attribute: str | None = None,
        seed: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        drop_bad_pairs: bool = False,
        intersections: Sequence[Intersection] | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            raise ValueError(
                "model (a folder or Hub name with a tokenizer and image processor) is required"
            )
        groups, self.attribute_maps = _attribute_codes(attributes)
        self._configure(
            model=model,
            attribute_groups=groups,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            image_size=image_size,
            max_length=max_length,
            balance_attribute=balance_attribute,
            seed=seed,
            cache_dir=cache_dir,
            drop_bad_pairs=drop_bad_pairs,
            intersections=intersections,
        )
        self.source = dataset
        self.image_column, self.text_column = str(image_column), str(text_column)
        self.label_columns: tuple[str, ...]
        self.label_columns, self.multi_label, self.num_classes = _label_settings(
            label_column, num_classes
        )
        self.truth_column = truth_column
        self.id_column = id_column
        self.data_files = data_files
        self.load_kwargs = dict(load_kwargs or {})
        self.drop_unknown: tuple[str, ...] = _drop_unknown_names(drop_unknown, groups)
        self._source_splits: Any = None
        model = self.model
        ignore = [] if isinstance(dataset, (str, os.PathLike)) else ["dataset"]
        if isinstance(dataset, os.PathLike):
            dataset = str(dataset)
        self.save_hyperparameters(ignore=ignore)

    # ------------------------------------------------------------------ the source
    def _load_source(self) -> Any:
        """The source as a ``DatasetDict`` (loaded once)."""
        if self._source_splits is not None:
            return self._source_splits
        import datasets as hf

        src = self.source
        if isinstance(src, hf.DatasetDict):
            out = src
        elif isinstance(src, hf.Dataset):
            raise TypeError(
                "dataset is a single datasets.Dataset; give a DatasetDict with train/validation/"
                "test splits (e.g. DatasetDict(train=ds.train_test_split(...)['train'], ...))"
            )
        elif isinstance(src, (str, os.PathLike)):
            path = Path(src)
            cache = {"cache_dir": str(self.cache_dir)} if self.cache_dir is not None else {}
            if path.is_dir() and (path / "dataset_dict.json").is_file():
                out = hf.load_from_disk(str(path))
            elif (
                path.is_dir()
                and (path / "dataset_info.json").is_file()
                and (path / "state.json").is_file()
            ):
                raise TypeError(
                    f"{path} is a saved single Dataset; save a DatasetDict with train/validation/"
                    "test splits instead"
                )
            else:
                kwargs = {**cache, **self.load_kwargs}
                if self.data_files is not None:
                    kwargs["data_files"] = self.data_files
                out = hf.load_dataset(str(src), **kwargs)
        else:
            raise TypeError(
                "dataset must be a datasets.DatasetDict, a saved DatasetDict folder, a folder or "
                f"builder name for load_dataset, or a Hub name; got {type(src).__name__}"
            )
        if not isinstance(out, hf.DatasetDict):
            raise TypeError(
                f"{src!r} did not load as a DatasetDict with splits (got {type(out).__name__})"
            )
        self._source_splits = out
        return out

    def _source_split(self, split: str) -> Any:
        """The source's split for ``split``, or ``None`` when it has none."""
        source = self._load_source()
        found = [n for n in SOURCE_SPLITS[split] if n in source]
        if len(found) > 1:
            raise ValueError(f"ambiguous {split!r} split: the source has {found}")
        return source[found[0]] if found else None

    def _has_split(self, split: str) -> bool:
        return self._source_split(split) is not None

    def _preprocessed(self, split: str) -> Any:
        """The source's ``split`` as rows ``pixels``, tokens, ``index``, label, attributes, key."""
        from datasets import Image as HFImage

        assert self.image_transform is not None
        raw = self._source_split(split)
        if raw is None:
            names = " or ".join(repr(n) for n in SOURCE_SPLITS[split])
            raise ValueError(
                f"the source has no {split!r} split (a split named {names}); it has "
                f"{list(self._load_source())}"
            )
        needed = [self.image_column, self.text_column, *self.label_columns, *self.attributes]
        needed += [c for c in (self.truth_column, self.id_column) if c is not None]
        name = self._source_name()
        _require_columns(raw, needed, split, name)
        raw = raw.select_columns(list(dict.fromkeys(needed)))
        if isinstance(raw.features[self.image_column], HFImage):
            raw = raw.cast_column(self.image_column, HFImage(decode=False))
        transform, length = self.image_transform, self.max_length
        src = next(n for n in SOURCE_SPLITS[split] if n in self._load_source())
        maps, groups = self.attribute_maps, self._attribute_groups
        label_cols, truth, id_col = self.label_columns, self.truth_column, self.id_column
        preprocess = _RowPreprocessor(
            where=f"{name}, split {src!r}",
            transform=transform,
            tokenizer=self.tokenizer,
            max_length=length,
            image_column=self.image_column,
            text_column=self.text_column,
            label_columns=label_cols,
            num_classes=self.num_classes,
            id_column=id_col,
            truth_column=truth,
            attribute_groups=groups,
            attribute_maps=maps,
        )
        if len(raw) == 0:
            raise ValueError(f"split {split!r} of {name} is empty")
        first = to_grey_uint8(_image_key(raw[0][self.image_column], 0)[0], f"{name}, row 0")
        features = _row_features(
            self.attributes,
            len(label_cols) if self.multi_label else None,
            truth is not None,
            tuple(transform.resize(first[None]).shape[1:]),
            length,
        )
        key = json.dumps(
            [
                _PREPROCESS_VERSION,
                raw._fingerprint,
                transform.spec(),
                _tokenizer_fingerprint(self.tokenizer),
                length,
                [self.image_column, self.text_column, label_cols, truth, id_col, self.num_classes],
                [[a, groups[a], maps[a]] for a in groups],
            ],
            sort_keys=True,
        )
        fingerprint = hashlib.sha256(key.encode()).hexdigest()[:32]
        _drop_damaged_map_cache(raw, fingerprint)
        ds = raw.map(
            preprocess,
            with_indices=True,
            batched=True,
            batch_size=64,
            remove_columns=raw.column_names,
            features=features,
            new_fingerprint=fingerprint,
            desc=f"Preprocessing {split}",
        )
        if split != "train" and self.drop_unknown:
            ds = _drop_unknown_rows(ds, self.drop_unknown)
        self.datasets[split] = ds
        return ds

    def _source_name(self) -> str:
        src = self.source
        return repr(str(src)) if isinstance(src, (str, os.PathLike)) else type(src).__name__

    def _where(self) -> str:
        return self._source_name()


class FairVLMedDataModule(ImageTextDataModule):
    """Harvard-FairVLMed (or its synthetic twin) as batches: ImageTextDataModule's preset.

    It reads every published form of the dataset (:func:`~fairvlm_lightning.data.load_fairvlmed`)
    and shares everything else (caches, sampling, loaders, fingerprint) with
    :class:`ImageTextDataModule`.

    Batches are dicts: ``pixel_values`` (B, 3, H, W) float32 (grayscale replicated, normalised as
    the model's image processor), ``input_ids`` and ``attention_mask`` (B, ``max_length``) long,
    ``index`` (B,) long (position in its split, stable across epochs), ``label`` (B,) long, one
    (B,) long per name in ``attributes`` (``-1`` = unknown), and ``is_bad_pair`` (B,) bool when
    the data carry it (the synthetic twin does).

    The train loader visits samples in an order that depends only on ``(seed, epoch)``
    (:class:`~fairvlm_lightning.data.EpochShuffleSampler`), or draws a group-balanced sample for
    ``balance_attribute`` (:class:`~fairvlm_lightning.data.GroupBalancedSampler`); val/test/predict
    loaders keep file order. Validation and test drop samples with an unknown attribute, as the
    paper. Predict uses the test split.

    Args:
        root: dataset root (``Training/``, ``Validation/``, ``Test/`` or ``Testing/``).
        model: folder or Hub name whose tokenizer and image processor are used (required;
            the ``fairvlm`` command fills it from ``model.model``).
        batch_size: training batch size.
        eval_batch_size: val/test/predict batch size (default ``batch_size``).
        num_workers: DataLoader worker processes.
        image_size: override the processor's input size (shortest-edge resize + square crop).
        max_length: token length of notes (padded and truncated to it).
        notes: notes CSV name, or ``None`` for the npz ``note`` field (see ``load_fairvlmed``).
        note_source: ``"summary"`` (the GPT-4 summaries, default) or ``"note"`` (the full
            clinical notes); see :func:`~fairvlm_lightning.data.load_fairvlmed`.
        split_source: where splits come from: ``"auto"`` (default), ``"folders"``,
            ``"split_files"`` or ``"use"``.
        attributes: protected attributes put in each batch: any of the four FairVLMed ones and
            the optional ``age_60``, ``age_decade``, ``maritalstatus``
            (:data:`~fairvlm_lightning.schema.OPTIONAL_ATTRIBUTE_GROUPS`).
        balance_attribute: draw training batches balanced over this attribute's groups.
        seed: seed of the training order; ``None`` (the default) takes the seed of Lightning's
            ``seed_everything`` (``PL_GLOBAL_SEED``) when one is set, else 0. The ``fairvlm``
            command fills it from ``--seed_everything`` unless it is given explicitly.
        cache_dir: cache for the Arrow files; default ``root/".cache"`` for a synthetic-twin
            folder (one holding :data:`~fairvlm_lightning.schema.SYNTHETIC_MARKER`), the
            ``datasets`` cache otherwise.
        cache_check: ``"stat"`` (default) or ``"content"``: how the split cache sees edited
            files (see :func:`~fairvlm_lightning.data.load_fairvlmed`); ``"content"`` also
            catches a file rewritten with the same size and modification time.
        drop_bad_pairs: train without the pairs whose ``is_bad_pair`` is true (the synthetic
            twin's ground truth): the clean-data *oracle* of ``fairvlm benchmark``. The kept
            training pairs are re-indexed ``0..n-1`` in file order; val/test are unchanged. An
            error when the training split has no ``is_bad_pair`` field.
        intersections: intersectional groups added to every batch, e.g. ``[["race",
            "gender"]]``: a key ``"race*gender"`` (see :class:`ImageTextDataModule`).

    The training loader is a :class:`~fairvlm_lightning.data.sampling.ResumableDataLoader`:
    Lightning saves its position in the epoch in every checkpoint, so a run resumed from a
    mid-epoch checkpoint skips exactly the batches it had seen. A damaged cache file (the split's
    Arrow file or its preprocessed ``cache-*.arrow``) is rebuilt with a warning.

    The synthetic twin (written on first use) is the application's subclass
    :class:`fairvlm_lightning.app.synthetic.SyntheticFairVLMedDataModule`.

    Example:
        >>> import tempfile
        >>> from fairvlm_lightning.app.synthetic import ensure_synthetic_assets
        >>> root = ensure_synthetic_assets(tempfile.mkdtemp(), warm_start_steps=0,
        ...     sizes={"train": 16, "val": 8, "test": 8}, image_shape=(32, 32))
        >>> dm = FairVLMedDataModule(root, model=root / "tiny_model", batch_size=4)
        >>> dm.prepare_data(); dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["pixel_values"].shape, batch["input_ids"].shape, batch["race"].dtype
        (torch.Size([4, 3, 64, 64]), torch.Size([4, 64]), torch.int64)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        model: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
        max_length: int = 64,
        notes: str | None = NOTES_FILENAMES[0],
        note_source: Literal["summary", "note"] = "summary",
        split_source: Literal["auto", "folders", "split_files", "use"] = "auto",
        attributes: Sequence[str] = ATTRIBUTES,
        balance_attribute: str | None = None,
        seed: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_check: Literal["stat", "content"] = "stat",
        drop_bad_pairs: bool = False,
        intersections: Sequence[Intersection] | None = None,
    ) -> None:
        # Not ImageTextDataModule.__init__ (its hyper-parameters are not this preset's).
        LightningDataModule.__init__(self)
        if cache_check not in ("stat", "content"):
            raise ValueError(f"cache_check must be 'stat' or 'content', got {cache_check!r}")
        self.cache_check = cache_check
        if note_source not in ("summary", "note"):
            raise ValueError(f"note_source must be 'summary' or 'note', got {note_source!r}")
        if split_source not in SPLIT_SOURCES:
            raise ValueError(
                f"split_source must be one of {list(SPLIT_SOURCES)}, got {split_source!r}"
            )
        self.note_source, self.split_source = note_source, split_source
        self.root = Path(root)
        if model is None:
            raise ValueError(
                "model (a folder or Hub name with a tokenizer and image processor) is required"
            )
        if isinstance(attributes, str):
            attributes = (attributes,)
        known = {**ATTRIBUTE_GROUPS, **OPTIONAL_ATTRIBUTE_GROUPS}
        unknown = [a for a in attributes if a not in known]
        if unknown:
            raise ValueError(f"attributes {unknown} unknown; choose from {list(known)}")
        if balance_attribute is not None and balance_attribute not in known:
            raise ValueError(
                f"balance_attribute {balance_attribute!r} unknown; choose from {list(known)}"
            )
        cache = cache_dir
        if cache is None and (self.root / SYNTHETIC_MARKER).is_file():
            cache = self.root / ".cache"
        super()._configure(
            model=model,
            attribute_groups={a: known[a] for a in attributes},
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            image_size=image_size,
            max_length=max_length,
            balance_attribute=None,
            seed=seed,
            cache_dir=cache,
            drop_bad_pairs=drop_bad_pairs,
            intersections=intersections,
        )
        self.notes = notes
        self.balance_attribute = balance_attribute
        # Record the folder actually used (save_hyperparameters reads the local variables), so
        # that it agrees with a module built from the same folder: Lightning refuses to log a
        # hyper-parameter whose value differs between the module and the data module.
        model = self.model
        root = str(root)  # a pathlib.Path hparam would break torch.load(weights_only=True)
        self.save_hyperparameters()

    fingerprint_tag = "fairvlmed-train"
    key_column = "filename"

    def _display_names(self) -> dict[str, Sequence[str]]:
        return {a: GROUP_NAMES[a] for a in self._attribute_groups if a in GROUP_NAMES}

    def _where(self) -> str:
        return str(self.root)

    def _has_split(self, split: str) -> bool:
        try:
            split_files(self.root, split, split_source=self.split_source)
        except FileNotFoundError:
            return False
        return True

    def _preprocessed(self, split: str) -> Any:
        """Load ``split`` and add ``pixels`` (uint8) and token columns; cached by ``datasets``."""
        from datasets import Array2D, Features, Value

        assert self.image_transform is not None
        ds = load_fairvlmed(
            self.root,
            split,
            notes=self.notes,
            note_source=self.note_source,
            split_source=self.split_source,
            extra_attributes=[
                a
                for a in dict.fromkeys((*self.attributes, self.balance_attribute))
                if a in OPTIONAL_ATTRIBUTE_GROUPS
            ],
            cache_dir=self.cache_dir,
            cache_check=self.cache_check,
        )
        self.datasets[split] = ds
        transform, tokenizer, length = self.image_transform, self.tokenizer, self.max_length
        h, w = ds.features["image"].shape
        probe = transform.resize(np.zeros((1, h, w), dtype=np.uint8))
        features = Features(
            {k: v for k, v in ds.features.items() if k not in ("image", "note", "filename")}
            | {
                "pixels": Array2D(shape=tuple(probe.shape[1:]), dtype="uint8"),
                "input_ids": _seq(Value("int32"), length),
                "attention_mask": _seq(Value("int8"), length),
            }
        )
        key = json.dumps(
            [
                _PREPROCESS_VERSION,
                ds._fingerprint,
                transform.spec(),
                _tokenizer_fingerprint(tokenizer),
                length,
            ],
            sort_keys=True,
        )

        keep = [k for k in ds.column_names if k not in ("image", "note", "filename")]

        def preprocess(batch: Any) -> dict[str, Any]:  # a pyarrow Table: images stay uint8
            images = batch.column("image").combine_chunks().to_numpy(zero_copy_only=False)
            enc = tokenizer(
                batch.column("note").to_pylist(),
                padding="max_length",
                truncation=True,
                max_length=length,
                return_attention_mask=True,
            )
            return {
                **{k: batch.column(k).to_numpy() for k in keep},
                "pixels": transform.resize(images).numpy(),
                "input_ids": np.asarray(enc["input_ids"], dtype=np.int32),
                "attention_mask": np.asarray(enc["attention_mask"], dtype=np.int8),
            }

        fingerprint = hashlib.sha256(key.encode()).hexdigest()[:32]
        _drop_damaged_map_cache(ds, fingerprint)
        return ds.with_format("arrow").map(
            preprocess,
            batched=True,
            batch_size=64,  # 64 full-size images: ~90 MB uint8, ~350 MB while resizing
            remove_columns=["image", "note", "filename"],
            features=features,
            new_fingerprint=fingerprint,
            desc=f"Preprocessing FairVLMed {split}",
        )
