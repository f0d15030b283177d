"""Multi-class and multi-label fairness metrics (private kernels of the functional API).

A multi-class task with ``C`` classes and a multi-label task with ``L`` labels are both seen as
``K`` binary *columns* (one-vs-rest): column ``k`` has the scores ``preds[:, k]``, the labels
``y_k`` (``target == k``, or ``target[:, k]``) and the decisions ``y_hat_k`` (``argmax == k`` for
multi-class, as the FairCLIP code's ``prob_to_label``; ``preds[:, k] >= threshold`` for
multi-label). Every column gets its overall AUC, its AUC within each group of each attribute
and one confusion matrix per group; the report then aggregates the columns:

* AUC: the mean over columns of the column AUCs (macro; columns whose AUC is undefined are left
  out) -- for multi-class, ``roc_auc_score(one_hot, preds, average="macro")``, the paper's
  ``compute_auc``; a group's AUC is the same within the group;
* accuracy: multi-class, the fraction with ``argmax == target``; multi-label, the mean over
  labels of the thresholded accuracy;
* ES-AUC / ES-Acc: ``value / (1 + alpha * sum_g |value_g - value|)`` on those;
* DPD / DEOdds: fairlearn's values of each column (one-vs-rest), and the largest over columns.

Aggregation is written for a leading batch dimension ``B`` so that the point estimate (``B = 1``)
and the bootstrap replicates share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from fairvlm_lightning.metrics.functional._common import (
    _auroc_from_sorted,
    _check_not_empty,
    _format_groups,
    _group_format,
    _group_tensor_validation,
    _groups_validation,
    _sort_scores,
    _weighted_auroc,
)

Task = Literal["binary", "multiclass", "multilabel"]
TASKS = ("binary", "multiclass", "multilabel")


# ------------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------------
def _task_arg_validation(task: str, num_classes: int | None, num_labels: int | None) -> int:
    """Check ``task`` with its ``num_classes`` / ``num_labels``; return the column count K.

    K is 1 for a binary task, ``num_classes`` or ``num_labels`` otherwise.
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {list(TASKS)}, got {task!r}")
    if task == "binary":
        if num_classes is not None or num_labels is not None:
            raise ValueError(
                "task='binary' takes neither `num_classes` nor `num_labels` (scores P(y=1) of "
                f"one label); got num_classes={num_classes}, num_labels={num_labels}"
            )
        return 1
    name, value, other, other_value, least = (
        ("num_classes", num_classes, "num_labels", num_labels, 2)
        if task == "multiclass"
        else ("num_labels", num_labels, "num_classes", num_classes, 1)
    )
    if other_value is not None:
        raise ValueError(f"task={task!r} takes `{name}`, not `{other}` (got {other}={other_value})")
    if value is None:
        raise ValueError(f"task={task!r} needs `{name}`, e.g. {name}=5")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"`{name}` must be at least {least}, got {value}")
    return value


def _column_name(task: str) -> str:
    """``"class"`` or ``"label"``: the word of the per-column keys."""
    return "class" if task == "multiclass" else "label"


# ------------------------------------------------------------------------------------------------
# tensors
# ------------------------------------------------------------------------------------------------
def _scores_validation(preds: Tensor) -> None:
    if not bool(((preds >= 0) & (preds <= 1)).all()):
        nonfinite = ~torch.isfinite(preds)
        if bool(nonfinite.any()):
            raise ValueError(
                f"non-finite scores: `preds` holds {int(nonfinite.sum())} non-finite value(s) "
                "(NaN or infinity); the model produced them, check its inputs and training loss"
            )
        bad = preds[~((preds >= 0) & (preds <= 1))]
        raise ValueError(
            "scores outside [0, 1]: `preds` must be probabilities (apply a softmax for "
            f"multi-class, a sigmoid for multi-label first); found {bad.numel()} value(s) out of "
            f"range, e.g. {bad[0].item()}"
        )


def _multitask_preds_target_validation(
    preds: Tensor, target: Tensor, task: str, num_columns: int
) -> None:
    """Check ``(N, K)`` probabilities and ``(N,)`` class ids or ``(N, K)`` multi-hot labels."""
    if not isinstance(preds, Tensor):
        raise TypeError(f"`preds` must be a torch.Tensor, got {type(preds).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"`target` must be a torch.Tensor, got {type(target).__name__}")
    what = "class probabilities" if task == "multiclass" else "label probabilities"
    if not preds.is_floating_point():
        raise TypeError(f"`preds` must hold floating point {what}, got dtype {preds.dtype}")
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"`target` must hold integer or bool labels, got dtype {target.dtype}")
    if preds.ndim != 2 or preds.shape[1] != num_columns:
        raise ValueError(
            f"shape mismatch: task={task!r} needs `preds` of shape (N, {num_columns}) ({what}), "
            f"got {tuple(preds.shape)}"
        )
    expected = (preds.shape[0],) if task == "multiclass" else tuple(preds.shape)
    if tuple(target.shape) != expected:
        kind = "class ids" if task == "multiclass" else "multi-hot labels"
        raise ValueError(
            f"shape mismatch: task={task!r} needs `target` of shape {expected} ({kind}) for "
            f"`preds` of shape {tuple(preds.shape)}, got {tuple(target.shape)}"
        )
    if preds.numel() == 0:
        return
    _scores_validation(preds)
    if task == "multiclass":
        bad = (target < 0) | (target >= num_columns)
        if bool(bad.any()):
            values = torch.unique(target[bad])[:5].tolist()
            raise ValueError(
                f"class id out of range: `target` must hold ids in [0, {num_columns}), found "
                f"{values}"
            )
    elif target.dtype != torch.bool and not bool(((target == 0) | (target == 1)).all()):
        values = torch.unique(target[(target != 0) & (target != 1)])[:5].tolist()
        raise ValueError(f"target not multi-hot: `target` must hold only 0 and 1, found {values}")


def _multitask_format(preds: Tensor, target: Tensor, task: str) -> tuple[Tensor, Tensor]:
    """``(N, K)`` float64 scores; int32 class ids (multi-class) or ``(N, K)`` uint8 labels."""
    preds = preds.detach().to(torch.float64)
    target = target.detach()
    return preds, target.to(torch.int32 if task == "multiclass" else torch.uint8)


def _target_shape_tail(task: str, num_columns: int) -> tuple[int, ...]:
    """Per-sample shape of the stored target (for empty placeholders)."""
    return (num_columns,) if task == "multilabel" else ()


def _target_dtype(task: str) -> torch.dtype:
    return torch.int32 if task == "multiclass" else torch.uint8


def _columns(preds: Tensor, target: Tensor, task: str, threshold: float) -> tuple[Tensor, Tensor]:
    """``(N, K)`` 0/1 labels (int64) and decisions (bool) of the one-vs-rest columns."""
    k = preds.shape[1]
    if task == "multiclass":
        arange = torch.arange(k, device=preds.device)
        y = (target.to(torch.int64)[:, None] == arange).to(torch.int64)
        y_hat = preds.argmax(1)[:, None] == arange
    else:
        y = target.to(torch.int64)
        y_hat = preds >= threshold
    return y, y_hat


# ------------------------------------------------------------------------------------------------
# per-column statistics
# ------------------------------------------------------------------------------------------------
def _outcome_columns(y: Tensor, y_hat: Tensor) -> Tensor:
    """``(N, K)`` int32 codes ``4 * column + 2 * y + y_hat`` (the column's 2x2 cell)."""
    col = torch.arange(y.shape[1], device=y.device, dtype=torch.int32) * 4
    return (y.to(torch.int32) * 2 + y_hat.to(torch.int32)) + col


def _column_confmats(
    y: Tensor, y_hat: Tensor, groups: Tensor, num_groups: int, outcome: Tensor | None = None
) -> Tensor:
    """``(K, G + 1, 2, 2)`` confusion matrices ``[column, group, y, y_hat]`` (last: unknown).

    ``outcome`` is :func:`_outcome_columns` of ``y``, ``y_hat`` when already at hand.
    """
    k = y.shape[1]
    if outcome is None:
        outcome = _outcome_columns(y, y_hat)
    g = groups.to(torch.int32)
    g = torch.where(g < 0, num_groups, g)
    key = (g[:, None] * (4 * k) + outcome).reshape(-1)
    counts = torch.bincount(key, minlength=(num_groups + 1) * k * 4)
    return counts.view(num_groups + 1, k, 2, 2).transpose(0, 1)


def _column_stats(
    preds: Tensor,
    y: Tensor,
    y_hat: Tensor,
    groups: Tensor,
    counts: Sequence[int],
    *,
    with_auc: bool = True,
    with_confmat: bool = True,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Column AUCs ``(1, K)``, group AUCs ``(1, K, G_a)`` and confmats ``(1, K, G_a + 1, 2, 2)``.

    ``groups`` is ``(N, A)`` (unknown ``-1``), ``counts`` the group count of each column of it.
    """
    k = preds.shape[1]
    aucs = torch.empty(k, dtype=torch.float64, device=preds.device)
    group_aucs = [
        torch.empty(k, n, dtype=torch.float64, device=preds.device) for n in counts
    ]
    if with_auc:
        scores, labels = preds.t().contiguous(), y.t().contiguous()  # one column per row
        group_columns = groups.t().contiguous()
        for c in range(k):
            order, block = _sort_scores(scores[c])
            y_sorted = labels[c].index_select(0, order)
            aucs[c] = _auroc_from_sorted(block, y_sorted, None, 1)[0]
            for a, n in enumerate(counts):
                g_sorted = group_columns[a].index_select(0, order)
                group_aucs[a][c] = _auroc_from_sorted(block, y_sorted, g_sorted, n)
    confmats = []
    if with_confmat:
        outcome = _outcome_columns(y, y_hat)
        confmats = [
            _column_confmats(y, y_hat, groups[:, a], n, outcome)[None]
            for a, n in enumerate(counts)
        ]
    return aucs[None], [g[None] for g in group_aucs], confmats


# ------------------------------------------------------------------------------------------------
# batched aggregation
# ------------------------------------------------------------------------------------------------
def _nanmean(values: Tensor, dim: int) -> Tensor:
    defined = ~torch.isnan(values)
    count = defined.sum(dim)
    total = torch.where(defined, values, 0.0).sum(dim)
    mean = total / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


def _nanmax(values: Tensor, dim: int) -> Tensor:
    defined = ~torch.isnan(values)
    out = torch.where(defined, values, float("-inf")).amax(dim)
    return torch.where(defined.any(dim), out, torch.full_like(out, float("nan")))


def _equity(overall: Tensor, per_group: Tensor, alpha: float) -> Tensor:
    """``overall / (1 + alpha * sum |per_group - overall|)`` over the last dim, NaN left out."""
    gap = torch.nansum((per_group - overall[..., None]).abs(), dim=-1)
    return overall / (1.0 + alpha * gap)


def _spread(values: Tensor, present: Tensor) -> Tensor:
    hi = torch.where(present, values, float("-inf")).amax(-1)
    lo = torch.where(present, values, float("inf")).amin(-1)
    out = hi - lo
    return torch.where(present.any(-1), out, torch.full_like(out, float("nan")))


def _parity(confmat: Tensor) -> tuple[Tensor, Tensor]:
    """Fairlearn's DPD and DEOdds of ``(..., G + 1, 2, 2)`` confusion matrices (last = unknown)."""
    cm = confmat[..., :-1, :, :].to(torch.float64)
    total = cm.sum((-2, -1))
    present = total > 0
    rate = (cm[..., 0, 1] + cm[..., 1, 1]) / total.clamp(min=1)
    positives, negatives = cm[..., 1, :].sum(-1), cm[..., 0, :].sum(-1)
    tpr = torch.where(positives > 0, cm[..., 1, 1] / positives.clamp(min=1), 0.0)
    fpr = torch.where(negatives > 0, cm[..., 0, 1] / negatives.clamp(min=1), 0.0)
    deodds = torch.maximum(_spread(tpr, present), _spread(fpr, present))
    return _spread(rate, present), deodds


def _accuracy(confmat: Tensor, task: str) -> Tensor:
    """Accuracy from ``(B, K, ..., 2, 2)`` column confusion matrices -> ``(B, ...)``.

    Multi-class: the correct argmax decisions are the true positives summed over classes.
    Multi-label: the mean over labels of each label's accuracy.
    """
    total = confmat[:, 0].sum((-2, -1)).to(torch.float64)
    if task == "multiclass":
        correct = confmat[..., 1, 1].sum(1).to(torch.float64)
    else:
        correct = (confmat[..., 0, 0] + confmat[..., 1, 1]).to(torch.float64).mean(1)
    acc = correct / total.clamp(min=1)
    return torch.where(total > 0, acc, torch.full_like(acc, float("nan")))


def _disparity(per_group: Tensor, overall: Tensor) -> tuple[Tensor, Tensor]:
    """Population std and (max - min) of the defined group values, over ``overall``."""
    defined = ~torch.isnan(per_group)
    count = defined.sum(-1)
    mean = torch.where(defined, per_group, 0.0).sum(-1) / count.clamp(min=1)
    var = (torch.where(defined, per_group - mean[..., None], 0.0) ** 2).sum(-1)
    std = (var / count.clamp(min=1)).sqrt() / overall
    spread = _spread(per_group, defined) / overall
    nan = torch.full_like(std, float("nan"))
    return torch.where(count > 0, std, nan), torch.where(count > 0, spread, nan)


def _multitask_aggregate(
    aucs: Tensor,
    group_aucs: Sequence[Tensor],
    confmats: Sequence[Tensor],
    attributes: Mapping[str, int],
    task: str,
    alpha: float,
) -> dict[str, Tensor]:
    """Every report key as a ``(B,)`` tensor from batched column statistics.

    ``aucs`` is ``(B, K)``; per attribute, ``group_aucs`` ``(B, K, G)`` and ``confmats``
    ``(B, K, G + 1, 2, 2)`` (at least one attribute).
    """
    word = _column_name(task)
    k = aucs.shape[1]
    auc = _nanmean(aucs, 1)
    acc = _accuracy(confmats[0].sum(2), task)
    out: dict[str, Tensor] = {"auc": auc, "acc": acc}
    for c in range(k):
        out[f"auc_{word}_{c}"] = aucs[:, c]
    for (name, num_groups), per_column, confmat in zip(
        attributes.items(), group_aucs, confmats, strict=True
    ):
        group_auc = _nanmean(per_column, 1)  # (B, G): macro over columns within each group
        group_acc = _accuracy(confmat[:, :, :-1], task)
        out[f"{name}/es_auc"] = _equity(auc, group_auc, alpha)
        out[f"{name}/es_acc"] = _equity(acc, group_acc, alpha)
        for g in range(num_groups):
            out[f"{name}/auc_group_{g}"] = group_auc[:, g]
        dpd, deodds = _parity(confmat)  # (B, K)
        out[f"{name}/dpd"] = _nanmax(dpd, 1)
        out[f"{name}/deodds"] = _nanmax(deodds, 1)
        std, spread = _disparity(group_auc, auc)
        out[f"{name}/auc_std_disparity"] = std
        out[f"{name}/auc_max_disparity"] = spread
        es_column = _equity(aucs, per_column, alpha)  # (B, K)
        for c in range(k):
            out[f"{name}/es_auc_{word}_{c}"] = es_column[:, c]
            for g in range(num_groups):
                out[f"{name}/auc_group_{g}_{word}_{c}"] = per_column[:, c, g]
            out[f"{name}/dpd_{word}_{c}"] = dpd[:, c]
            out[f"{name}/deodds_{word}_{c}"] = deodds[:, c]
    return out


def _warn_undefined(
    aucs: Tensor, group_aucs: Sequence[Tensor], attributes: Mapping[str, int], task: str
) -> None:
    """Warn (once per attribute) about AUCs left out of a macro average or of an ES sum."""
    word = _column_name(task)
    undefined = torch.nonzero(torch.isnan(aucs[0])).flatten().tolist()
    if undefined:
        rank_zero_warn(
            f"AUC is undefined for {word}(s) {undefined} (only one class among all samples); "
            "they are left out of the macro average.",
            UserWarning,
        )
    for name, per_column in zip(attributes, group_aucs, strict=True):
        nan = torch.isnan(per_column[0])  # (K, G)
        if bool(nan.any()):
            cells = torch.nonzero(nan).tolist()[:10]
            rank_zero_warn(
                f"{name}: AUC is undefined for ({word}, group) {cells} (no samples or one class "
                "only); they are left out of the group's macro average (a group with no defined "
                f"{word} is left out of the equity-scaled sum).",
                UserWarning,
            )


def _multitask_compute(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    attributes: Mapping[str, int],
    task: str,
    threshold: float,
    alpha: float,
) -> dict[str, Tensor]:
    """The report from formatted inputs (``groups`` ``(N, A)``, unknown ``-1``): scalar tensors."""
    y, y_hat = _columns(preds, target, task, threshold)
    aucs, group_aucs, confmats = _column_stats(preds, y, y_hat, groups, list(attributes.values()))
    _warn_undefined(aucs, group_aucs, attributes, task)
    return {
        key: value[0]
        for key, value in _multitask_aggregate(
            aucs, group_aucs, confmats, attributes, task, alpha
        ).items()
    }


def _weighted_column_stats(
    preds: Tensor,
    y: Tensor,
    y_hat: Tensor,
    groups: Tensor,
    counts: Sequence[int],
    weights: Tensor,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """:func:`_column_stats` of ``B`` resamples given as multiplicities ``weights`` ``(B, N)``."""
    b, k = weights.shape[0], preds.shape[1]
    device = preds.device
    aucs = torch.empty(b, k, dtype=torch.float64, device=device)
    group_aucs = [torch.empty(b, k, n, dtype=torch.float64, device=device) for n in counts]
    for c in range(k):
        order, block = _sort_scores(preds[:, c])
        y_sorted = y[:, c].index_select(0, order)
        w_sorted = weights.index_select(1, order)
        groups_sorted = groups.index_select(0, order)
        aucs[:, c] = _weighted_auroc(block, y_sorted, w_sorted, None, 1)[:, 0]
        for a, n in enumerate(counts):
            group_aucs[a][:, c] = _weighted_auroc(
                block, y_sorted, w_sorted, groups_sorted[:, a], n
            )
    confmats = []
    col = torch.arange(k, device=device)
    for a, n in enumerate(counts):
        g = groups[:, a].to(torch.int64)
        g = torch.where(g < 0, n, g)
        key = ((col * (n + 1) + g[:, None]) * 4 + y * 2 + y_hat.to(torch.int64)).reshape(-1)
        cm = torch.zeros(b, k * (n + 1) * 4, dtype=torch.int64, device=device).scatter_add_(
            1, key.expand(b, -1), weights.repeat_interleave(k, dim=1)
        )
        confmats.append(cm.view(b, k, n + 1, 2, 2))
    return aucs, group_aucs, confmats


def _multitask_replicates(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    attributes: Mapping[str, int],
    task: str,
    threshold: float,
    alpha: float,
    weights: Tensor,
) -> dict[str, Tensor]:
    """Every report key for ``B`` resamples given as multiplicities ``weights`` ``(B, N)``."""
    y, y_hat = _columns(preds, target, task, threshold)
    aucs, group_aucs, confmats = _weighted_column_stats(
        preds, y, y_hat, groups, list(attributes.values()), weights
    )
    return _multitask_aggregate(aucs, group_aucs, confmats, attributes, task, alpha)


# ------------------------------------------------------------------------------------------------
# single-attribute metrics (GroupAUROC, ES-AUC, ES-Acc, DPD, DEOdds) of any task
# ------------------------------------------------------------------------------------------------
def _task_tensor_validation(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    num_groups: int,
    ignore_index: int,
    task: str,
    num_columns: int,
) -> None:
    """Check scores, labels and one attribute's group ids of any task."""
    if task == "binary":
        _group_tensor_validation(preds, target, groups, num_groups, ignore_index)
        return
    _multitask_preds_target_validation(preds, target, task, num_columns)
    _groups_validation(groups, preds.shape[:1], num_groups, ignore_index)


def _task_format(
    preds: Tensor, target: Tensor, groups: Tensor, ignore_index: int, task: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Formatted scores, labels and int32 group ids (unknown ``-1``) of any task."""
    if task == "binary":
        return _group_format(preds, target, groups, ignore_index)
    preds, target = _multitask_format(preds, target, task)
    return preds, target, _format_groups(groups, ignore_index)


def _multitask_group_auroc(
    preds: Tensor, target: Tensor, groups: Tensor, num_groups: int, task: str
) -> tuple[Tensor, Tensor]:
    """Macro AUC over all samples and ``(G,)`` macro AUCs within each group (formatted inputs)."""
    _check_not_empty(preds.shape[0])
    y, y_hat = _columns(preds, target, task, 0.5)
    aucs, group_aucs, _ = _column_stats(preds, y, y_hat, groups[:, None], [num_groups],
                                        with_confmat=False)
    return _nanmean(aucs, 1)[0], _nanmean(group_aucs[0], 1)[0]


def _multitask_confmat(
    preds: Tensor, target: Tensor, groups: Tensor, num_groups: int, task: str, threshold: float
) -> Tensor:
    """``(K, G + 1, 2, 2)`` one-vs-rest confusion matrices per group (formatted inputs)."""
    y, y_hat = _columns(preds, target, task, threshold)
    return _column_confmats(y, y_hat, groups, num_groups)


def _multitask_accuracy(confmat: Tensor, task: str) -> tuple[Tensor, Tensor]:
    """Overall accuracy and ``(G,)`` group accuracies from ``(K, G + 1, 2, 2)`` matrices."""
    _check_not_empty(int(confmat[0].sum()))
    cm = confmat[None]
    return _accuracy(cm.sum(2), task)[0], _accuracy(cm[:, :, :-1], task)[0]


def _multitask_parity(confmat: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """Largest one-vs-rest DPD and DEOdds over columns of ``(K, G + 1, 2, 2)`` matrices."""
    _check_not_empty(int(confmat[0].sum()))
    dpd, deodds = _parity(confmat)
    if bool(torch.isnan(dpd).all()):
        rank_zero_warn(
            f"{what} is undefined (NaN): no sample belongs to a known group "
            "(every group id is `ignore_index`).",
            UserWarning,
        )
    return _nanmax(dpd, 0), _nanmax(deodds, 0)
