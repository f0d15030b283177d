"""Demographic-parity and equalized-odds differences as torchmetrics metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from fairvlm_lightning.metrics._base import _ConfmatMetric
from fairvlm_lightning.metrics.functional._multitask import Task
from fairvlm_lightning.metrics.functional.parity import (
    _demographic_parity_compute,
    _equalized_odds_compute,
    _parity_arg_validation,
)

__all__ = ["DemographicParityDifference", "EqualizedOddsDifference"]


class _ParityMetric(_ConfmatMetric):
    higher_is_better = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(
        self,
        num_groups: int,
        *,
        task: Task = "binary",
        num_classes: int | None = None,
        num_labels: int | None = None,
        threshold: float = 0.5,
        ignore_index: int = -1,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        _parity_arg_validation(num_groups, threshold, ignore_index)
        super().__init__(num_groups, task, num_classes, num_labels, **kwargs)
        self.num_groups = num_groups
        self.threshold = float(threshold)
        self.ignore_index = ignore_index
        self.validate_args = validate_args

    def plot(
        self, val: Tensor | Sequence[Tensor] | None = None, ax: Any | None = None
    ) -> tuple[Any, Any]:
        """Plot one value or a sequence of values (torchmetrics' ``Metric.plot``; matplotlib)."""
        return self._plot(val, ax)


class DemographicParityDifference(_ParityMetric):
    """Demographic-parity difference ``max_g P(y_hat=1|g) - min_g P(y_hat=1|g)``, accumulated.

    ``y_hat = preds >= threshold``. Only groups with at least one sample take part, as in
    fairlearn's ``demographic_parity_difference`` (which sees only the groups present); members
    of unknown group (``ignore_index``) are left out. The state is one confusion matrix per group,
    summed across processes.

    Args:
        num_groups: number of groups G (at least 2).
        threshold: decision threshold in ``[0, 1]``.
        task: ``"binary"`` (scores ``P(y=1)``, labels 0/1), ``"multiclass"`` (``(N, C)`` class
            probabilities, ``(N,)`` class ids) or ``"multilabel"`` (``(N, L)`` probabilities
            and 0/1 labels); groups are ``(N,)``. Multi-column rules: see
            :func:`~fairvlm_lightning.metrics.functional.fairness_metrics`.
        num_classes: number of classes C (``task="multiclass"`` only).
        num_labels: number of labels L (``task="multilabel"`` only).
        ignore_index: group id marking an unknown member.
        validate_args: check shapes, dtypes and value ranges in ``update`` (costs a device sync;
            constructor arguments are always checked).
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = DemographicParityDifference(num_groups=2)
        >>> preds = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
        >>> metric.update(preds, torch.tensor([1, 1, 0, 1, 0, 0]), torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> metric.compute()
        tensor(0.3333, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """Return the scalar float64 DPD (0 if one group has samples, NaN if none)."""
        return _demographic_parity_compute(self.confmat)


class EqualizedOddsDifference(_ParityMetric):
    """Equalized-odds difference ``max(TPR spread, FPR spread)`` between groups, accumulated.

    Exactly fairlearn's ``equalized_odds_difference`` (``agg="worst_case"``), including its rule
    that **a rate a group cannot define counts as 0** (the TPR of a group without positives, the
    FPR of a group without negatives), as the FairVLMed paper's numbers were computed. Only
    groups with at least one sample take part; unknown members (``ignore_index``) are left out.
    ``y_hat = preds >= threshold``. The state is one confusion matrix per group, summed across
    processes.

    Args:
        num_groups: number of groups G (at least 2).
        threshold: decision threshold in ``[0, 1]``.
        task: ``"binary"`` (scores ``P(y=1)``, labels 0/1), ``"multiclass"`` (``(N, C)`` class
            probabilities, ``(N,)`` class ids) or ``"multilabel"`` (``(N, L)`` probabilities
            and 0/1 labels); groups are ``(N,)``. Multi-column rules: see
            :func:`~fairvlm_lightning.metrics.functional.fairness_metrics`.
        num_classes: number of classes C (``task="multiclass"`` only).
        num_labels: number of labels L (``task="multilabel"`` only).
        ignore_index: group id marking an unknown member.
        validate_args: check shapes, dtypes and value ranges in ``update`` (costs a device sync;
            constructor arguments are always checked).
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = EqualizedOddsDifference(num_groups=2)
        >>> preds = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.7])
        >>> metric.update(preds, torch.tensor([1, 1, 0, 1, 0, 0]), torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> metric.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """Return the scalar float64 DEOdds (0 if one group has samples, NaN if none)."""
        return _equalized_odds_compute(self.confmat)
