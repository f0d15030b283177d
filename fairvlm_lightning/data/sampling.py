"""Samplers whose order is a pure function of ``(seed, epoch)``: a resumed run sees the same order.

Lightning does not checkpoint the global RNG, so a loader built with ``shuffle=True`` visits the
samples in a different order after a resume. Any state that is keyed on what a sample saw in an
epoch (Dynamic Bad Pair Mining, for one) then diverges from an uninterrupted run. Lightning calls
``sampler.set_epoch(epoch)`` at the start of every training epoch when the sampler has it, which is
all these samplers need. :class:`ResumableDataLoader` adds the position within an epoch, which
Lightning saves in checkpoints, so a mid-epoch resume skips exactly what was seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "EpochShuffleSampler",
    "GroupBalancedSampler",
    "ResumableDataLoader",
    "UnpaddedDistributedSampler",
]


class EpochShuffleSampler(Sampler[int]):
    """Random permutation of ``range(len(data_source))`` seeded by ``seed + epoch``.

    Args:
        data_source: the dataset (only its length is used) or the number of samples.
        seed: base seed; the permutation of epoch ``e`` uses ``seed + e``.

    Example:
        >>> s = EpochShuffleSampler(5, seed=0)
        >>> s.set_epoch(1)
        >>> first = list(s)
        >>> s.set_epoch(1)
        >>> list(s) == first and sorted(first) == [0, 1, 2, 3, 4]
        True
    """

    def __init__(self, data_source: Sized | int, seed: int = 0) -> None:
        self.num_samples = data_source if isinstance(data_source, int) else len(data_source)
        if self.num_samples < 0:
            raise ValueError(f"data_source length must be >= 0, got {self.num_samples}")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation for ``epoch`` (Lightning calls this each training epoch)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


class GroupBalancedSampler(Sampler[int]):
    """Draw indices with replacement so that every group of an attribute is equally likely.

    Sample ``i`` of group ``g`` is drawn with probability ``1 / (G * n_g)``, where ``G`` is the
    number of groups present and ``n_g`` the size of group ``g``; so each group makes up ``1/G`` of
    an epoch in expectation. Unknown values (``-1``) form a group of their own, so those samples
    are still seen. The draw is a pure function of ``(seed, epoch)`` like
    :class:`EpochShuffleSampler`; Lightning calls :meth:`set_epoch` each training epoch.

    Args:
        groups: group id of every sample (a sequence, numpy array or tensor of integers).
        num_samples: indices per epoch; default ``len(groups)``.
        seed: base seed; epoch ``e`` uses ``seed + e``.

    Example:
        >>> s = GroupBalancedSampler([0, 0, 0, 0, 0, 0, 1, 1], num_samples=4000, seed=0)
        >>> s.set_epoch(3)
        >>> draws = torch.tensor(list(s))
        >>> round((draws >= 6).float().mean().item(), 1)  # group 1 is 2 of 8 samples
        0.5
        >>> list(s) == draws.tolist()
        True
    """

    def __init__(
        self,
        groups: Sequence[int] | torch.Tensor | Any,
        *,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        g = torch.as_tensor(groups)
        if g.ndim != 1:
            raise ValueError(f"groups must be 1-D, got shape {tuple(g.shape)}")
        if g.numel() == 0:
            raise ValueError("groups is empty")
        if g.is_floating_point() or g.is_complex():
            raise TypeError(f"groups must hold integers, got dtype {g.dtype}")
        _, inverse, counts = torch.unique(g.long(), return_inverse=True, return_counts=True)
        self.weights = (1.0 / counts.double())[inverse] / counts.numel()
        self.num_samples = len(g) if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the draw for ``epoch`` (Lightning calls this each training epoch)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator()
        gen.manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=gen)
        return iter(draws.tolist())

    def __len__(self) -> int:
        return self.num_samples


class UnpaddedDistributedSampler(DistributedSampler):
    """Shard ``range(len(dataset))`` over the ranks in order, each sample exactly once.

    ``torch``'s :class:`~torch.utils.data.distributed.DistributedSampler` (which Lightning
    injects under DDP) pads the shards to equal length by repeating samples, so a metric that
    gathers every score (AUROC, the equity-scaled and parity metrics) counts those samples twice
    and two processes disagree with one. Here rank ``r`` of ``R`` takes the indices
    ``r, r + R, r + 2R, ...`` and the shards differ in length by at most one; nothing is repeated
    or dropped, so synced metrics equal the single-process values. Lightning leaves a loader whose
    sampler is a ``DistributedSampler`` as it is, so this one is kept. Evaluation only: under DDP
    training every rank must run the same number of steps.

    Args:
        dataset: the dataset (only its length is used).
        num_replicas: number of ranks (default: the process group's world size).
        rank: this process's rank (default: the process group's rank).

    Raises:
        ValueError: fewer samples than ranks (a rank without a batch would never log, and
            Lightning's epoch-end sync of the logged values would wait for it forever).

    Example:
        >>> shards = [list(UnpaddedDistributedSampler(range(7), num_replicas=2, rank=r))
        ...           for r in range(2)]
        >>> shards
        [[0, 2, 4, 6], [1, 3, 5]]
    """

    def __init__(
        self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)  # type: ignore[arg-type]
        n = len(dataset)
        if 0 < n < self.num_replicas:
            raise ValueError(
                f"cannot shard {n} samples over {self.num_replicas} processes without an empty "
                "rank; evaluate on fewer devices or on more samples"
            )
        self.num_samples = len(range(self.rank, n, self.num_replicas))
        self.total_size = n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class _SkipFirstBatches:
    """The loader's batch sampler, minus the batches a resumed epoch has already seen."""

    def __init__(self, batches: Any, loader: ResumableDataLoader) -> None:
        self.batches = batches
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        # DataLoader iterators call iter() on this once or twice while they are created (and
        # again on each reset of persistent workers): the skip of the pass being created.
        it = iter(self.batches)
        for _ in range(self.loader._pass_skip):  # indices only: skipped samples are not loaded
            next(it, None)
        return it

    def __len__(self) -> int:
        return len(self.batches)


class _CountingIterator:
    def __init__(self, it: Iterator[Any], loader: ResumableDataLoader) -> None:
        self.it = it
        self.loader = loader

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        batch = next(self.it)
        self.loader._batches_done += 1
        return batch

    def __len__(self) -> int:
        return len(self.it)  # type: ignore[arg-type]


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch Lightning saves and restores.

    Lightning checkpoints the ``state_dict()`` of every training loader that has
    ``state_dict``/``load_state_dict`` (``FitLoop.on_save_checkpoint`` →
    ``CombinedLoader._state_dicts``), and on resume calls ``load_state_dict`` on the new loader
    before it creates the epoch's iterator (``FitLoop.setup_data``). It calls them on the
    *loader*, not on its sampler, so the position lives here: the state is the sampler's epoch
    and the number of batches the training loop has taken in it (counted where batches are
    handed out, so worker prefetching does not count). After loading, the next pass skips that
    many batches of the batch sampler (indices only, the skipped samples are never loaded) and
    visits the rest of the same epoch's order; a state taken at the end of an epoch resumes at
    the start of the next one. Lightning then continues its batch count where it stopped, so a
    resumed epoch sees every sample exactly once, as an uninterrupted one.

    The sampler's epoch is restored too: with worker processes Lightning creates the resumed
    epoch's iterator (and the workers start drawing indices) before it calls ``set_epoch``. The
    order itself must be a function of ``(seed, epoch)`` (:class:`EpochShuffleSampler`,
    :class:`GroupBalancedSampler`); with ``shuffle=True`` the skipped batches of the resumed
    order are not those of the interrupted one.

    Example:
        >>> loader = ResumableDataLoader(list(range(10)), batch_size=3,
        ...                              sampler=EpochShuffleSampler(10, seed=0))
        >>> loader.sampler.set_epoch(1)
        >>> it = iter(loader)
        >>> seen = [next(it).tolist(), next(it).tolist()]
        >>> state = loader.state_dict()
        >>> state
        {'epoch': 1, 'batches': 2, 'num_batches': 4}
        >>> resumed = ResumableDataLoader(list(range(10)), batch_size=3,
        ...                               sampler=EpochShuffleSampler(10, seed=0))
        >>> resumed.load_state_dict(state)
        >>> rest = [b.tolist() for b in resumed]
        >>> loader.sampler.set_epoch(1)
        >>> seen + rest == [b.tolist() for b in loader]
        True
    """

    _skip_next: int = 0  # batches the next pass skips (set by load_state_dict)
    _pass_skip: int = 0  # the skip of the pass whose iterator is being created
    _batches_done: int = 0  # batches of the current pass taken, skipped ones included

    @property
    def _index_sampler(self) -> Any:  # what DataLoader iterators draw indices from
        return _SkipFirstBatches(super()._index_sampler, self)

    def __iter__(self) -> Any:
        self._batches_done = self._pass_skip = self._skip_next
        self._skip_next = 0
        try:
            it = super().__iter__()
        finally:
            self._pass_skip = 0
        return _CountingIterator(it, self)

    def _samplers(self) -> list[Any]:
        found = [self.sampler, getattr(self.batch_sampler, "sampler", None)]
        return [s for s in dict.fromkeys(found) if s is not None]

    def _epoch(self) -> int | None:
        for sampler in self._samplers():
            epoch = getattr(sampler, "epoch", None)
            if isinstance(epoch, int):
                return epoch
        return None

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batches", "num_batches"}``: where the current epoch stands."""
        return {
            "epoch": self._epoch(),
            "batches": int(self._batches_done),
            "num_batches": len(self),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved position: the next pass skips the batches already taken.

        Raises:
            ValueError: a state without the keys of :meth:`state_dict`, or one saved by a loader
                with another number of batches per epoch (another dataset or batch size).
        """
        missing = {"epoch", "batches", "num_batches"} - set(state_dict)
        if missing:
            raise ValueError(
                f"ResumableDataLoader state lacks {sorted(missing)}; got {sorted(state_dict)}"
            )
        total, done, epoch = (
            int(state_dict["num_batches"]),
            int(state_dict["batches"]),
            state_dict["epoch"],
        )
        if total != len(self):
            raise ValueError(
                f"cannot resume: the checkpoint holds the state of a loader with {total} batches "
                f"per epoch, this one has {len(self)} (another dataset size or batch size?)"
            )
        if done >= total:  # the epoch was complete: start the next one
            self._skip_next = self._batches_done = 0
            epoch = None if epoch is None else int(epoch) + 1
        else:
            self._skip_next = self._batches_done = max(done, 0)
        if epoch is not None:
            for sampler in self._samplers():
                if callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(int(epoch))
