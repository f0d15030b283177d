"""Lightning data module for Harvard-FairVLMed and its synthetic twin.

The heavy work happens once per split and is cached on disk by ``datasets``: every grayscale
fundus image is resized and centre-cropped to the model's input size as uint8 (vectorised
``torch`` interpolation that follows the model's Hugging Face image processor: shortest-edge or
fixed-size resize, bicubic with antialiasing as PIL, centre crop), and every note is tokenised
to ``max_length``. A batch then only costs one Arrow ``take`` plus the float conversion and
normalisation of the stacked uint8 images.
"""

from __future__ import annotations

import hashlib
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
from fairvlm_lightning.data.fairvlmed import load_fairvlmed, split_folder
from fairvlm_lightning.data.sampling import (
    EpochShuffleSampler,
    GroupBalancedSampler,
    ResumableDataLoader,
    UnpaddedDistributedSampler,
)
from fairvlm_lightning.data.synthetic import SYNTHETIC_MARKER, ensure_synthetic_assets
from fairvlm_lightning.data.transforms import ImageTransform
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS, ATTRIBUTES, BAD_PAIR_FIELD, NOTES_FILENAMES

__all__ = ["FairVLMedDataModule", "ImageTransform"]

_PREPROCESS_VERSION = "fairvlm-preprocess-v1"
_STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: ("train", "val", "test"),
}


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

    def __init__(self, transform: ImageTransform) -> None:
        self.transform = transform

    def __call__(
        self, batch: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        if not isinstance(batch, Mapping):
            batch = {k: torch.stack([row[k] for row in batch]) for k in batch[0]}
        out = dict(batch)
        out["pixel_values"] = self.transform.normalize(out.pop("pixels"))
        if BAD_PAIR_FIELD in out:
            out[BAD_PAIR_FIELD] = out[BAD_PAIR_FIELD].to(torch.bool)
        return out


class FairVLMedDataModule(LightningDataModule):
    """Harvard-FairVLMed (or its synthetic twin) as batches for a Hugging Face dual encoder.

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
        model: folder or Hub name whose tokenizer and image processor are used; for
            ``synthetic=True`` defaults to ``root/"tiny_model"``.
        synthetic: write the synthetic twin and the tiny model into ``root`` on first use
            (:func:`~fairvlm_lightning.data.ensure_synthetic_assets`).
        synthetic_kwargs: keyword arguments of ``ensure_synthetic_assets`` (``seed``, ``sizes``,
            ``bad_pair_rate``, ``model_kwargs``, ...).
        batch_size: training batch size.
        eval_batch_size: val/test/predict batch size (default ``batch_size``).
        num_workers: DataLoader worker processes.
        image_size: override the processor's input size (shortest-edge resize + square crop).
        max_length: token length of notes (padded and truncated to it).
        notes: notes CSV name, or ``None`` for the npz ``note`` field (see ``load_fairvlmed``).
        attributes: protected attributes put in each batch.
        balance_attribute: draw training batches balanced over this attribute's groups.
        seed: seed of the training order; ``None`` (the default) takes the seed of Lightning's
            ``seed_everything`` (``PL_GLOBAL_SEED``) when one is set, else 0. The ``fairvlm``
            command fills it from ``--seed_everything`` unless it is given explicitly.
        cache_dir: cache for the Arrow files; default ``root/".cache"`` for synthetic data
            (``synthetic=True`` or a folder written by ``ensure_synthetic_assets``), the
            ``datasets`` cache otherwise.
        cache_check: ``"stat"`` (default) or ``"content"``: how the split cache sees edited
            files (see :func:`~fairvlm_lightning.data.load_fairvlmed`); ``"content"`` also
            catches a file rewritten with the same size and modification time.
        drop_bad_pairs: train without the pairs whose ``is_bad_pair`` is true (the synthetic
            twin's ground truth): the clean-data *oracle* of ``fairvlm benchmark``. The kept
            training pairs are re-indexed ``0..n-1`` in file order; val/test are unchanged. An
            error when the training split has no ``is_bad_pair`` field.

    The training loader is a :class:`~fairvlm_lightning.data.sampling.ResumableDataLoader`:
    Lightning saves its position in the epoch in every checkpoint, so a run resumed from a
    mid-epoch checkpoint skips exactly the batches it had seen. A damaged cache file (the split's
    Arrow file or its preprocessed ``cache-*.arrow``) is rebuilt with a warning.

    Example:
        >>> import tempfile
        >>> dm = FairVLMedDataModule(tempfile.mkdtemp(), synthetic=True, batch_size=4,
        ...     synthetic_kwargs={"sizes": {"train": 16, "val": 8, "test": 8},
        ...                       "image_shape": (32, 32), "warm_start_steps": 0})
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
        synthetic: bool = False,
        synthetic_kwargs: dict[str, Any] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
        max_length: int = 64,
        notes: str | None = NOTES_FILENAMES[0],
        attributes: Sequence[str] = ATTRIBUTES,
        balance_attribute: str | None = None,
        seed: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_check: Literal["stat", "content"] = "stat",
        drop_bad_pairs: bool = False,
    ) -> None:
        super().__init__()
        if cache_check not in ("stat", "content"):
            raise ValueError(f"cache_check must be 'stat' or 'content', got {cache_check!r}")
        self.cache_check = cache_check
        if not isinstance(drop_bad_pairs, bool):
            raise TypeError(f"drop_bad_pairs must be a bool, got {drop_bad_pairs!r}")
        self.drop_bad_pairs = drop_bad_pairs
        self.root = Path(root)
        if model is None and not synthetic:
            raise ValueError(
                "model (a folder or Hub name with a tokenizer and image processor) is required "
                "unless synthetic=True"
            )
        self.model = str(model) if model is not None else str(self.root / "tiny_model")
        self.synthetic = bool(synthetic)
        self.synthetic_kwargs = dict(synthetic_kwargs or {})
        for name, v in (("batch_size", batch_size), ("max_length", max_length)):
            if int(v) <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if eval_batch_size is not None and int(eval_batch_size) <= 0:
            raise ValueError(f"eval_batch_size must be positive, got {eval_batch_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if isinstance(attributes, str):
            attributes = (attributes,)
        unknown = [a for a in attributes if a not in ATTRIBUTE_GROUPS]
        if unknown:
            raise ValueError(f"attributes {unknown} unknown; choose from {list(ATTRIBUTE_GROUPS)}")
        if balance_attribute is not None and balance_attribute not in ATTRIBUTE_GROUPS:
            raise ValueError(
                f"balance_attribute {balance_attribute!r} unknown; "
                f"choose from {list(ATTRIBUTE_GROUPS)}"
            )
        self.batch_size = int(batch_size)
        self.eval_batch_size = (
            int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        )
        self.num_workers = int(num_workers)
        self.image_size = image_size
        self.max_length = int(max_length)
        self.notes = notes
        self.attributes = tuple(attributes)
        self.balance_attribute = balance_attribute
        if seed is None:
            seed = _global_seed()
        if isinstance(seed, bool) or not hasattr(seed, "__index__"):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        seed = int(seed)
        self.seed = seed
        if cache_dir is not None:
            self.cache_dir: Path | None = Path(cache_dir)
        else:
            ours = synthetic or (self.root / SYNTHETIC_MARKER).is_file()
            self.cache_dir = self.root / ".cache" if ours else None
        self.tokenizer: Any = None
        self.image_processor: Any = None
        self.image_transform: ImageTransform | None = None
        self.datasets: dict[str, Any] = {}
        self._splits: dict[str, _SplitDataset] = {}
        # Record the folder actually used (save_hyperparameters reads the local variables), so
        # that it agrees with a module built from the same folder: Lightning refuses to log a
        # hyper-parameter whose value differs between the module and the data module.
        model = self.model
        root = str(root)  # a pathlib.Path hparam would break torch.load(weights_only=True)
        self.save_hyperparameters()

    # ------------------------------------------------------------------ set-up
    @property
    def attribute_groups(self) -> dict[str, int]:
        """``{attribute: number of groups}`` for the configured attributes."""
        return {a: ATTRIBUTE_GROUPS[a] for a in self.attributes}

    def _ensure_synthetic(self) -> None:
        if self.synthetic:
            ensure_synthetic_assets(self.root, **self.synthetic_kwargs)

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

    def _preprocessed(self, split: str) -> Any:
        """Load ``split`` and add ``pixels`` (uint8) and token columns; cached by ``datasets``."""
        from datasets import Array2D, Features, Value

        try:
            from datasets import List as _List

            def seq(v: Any, n: int) -> Any:
                return _List(v, length=n)
        except ImportError:  # pragma: no cover - datasets < 4
            from datasets import Sequence as _Seq

            def seq(v: Any, n: int) -> Any:
                return _Seq(v, length=n)

        assert self.image_transform is not None
        ds = load_fairvlmed(
            self.root,
            split,
            notes=self.notes,
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
                "input_ids": seq(Value("int32"), length),
                "attention_mask": seq(Value("int8"), length),
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
            batch_size=256,
            remove_columns=["image", "note", "filename"],
            features=features,
            new_fingerprint=fingerprint,
            desc=f"Preprocessing FairVLMed {split}",
        )

    def prepare_data(self) -> None:
        """Write the synthetic assets if asked, and fill the on-disk caches (rank 0 only)."""
        self._ensure_synthetic()
        self._load_processors()
        for split in ("train", "val", "test"):
            try:
                split_folder(self.root, split)
            except FileNotFoundError:
                continue
            self._preprocessed(split)

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer, image processor and the splits that ``stage`` needs."""
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {list(_STAGE_SPLITS)}")
        self._ensure_synthetic()
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
        """The training split without its planted bad pairs, re-indexed ``0..n-1``."""
        if BAD_PAIR_FIELD not in ds.column_names:
            raise ValueError(
                f"drop_bad_pairs=True needs the field {BAD_PAIR_FIELD!r} in the training split of "
                f"{self.root} (the synthetic twin has it); this dataset has none"
            )
        bad = np.asarray(ds.with_format("numpy")[BAD_PAIR_FIELD], dtype=bool)
        keep = np.flatnonzero(~bad)
        if len(keep) == 0:
            raise ValueError(f"drop_bad_pairs=True leaves no training pair in {self.root}")
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

        The hash of the training split's file names in index order (and their number), so it
        changes when files are renamed, added, removed or reordered, and not when only their
        content is rewritten. :class:`~fairvlm_lightning.callbacks.DynamicBadPairMining` keeps
        it with its per-pair memory and refuses to resume that memory onto other files.

        Raises:
            RuntimeError: before :meth:`setup` loaded the training split.

        Example:
            >>> import tempfile
            >>> dm = FairVLMedDataModule(tempfile.mkdtemp(), synthetic=True,
            ...     synthetic_kwargs={"sizes": {"train": 8, "val": 4, "test": 4},
            ...                       "image_shape": (32, 32), "warm_start_steps": 0})
            >>> dm.setup("fit")
            >>> len(dm.train_fingerprint())
            64
        """
        ds = self.datasets.get("train")
        if ds is None:
            raise RuntimeError(
                "FairVLMedDataModule.train_fingerprint: the training split is not loaded; "
                "call setup('fit') first"
            )
        digest = hashlib.sha256(f"fairvlmed-train:{ds.num_rows}\n".encode())
        for name in ds.select_columns(["filename"]).to_dict()["filename"]:
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
            collate_fn=_Collate(self.image_transform),
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
        """Validation batches in file order (under DDP each rank a shard, none repeated)."""
        return self._loader("val", self.eval_batch_size, self._eval_sampler("val"))

    def test_dataloader(self) -> DataLoader:
        """Test batches in file order (under DDP each rank a shard, none repeated)."""
        return self._loader("test", self.eval_batch_size, self._eval_sampler("test"))

    def predict_dataloader(self) -> DataLoader:
        """The test split, for ``Trainer.predict``."""
        return self._loader("test", self.eval_batch_size)
