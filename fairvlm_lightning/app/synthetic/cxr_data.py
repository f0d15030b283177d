"""The chest-X-ray twin as a data module: :class:`SyntheticCXRDataModule`.

Example:
    >>> SyntheticCXRDataModule.label_names()[:2]
    ('cardiomegaly', 'edema')
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fairvlm_lightning.app.synthetic.cxr import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    FINDINGS,
    ensure_synthetic_cxr,
)
from fairvlm_lightning.data import ImageTextDataModule
from fairvlm_lightning.metrics.groups import Intersection

__all__ = ["SyntheticCXRDataModule"]


class SyntheticCXRDataModule(ImageTextDataModule):
    """The chest-X-ray twin (five findings, multi-label), written into ``root`` on first use.

    An :class:`~fairvlm_lightning.data.ImageTextDataModule` over the twin's ``imagefolder``
    (:func:`~fairvlm_lightning.app.synthetic.cxr.ensure_synthetic_cxr`): ``label`` is (B, 5)
    0/1 in the order of :data:`~fairvlm_lightning.app.synthetic.cxr.FINDINGS`, the attributes
    are ``sex``, ``age_group`` and ``race``, ``is_bad_pair`` marks the planted bad pairs.

    Args:
        root: folder of the twin (written there when missing, reused when complete).
        model: tokenizer/processor folder; default ``root/"tiny_model"``.
        synthetic_kwargs: keyword arguments of
            :func:`~fairvlm_lightning.app.synthetic.cxr.ensure_synthetic_cxr` (``seed``,
            ``sizes``, ``warm_start_steps``, ...); default the shipped twin.
        intersections: intersectional groups added to every batch (``[["race", "sex"]]``).
        batch_size: training batch size.
        eval_batch_size: val/test/predict batch size (default ``batch_size``).
        num_workers: DataLoader worker processes.
        max_length: token length of the reports.
        balance_attribute: draw training batches balanced over this attribute's groups.
        drop_bad_pairs: train without the planted bad pairs (the clean-data oracle).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        model: str | os.PathLike[str] | None = None,
        synthetic_kwargs: dict[str, Any] | None = None,
        intersections: Sequence[Intersection] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_length: int = 40,
        balance_attribute: str | None = None,
        drop_bad_pairs: bool = False,
    ) -> None:
        super().__init__(
            "imagefolder",
            load_kwargs={"data_dir": str(root)},
            model=str(model) if model is not None else str(Path(root) / "tiny_model"),
            label_column=list(FINDINGS),
            attributes=dict(ATTRIBUTES),
            truth_column="is_bad_pair",
            intersections=intersections,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            max_length=max_length,
            balance_attribute=balance_attribute,
            drop_bad_pairs=drop_bad_pairs,
            cache_dir=Path(root) / ".cache",
        )
        self.root = Path(root)
        self.synthetic_kwargs = dict(synthetic_kwargs or {})
        model = self.model
        root = str(root)
        self.save_hyperparameters()

    @staticmethod
    def label_names() -> tuple[str, ...]:
        """The findings, in label order."""
        return tuple(FINDINGS)

    @staticmethod
    def ensure_assets(init_args: Mapping[str, Any]) -> None:
        """Write the twin and its tiny model for these data arguments (before the model loads)."""
        ensure_synthetic_cxr(init_args["root"], **dict(init_args.get("synthetic_kwargs") or {}))

    def prepare_data(self) -> None:
        """Write the twin when missing, then preprocess it."""
        ensure_synthetic_cxr(self.root, **self.synthetic_kwargs)
        super().prepare_data()

    def _display_names(self) -> dict[str, Sequence[str]]:
        return {a: ATTRIBUTE_NAMES[a] for a in self._attribute_groups if a in ATTRIBUTE_NAMES}
