"""Fairness metrics of the FairVLMed paper as torchmetrics metrics, for any classification task.

Every class takes ``task="binary" | "multiclass" | "multilabel"`` (torchmetrics' convention,
with ``num_classes`` / ``num_labels``). Binary scores are ``P(y = 1)``; groups are ids
``0 .. num_groups - 1`` of one protected attribute, with ``ignore_index`` (default -1) for an
unknown member. Every class declares how its states are reduced across processes, so results
under DDP equal a single process, and accumulating over batches equals one call on the
concatenated data. Functional twins live in :mod:`fairvlm_lightning.metrics.functional`;
intersectional groups (``race*gender``) in :mod:`fairvlm_lightning.metrics.groups`.
"""

from fairvlm_lightning.metrics import functional, groups
from fairvlm_lightning.metrics.auroc import GroupAUROC
from fairvlm_lightning.metrics.equity import EquityScaledAccuracy, EquityScaledAUROC
from fairvlm_lightning.metrics.parity import DemographicParityDifference, EqualizedOddsDifference
from fairvlm_lightning.metrics.report import FairnessMetrics

__all__ = [
    "DemographicParityDifference",
    "EqualizedOddsDifference",
    "EquityScaledAUROC",
    "EquityScaledAccuracy",
    "FairnessMetrics",
    "GroupAUROC",
    "functional",
    "groups",
]
