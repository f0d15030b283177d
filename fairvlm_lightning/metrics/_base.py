"""Private base classes of the fairness metric classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from fairvlm_lightning.metrics.functional._common import (
    _check_not_empty,
    _group_confmat,
)
from fairvlm_lightning.metrics.functional._multitask import (
    _multitask_confmat,
    _target_dtype,
    _target_shape_tail,
    _task_arg_validation,
    _task_format,
    _task_tensor_validation,
)


class _SampleMetric(Metric):
    """A metric that keeps every sample: scores (float64), labels (uint8), group ids (int32).

    AUROC is exact only with all scores at hand, so these states are lists reduced by
    concatenation across processes (``dist_reduce_fx="cat"``). ``group_columns`` is ``None`` for
    a ``(N,)`` group state (one attribute) or the number of attributes of an ``(N, A)`` state.
    """

    full_state_update = False
    is_differentiable = False

    preds: list[Tensor] | Tensor
    target: list[Tensor] | Tensor
    groups: list[Tensor] | Tensor

    def __init__(
        self,
        group_columns: int | None = None,
        *,
        preds_tail: tuple[int, ...] = (),
        target_tail: tuple[int, ...] = (),
        target_dtype: torch.dtype = torch.uint8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._group_columns = group_columns
        self._preds_tail = preds_tail
        self._target_tail = target_tail
        self._target_dtype = target_dtype
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def _append(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        self.preds.append(preds)  # type: ignore[union-attr]
        self.target.append(target)  # type: ignore[union-attr]
        self.groups.append(groups)  # type: ignore[union-attr]

    def _samples(self) -> tuple[Tensor, Tensor, Tensor]:
        """Concatenated samples; ``ValueError`` if there are none."""
        if isinstance(self.preds, list) and len(self.preds) == 0:
            _check_not_empty(0, type(self).__name__)
        preds = dim_zero_cat(self.preds)
        _check_not_empty(preds.shape[0], type(self).__name__)
        return preds, dim_zero_cat(self.target), dim_zero_cat(self.groups)

    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None
    ) -> None:
        # A process that received no batch holds empty lists; torchmetrics would gather a 1-D
        # float32 placeholder for them, which cannot meet our float64 / uint8 / int32 (N, A)
        # tensors in all_gather. Give such a process empty tensors of the right dtype and shape.
        group_shape: tuple[int, ...] = (
            (0,)
            if self._group_columns is None
            else (
                0,
                self._group_columns,
            )
        )
        empties = {
            "preds": ((0, *self._preds_tail), torch.float64),
            "target": ((0, *self._target_tail), self._target_dtype),
            "groups": (group_shape, torch.int32),
        }
        for name, (shape, dtype) in empties.items():
            state = getattr(self, name)
            if isinstance(state, list) and len(state) == 0:
                setattr(self, name, [torch.empty(shape, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)


class _GroupSampleMetric(_SampleMetric):
    """A sample-state metric of one attribute: the one ``update`` of GroupAUROC, ES-AUC, ...

    A subclass sets ``num_groups``, ``ignore_index`` and ``validate_args`` in its ``__init__``
    and implements ``compute`` on :meth:`_samples`.
    """

    num_groups: int
    ignore_index: int
    validate_args: bool

    def __init__(
        self,
        task: str = "binary",
        num_classes: int | None = None,
        num_labels: int | None = None,
        **kwargs: Any,
    ) -> None:
        num_columns = _task_arg_validation(task, num_classes, num_labels)
        super().__init__(
            preds_tail=() if task == "binary" else (num_columns,),
            target_tail=_target_shape_tail(task, num_columns),
            target_dtype=_target_dtype(task),
            **kwargs,
        )
        self.task = task
        self.num_classes = num_classes
        self.num_labels = num_labels
        self.num_columns = num_columns

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        """Add a batch: scores, labels and group ids (see the class for the task's shapes)."""
        if self.validate_args:
            _task_tensor_validation(
                preds, target, groups, self.num_groups, self.ignore_index, self.task,
                self.num_columns,
            )
        self._append(*_task_format(preds, target, groups, self.ignore_index, self.task))


class _ConfmatMetric(Metric):
    """A metric whose state is one confusion matrix per group, summed across processes.

    ``confmat`` has shape ``(num_groups + 1, 2, 2)``, indexed ``[group, y, y_hat]``; the last row
    holds the samples whose group is unknown (``ignore_index``).
    """

    full_state_update = False
    is_differentiable = False

    confmat: Tensor

    def __init__(
        self,
        num_groups: int,
        task: str = "binary",
        num_classes: int | None = None,
        num_labels: int | None = None,
        **kwargs: Any,
    ) -> None:
        num_columns = _task_arg_validation(task, num_classes, num_labels)
        super().__init__(**kwargs)
        self.task = task
        self.num_classes = num_classes
        self.num_labels = num_labels
        self.num_columns = num_columns
        shape = (num_groups + 1, 2, 2) if task == "binary" else (num_columns, num_groups + 1, 2, 2)
        self.add_state(
            "confmat", default=torch.zeros(*shape, dtype=torch.long), dist_reduce_fx="sum"
        )

    num_groups: int
    ignore_index: int
    validate_args: bool
    threshold: float

    def update(self, preds: Tensor, target: Tensor, groups: Tensor) -> None:
        """Add a batch: scores, labels and group ids (see the class for the task's shapes).

        A subclass sets ``num_groups``, ``threshold``, ``ignore_index`` and ``validate_args`` in
        its ``__init__`` and implements ``compute`` on :attr:`confmat`.
        """
        if self.validate_args:
            _task_tensor_validation(
                preds, target, groups, self.num_groups, self.ignore_index, self.task,
                self.num_columns,
            )
        preds, target, groups = _task_format(preds, target, groups, self.ignore_index, self.task)
        if self.task == "binary":
            self.confmat += _group_confmat(preds, target, groups, self.num_groups, self.threshold)
        else:
            self.confmat += _multitask_confmat(
                preds, target, groups, self.num_groups, self.task, self.threshold
            )
