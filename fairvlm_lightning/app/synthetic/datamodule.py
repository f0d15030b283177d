"""The synthetic FairVLMed twin as a data module: written into ``root`` on first use."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from fairvlm_lightning.app.synthetic.fairvlmed import ensure_synthetic_assets
from fairvlm_lightning.data.datamodule import FairVLMedDataModule
from fairvlm_lightning.metrics.groups import Intersection
from fairvlm_lightning.schema import ATTRIBUTES, NOTES_FILENAMES

__all__ = ["SyntheticFairVLMedDataModule"]


class SyntheticFairVLMedDataModule(FairVLMedDataModule):
    """:class:`~fairvlm_lightning.data.FairVLMedDataModule` over the synthetic twin.

    ``prepare_data`` and ``setup`` first write the twin and its tiny dual encoder into ``root``
    when they are missing (:func:`~fairvlm_lightning.app.synthetic.ensure_synthetic_assets`
    with ``synthetic_kwargs``; a no-op once written); everything else is the FairVLMed preset.
    ``model`` defaults to ``root/"tiny_model"`` and ``cache_dir`` to ``root/".cache"``.

    In a ``fairvlm`` config: ``data: {class_path:
    fairvlm_lightning.app.synthetic.SyntheticFairVLMedDataModule, init_args: {root: ...}}``; the
    command writes the assets before it builds the module, which loads ``root/"tiny_model"``.
    The arguments not listed below are :class:`~fairvlm_lightning.data.FairVLMedDataModule`'s.

    Args:
        root: folder of the twin (created).
        model: tokenizer and image processor source; default ``root/"tiny_model"``.
        synthetic_kwargs: keyword arguments of ``ensure_synthetic_assets`` (``seed``,
            ``sizes``, ``bad_pair_rate``, ``model_kwargs``, ``warm_start_steps``, ...).
        cache_dir: cache for the Arrow files (default ``root/".cache"``).

    Example:
        >>> import tempfile
        >>> dm = SyntheticFairVLMedDataModule(tempfile.mkdtemp(), batch_size=4,
        ...     synthetic_kwargs={"sizes": {"train": 16, "val": 8, "test": 8},
        ...                       "image_shape": (32, 32), "warm_start_steps": 0})
        >>> dm.prepare_data(); dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["pixel_values"].shape, batch["input_ids"].shape, "is_bad_pair" in batch
        (torch.Size([4, 3, 64, 64]), torch.Size([4, 64]), True)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        model: str | os.PathLike[str] | None = None,
        synthetic_kwargs: dict[str, Any] | None = None,
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
        if synthetic_kwargs is not None and not isinstance(synthetic_kwargs, dict):
            raise TypeError(
                "SyntheticFairVLMedDataModule: synthetic_kwargs must be a dict of "
                f"ensure_synthetic_assets arguments, got {type(synthetic_kwargs).__name__}"
            )
        # save_hyperparameters (in the parent) reads these locals: record plain strings, as
        # the module records its model folder (Lightning checks that the two agree).
        model = str(model) if model is not None else str(Path(root) / "tiny_model")
        root = str(root)
        super().__init__(
            root,
            model=model,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            image_size=image_size,
            max_length=max_length,
            notes=notes,
            note_source=note_source,
            split_source=split_source,
            attributes=attributes,
            balance_attribute=balance_attribute,
            seed=seed,
            cache_dir=cache_dir if cache_dir is not None else Path(root) / ".cache",
            cache_check=cache_check,
            drop_bad_pairs=drop_bad_pairs,
            intersections=intersections,
        )
        self.synthetic_kwargs = dict(synthetic_kwargs or {})

    @staticmethod
    def ensure_assets(init_args: Mapping[str, Any]) -> None:
        """Write the twin and its tiny model for these data arguments (before the model loads).

        The ``fairvlm`` command calls it with the config's ``data.init_args`` before it builds
        the module, which loads ``root/"tiny_model"``.
        """
        ensure_synthetic_assets(init_args["root"], **dict(init_args.get("synthetic_kwargs") or {}))

    def _prepare_source(self) -> None:
        ensure_synthetic_assets(self.root, **self.synthetic_kwargs)
