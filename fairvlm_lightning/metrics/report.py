"""The full FairVLMed fairness report as one torchmetrics metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from fairvlm_lightning.metrics._base import _SampleMetric
from fairvlm_lightning.metrics.functional._multitask import (
    Task,
    _target_dtype,
    _target_shape_tail,
)
from fairvlm_lightning.metrics.functional.report import (
    _bootstrap_arg_validation,
    _fairness_metrics_arg_validation,
    _fairness_metrics_format,
    _fairness_metrics_tensor_validation,
    _report_compute,
)
from fairvlm_lightning.metrics.groups import Intersection, expand_attributes, parse_intersections

__all__ = ["FairnessMetrics"]


class FairnessMetrics(_SampleMetric):
    """Every metric of the FairVLMed paper for several protected attributes, from one sort.

    ``compute()`` returns one flat dict of scalar float64 tensors with stable keys, ready for
    ``LightningModule.log_dict``: ``auc`` and ``acc`` over all samples, and per attribute ``a``
    ``a/es_auc``, ``a/es_acc``, ``a/auc_group_{g}`` (every ``g < attributes[a]``, NaN if
    undefined), ``a/dpd``, ``a/deodds`` (fairlearn's rule: an undefined rate counts as 0),
    ``a/auc_std_disparity`` (population std of the defined group AUCs / AUC) and
    ``a/auc_max_disparity`` ((max - min) / AUC). See
    :func:`fairvlm_lightning.metrics.functional.fairness_metrics` for the definitions.

    ``intersections=[("race", "gender")]`` adds the same keys under ``race*gender/`` for the
    cells ``r * n_gender + s`` (see :mod:`fairvlm_lightning.metrics.groups`; display names from
    :func:`~fairvlm_lightning.metrics.groups.intersection_group_names`). ``task="multiclass"`` /
    ``"multilabel"`` computes the FairCLIP code's multi-class metrics (macro one-vs-rest AUC,
    argmax accuracy) or their multi-label analogue, and adds per-class / per-label keys; see
    :func:`~fairvlm_lightning.metrics.functional.fairness_metrics`.

    Samples are kept (scores float64, labels, an ``(N, A + I)`` int32 matrix of group and cell
    ids) and concatenated across processes; one sort of the scores (per class or label) then
    serves every AUC of every attribute.

    Args:
        attributes: mapping attribute name -> number of groups, e.g. ``{"race": 3, "gender": 2}``.
        task: ``"binary"`` (scores ``P(y=1)``), ``"multiclass"`` (``(N, C)`` probabilities,
            ``(N,)`` class ids) or ``"multilabel"`` (``(N, L)`` probabilities and 0/1 labels).
        num_classes: number of classes C (``task="multiclass"`` only).
        num_labels: number of labels L (``task="multilabel"`` only).
        intersections: attribute tuples (or ``"race*gender"`` strings, e.g. from YAML) reported
            as intersectional attributes.
        threshold: decision threshold (``preds >= threshold`` is positive) for accuracy, DPD and
            DEOdds.
        alpha: weight of the disparity term of ES-AUC / ES-Acc.
        ignore_index: group id marking an unknown member (counted in ``auc``/``acc`` only).
        validate_args: check shapes, dtypes, keys and value ranges in ``update`` (costs a device
            sync; constructor arguments are always checked).
        bootstrap: replicates of a stratified percentile bootstrap over the stored samples
            (0 = none); each key ``k`` then also gets ``k_ci_low`` and ``k_ci_high``. See
            :func:`~fairvlm_lightning.metrics.functional.fairness_metrics` for the scheme.
        ci: coverage of the intervals, in (0, 1).
        seed: seed of the resampling (the same seed gives the same intervals).
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = FairnessMetrics({"gender": 2, "language": 3})
        >>> preds = torch.tensor([0.2, 0.7, 0.6, 0.3, 0.4, 0.65])
        >>> target = torch.tensor([0, 1, 1, 0, 1, 0])
        >>> groups = {"gender": torch.tensor([0, 0, 0, 1, 1, 1]),
        ...           "language": torch.tensor([0, 0, 1, 1, 2, 2])}
        >>> metric.update(preds, target, groups)
        >>> report = metric.compute()
        >>> report["auc"], report["gender/es_auc"]
        (tensor(0.7778, dtype=torch.float64), tensor(0.5185, dtype=torch.float64))
        >>> boot = FairnessMetrics({"gender": 2}, bootstrap=100, seed=0)
        >>> boot.update(preds, target, {"gender": groups["gender"]})
        >>> sorted(k for k in boot.compute() if k.startswith("auc"))
        ['auc', 'auc_ci_high', 'auc_ci_low']
        >>> cells = FairnessMetrics({"gender": 2, "language": 3},
        ...                         intersections=[("gender", "language")])
        >>> cells.reported_attributes
        {'gender': 2, 'language': 3, 'gender*language': 6}
        >>> cells.update(preds, target, groups)
        >>> [k for k in cells.compute() if k.startswith("gender*language/auc_group")][:2]
        ['gender*language/auc_group_0', 'gender*language/auc_group_1']
    """

    higher_is_better = None  # mixed: AUC-like keys up, disparity keys down

    def __init__(
        self,
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
        **kwargs: Any,
    ) -> None:
        num_columns = _fairness_metrics_arg_validation(
            attributes, threshold, alpha, ignore_index, task, num_classes, num_labels,
            intersections,
        )
        _bootstrap_arg_validation(bootstrap, ci, seed)
        parsed = parse_intersections(intersections, attributes)
        super().__init__(
            group_columns=len(attributes) + len(parsed),
            preds_tail=() if task == "binary" else (num_columns,),
            target_tail=_target_shape_tail(task, num_columns),
            target_dtype=_target_dtype(task),
            **kwargs,
        )
        self.attributes: dict[str, int] = dict(attributes)
        self.task = task
        self.num_classes = num_classes
        self.num_labels = num_labels
        self.num_columns = num_columns
        self.intersections: list[tuple[str, ...]] = parsed
        #: every reported attribute, intersections last: name -> number of groups (cells)
        self.reported_attributes: dict[str, int] = expand_attributes(attributes, parsed)
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.ignore_index = ignore_index
        self.validate_args = validate_args
        self.bootstrap = bootstrap
        self.ci = float(ci)
        self.seed = seed

    def update(self, preds: Tensor, target: Tensor, groups: Mapping[str, Tensor]) -> None:
        """Add a batch.

        Args:
            preds: binary: scores ``P(y=1)`` in ``[0, 1]``; multi-class: ``(N, C)`` class
                probabilities; multi-label: ``(N, L)`` label probabilities.
            target: binary: labels 0/1, same shape; multi-class: ``(N,)`` class ids;
                multi-label: ``(N, L)`` 0/1.
            groups: attribute name -> group ids (``(N,)``; binary: the shape of ``preds``),
                exactly the configured attributes (intersections are derived from them).
        """
        if self.validate_args:
            _fairness_metrics_tensor_validation(
                preds, target, groups, self.attributes, self.ignore_index, self.task,
                self.num_columns,
            )
        self._append(
            *_fairness_metrics_format(
                preds, target, groups, self.attributes, self.ignore_index, self.task,
                self.intersections,
            )
        )

    def compute(self) -> dict[str, Tensor]:
        """Return the flat dict of scalar float64 tensors described above."""
        preds, target, groups = self._samples()
        return _report_compute(
            preds, target, groups, self.reported_attributes, self.task, self.threshold,
            self.alpha, self.bootstrap, self.ci, self.seed,
        )
