"""Samplers whose order is a pure function of ``(seed, epoch)``, so a resumed run sees the same order.

Lightning does not checkpoint the global RNG, so a loader built with ``shuffle=True`` visits the
samples in a different order after a resume. Any state that is keyed on what a sample saw in an
epoch (Dynamic Bad Pair Mining, for one) then diverges from an uninterrupted run. Lightning calls
``sampler.set_epoch(epoch)`` at the start of every training epoch when the sampler has it, which is
all these samplers need.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


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
