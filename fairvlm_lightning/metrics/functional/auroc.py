"""Exact binary and per-group ROC AUC from a single sort of the scores."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from fairvlm_lightning.metrics.functional._common import (
    _auroc_from_sorted,
    _check_not_empty,
    _fairness_arg_validation,
    _format_preds_target,
    _preds_target_validation,
    _sort_scores,
)
from fairvlm_lightning.metrics.functional._multitask import (
    Task,
    _multitask_group_auroc,
    _task_arg_validation,
    _task_format,
    _task_tensor_validation,
)

__all__ = ["binary_auroc", "group_auroc"]


# ------------------------------------------------------------------------------------------------
# overall AUROC
# ------------------------------------------------------------------------------------------------
def _binary_auroc_compute(preds: Tensor, target: Tensor) -> Tensor:
    """AUROC of flat float64 scores and 0/1 labels (NaN, with a warning, if one class only)."""
    _check_not_empty(preds.numel(), "the AUROC")
    order, block = _sort_scores(preds)
    auc = _auroc_from_sorted(block, target.index_select(0, order).to(torch.int64), None, 1)[0]
    if torch.isnan(auc):
        rank_zero_warn(
            "AUROC is undefined (NaN): `target` holds only one class, ROC AUC needs both "
            "positives and negatives.",
            UserWarning,
        )
    return auc


def binary_auroc(preds: Tensor, target: Tensor, *, validate_args: bool = True) -> Tensor:
    """Area under the ROC curve of a binary classifier, exact and tie-aware.

    Equal to :func:`sklearn.metrics.roc_auc_score` (tied scores are joined by one straight ROC
    segment, i.e. a tied positive/negative pair counts one half). Unlike
    :class:`torchmetrics.classification.BinaryAUROC` it needs no thresholds and uses one sort.

    Args:
        preds: scores ``P(y = 1)`` in ``[0, 1]`` of any shape and floating dtype (float16,
            bfloat16, float32, float64); computed in float64.
        target: labels 0/1 (integer or bool), same shape as ``preds``.
        validate_args: check shapes, dtypes and value ranges (costs a device sync).

    Returns:
        Scalar float64 tensor; NaN (with a warning) if ``target`` holds a single class.

    Raises:
        ValueError: on a shape mismatch, scores outside ``[0, 1]``, a non-binary target or
            empty input.
        TypeError: if ``preds`` is not floating point or ``target`` is floating point.

    Example:
        >>> import torch
        >>> preds = torch.tensor([0.1, 0.4, 0.4, 0.8])
        >>> target = torch.tensor([0, 0, 1, 1])
        >>> binary_auroc(preds, target)
        tensor(0.8750, dtype=torch.float64)
    """
    if validate_args:
        _preds_target_validation(preds, target)
    preds, target = _format_preds_target(preds, target)
    return _binary_auroc_compute(preds, target)


# ------------------------------------------------------------------------------------------------
# per-group AUROC
# ------------------------------------------------------------------------------------------------
def _group_auroc_arg_validation(num_groups: int, ignore_index: int = -1) -> None:
    _fairness_arg_validation(num_groups, ignore_index)


def _group_auroc_compute(
    preds: Tensor, target: Tensor, groups: Tensor, num_groups: int
) -> tuple[Tensor, Tensor]:
    """Return ``(overall_auc, group_aucs)`` from one sort (formatted inputs, unknown id -1)."""
    _check_not_empty(preds.numel())
    order, block = _sort_scores(preds)
    target_sorted = target.index_select(0, order).to(torch.int64)
    overall = _auroc_from_sorted(block, target_sorted, None, 1)[0]
    per_group = _auroc_from_sorted(block, target_sorted, groups.index_select(0, order), num_groups)
    return overall, per_group


def group_auroc(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    task: Task = "binary",
    num_classes: int | None = None,
    num_labels: int | None = None,
    ignore_index: int = -1,
    validate_args: bool = True,
) -> Tensor:
    """ROC AUC within each group of a protected attribute.

    Groups are addressed by id: entry ``g`` of the result is the AUC of the samples whose group
    is ``g``, whatever ids happen to be present. Samples with group ``ignore_index`` belong to no
    group. All groups share one sort of the scores; ties are handled as scikit-learn does, so
    ``group_auroc(...)[g]`` equals ``roc_auc_score(target[groups == g], preds[groups == g])``.

    Args:
        preds: scores ``P(y = 1)`` in ``[0, 1]``, any floating dtype (computed in float64).
        target: labels 0/1 (integer or bool), same shape as ``preds``.
        groups: integer group ids in ``[0, num_groups)`` or ``ignore_index``, same shape.
        num_groups: number of groups G (at least 2).
        task: ``"binary"`` (scores ``P(y=1)``), ``"multiclass"`` (``(N, C)`` class probabilities,
            ``(N,)`` class ids) or ``"multilabel"`` (``(N, L)`` probabilities and 0/1 labels);
            groups are then ``(N,)``. See :func:`fairness_metrics` for the multi-column rules.
        num_classes: number of classes C (``task="multiclass"`` only).
        num_labels: number of labels L (``task="multilabel"`` only).
        ignore_index: group id marking an unknown member (must not be a valid id).
        validate_args: check shapes, dtypes and value ranges (costs a device sync).

    Returns:
        ``(num_groups,)`` float64 tensor. A group that lacks positives or negatives (including a
        group with no samples) gets NaN; no warning is raised here.

    Raises:
        ValueError: on a shape mismatch, scores outside ``[0, 1]``, a non-binary target, a group
            id out of range, ``num_groups < 2`` or empty input.
        TypeError: on wrong dtypes.

    Example:
        >>> import torch
        >>> preds = torch.tensor([0.2, 0.7, 0.6, 0.3, 0.9, 0.1])
        >>> target = torch.tensor([0, 1, 1, 0, 1, 0])
        >>> groups = torch.tensor([0, 0, 2, 2, 2, -1])
        >>> group_auroc(preds, target, groups, num_groups=3)
        tensor([1., nan, 1.], dtype=torch.float64)
    """
    num_columns = _task_arg_validation(task, num_classes, num_labels)
    if validate_args:
        _group_auroc_arg_validation(num_groups, ignore_index)
        _task_tensor_validation(preds, target, groups, num_groups, ignore_index, task, num_columns)
    preds, target, groups = _task_format(preds, target, groups, ignore_index, task)
    if task == "binary":
        return _group_auroc_compute(preds, target, groups, num_groups)[1]
    return _multitask_group_auroc(preds, target, groups, num_groups, task)[1]
