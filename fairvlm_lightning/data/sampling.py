"""Samplers whose order is a pure function of ``(seed, epoch)``: a resumed run sees the same order.

Lightning does not checkpoint the global RNG, so a loader built with ``shuffle=True`` visits the
samples in a different order after a resume. Any state that is keyed on what a sample saw in an
epoch (Dynamic Bad Pair Mining, for one) then diverges from an uninterrupted run. Lightning calls
``sampler.set_epoch(epoch)`` at the start of every training epoch when the sampler has it, which is
all these samplers need.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import Any

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
