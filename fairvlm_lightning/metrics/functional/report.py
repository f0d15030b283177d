"""The full fairness report of the FairVLMed paper for several attributes, from one sort."""

from __future__ import annotations

from collections.abc import Mapping

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
)
from fairvlm_lightning.metrics.functional.equity import _equity_scaled_compute
from fairvlm_lightning.metrics.functional.parity import (
    _demographic_parity_compute,
    _equalized_odds_compute,
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
    attributes: Mapping[str, int], threshold: float, alpha: float, ignore_index: int
) -> None:
    if not isinstance(attributes, Mapping):
        raise TypeError(
            "`attributes` must be a mapping attribute name -> number of groups, e.g. "
            f"{{'race': 3, 'gender': 2}}, got {type(attributes).__name__}"
        )
    _fairness_arg_validation(attributes, ignore_index, threshold=threshold, alpha=alpha)


def _fairness_metrics_tensor_validation(
    preds: Tensor,
    target: Tensor,
    groups: Mapping[str, Tensor],
    attributes: Mapping[str, int],
    ignore_index: int,
) -> None:
    _preds_target_validation(preds, target)
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
            groups[name], preds.shape, num_groups, ignore_index, name=f"groups[{name!r}]"
        )


def _fairness_metrics_format(
    preds: Tensor,
    target: Tensor,
    groups: Mapping[str, Tensor],
    attributes: Mapping[str, int],
    ignore_index: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten; return float64 scores, uint8 labels and an ``(N, A)`` int32 matrix of group ids."""
    preds, target = _format_preds_target(preds, target)
    columns = [_format_groups(groups[name], ignore_index) for name in attributes]
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


def fairness_metrics(
    preds: Tensor,
    target: Tensor,
    groups: Mapping[str, Tensor],
    attributes: Mapping[str, int],
    *,
    threshold: float = 0.5,
    alpha: float = 1.0,
    ignore_index: int = -1,
    validate_args: bool = True,
) -> dict[str, Tensor]:
    """The FairVLMed fairness report for several protected attributes at once.

    One sort of the scores serves the overall AUC and every group AUC of every attribute. Keys
    (stable, ready for ``LightningModule.log_dict``):

    * ``auc``, ``acc`` -- over all samples, unknown group members included;
    * per attribute ``a``: ``a/es_auc``, ``a/es_acc`` (see :func:`equity_scaled_auroc`,
      :func:`equity_scaled_accuracy`), ``a/auc_group_{g}`` for every ``g < attributes[a]`` (NaN
      if undefined), ``a/dpd`` (:func:`demographic_parity_difference`), ``a/deodds``
      (:func:`equalized_odds_difference`, fairlearn's rule that an undefined rate counts as 0),
      ``a/auc_std_disparity`` (population std of the defined group AUCs / AUC, as the FairCLIP
      code) and ``a/auc_max_disparity`` ((max - min) of the defined group AUCs / AUC).

    Args:
        preds: scores ``P(y = 1)`` in ``[0, 1]``, any floating dtype (computed in float64).
        target: labels 0/1 (integer or bool), same shape as ``preds``.
        groups: mapping attribute name -> integer group ids (same shape as ``preds``), with
            exactly the keys of ``attributes``.
        attributes: mapping attribute name -> number of groups (each at least 2).
        threshold: decision threshold (``preds >= threshold`` is positive) for accuracy, DPD and
            DEOdds.
        alpha: weight of the disparity term of the equity-scaled metrics.
        ignore_index: group id marking an unknown member.
        validate_args: check shapes, dtypes, keys and value ranges (costs a device sync).

    Returns:
        Flat dict of scalar float64 tensors.

    Raises:
        ValueError: on a shape mismatch, scores outside ``[0, 1]``, a non-binary target, a group
            id out of range, missing or unexpected attribute keys, fewer than 2 groups or empty
            input.

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
    """
    if validate_args:
        _fairness_metrics_arg_validation(attributes, threshold, alpha, ignore_index)
        _fairness_metrics_tensor_validation(preds, target, groups, attributes, ignore_index)
    preds, target, groups_matrix = _fairness_metrics_format(
        preds, target, groups, attributes, ignore_index
    )
    return _fairness_metrics_compute(
        preds, target, groups_matrix, dict(attributes), threshold, alpha
    )
