"""Functional fairness metrics: plain functions of ``(preds, target, groups, num_groups)``.

Each function has a stateful twin in :mod:`fairvlm_lightning.metrics`. ``task="binary"`` (the
default) takes scores ``P(y = 1)``; ``task="multiclass"`` (``num_classes=C``) takes ``(N, C)``
class probabilities and ``(N,)`` class ids; ``task="multilabel"`` (``num_labels=L``) takes
``(N, L)`` label probabilities and multi-hot labels. Groups are ids ``0 .. num_groups - 1`` with
``ignore_index`` (default -1) for an unknown member, and every value is computed in float64.
"""

from fairvlm_lightning.metrics.functional.auroc import binary_auroc, group_auroc
from fairvlm_lightning.metrics.functional.equity import (
    equity_scaled_accuracy,
    equity_scaled_auroc,
)
from fairvlm_lightning.metrics.functional.parity import (
    demographic_parity_difference,
    equalized_odds_difference,
)
from fairvlm_lightning.metrics.functional.report import fairness_metrics

__all__ = [
    "binary_auroc",
    "demographic_parity_difference",
    "equalized_odds_difference",
    "equity_scaled_accuracy",
    "equity_scaled_auroc",
    "fairness_metrics",
    "group_auroc",
]
