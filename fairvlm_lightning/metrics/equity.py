"""Equity-scaled AUROC and accuracy as torchmetrics metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from fairvlm_lightning.metrics._base import _ConfmatMetric, _GroupSampleMetric
from fairvlm_lightning.metrics.functional._multitask import Task
from fairvlm_lightning.metrics.functional.equity import (
    _equity_scaled_accuracy_arg_validation,
    _equity_scaled_accuracy_compute,
    _equity_scaled_auroc_arg_validation,
    _equity_scaled_auroc_compute,
)

__all__ = ["EquityScaledAUROC", "EquityScaledAccuracy"]


class EquityScaledAUROC(_GroupSampleMetric):
    """Equity-scaled AUC ``AUC / (1 + alpha * sum_g |AUC_g - AUC|)``, accumulated over batches.

    ``AUC`` covers every sample (unknown group members included), ``AUC_g`` the members of group
    ``g``. A group whose AUC is undefined (no samples, or a single class) is left out of the sum,
    with a warning. Keeps all samples (exact AUROC) and concatenates them across processes.

    Args:
        num_groups: number of groups G (at least 2).
        alpha: weight of the disparity term (``>= 0``).
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
        >>> metric = EquityScaledAUROC(num_groups=2)
        >>> preds = torch.tensor([0.2, 0.7, 0.6, 0.3, 0.4, 0.65])
        >>> metric.update(preds, torch.tensor([0, 1, 1, 0, 1, 0]), torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> metric.compute()
        tensor(0.5185, dtype=torch.float64)
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(
        self,
        num_groups: int,
        *,
        task: Task = "binary",
        num_classes: int | None = None,
        num_labels: int | None = None,
        alpha: float = 1.0,
        ignore_index: int = -1,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(task, num_classes, num_labels, **kwargs)
        _equity_scaled_auroc_arg_validation(num_groups, alpha, ignore_index)
        self.num_groups = num_groups
        self.alpha = float(alpha)
        self.ignore_index = ignore_index
        self.validate_args = validate_args

    def compute(self) -> Tensor:
        """Return the scalar float64 ES-AUC."""
        preds, target, groups = self._samples()
        return _equity_scaled_auroc_compute(
            preds, target, groups, self.num_groups, self.alpha, self.task
        )

    def plot(
        self, val: Tensor | Sequence[Tensor] | None = None, ax: Any | None = None
    ) -> tuple[Any, Any]:
        """Plot one value or a sequence of values (torchmetrics' ``Metric.plot``; matplotlib)."""
        return self._plot(val, ax)


class EquityScaledAccuracy(_ConfmatMetric):
    """Equity-scaled accuracy ``Acc / (1 + alpha * sum_g |Acc_g - Acc|)``, accumulated.

    A sample is predicted positive when ``preds >= threshold``. ``Acc`` covers every sample
    (unknown group members included). A group with no samples is left out of the sum, with a
    warning. The state is one confusion matrix per group (constant memory), summed across
    processes.

    Args:
        num_groups: number of groups G (at least 2).
        threshold: decision threshold in ``[0, 1]``.
        alpha: weight of the disparity term (``>= 0``).
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
        >>> metric = EquityScaledAccuracy(num_groups=2)
        >>> preds = torch.tensor([0.2, 0.7, 0.6, 0.3, 0.4, 0.65])
        >>> metric.update(preds, torch.tensor([0, 1, 1, 0, 1, 0]), torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> metric.compute()
        tensor(0.4000, dtype=torch.float64)
    """

    higher_is_better = True
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
        alpha: float = 1.0,
        ignore_index: int = -1,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        _equity_scaled_accuracy_arg_validation(num_groups, threshold, alpha, ignore_index)
        super().__init__(num_groups, task, num_classes, num_labels, **kwargs)
        self.num_groups = num_groups
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.ignore_index = ignore_index
        self.validate_args = validate_args

    def compute(self) -> Tensor:
        """Return the scalar float64 ES-Acc."""
        return _equity_scaled_accuracy_compute(self.confmat, self.alpha, self.task)

    def plot(
        self, val: Tensor | Sequence[Tensor] | None = None, ax: Any | None = None
    ) -> tuple[Any, Any]:
        """Plot one value or a sequence of values (torchmetrics' ``Metric.plot``; matplotlib)."""
        return self._plot(val, ax)
