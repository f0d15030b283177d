"""Per-group AUROC as a torchmetrics metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fairvlm_lightning.metrics._base import _GroupSampleMetric
from fairvlm_lightning.metrics.functional._multitask import Task, _multitask_group_auroc
from fairvlm_lightning.metrics.functional.auroc import (
    _group_auroc_arg_validation,
    _group_auroc_compute,
)

__all__ = ["GroupAUROC"]


class GroupAUROC(_GroupSampleMetric):
    """ROC AUC within each group of a protected attribute, accumulated over batches.

    Entry ``g`` of :meth:`compute` is ``roc_auc_score`` of the samples whose group id is ``g``
    (groups are addressed by id: a batch holding only group 2 updates group 2). Samples with
    group ``ignore_index`` belong to no group. A group lacking positives or negatives gets NaN.
    All samples are kept (exact AUROC, ties as scikit-learn) and concatenated across processes;
    the group AUCs then share one sort of the scores.

    Args:
        num_groups: number of groups G (at least 2).
        task: ``"binary"`` (scores ``P(y=1)``, labels 0/1), ``"multiclass"`` (``(N, C)`` class
            probabilities, ``(N,)`` class ids) or ``"multilabel"`` (``(N, L)`` probabilities
            and 0/1 labels); groups are ``(N,)``. Multi-column rules: see
            :func:`~fairvlm_lightning.metrics.functional.fairness_metrics`.
        num_classes: number of classes C (``task="multiclass"`` only).
        num_labels: number of labels L (``task="multilabel"`` only).
        ignore_index: group id marking an unknown member (must not be a valid id).
        validate_args: check shapes, dtypes and value ranges in ``update`` (costs a device sync;
            constructor arguments are always checked).
        kwargs: forwarded to :class:`torchmetrics.Metric` (``compute_on_cpu``,
            ``dist_sync_on_step``, ``process_group``, ``sync_on_compute``, ...).

    Example:
        >>> import torch
        >>> metric = GroupAUROC(num_groups=3)
        >>> metric.update(torch.tensor([0.2, 0.7]), torch.tensor([0, 1]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([0.6, 0.3]), torch.tensor([1, 0]), torch.tensor([2, 2]))
        >>> metric.compute()
        tensor([1., nan, 1.], dtype=torch.float64)
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
        ignore_index: int = -1,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(task, num_classes, num_labels, **kwargs)
        _group_auroc_arg_validation(num_groups, ignore_index)
        self.num_groups = num_groups
        self.ignore_index = ignore_index
        self.validate_args = validate_args

    def compute(self) -> Tensor:
        """Return the ``(num_groups,)`` float64 tensor of group AUCs (NaN where undefined)."""
        preds, target, groups = self._samples()
        if self.task == "binary":
            return _group_auroc_compute(preds, target, groups, self.num_groups)[1]
        return _multitask_group_auroc(preds, target, groups, self.num_groups, self.task)[1]

    def plot(
        self,
        val: Tensor | Sequence[Tensor] | None = None,
        ax: Any | None = None,
        *,
        group_names: Sequence[str] | None = None,
    ) -> tuple[Any, Any]:
        """Plot the per-group AUROC with torchmetrics' plotting utilities.

        A single value (default: :meth:`compute`) is drawn as one labelled point per group (an
        undefined group is marked ``n/a``); a sequence of values (e.g. one per epoch) as one line
        per group. Bounds, the optimal-value mark and the style are torchmetrics'
        (:func:`torchmetrics.utilities.plot.plot_single_or_multi_val`).

        Args:
            val: a ``(num_groups,)`` result or a sequence of them; ``None`` computes the metric.
            ax: a matplotlib ``Axes`` to draw on; a new figure is created when ``None``.
            group_names: labels of the groups (default ``"group 0"``, ``"group 1"``, ...).

        Returns:
            ``(figure, axes)``.

        Raises:
            ImportError: if matplotlib (an optional dependency) is not installed.
            ValueError: if ``group_names`` or ``val`` do not have ``num_groups`` entries.

        Example:
            >>> import torch
            >>> metric = GroupAUROC(num_groups=2)
            >>> fig, ax = metric.plot(torch.tensor([0.7, 0.8]), group_names=["Female", "Male"])
            >>> [line.get_label() for line in ax.get_lines()]
            ['Female', 'Male']
        """
        try:
            import matplotlib  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "GroupAUROC.plot needs matplotlib, an optional dependency: install it with "
                "`pip install matplotlib` (or `pip install -e '.[plot]'` in the fairvlm-lightning "
                "checkout)."
            ) from err
        from torchmetrics.utilities.plot import plot_single_or_multi_val

        names = (
            list(group_names)
            if group_names is not None
            else [f"group {g}" for g in range(self.num_groups)]
        )
        if len(names) != self.num_groups:
            raise ValueError(f"`group_names` must have {self.num_groups} entries, got {len(names)}")
        val = self.compute() if val is None else val
        values = (
            val.detach().reshape(1, -1)
            if isinstance(val, Tensor)
            else torch.stack([torch.as_tensor(v).detach().reshape(-1) for v in val])
        )
        values = values.to(device="cpu", dtype=torch.float64)
        if values.shape[1] != self.num_groups:
            raise ValueError(
                f"`val` must hold {self.num_groups} group values, got shape {tuple(values.shape)}"
            )
        single = values.shape[0] == 1
        data: dict[str, Tensor] | list[dict[str, Tensor]] = (
            {name: values[0, g] for g, name in enumerate(names)}
            if single
            else [{name: row[g] for g, name in enumerate(names)} for row in values]
        )
        axes: Any
        fig, axes = plot_single_or_multi_val(
            data,
            ax=ax,
            higher_is_better=self.higher_is_better,
            lower_bound=self.plot_lower_bound,
            upper_bound=self.plot_upper_bound,
            name=type(self).__name__,
        )
        if fig is None:
            fig = axes.get_figure()
        if single:
            for g, value in enumerate(values[0].tolist()):
                if value != value:  # NaN: the group's AUC is undefined
                    axes.text(g, self.plot_lower_bound + 0.02, "n/a", ha="center", va="bottom")
        return fig, axes
