"""Shared validation, formatting and counting kernels of the fairness metrics (private).

Everything here works on flat tensors and returns tensors; nothing leaves the device except the
few Python integers needed to size buffers (number of tie blocks) and the validation checks.

Conventions used by every metric of the package:

* ``preds`` are scores ``P(y = 1)`` in ``[0, 1]`` (any floating dtype, computed in float64);
* ``target`` holds 0/1 labels (integer or bool);
* ``groups`` holds group ids ``0 .. num_groups - 1``, or ``ignore_index`` for an unknown member.
  After formatting, unknown members carry the id ``-1``.
* a prediction is positive when ``preds >= threshold`` (the FairCLIP / FairVLMed reference code
  binarises scores that way).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from fairvlm_lightning.validation import check_integer_ids

_UNKNOWN = -1  # internal id of samples whose group is ``ignore_index``
_INT64_MAGNITUDE = 0x7FFF_FFFF_FFFF_FFFF


# ------------------------------------------------------------------------------------------------
# argument validation
# ------------------------------------------------------------------------------------------------
def _num_groups_validation(num_groups: int, name: str = "num_groups") -> None:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"`{name}` must be an int, got {type(num_groups).__name__}")
    if num_groups < 2:
        raise ValueError(f"`{name}` must be at least 2, got {num_groups}")


def _fairness_arg_validation(
    num_groups: int | Mapping[str, int],
    ignore_index: int = -1,
    threshold: float | None = None,
    alpha: float | None = None,
) -> None:
    """Validate the constructor-style arguments shared by all fairness metrics.

    ``num_groups`` is either an int or a mapping ``attribute -> number of groups``.
    """
    if isinstance(num_groups, Mapping):
        if len(num_groups) == 0:
            raise ValueError("`attributes` must name at least one attribute, got an empty mapping")
        for name, count in num_groups.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"attribute names must be non-empty strings, got {name!r}")
            _num_groups_validation(count, name=f"attributes[{name!r}]")
        counts = list(num_groups.values())
    else:
        _num_groups_validation(num_groups)
        counts = [num_groups]
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"`ignore_index` must be an int, got {type(ignore_index).__name__}")
    if 0 <= ignore_index < max(counts):
        raise ValueError(
            f"`ignore_index` must not be a valid group id; got {ignore_index}, which lies in "
            f"[0, {max(counts)}). Use a negative value such as -1."
        )
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"`threshold` must be a float, got {type(threshold).__name__}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"`threshold` must lie in [0, 1], got {threshold}")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"`alpha` must be a float, got {type(alpha).__name__}")
        if not (math.isfinite(float(alpha)) and float(alpha) >= 0.0):
            raise ValueError(f"`alpha` must be a finite number >= 0, got {alpha}")


# ------------------------------------------------------------------------------------------------
# tensor validation and formatting
# ------------------------------------------------------------------------------------------------
def _preds_target_validation(preds: Tensor, target: Tensor) -> None:
    """Check types, shapes and values of scores and labels."""
    if not isinstance(preds, Tensor):
        raise TypeError(f"`preds` must be a torch.Tensor, got {type(preds).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"`target` must be a torch.Tensor, got {type(target).__name__}")
    if not preds.is_floating_point():
        raise TypeError(
            f"`preds` must hold floating point scores P(y=1) in [0, 1], got dtype {preds.dtype}"
        )
    if target.is_floating_point() or target.is_complex():
        raise TypeError(f"`target` must hold integer or bool labels 0/1, got dtype {target.dtype}")
    if preds.shape != target.shape:
        raise ValueError(
            f"shape mismatch: `preds` has shape {tuple(preds.shape)} but `target` has shape "
            f"{tuple(target.shape)}"
        )
    if preds.numel() == 0:
        return
    # One reduction in the common case; NaN fails both comparisons, so it lands here too and is
    # told apart from a mere range error (a sigmoid would not fix a NaN).
    if not bool(((preds >= 0) & (preds <= 1)).all()):
        nonfinite = ~torch.isfinite(preds)
        if bool(nonfinite.any()):
            where = torch.nonzero(nonfinite.flatten()).flatten()
            raise ValueError(
                f"non-finite scores: `preds` holds {where.numel()} non-finite value(s) at "
                f"position(s) {where[:10].tolist()} (NaN or infinity; e.g. "
                f"{preds.flatten()[where[0]].item()}); the model produced them, check its inputs "
                "and training loss"
            )
        bad = preds[~((preds >= 0) & (preds <= 1))]
        raise ValueError(
            "scores outside [0, 1]: `preds` must be probabilities P(y=1) (apply a sigmoid or "
            f"softmax first); found {bad.numel()} value(s) out of range, e.g. {bad[0].item()}"
        )
    if target.dtype != torch.bool and not bool(((target == 0) | (target == 1)).all()):
        bad_values = torch.unique(target[(target != 0) & (target != 1)])[:5].tolist()
        raise ValueError(f"target not binary: `target` must hold only 0 and 1, found {bad_values}")


def _groups_validation(
    groups: Tensor, shape: torch.Size, num_groups: int, ignore_index: int, name: str = "groups"
) -> None:
    """Check type, shape and range of one tensor of group ids."""
    if not isinstance(groups, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(groups).__name__}")
    check_integer_ids(groups, f"`{name}`")
    if groups.shape != shape:
        raise ValueError(
            f"shape mismatch: `{name}` has shape {tuple(groups.shape)} but `preds` has shape "
            f"{tuple(shape)}"
        )
    if groups.numel() == 0:
        return
    bad = ((groups < 0) | (groups >= num_groups)) & (groups != ignore_index)
    if bool(bad.any()):
        bad_values = torch.unique(groups[bad])[:5].tolist()
        raise ValueError(
            f"group id out of range: `{name}` must hold ids in [0, {num_groups}) or "
            f"ignore_index={ignore_index}, found {bad_values}"
        )


def _format_preds_target(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten; scores to float64, labels to uint8."""
    return preds.detach().reshape(-1).to(torch.float64), target.detach().reshape(-1).to(torch.uint8)


def _format_groups(groups: Tensor, ignore_index: int) -> Tensor:
    """Flatten to int32 and map ``ignore_index`` to the internal unknown id ``-1``."""
    groups = groups.detach().reshape(-1)
    if ignore_index != _UNKNOWN:
        # widen first: an unsigned dtype cannot hold -1, an ignore_index may not fit in int32
        groups = groups.to(torch.int64)
        groups = torch.where(groups == ignore_index, _UNKNOWN, groups)
    return groups.to(torch.int32)


def _group_tensor_validation(
    preds: Tensor, target: Tensor, groups: Tensor, num_groups: int, ignore_index: int
) -> None:
    """Check scores, labels and one attribute's group ids (every single-attribute metric)."""
    _preds_target_validation(preds, target)
    _groups_validation(groups, preds.shape, num_groups, ignore_index)


def _group_format(
    preds: Tensor, target: Tensor, groups: Tensor, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Flat float64 scores, uint8 labels and int32 group ids (unknown = ``-1``)."""
    preds, target = _format_preds_target(preds, target)
    return preds, target, _format_groups(groups, ignore_index)


def _check_not_empty(n: int, what: str = "the metric") -> None:
    if n == 0:
        raise ValueError(f"empty input: {what} received no samples, so there is nothing to compute")


# ------------------------------------------------------------------------------------------------
# counting kernels
# ------------------------------------------------------------------------------------------------
def _sort_scores(preds: Tensor) -> tuple[Tensor, Tensor]:
    """Sort scores once; return ``(order, block)``.

    ``preds[order]`` is ascending and ``block[i]`` is the index of the tie block (run of equal
    scores) that sorted position ``i`` belongs to.

    The float64 scores are sorted through an order-preserving int64 key (IEEE-754 bits with the
    magnitude flipped for negatives): on CPU PyTorch sorts int64 with a radix sort, about 10x
    faster than its float sort. ``-0.0`` is folded into ``+0.0`` first so equal values share a key.
    """
    x = preds.to(torch.float64) + 0.0  # copy; -0.0 + 0.0 == +0.0
    bits = x.view(torch.int64)
    key = bits ^ ((bits >> 63) & _INT64_MAGNITUDE)
    key_sorted, order = torch.sort(key)
    new = torch.zeros_like(key_sorted, dtype=torch.bool)
    new[1:] = key_sorted[1:] != key_sorted[:-1]
    block = torch.cumsum(new, 0)  # new[0] is False, so blocks count from 0
    return order, block


def _auroc_from_sorted(
    block: Tensor, target_sorted: Tensor, groups_sorted: Tensor | None, num_groups: int
) -> Tensor:
    """Per-group ROC AUC from samples already in ascending score order.

    AUC_g = U_g / (P_g N_g) where U_g counts, over positive/negative pairs of group g, the pairs
    ranked correctly plus one half per tie (the Mann-Whitney statistic, identical to the area
    under scikit-learn's ROC curve, which joins tied scores by one straight segment).

    When there are few tie blocks (at most ``2 n / (G + 1)``, e.g. scores on a grid) the counts
    of every ``(block, group, label)`` cell come from one dense ``bincount``. Otherwise the
    sorted samples are partitioned by group with a stable (radix) sort of the small integer
    ids, which keeps the score order inside each group; tie blocks are then runs of equal
    ``(group, block)``. Counting is done in int64 and only the final division in float64.

    Args:
        block: (n,) tie-block index of each sorted position (from :func:`_sort_scores`).
        target_sorted: (n,) labels in sorted order.
        groups_sorted: (n,) group ids in sorted order (``-1`` unknown), or ``None`` for a single
            group holding every sample (then the result has one entry).
        num_groups: number of groups G (ignored when ``groups_sorted`` is None).

    Returns:
        (G,) float64 tensor (``(1,)`` without groups), NaN where a group lacks positives or
        negatives.
    """
    device = block.device
    y = target_sorted.to(torch.int64)
    if groups_sorted is None:
        # one group: the runs are the tie blocks themselves
        num_runs = int(block[-1]) + 1 if block.numel() else 0
        counts = torch.bincount(block * 2 + y, minlength=2 * num_runs).view(num_runs, 2)
        neg, pos = counts[:, 0], counts[:, 1]
        neg_below = torch.cumsum(neg, 0) - neg
        twice_u = (pos * (2 * neg_below + neg)).sum().reshape(1)
        pos_g, neg_g = pos.sum().reshape(1), neg.sum().reshape(1)
    elif block.numel() and (int(block[-1]) + 1) * (num_groups + 1) <= 2 * block.numel():
        # few tie blocks (scores on a grid): count (tie block, group, label) cells densely, no
        # second sort; unknown members (-1) go to an extra bucket G, dropped at the end
        num_blocks = int(block[-1]) + 1
        g = groups_sorted.to(torch.int64)
        g = torch.where(g < 0, num_groups, g)
        key = (block * (num_groups + 1) + g) * 2 + y
        counts = torch.bincount(key, minlength=num_blocks * (num_groups + 1) * 2)
        counts = counts.view(num_blocks, num_groups + 1, 2)
        neg, pos = counts[..., 0], counts[..., 1]
        neg_below = torch.cumsum(neg, 0) - neg
        twice_u = (pos * (2 * neg_below + neg)).sum(0)[:num_groups]
        pos_g, neg_g = pos.sum(0)[:num_groups], neg.sum(0)[:num_groups]
    else:
        # unknown members (-1) go to an extra bucket G, dropped at the end; int32 radix sort
        g32 = groups_sorted.to(torch.int32)
        g32 = torch.where(g32 < 0, num_groups, g32)
        g32, perm = torch.sort(g32, stable=True)
        b = block[perm]
        y = y[perm]
        n = b.numel()
        if n == 0:
            return torch.full((num_groups,), float("nan"), dtype=torch.float64, device=device)
        new = torch.ones(n, dtype=torch.bool, device=device)
        new[1:] = (b[1:] != b[:-1]) | (g32[1:] != g32[:-1])
        run = torch.cumsum(new, 0) - 1  # index of the (group, tie block) run
        num_runs = int(run[-1]) + 1
        counts = torch.bincount(run * 2 + y, minlength=2 * num_runs).view(num_runs, 2)
        neg, pos = counts[:, 0], counts[:, 1]
        run_group = g32[new].to(torch.int64)
        zeros = torch.zeros(num_groups + 1, dtype=torch.int64, device=device)
        neg_g = zeros.index_add(0, run_group, neg)
        pos_g = zeros.index_add(0, run_group, pos)
        neg_before_group = torch.cumsum(neg_g, 0) - neg_g
        neg_below = torch.cumsum(neg, 0) - neg - neg_before_group[run_group]
        twice_u = zeros.index_add(0, run_group, pos * (2 * neg_below + neg))
        twice_u, pos_g, neg_g = twice_u[:num_groups], pos_g[:num_groups], neg_g[:num_groups]
    denom = 2 * pos_g * neg_g
    auc = twice_u.to(torch.float64) / denom.clamp(min=1).to(torch.float64)
    return torch.where(denom > 0, auc, torch.full_like(auc, float("nan")))


def _weighted_auroc(
    block: Tensor, y: Tensor, weights: Tensor, groups: Tensor | None, num_groups: int
) -> Tensor:
    """Batched :func:`_auroc_from_sorted` with per-sample multiplicities ``weights`` (B, n).

    ``block``, ``y``, ``groups`` are in ascending score order; returns ``(B, G)`` (``(B, 1)``
    without groups), NaN where a replicate's group lacks a class.
    """
    b = weights.shape[0]
    device = weights.device
    if groups is None:
        run = block
        run_group = torch.zeros(int(block[-1]) + 1, dtype=torch.int64, device=device)
        width = 1
        w = weights
        yy = y
    else:
        g = torch.where(groups < 0, num_groups, groups.to(torch.int64))
        g, perm = torch.sort(g, stable=True)
        bl = block[perm]
        yy = y[perm]
        w = weights[:, perm]
        new = torch.ones(bl.numel(), dtype=torch.bool, device=device)
        new[1:] = (bl[1:] != bl[:-1]) | (g[1:] != g[:-1])
        run = torch.cumsum(new, 0) - 1
        run_group = g[new]
        width = num_groups + 1
    num_runs = int(run[-1]) + 1
    pos_w = w * yy
    neg_w = w - pos_w
    index = run.expand(b, -1)
    pos = torch.zeros(b, num_runs, dtype=torch.int64, device=device).scatter_add_(1, index, pos_w)
    neg = torch.zeros(b, num_runs, dtype=torch.int64, device=device).scatter_add_(1, index, neg_w)
    zeros = torch.zeros(b, width, dtype=torch.int64, device=device)
    neg_g = zeros.index_add(1, run_group, neg)
    pos_g = zeros.index_add(1, run_group, pos)
    neg_before_group = torch.cumsum(neg_g, 1) - neg_g
    neg_below = torch.cumsum(neg, 1) - neg - neg_before_group[:, run_group]
    twice_u = zeros.index_add(1, run_group, pos * (2 * neg_below + neg))
    if groups is not None:
        keep = slice(0, num_groups)
        twice_u, pos_g, neg_g = twice_u[:, keep], pos_g[:, keep], neg_g[:, keep]
    denom = 2 * pos_g * neg_g
    auc = twice_u.to(torch.float64) / denom.clamp(min=1).to(torch.float64)
    return torch.where(denom > 0, auc, torch.full_like(auc, float("nan")))


def _outcome(preds: Tensor, target: Tensor, threshold: float) -> Tensor:
    """``2 * y + y_hat`` per sample (int64), the cell of the 2x2 confusion matrix."""
    return target.to(torch.int64) * 2 + (preds >= threshold)


def _group_confmat_from_outcome(outcome: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Per-group confusion matrices ``(num_groups + 1, 2, 2)`` from :func:`_outcome`."""
    g = groups.to(torch.int64)
    key = torch.where(g < 0, num_groups, g) * 4 + outcome
    return torch.bincount(key, minlength=4 * (num_groups + 1)).view(num_groups + 1, 2, 2)


def _group_confmat(
    preds: Tensor, target: Tensor, groups: Tensor, num_groups: int, threshold: float
) -> Tensor:
    """Per-group confusion matrices, shape ``(num_groups + 1, 2, 2)`` indexed ``[group, y, y_hat]``.

    Row ``num_groups`` collects the samples whose group is unknown, so the sum over all rows is
    the confusion matrix of every sample.
    """
    return _group_confmat_from_outcome(_outcome(preds, target, threshold), groups, num_groups)


def _accuracy_from_confmat(confmat: Tensor) -> Tensor:
    """Accuracy of each ``(..., 2, 2)`` confusion matrix (NaN where it is empty)."""
    total = confmat.sum((-2, -1))
    correct = confmat[..., 0, 0] + confmat[..., 1, 1]
    acc = correct.to(torch.float64) / total.clamp(min=1).to(torch.float64)
    return torch.where(total > 0, acc, torch.full_like(acc, float("nan")))


def _nan_tensor(device: torch.device) -> Tensor:
    return torch.tensor(float("nan"), dtype=torch.float64, device=device)
