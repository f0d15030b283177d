"""Equity-scaled AUC and accuracy (Luo et al., FairCLIP / Harvard-FairVLMed)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from fairvlm_lightning.metrics.functional._common import (
    _accuracy_from_confmat,
    _check_not_empty,
    _fairness_arg_validation,
    _group_confmat,
)
from fairvlm_lightning.metrics.functional._multitask import (
    Task,
    _multitask_accuracy,
    _multitask_confmat,
    _multitask_group_auroc,
    _task_arg_validation,
    _task_format,
    _task_tensor_validation,
)
from fairvlm_lightning.metrics.functional.auroc import (
    _group_auroc_compute,
)

__all__ = ["equity_scaled_accuracy", "equity_scaled_auroc"]


def _equity_scaled_compute(
    overall: Tensor, per_group: Tensor, alpha: float, what: str = "AUC"
) -> Tensor:
    """``overall / (1 + alpha * sum_g |per_group_g - overall|)`` over the defined groups.

    Groups whose value is NaN (undefined) are left out of the sum, with a warning naming them.
    """
    defined = ~torch.isnan(per_group)
    if not bool(defined.all()):
        missing = torch.nonzero(~defined).flatten().tolist()
        rank_zero_warn(
            f"{what} is undefined for group(s) {missing} (no samples, or only one class); "
            f"they are left out of the equity-scaled sum.",
            UserWarning,
        )
    gap = (per_group[defined] - overall).abs().sum()
    return overall / (1.0 + alpha * gap)


# ------------------------------------------------------------------------------------------------
# ES-AUC
# ------------------------------------------------------------------------------------------------
def _equity_scaled_auroc_arg_validation(num_groups: int, alpha: float, ignore_index: int) -> None:
    _fairness_arg_validation(num_groups, ignore_index, alpha=alpha)


def _equity_scaled_auroc_compute(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    alpha: float,
    task: str = "binary",
) -> Tensor:
    if task == "binary":
        overall, per_group = _group_auroc_compute(preds, target, groups, num_groups)
    else:
        overall, per_group = _multitask_group_auroc(preds, target, groups, num_groups, task)
    if torch.isnan(overall):
        rank_zero_warn("AUROC is undefined (NaN): `target` holds only one class.", UserWarning)
    return _equity_scaled_compute(overall, per_group, alpha, "AUC")


def equity_scaled_auroc(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    task: Task = "binary",
    num_classes: int | None = None,
    num_labels: int | None = None,
    alpha: float = 1.0,
    ignore_index: int = -1,
    validate_args: bool = True,
) -> Tensor:
    """Equity-scaled AUC: ``AUC / (1 + alpha * sum_g |AUC_g - AUC|)``.

    ``AUC`` is computed over all samples, including those with group ``ignore_index``;
    ``AUC_g`` over the members of group ``g`` (see :func:`group_auroc`). A group whose AUC is
    undefined (no samples, or a single class) is left out of the sum, with a warning. One sort
    of the scores serves the overall and every group AUC.

    Args:
        preds: scores ``P(y = 1)`` in ``[0, 1]``, any floating dtype (computed in float64).
        target: labels 0/1 (integer or bool), same shape as ``preds``.
        groups: integer group ids in ``[0, num_groups)`` or ``ignore_index``, same shape.
        num_groups: number of groups G (at least 2).
        alpha: weight of the disparity term (``>= 0``; 1 in the FairCLIP paper).
        task: ``"binary"`` (scores ``P(y=1)``), ``"multiclass"`` (``(N, C)`` class probabilities,
            ``(N,)`` class ids) or ``"multilabel"`` (``(N, L)`` probabilities and 0/1 labels);
            groups are then ``(N,)``. See :func:`fairness_metrics` for the multi-column rules.
        num_classes: number of classes C (``task="multiclass"`` only).
        num_labels: number of labels L (``task="multilabel"`` only).
        ignore_index: group id marking an unknown member.
        validate_args: check shapes, dtypes and value ranges (costs a device sync).

    Returns:
        Scalar float64 tensor (NaN with a warning if ``target`` holds a single class).

    Raises:
        ValueError: on a shape mismatch, scores outside ``[0, 1]``, a non-binary target, a group
            id out of range, ``num_groups < 2`` or empty input.

    Example:
        >>> import torch
        >>> preds = torch.tensor([0.2, 0.7, 0.6, 0.3, 0.4, 0.65])
        >>> target = torch.tensor([0, 1, 1, 0, 1, 0])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> equity_scaled_auroc(preds, target, groups, num_groups=2)
        tensor(0.5185, dtype=torch.float64)
    """
    num_columns = _task_arg_validation(task, num_classes, num_labels)
    if validate_args:
        _equity_scaled_auroc_arg_validation(num_groups, alpha, ignore_index)
        _task_tensor_validation(preds, target, groups, num_groups, ignore_index, task, num_columns)
    preds, target, groups = _task_format(preds, target, groups, ignore_index, task)
    return _equity_scaled_auroc_compute(preds, target, groups, num_groups, alpha, task)


# ------------------------------------------------------------------------------------------------
# ES-Acc
# ------------------------------------------------------------------------------------------------
def _equity_scaled_accuracy_arg_validation(
    num_groups: int, threshold: float, alpha: float, ignore_index: int
) -> None:
    _fairness_arg_validation(num_groups, ignore_index, threshold=threshold, alpha=alpha)


def _equity_scaled_accuracy_compute(confmat: Tensor, alpha: float, task: str = "binary") -> Tensor:
    """ES-Acc of ``(G + 1, 2, 2)`` (binary) or ``(K, G + 1, 2, 2)`` (multi-column) matrices."""
    if task != "binary":
        overall, per_group = _multitask_accuracy(confmat, task)
        return _equity_scaled_compute(overall, per_group, alpha, "accuracy")
    _check_not_empty(int(confmat.sum()))
    overall = _accuracy_from_confmat(confmat.sum(0))
    per_group = _accuracy_from_confmat(confmat[:-1])
    return _equity_scaled_compute(overall, per_group, alpha, "accuracy")


def equity_scaled_accuracy(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    task: Task = "binary",
    num_classes: int | None = None,
    num_labels: int | None = None,
    threshold: float = 0.5,
    alpha: float = 1.0,
    ignore_index: int = -1,
    validate_args: bool = True,
) -> Tensor:
    """Equity-scaled accuracy: ``Acc / (1 + alpha * sum_g |Acc_g - Acc|)``.

    A sample is predicted positive when ``preds >= threshold`` (as the FairCLIP reference code).
    ``Acc`` covers all samples, including group ``ignore_index``; a group with no samples is left
    out of the sum, with a warning.

    Args:
        preds: scores ``P(y = 1)`` in ``[0, 1]``, any floating dtype.
        target: labels 0/1 (integer or bool), same shape as ``preds``.
        groups: integer group ids in ``[0, num_groups)`` or ``ignore_index``, same shape.
        num_groups: number of groups G (at least 2).
        threshold: decision threshold in ``[0, 1]``.
        alpha: weight of the disparity term (``>= 0``).
        task: ``"binary"`` (scores ``P(y=1)``), ``"multiclass"`` (``(N, C)`` class probabilities,
            ``(N,)`` class ids) or ``"multilabel"`` (``(N, L)`` probabilities and 0/1 labels);
            groups are then ``(N,)``. See :func:`fairness_metrics` for the multi-column rules.
        num_classes: number of classes C (``task="multiclass"`` only).
        num_labels: number of labels L (``task="multilabel"`` only).
        ignore_index: group id marking an unknown member.
        validate_args: check shapes, dtypes and value ranges (costs a device sync).

    Returns:
        Scalar float64 tensor.

    Raises:
        ValueError: on a shape mismatch, scores outside ``[0, 1]``, a non-binary target, a group
            id out of range, ``num_groups < 2`` or empty input.

    Example:
        >>> import torch
        >>> preds = torch.tensor([0.2, 0.7, 0.6, 0.3, 0.4, 0.65])
        >>> target = torch.tensor([0, 1, 1, 0, 1, 0])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> equity_scaled_accuracy(preds, target, groups, num_groups=2)
        tensor(0.4000, dtype=torch.float64)
    """
    num_columns = _task_arg_validation(task, num_classes, num_labels)
    if validate_args:
        _equity_scaled_accuracy_arg_validation(num_groups, threshold, alpha, ignore_index)
        _task_tensor_validation(preds, target, groups, num_groups, ignore_index, task, num_columns)
    preds, target, groups = _task_format(preds, target, groups, ignore_index, task)
    if task == "binary":
        confmat = _group_confmat(preds, target, groups, num_groups, threshold)
    else:
        confmat = _multitask_confmat(preds, target, groups, num_groups, task, threshold)
    return _equity_scaled_accuracy_compute(confmat, alpha, task)
