"""The full fairness report of the FairVLMed paper for several attributes, from one sort."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from fairvlm_lightning.metrics.functional._common import (
    _accuracy_from_confmat,
    _auroc_from_sorted,
    _check_not_empty,
    _fairness_arg_validation,
    _format_groups,
    _format_preds_target,
    _group_confmat_from_outcome,
    _groups_validation,
    _nan_tensor,
    _outcome,
    _preds_target_validation,
    _sort_scores,
    _weighted_auroc,
)
from fairvlm_lightning.metrics.functional._multitask import (
    Task,
    _multitask_compute,
    _multitask_format,
    _multitask_preds_target_validation,
    _multitask_replicates,
    _parity,
    _spread,
    _task_arg_validation,
)
from fairvlm_lightning.metrics.functional.equity import _equity_scaled_compute
from fairvlm_lightning.metrics.functional.parity import (
    _demographic_parity_compute,
    _equalized_odds_compute,
)
from fairvlm_lightning.metrics.groups import (
    Intersection,
    expand_attributes,
    intersection_codes,
    parse_intersections,
)

__all__ = ["fairness_metrics"]


def _auc_disparity_compute(per_group: Tensor, overall: Tensor) -> tuple[Tensor, Tensor]:
    """Between-group AUC disparity of the FairCLIP reference code.

    ``std`` is the population standard deviation (``np.std``) of the defined group AUCs divided
    by the overall AUC; ``max`` is ``(max - min) / AUC``. NaN when no group AUC is defined.
    """
    defined = per_group[~torch.isnan(per_group)]
    if defined.numel() == 0:
        nan = _nan_tensor(per_group.device)
        return nan, nan.clone()
    std = defined.std(correction=0) / overall
    spread = (defined.max() - defined.min()) / overall
    return std, spread


def _fairness_metrics_arg_validation(
    attributes: Mapping[str, int],
    threshold: float,
    alpha: float,
    ignore_index: int,
    task: str = "binary",
    num_classes: int | None = None,
    num_labels: int | None = None,
    intersections: Sequence[Intersection] | None = None,
) -> int:
    """Check the report's constructor-style arguments; return the column count K of the task."""
    if not isinstance(attributes, Mapping):
        raise TypeError(
            "`attributes` must be a mapping attribute name -> number of groups, e.g. "
            f"{{'race': 3, 'gender': 2}}, got {type(attributes).__name__}"
        )
    _fairness_arg_validation(attributes, ignore_index, threshold=threshold, alpha=alpha)
    expanded = expand_attributes(attributes, intersections)
    if 0 <= ignore_index < max(expanded.values()):
        raise ValueError(
            f"`ignore_index` must not be a valid group id of an intersection; got {ignore_index}, "
            f"which lies in [0, {max(expanded.values())}). Use a negative value such as -1."
        )
    return _task_arg_validation(task, num_classes, num_labels)


def _fairness_metrics_tensor_validation(
    preds: Tensor,
    target: Tensor,
    groups: Mapping[str, Tensor],
    attributes: Mapping[str, int],
    ignore_index: int,
    task: str = "binary",
    num_columns: int = 1,
) -> None:
    if task == "binary":
        _preds_target_validation(preds, target)
        shape = preds.shape
    else:
        _multitask_preds_target_validation(preds, target, task, num_columns)
        shape = preds.shape[:1]
    if not isinstance(groups, Mapping):
        raise TypeError(
            "`groups` must be a mapping attribute name -> (N,) tensor of group ids, got "
            f"{type(groups).__name__}"
        )
    missing = [name for name in attributes if name not in groups]
    unknown = [name for name in groups if name not in attributes]
    if missing or unknown:
        raise ValueError(
            f"`groups` keys must be the configured attributes {list(attributes)}; "
            f"missing: {missing}, unexpected: {unknown}"
        )
    for name, num_groups in attributes.items():
        _groups_validation(
            groups[name], shape, num_groups, ignore_index, name=f"groups[{name!r}]"
        )


def _fairness_metrics_format(
    preds: Tensor,
    target: Tensor,
    groups: Mapping[str, Tensor],
    attributes: Mapping[str, int],
    ignore_index: int,
    task: str = "binary",
    intersections: Sequence[tuple[str, ...]] = (),
) -> tuple[Tensor, Tensor, Tensor]:
    """Return scores, labels and an ``(N, A + I)`` int32 matrix of group ids (unknown ``-1``).

    Binary: flat float64 scores and uint8 labels; multi-class / multi-label: see
    :func:`_multitask_format`. The columns are the attributes, then one per intersection (its
    cell ids, from :func:`~fairvlm_lightning.metrics.groups.intersection_codes`).
    """
    if task == "binary":
        preds, target = _format_preds_target(preds, target)
    else:
        preds, target = _multitask_format(preds, target, task)
    columns = [_format_groups(groups[name], ignore_index) for name in attributes]
    index = {name: i for i, name in enumerate(attributes)}
    for names in intersections:
        codes = intersection_codes(
            [columns[index[n]] for n in names], [attributes[n] for n in names], ignore_index=-1
        )
        columns.append(codes.to(torch.int32))
    return preds, target, torch.stack(columns, dim=1)


def _fairness_metrics_compute(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    attributes: Mapping[str, int],
    threshold: float,
    alpha: float,
) -> dict[str, Tensor]:
    """Every metric of the report from formatted inputs (``groups`` is ``(N, A)``, unknown -1)."""
    _check_not_empty(preds.numel())
    order, block = _sort_scores(preds)
    target_sorted = target.index_select(0, order).to(torch.int64)
    auc = _auroc_from_sorted(block, target_sorted, None, 1)[0]
    if torch.isnan(auc):
        rank_zero_warn("AUROC is undefined (NaN): `target` holds only one class.", UserWarning)
    outcome = _outcome(preds, target, threshold)
    acc = _accuracy_from_confmat(torch.bincount(outcome, minlength=4).view(2, 2))
    out: dict[str, Tensor] = {"auc": auc, "acc": acc}
    groups_sorted = groups.index_select(0, order)
    for column, (name, num_groups) in enumerate(attributes.items()):
        group_aucs = _auroc_from_sorted(block, target_sorted, groups_sorted[:, column], num_groups)
        confmat = _group_confmat_from_outcome(outcome, groups[:, column], num_groups)
        group_accs = _accuracy_from_confmat(confmat[:-1])
        out[f"{name}/es_auc"] = _equity_scaled_compute(auc, group_aucs, alpha, f"{name}: AUC")
        out[f"{name}/es_acc"] = _equity_scaled_compute(acc, group_accs, alpha, f"{name}: accuracy")
        for g in range(num_groups):
            out[f"{name}/auc_group_{g}"] = group_aucs[g]
        out[f"{name}/dpd"] = _demographic_parity_compute(confmat)
        out[f"{name}/deodds"] = _equalized_odds_compute(confmat)
        std, spread = _auc_disparity_compute(group_aucs, auc)
        out[f"{name}/auc_std_disparity"] = std
        out[f"{name}/auc_max_disparity"] = spread
    return out


# ------------------------------------------------------------------------------------------------
# percentile bootstrap
# ------------------------------------------------------------------------------------------------
def _bootstrap_arg_validation(bootstrap: int, ci: float, seed: int) -> None:
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int):
        raise TypeError(f"`bootstrap` must be an int, got {type(bootstrap).__name__}")
    if bootstrap < 0:
        raise ValueError(f"`bootstrap` must be >= 0 (0 = no intervals), got {bootstrap}")
    if isinstance(ci, bool) or not isinstance(ci, (int, float)):
        raise TypeError(f"`ci` must be a float, got {type(ci).__name__}")
    if not 0.0 < float(ci) < 1.0:
        raise ValueError(f"`ci` must lie in (0, 1), e.g. 0.95, got {ci}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TypeError(f"`seed` must be a non-negative int, got {seed!r}")


def _bootstrap_strata(groups: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strata = distinct rows of the ``(N, A)`` group matrix (every attribute's group kept).

    Returns ``(perm, starts, sizes_of_slot)``: ``perm`` lists the samples stratum by stratum
    (strata in lexicographic order of their group-id rows, samples in input order), and for
    every slot ``j`` of ``perm`` the first slot and the size of its stratum.
    """
    g = groups.cpu().numpy()
    _, inverse = np.unique(g, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    perm = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse)
    starts = np.cumsum(sizes) - sizes
    slot_stratum = inverse[perm]
    return perm, starts[slot_stratum], sizes[slot_stratum]


def _bootstrap_indices(
    uniforms: np.ndarray, perm: np.ndarray, slot_start: np.ndarray, slot_size: np.ndarray
) -> np.ndarray:
    """Map ``(B, N)`` uniforms in [0, 1) to resampled sample indices, stratum by stratum.

    Slot ``j`` of replicate ``b`` draws sample ``perm[start_j + floor(u[b, j] * size_j)]``: a
    draw with replacement from the slot's own stratum, so every stratum keeps its size.
    """
    offset = np.minimum(np.floor(uniforms * slot_size).astype(np.int64), slot_size - 1)
    return perm[slot_start + offset]


def _batched_equity(overall: Tensor, per_group: Tensor, alpha: float) -> Tensor:
    gap = torch.nansum((per_group - overall[:, None]).abs(), dim=1)
    return overall / (1.0 + alpha * gap)


def _batched_accuracy(confmat: Tensor) -> Tensor:
    total = confmat.sum((-2, -1))
    acc = (confmat[..., 0, 0] + confmat[..., 1, 1]).to(torch.float64) / total.clamp(min=1)
    return torch.where(total > 0, acc, torch.full_like(acc, float("nan")))


def _batched_disparity(per_group: Tensor, overall: Tensor) -> tuple[Tensor, Tensor]:
    defined = ~torch.isnan(per_group)
    count = defined.sum(1)
    values = torch.where(defined, per_group, 0.0)
    mean = values.sum(1) / count.clamp(min=1)
    var = (torch.where(defined, per_group - mean[:, None], 0.0) ** 2).sum(1) / count.clamp(min=1)
    std = var.sqrt() / overall
    spread = _spread(per_group, defined) / overall
    nan = torch.full_like(std, float("nan"))
    return torch.where(count > 0, std, nan), torch.where(count > 0, spread, nan)


def _fairness_metrics_replicates(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    attributes: Mapping[str, int],
    threshold: float,
    alpha: float,
    weights: Tensor,
) -> dict[str, Tensor]:
    """Every key of :func:`_fairness_metrics_compute` for ``B`` resamples given as multiplicities.

    ``weights`` is ``(B, N)``: how often each sample is drawn in each replicate. Returns ``(B,)``
    float64 tensors, equal to the report of each resampled data set.
    """
    order, block = _sort_scores(preds)
    y_sorted = target.index_select(0, order).to(torch.int64)
    w_sorted = weights.index_select(1, order)
    groups_sorted = groups.index_select(0, order)
    b = weights.shape[0]
    auc = _weighted_auroc(block, y_sorted, w_sorted, None, 1)[:, 0]
    outcome = _outcome(preds, target, threshold)
    cells = torch.zeros(b, 4, dtype=torch.int64, device=weights.device)
    acc = _batched_accuracy(cells.scatter_add_(1, outcome.expand(b, -1), weights).view(b, 2, 2))
    out: dict[str, Tensor] = {"auc": auc, "acc": acc}
    for column, (name, num_groups) in enumerate(attributes.items()):
        group_aucs = _weighted_auroc(
            block, y_sorted, w_sorted, groups_sorted[:, column], num_groups
        )
        g = groups[:, column].to(torch.int64)
        key = torch.where(g < 0, num_groups, g) * 4 + outcome
        confmat = (
            torch.zeros(b, 4 * (num_groups + 1), dtype=torch.int64, device=weights.device)
            .scatter_add_(1, key.expand(b, -1), weights)
            .view(b, num_groups + 1, 2, 2)
        )
        group_accs = _batched_accuracy(confmat[:, :-1])
        out[f"{name}/es_auc"] = _batched_equity(auc, group_aucs, alpha)
        out[f"{name}/es_acc"] = _batched_equity(acc, group_accs, alpha)
        for gi in range(num_groups):
            out[f"{name}/auc_group_{gi}"] = group_aucs[:, gi]
        out[f"{name}/dpd"], out[f"{name}/deodds"] = _parity(confmat)
        std, spread = _batched_disparity(group_aucs, auc)
        out[f"{name}/auc_std_disparity"] = std
        out[f"{name}/auc_max_disparity"] = spread
    return out


def _fairness_metrics_bootstrap(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    attributes: Mapping[str, int],
    threshold: float,
    alpha: float,
    bootstrap: int,
    ci: float,
    seed: int,
    chunk: int | None = None,
    task: str = "binary",
) -> dict[str, Tensor]:
    """Percentile-bootstrap intervals of every report key: ``{key}_ci_low``, ``{key}_ci_high``.

    Resampling is stratified by the joint group of all attributes (each distinct row of the
    ``(N, A)`` group matrix keeps its size, so rare groups never vanish). Replicate ``b`` uses
    the ``b``-th row of ``numpy.random.default_rng(seed).random((bootstrap, N))`` (see
    :func:`_bootstrap_indices`); replicates are evaluated in chunks from multiplicities on the
    one score sort. Quantiles are linear (``numpy.quantile``'s default) over the replicates
    where the value is defined (NaN when none is).
    """
    n = preds.shape[0]
    perm, slot_start, slot_size = _bootstrap_strata(groups)
    rng = np.random.default_rng(seed)
    if chunk is None:
        columns = 1 if preds.ndim == 1 else preds.shape[1]
        chunk = max(1, min(bootstrap, 4_000_000 // max(n * columns, 1)))
    reps: dict[str, list[Tensor]] = {}
    for start in range(0, bootstrap, chunk):
        c = min(chunk, bootstrap - start)
        idx = _bootstrap_indices(rng.random((c, n)), perm, slot_start, slot_size)
        flat = torch.from_numpy(idx + np.arange(c, dtype=np.int64)[:, None] * n).reshape(-1)
        weights = torch.bincount(flat.to(preds.device), minlength=c * n).view(c, n)
        replicates = (
            _fairness_metrics_replicates(
                preds, target, groups, attributes, threshold, alpha, weights
            )
            if task == "binary"
            else _multitask_replicates(
                preds, target, groups, attributes, task, threshold, alpha, weights
            )
        )
        for key, value in replicates.items():
            reps.setdefault(key, []).append(value)
    lo_q, hi_q = (1.0 - ci) / 2.0, 1.0 - (1.0 - ci) / 2.0
    q = torch.tensor([lo_q, hi_q], dtype=torch.float64, device=preds.device)
    out: dict[str, Tensor] = {}
    for key, values in reps.items():
        low, high = torch.nanquantile(torch.cat(values), q)
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = low, high
    return out


def _report_compute(
    preds: Tensor,
    target: Tensor,
    groups: Tensor,
    attributes: Mapping[str, int],
    task: str,
    threshold: float,
    alpha: float,
    bootstrap: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Tensor]:
    """The report (and its intervals) from formatted inputs of any task.

    ``attributes`` holds every column of ``groups``: the attributes, then the intersections.
    """
    if task == "binary":
        out = _fairness_metrics_compute(preds, target, groups, attributes, threshold, alpha)
    else:
        _check_not_empty(preds.shape[0])
        out = _multitask_compute(preds, target, groups, attributes, task, threshold, alpha)
    if bootstrap:
        out.update(
            _fairness_metrics_bootstrap(
                preds, target, groups, attributes, threshold, alpha, bootstrap, ci, seed,
                task=task,
            )
        )
    return out


def fairness_metrics(
    preds: Tensor,
    target: Tensor,
    groups: Mapping[str, Tensor],
    attributes: Mapping[str, int],
    *,
    task: Task = "binary",
    num_classes: int | None = None,
    num_labels: int | None = None,
    intersections: Sequence[Intersection] | None = None,
    threshold: float = 0.5,
    alpha: float = 1.0,
    ignore_index: int = -1,
    validate_args: bool = True,
    bootstrap: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Tensor]:
    """The FairVLMed fairness report for several protected attributes at once.

    One sort of the scores (per class or label) serves the overall AUC and every group AUC of
    every attribute. Keys (stable, ready for ``LightningModule.log_dict``):

    * ``auc``, ``acc`` -- over all samples, unknown group members included;
    * per attribute ``a``: ``a/es_auc``, ``a/es_acc`` (see :func:`equity_scaled_auroc`,
      :func:`equity_scaled_accuracy`), ``a/auc_group_{g}`` for every ``g < attributes[a]`` (NaN
      if undefined), ``a/dpd`` (:func:`demographic_parity_difference`), ``a/deodds``
      (:func:`equalized_odds_difference`, fairlearn's rule that an undefined rate counts as 0),
      ``a/auc_std_disparity`` (population std of the defined group AUCs / AUC, as the FairCLIP
      code) and ``a/auc_max_disparity`` ((max - min) of the defined group AUCs / AUC);
    * per intersection (``intersections=[("race", "gender")]``) the same keys under
      ``race*gender/``, whose group ``r * n_gender + s`` is the cell of race ``r`` and gender
      ``s`` (unknown where either is; see :mod:`fairvlm_lightning.metrics.groups`).

    ``task="multiclass"`` (``preds`` ``(N, C)`` class probabilities, ``target`` ``(N,)`` class
    ids) computes the FairCLIP code's multi-class branch: ``auc`` and every group AUC are the
    macro one-vs-rest AUC over the one-hot labels, ``acc`` and the group accuracies are taken by
    argmax. ``task="multilabel"`` (``preds`` and ``target`` ``(N, L)``, multi-hot) uses the same
    formulas with the macro AUC over labels and the mean over labels of the thresholded
    accuracy. An AUC undefined for a class or label (one class only) is left out of the macro
    average, with a warning. ``a/dpd`` and ``a/deodds`` are the largest one-vs-rest value over
    classes or labels. These tasks add per-column keys, with ``c`` = ``class`` or ``label``:
    ``auc_{c}_{k}``, and per attribute ``a/es_auc_{c}_{k}``, ``a/auc_group_{g}_{c}_{k}``,
    ``a/dpd_{c}_{k}``, ``a/deodds_{c}_{k}``. See ``docs/metrics.md`` for the definitions.

    Args:
        preds: binary: scores ``P(y = 1)`` in ``[0, 1]`` (any shape); multi-class: ``(N, C)``
            class probabilities; multi-label: ``(N, L)`` label probabilities. Any floating
            dtype, computed in float64.
        target: binary: labels 0/1 (integer or bool), same shape as ``preds``; multi-class:
            ``(N,)`` class ids in ``[0, C)``; multi-label: ``(N, L)`` 0/1.
        groups: mapping attribute name -> integer group ids (binary: same shape as ``preds``;
            otherwise ``(N,)``), with exactly the keys of ``attributes``.
        attributes: mapping attribute name -> number of groups (each at least 2).
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"`` (torchmetrics' convention).
        num_classes: number of classes C (``task="multiclass"`` only).
        num_labels: number of labels L (``task="multilabel"`` only).
        intersections: attribute tuples (or ``"race*gender"`` strings) reported as one
            intersectional attribute each.
        threshold: decision threshold (``preds >= threshold`` is positive) for accuracy, DPD and
            DEOdds (binary and multi-label; multi-class decides by argmax).
        alpha: weight of the disparity term of the equity-scaled metrics.
        ignore_index: group id marking an unknown member.
        validate_args: check shapes, dtypes, keys and value ranges (costs a device sync).
        bootstrap: number of bootstrap replicates; with ``bootstrap > 0`` every key ``k`` also
            gets a percentile interval ``k_ci_low``, ``k_ci_high``. Resampling is with
            replacement *within* each stratum of samples sharing the same group in every
            attribute (rare groups keep their size); replicate ``b`` is drawn from row ``b`` of
            ``numpy.random.default_rng(seed).random((bootstrap, N))``, so the intervals are
            reproducible. Quantiles are linear over the replicates where a value is defined.
        ci: coverage of the intervals, in (0, 1).
        seed: seed of the resampling.

    Returns:
        Flat dict of scalar float64 tensors.

    Raises:
        ValueError: on a shape mismatch, scores outside ``[0, 1]``, a non-binary target, a group
            id out of range, missing or unexpected attribute keys, fewer than 2 groups, a bad
            task or intersection, or empty input.

    Example:
        >>> import torch
        >>> preds = torch.tensor([0.2, 0.7, 0.6, 0.3, 0.4, 0.65])
        >>> target = torch.tensor([0, 1, 1, 0, 1, 0])
        >>> groups = {"gender": torch.tensor([0, 0, 0, 1, 1, 1])}
        >>> report = fairness_metrics(preds, target, groups, {"gender": 2})
        >>> list(report)  # doctest: +NORMALIZE_WHITESPACE
        ['auc', 'acc', 'gender/es_auc', 'gender/es_acc', 'gender/auc_group_0',
         'gender/auc_group_1', 'gender/dpd', 'gender/deodds', 'gender/auc_std_disparity',
         'gender/auc_max_disparity']
        >>> report["gender/es_auc"]
        tensor(0.5185, dtype=torch.float64)
        >>> ci = fairness_metrics(preds, target, groups, {"gender": 2}, bootstrap=200, seed=0)
        >>> bool(ci["auc_ci_low"] <= ci["auc"] <= ci["auc_ci_high"])
        True
        >>> probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5],
        ...                       [0.3, 0.4, 0.3], [0.5, 0.1, 0.4], [0.1, 0.2, 0.7]])
        >>> classes = torch.tensor([0, 1, 2, 0, 1, 2])
        >>> multi = fairness_metrics(probs, classes, groups, {"gender": 2},
        ...                          task="multiclass", num_classes=3)
        >>> multi["acc"], multi["auc_class_2"]
        (tensor(0.6667, dtype=torch.float64), tensor(1., dtype=torch.float64))
    """
    _bootstrap_arg_validation(bootstrap, ci, seed)
    if validate_args:
        num_columns = _fairness_metrics_arg_validation(
            attributes, threshold, alpha, ignore_index, task, num_classes, num_labels,
            intersections,
        )
        _fairness_metrics_tensor_validation(
            preds, target, groups, attributes, ignore_index, task, num_columns
        )
    parsed = parse_intersections(intersections, attributes)
    preds, target, groups_matrix = _fairness_metrics_format(
        preds, target, groups, attributes, ignore_index, task, parsed
    )
    return _report_compute(
        preds, target, groups_matrix, expand_attributes(attributes, parsed), task, threshold,
        alpha, bootstrap, float(ci), seed,
    )
