"""Demographic-parity and equalized-odds differences, as fairlearn computes them."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from fairvlm_lightning.metrics.functional._common import (
    _check_not_empty,
    _fairness_arg_validation,
    _group_confmat,
    _nan_tensor,
)
from fairvlm_lightning.metrics.functional._multitask import (
    Task,
    _multitask_confmat,
    _multitask_parity,
    _task_arg_validation,
    _task_format,
    _task_tensor_validation,
)

__all__ = ["demographic_parity_difference", "equalized_odds_difference"]


def _parity_arg_validation(num_groups: int, threshold: float, ignore_index: int) -> None:
    _fairness_arg_validation(num_groups, ignore_index, threshold=threshold)


def _spread(values: Tensor) -> Tensor:
    return values.max() - values.min()


def _present_groups(confmat: Tensor, what: str) -> Tensor | None:
    """Confusion matrices of the groups that have samples, or None (with a warning) if none."""
    _check_not_empty(int(confmat.sum()))
    known = confmat[:-1]
    present = known.sum((-2, -1)) > 0
    if not bool(present.any()):
        rank_zero_warn(
            f"{what} is undefined (NaN): no sample belongs to a known group "
            "(every group id is `ignore_index`).",
            UserWarning,
        )
        return None
    return known[present]


def _parity_confmat(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    threshold: float,
    ignore_index: int,
    validate_args: bool,
    task: str,
    num_classes: int | None,
    num_labels: int | None,
) -> Tensor:
    """Validated inputs -> the per-group confusion matrices of the task."""
    num_columns = _task_arg_validation(task, num_classes, num_labels)
    if validate_args:
        _parity_arg_validation(num_groups, threshold, ignore_index)
        _task_tensor_validation(preds, target, groups, num_groups, ignore_index, task, num_columns)
    preds, target, groups = _task_format(preds, target, groups, ignore_index, task)
    if task == "binary":
        return _group_confmat(preds, target, groups, num_groups, threshold)
    return _multitask_confmat(preds, target, groups, num_groups, task, threshold)


def _demographic_parity_compute(confmat: Tensor) -> Tensor:
    """``max_g P(y_hat=1 | g) - min_g P(y_hat=1 | g)`` over groups that have samples.

    ``(K, G + 1, 2, 2)`` one-vs-rest matrices give the largest value over the K columns.
    """
    if confmat.ndim == 4:
        return _multitask_parity(confmat, "demographic parity difference")[0]
    cm = _present_groups(confmat, "demographic parity difference")
    if cm is None:
        return _nan_tensor(confmat.device)
    selected = (cm[:, 0, 1] + cm[:, 1, 1]).to(torch.float64)
    rate = selected / cm.sum((-2, -1)).to(torch.float64)
    return _spread(rate)


def _equalized_odds_compute(confmat: Tensor) -> Tensor:
    """``max(TPR spread, FPR spread)`` over groups with samples; an undefined rate counts as 0.

    ``(K, G + 1, 2, 2)`` one-vs-rest matrices give the largest value over the K columns.
    """
    if confmat.ndim == 4:
        return _multitask_parity(confmat, "equalized odds difference")[1]
    cm = _present_groups(confmat, "equalized odds difference")
    if cm is None:
        return _nan_tensor(confmat.device)
    positives = cm[:, 1, :].sum(-1)
    negatives = cm[:, 0, :].sum(-1)
    tp = cm[:, 1, 1].to(torch.float64)
    fp = cm[:, 0, 1].to(torch.float64)
    # fairlearn: sklearn confusion_matrix(normalize="true") then nan_to_num -> 0 for an empty row.
    tpr = torch.where(positives > 0, tp / positives.clamp(min=1), torch.zeros_like(tp))
    fpr = torch.where(negatives > 0, fp / negatives.clamp(min=1), torch.zeros_like(fp))
    return torch.maximum(_spread(tpr), _spread(fpr))


def demographic_parity_difference(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    task: Task = "binary",
    num_classes: int | None = None,
    num_labels: int | None = None,
    threshold: float = 0.5,
    ignore_index: int = -1,
    validate_args: bool = True,
) -> Tensor:
    """Demographic-parity difference (DPD) of thresholded scores.

    ``max_g P(y_hat = 1 | g) - min_g P(y_hat = 1 | g)`` with ``y_hat = preds >= threshold``,
    over the groups that have at least one sample (fairlearn's
    ``demographic_parity_difference`` only sees the groups present in ``sensitive_features``;
    the result equals it on the samples whose group is known). ``target`` does not enter the
    value but is validated, as in fairlearn's signature.

    Args:
        preds: scores ``P(y = 1)`` in ``[0, 1]``, any floating dtype.
        target: labels 0/1 (integer or bool), same shape as ``preds``.
        groups: integer group ids in ``[0, num_groups)`` or ``ignore_index``, same shape.
        num_groups: number of groups G (at least 2).
        threshold: decision threshold in ``[0, 1]``.
        task: ``"binary"`` (scores ``P(y=1)``), ``"multiclass"`` (``(N, C)`` class probabilities,
            ``(N,)`` class ids) or ``"multilabel"`` (``(N, L)`` probabilities and 0/1 labels);
            groups are then ``(N,)``. See :func:`fairness_metrics` for the multi-column rules.
        num_classes: number of classes C (``task="multiclass"`` only).
        num_labels: number of labels L (``task="multilabel"`` only).
        ignore_index: group id marking an unknown member (left out).
        validate_args: check shapes, dtypes and value ranges (costs a device sync).

    Returns:
        Scalar float64 tensor: 0 if only one group has samples, NaN (with a warning) if none.

    Raises:
        ValueError: on a shape mismatch, scores outside ``[0, 1]``, a non-binary target, a group
            id out of range, ``num_groups < 2`` or empty input.

    Example:
        >>> import torch
        >>> preds = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.1])
        >>> target = torch.tensor([1, 1, 0, 1, 0, 0])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> demographic_parity_difference(preds, target, groups, num_groups=2)
        tensor(0.3333, dtype=torch.float64)
    """
    confmat = _parity_confmat(
        preds, target, groups, num_groups, threshold, ignore_index, validate_args, task,
        num_classes, num_labels,
    )
    return _demographic_parity_compute(confmat)


def equalized_odds_difference(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    *,
    task: Task = "binary",
    num_classes: int | None = None,
    num_labels: int | None = None,
    threshold: float = 0.5,
    ignore_index: int = -1,
    validate_args: bool = True,
) -> Tensor:
    """Equalized-odds difference (DEOdds), exactly as fairlearn's ``equalized_odds_difference``.

    ``max(max_g TPR_g - min_g TPR_g, max_g FPR_g - min_g FPR_g)`` with ``y_hat = preds >=
    threshold``, over the groups that have at least one sample (fairlearn's default
    ``method="between_groups"``, ``agg="worst_case"``).

    Following fairlearn exactly (checked against its source, fairlearn 0.15: ``true_positive_rate``
    and ``false_positive_rate`` come from scikit-learn's ``confusion_matrix(normalize="true")``,
    whose empty rows become 0 through ``nan_to_num``): **a rate a group cannot define counts as
    0** -- the TPR of a group without positives and the FPR of a group without negatives are 0,
    not NaN, and they take part in the max/min. The FairVLMed paper's numbers were computed this
    way, so this metric reproduces them; be aware that such a group can inflate the difference.

    Args:
        preds: scores ``P(y = 1)`` in ``[0, 1]``, any floating dtype.
        target: labels 0/1 (integer or bool), same shape as ``preds``.
        groups: integer group ids in ``[0, num_groups)`` or ``ignore_index``, same shape.
        num_groups: number of groups G (at least 2).
        threshold: decision threshold in ``[0, 1]``.
        task: ``"binary"`` (scores ``P(y=1)``), ``"multiclass"`` (``(N, C)`` class probabilities,
            ``(N,)`` class ids) or ``"multilabel"`` (``(N, L)`` probabilities and 0/1 labels);
            groups are then ``(N,)``. See :func:`fairness_metrics` for the multi-column rules.
        num_classes: number of classes C (``task="multiclass"`` only).
        num_labels: number of labels L (``task="multilabel"`` only).
        ignore_index: group id marking an unknown member (left out).
        validate_args: check shapes, dtypes and value ranges (costs a device sync).

    Returns:
        Scalar float64 tensor: 0 if only one group has samples, NaN (with a warning) if none.

    Raises:
        ValueError: on a shape mismatch, scores outside ``[0, 1]``, a non-binary target, a group
            id out of range, ``num_groups < 2`` or empty input.

    Example:
        >>> import torch
        >>> preds = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.2, 0.7])
        >>> target = torch.tensor([1, 1, 0, 1, 0, 0])
        >>> groups = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> equalized_odds_difference(preds, target, groups, num_groups=2)
        tensor(0.5000, dtype=torch.float64)
    """
    confmat = _parity_confmat(
        preds, target, groups, num_groups, threshold, ignore_index, validate_args, task,
        num_classes, num_labels,
    )
    return _equalized_odds_compute(confmat)
