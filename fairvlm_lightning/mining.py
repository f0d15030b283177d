"""Dynamic Bad Pair Mining (DBPM): a framework-free core that any training loop can drive.

DBPM keeps, for every image-text pair of the training set (keyed by its dataset ``index``, never
by its position in a batch), the mean of its *raw, unweighted* loss in each past epoch. At the
start of epoch ``e`` (once ``e >= max(warmup_epochs, 1)``), with ``m_i`` the mean of pair ``i``'s
past per-epoch losses and ``mu``, ``sigma`` the mean and population standard deviation of
``{m_i}`` over the pairs that have a history, pair ``i`` is

* *noisy* if ``m_i < mu - beta_noisy * sigma`` (suspiciously easy), and
* *faulty* if ``m_i > mu + beta_faulty * sigma`` (consistently hard: e.g. a mismatched note).

A flagged pair's current loss ``l_i`` is multiplied by a detached weight ``w_i``; all other pairs
get 1. Weightings: ``"gaussian_pdf"`` = ``N(l_i; mu, sigma)``, the normal density exactly as the
paper and its code (it can exceed 1 when ``sigma < 1/sqrt(2*pi)``); ``"gaussian"`` =
``exp(-(l_i - mu)**2 / (2 * sigma**2))`` in ``(0, 1]``; ``"zero"`` drops the pair.

Options (all off in :meth:`BadPairMiner.paper`, the rule above; formulas in ``docs/mining.md``):

* ``statistic``: the per-pair number that is thresholded. ``"mean"`` (paper) is ``m_i`` above;
  ``"ema"`` is the recency-weighted mean ``h_i <- x_i`` at the pair's first epoch and
  ``h_i <- a * x_i + (1 - a) * h_i`` afterwards (``x_i`` = the pair's mean loss in the epoch,
  ``a = ema_decay``), so recent epochs count more.
* ``location``: ``"mean"`` (paper: ``mu`` = mean, ``sigma`` = population std) or ``"median"``
  (``mu`` = median, ``sigma`` = 1.4826 * median absolute deviation, the normal-consistent MAD).
* ``scope``: ``()`` (paper: one global ``mu``, ``sigma``) or attribute names, e.g. ``("race",)``:
  each pair is judged against the pairs of its own group (for several attributes, of its own
  intersection cell, e.g. race x gender) with that group's ``mu_g + beta * sigma_g``. Pairs of a
  group with fewer than ``min_group_size`` pairs with history, and pairs with an unknown (-1)
  value in a scope attribute, are judged against the global thresholds. The group ids of all
  pairs are passed to :meth:`BadPairMiner.end_epoch` (``groups={"race": (num_pairs,) ids}``);
  the miner keeps only O(groups) numbers about them.
* ``max_weight``: caps the weight of a flagged pair (``None``: no cap, as the paper). The
  ``"gaussian_pdf"`` weight peaks at ``1 / (sigma * sqrt(2*pi))``, 8e5 at ``sigma = 5e-7``: the
  miner warns once when that peak exceeds 1 and no cap is set.

The weighting always uses the global ``mu`` and ``sigma`` of the statistic.

The loop contract is three calls: :meth:`BadPairMiner.weights` before reducing the loss,
:meth:`BadPairMiner.record` with the raw per-pair losses of the step, and
:meth:`BadPairMiner.end_epoch` after the last batch of every epoch. The Lightning callback
:class:`fairvlm_lightning.callbacks.DynamicBadPairMining` makes those calls for a ``Trainer``.

Memory layout (15 bytes per pair, independent of the number of epochs)::

    history_sum    float32  4 B   sum over past epochs of the pair's epoch-mean loss
    history_count  int16    2 B   number of past epochs in which the pair was seen (<= 32767)
    current_sum    float32  4 B   sum of this epoch's finite raw losses of the pair
    current_count  int32    4 B   number of this epoch's finite losses of the pair
    flags          int8     1 B   0 = unflagged, 1 = noisy, 2 = faulty (for the current epoch)

``current_count`` is int32 rather than int16 because NCCL cannot all-reduce int16 tensors.
With ``statistic="ema"`` ``history_sum`` holds the recency-weighted mean itself (same bytes).
``end_epoch`` works in chunks of 2**20 pairs, so its transient memory is a few MiB whatever the
number of pairs, except with ``location="median"`` (a transient float32 copy of the statistic,
4 bytes per pair) and with a ``scope`` (a transient int64 group-cell id per chunk).

Non-finite losses (NaN, +-inf) are skipped and counted (:attr:`BadPairMiner.num_nonfinite`); they
never enter a pair's history, so they cannot poison ``mu`` and ``sigma``.

Distributed training: every process records the pairs it saw. :meth:`BadPairMiner.end_epoch`
first sums the current-epoch accumulators over the ranks (all-reduce), so every rank computes the
same history, ``mu``, ``sigma`` and flags. :meth:`BadPairMiner.state_dict` performs no collective:
call :meth:`BadPairMiner.sync` on every rank before saving (the Lightning callback does). After a
sync, or a load of a saved state, every rank holds the global sums; the ranks other than 0 drop
their copy before they record again or fold the epoch, so recording can go on and every loss is
still counted exactly once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

from fairvlm_lightning.validation import check_integer_ids, is_integer_tensor

__all__ = [
    "FAULTY",
    "LOCATIONS",
    "NOISY",
    "NOT_FLAGGED",
    "STATISTICS",
    "WEIGHTINGS",
    "BadPairMiner",
    "dist_rank_world",
]

Weighting = Literal["gaussian_pdf", "gaussian", "zero"]
WEIGHTINGS: tuple[str, ...] = ("gaussian_pdf", "gaussian", "zero")
Statistic = Literal["mean", "ema"]
STATISTICS: tuple[str, ...] = ("mean", "ema")
Location = Literal["mean", "median"]
LOCATIONS: tuple[str, ...] = ("mean", "median")
#: 1 / Phi^-1(3/4): MAD * this estimates sigma for normal data
MAD_TO_SIGMA = 1.482602218505602

NOT_FLAGGED = 0
NOISY = 1
FAULTY = 2

#: The paper's rule (the defaults of :class:`BadPairMiner`): see :meth:`BadPairMiner.paper`.
PAPER_SETTINGS: dict[str, Any] = {
    "warmup_epochs": 1,
    "beta_noisy": 3.0,
    "beta_faulty": 3.0,
    "weighting": "gaussian_pdf",
    "statistic": "mean",
    "location": "mean",
    "scope": (),
    "max_weight": None,
}

_CHUNK = 1 << 20
_STATE_VERSION = 2
_MAX_EPOCHS = torch.iinfo(torch.int16).max
_MAX_CELLS = 1 << 16
#: the ``gaussian_pdf`` weight peak ``1 / (sigma * sqrt(2 pi))`` above which the miner warns
PDF_PEAK_WARNING = 10.0
_SQRT_2PI = math.sqrt(2.0 * math.pi)

# name -> dtype of every per-pair tensor of the state (the 15-byte layout above)
_PER_PAIR: dict[str, torch.dtype] = {
    "history_sum": torch.float32,
    "history_count": torch.int16,
    "current_sum": torch.float32,
    "current_count": torch.int32,
    "flags": torch.int8,
}


def dist_rank_world(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` of ``group`` if ``torch.distributed`` is initialised, else (0, 1).

    Example:
        >>> dist_rank_world()
        (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def validate_hparams(
    num_pairs: int | None,
    warmup_epochs: int,
    beta_noisy: float,
    beta_faulty: float,
    weighting: str,
    *,
    statistic: str = "mean",
    location: str = "mean",
    scope: Sequence[str] = (),
    min_group_size: int = 50,
    ema_decay: float = 0.5,
    max_weight: float | None = None,
) -> None:
    """Raise ``TypeError``/``ValueError`` naming the first bad DBPM hyper-parameter.

    ``num_pairs=None`` is accepted (the Lightning callback infers it from the dataset).

    Example:
        >>> validate_hparams(10, 1, 3.0, 3.0, "gaussian_pdf")
        >>> validate_hparams(10, 1, 3.0, 3.0, "median")
        Traceback (most recent call last):
        ...
        ValueError: weighting must be one of ('gaussian_pdf', 'gaussian', 'zero'), got 'median'
    """
    if num_pairs is not None:
        if isinstance(num_pairs, bool) or not isinstance(num_pairs, int):
            raise TypeError(f"num_pairs must be an int, got {type(num_pairs).__name__}")
        if num_pairs <= 0:
            raise ValueError(f"num_pairs must be > 0, got {num_pairs}")
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int):
        raise TypeError(f"warmup_epochs must be an int, got {type(warmup_epochs).__name__}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    for name, beta in (("beta_noisy", beta_noisy), ("beta_faulty", beta_faulty)):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(beta).__name__}")
        if math.isnan(beta) or beta < 0:
            raise ValueError(f"{name} must be >= 0 (math.inf disables that side), got {beta}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if location not in LOCATIONS:
        raise ValueError(f"location must be one of {LOCATIONS}, got {location!r}")
    if isinstance(scope, str) or not all(isinstance(a, str) for a in scope):
        raise TypeError(f"scope must be a sequence of attribute names, got {scope!r}")
    if len(set(scope)) != len(tuple(scope)):
        raise ValueError(f"scope has duplicates: {tuple(scope)}")
    if isinstance(min_group_size, bool) or not isinstance(min_group_size, int):
        raise TypeError(f"min_group_size must be an int, got {type(min_group_size).__name__}")
    if min_group_size < 2:
        raise ValueError(f"min_group_size must be >= 2, got {min_group_size}")
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)):
        raise TypeError(f"ema_decay must be a number, got {type(ema_decay).__name__}")
    if not 0.0 < ema_decay <= 1.0:
        raise ValueError(f"ema_decay must be in (0, 1], got {ema_decay}")
    if max_weight is not None:
        if isinstance(max_weight, bool) or not isinstance(max_weight, (int, float)):
            raise TypeError(f"max_weight must be a number or None, got {type(max_weight).__name__}")
        if not max_weight > 0 or math.isnan(max_weight):
            raise ValueError(f"max_weight must be > 0 (or None: no cap), got {max_weight}")


def _threshold(location: float, scale: float, signed_beta: float) -> float:
    """``location + signed_beta * scale``; an infinite beta gives +-inf whatever the scale."""
    if math.isinf(signed_beta):
        return signed_beta
    return location + signed_beta * scale


def _median(values: Tensor) -> float:
    """Median as NumPy's (mean of the two middle values for an even count), in float64."""
    n = values.numel()
    lo = float(values.kthvalue((n + 1) // 2).values)
    hi = float(values.kthvalue(n // 2 + 1).values) if n % 2 == 0 else lo
    return 0.5 * (lo + hi)


def _median_mad(values: Tensor) -> tuple[float, float]:
    """``(median, 1.4826 * median(|values - median|))`` of a 1-D float64 tensor."""
    med = _median(values)
    return med, MAD_TO_SIGMA * _median((values - med).abs())


def _cell_values(cells: tuple[list[Tensor], list[int]], cell: int) -> tuple[int, ...]:
    """The group id of each scope attribute of ``cell`` (inverse of the mixed radix)."""
    _, strides = cells
    return tuple(
        (cell // strides[i]) % (strides[i + 1] // strides[i]) for i in range(len(strides) - 1)
    )


_GROUP_TABLE_STATS = (
    "count",
    "location",
    "scale",
    "own_threshold",
    "threshold_noisy",
    "threshold_faulty",
)


def _group_table_from_tensors(groups: Any, stats: Any) -> list[dict[str, Any]]:
    if not isinstance(groups, Tensor) or not isinstance(stats, Tensor):
        return []
    out: list[dict[str, Any]] = []
    for g, row in zip(groups.tolist(), stats.tolist(), strict=True):
        entry: dict[str, Any] = {"group": tuple(int(v) for v in g)}
        for key, value in zip(_GROUP_TABLE_STATS, row, strict=True):
            entry[key] = value
        entry["count"] = int(entry["count"])
        entry["own_threshold"] = bool(entry["own_threshold"])
        out.append(entry)
    return out


class _CellMoments:
    """Count, mean and M2 per group cell, merged chunk by chunk (Chan et al.), float64."""

    def __init__(self, strides: list[int]) -> None:
        k = strides[-1]
        self.count = torch.zeros(k, dtype=torch.float64)
        self.mean = torch.zeros(k, dtype=torch.float64)
        self.m2 = torch.zeros(k, dtype=torch.float64)

    def add(self, cell: Tensor, values: Tensor) -> None:
        known = cell >= 0
        cell, values = cell[known].cpu(), values[known].cpu()
        k = self.count.numel()
        n_c = torch.bincount(cell, minlength=k).double()
        sums = torch.bincount(cell, weights=values, minlength=k)
        mean_c = torch.where(n_c > 0, sums / n_c.clamp_min(1), 0.0)
        m2_c = torch.bincount(cell, weights=(values - mean_c[cell]) ** 2, minlength=k)
        total = self.count + n_c
        delta = mean_c - self.mean
        safe = total.clamp_min(1)
        self.mean = self.mean + delta * n_c / safe
        self.m2 = self.m2 + m2_c + delta * delta * self.count * n_c / safe
        self.count = total

    def result(self) -> list[tuple[int, float, float]]:
        out = []
        for c in range(self.count.numel()):
            n = int(self.count[c])
            sd = math.sqrt(max(float(self.m2[c]), 0.0) / n) if n else math.nan
            out.append((n, float(self.mean[c]) if n else math.nan, sd))
        return out


class BadPairMiner:
    """Per-pair loss memory, thresholds and weights of Dynamic Bad Pair Mining.

    Args:
        num_pairs: number of pairs in the training set; ``index`` values lie in
            ``[0, num_pairs)``.
        warmup_epochs: no pair is flagged during the first ``max(warmup_epochs, 1)`` epochs
            (``0`` and ``1`` behave alike: flags need at least one epoch of history).
        beta_noisy: a pair is noisy if its history mean is below ``mu - beta_noisy * sigma``;
            ``math.inf`` disables noisy flags.
        beta_faulty: a pair is faulty if its history mean is above ``mu + beta_faulty * sigma``;
            ``math.inf`` disables faulty flags.
        weighting: ``"gaussian_pdf"`` (paper), ``"gaussian"`` or ``"zero"``; see the module
            docstring.
        statistic: ``"mean"`` (paper: mean of the per-epoch means) or ``"ema"``
            (recency-weighted mean with ``ema_decay``).
        location: ``"mean"`` (paper: mean and population std) or ``"median"`` (median and
            1.4826 * MAD).
        scope: attribute names whose groups (intersection cells for several) get their own
            thresholds; ``()`` (paper) is global. Needs ``groups=`` in :meth:`end_epoch`.
        min_group_size: a group with fewer pairs with history is judged globally.
        ema_decay: weight ``a`` of the newest epoch in ``statistic="ema"``.
        max_weight: cap on a flagged pair's weight (``None``: no cap, as the paper).
        device: where the state lives; keep it on the training device so that ``record`` and
            ``weights`` need no host transfer (:meth:`to` moves it later).

    Example:
        >>> import torch
        >>> miner = BadPairMiner(6, warmup_epochs=1, beta_noisy=1.5, beta_faulty=1.5)
        >>> losses = torch.tensor([1.0, 1.1, 0.9, 1.0, 1.05, 9.0])  # pair 5 is always hard
        >>> for epoch in range(2):
        ...     w = miner.weights(torch.arange(6), losses)  # before reducing the loss
        ...     miner.record(torch.arange(6), losses)  # raw, unweighted losses
        ...     summary = miner.end_epoch()
        >>> miner.faulty_mask.nonzero().flatten().tolist(), miner.num_noisy
        ([5], 0)
        >>> round(miner.mu, 4), round(miner.sigma, 4)
        (2.3417, 2.9783)
        >>> miner.weights(torch.tensor([0, 5]), torch.tensor([1.0, 9.0]))
        tensor([1.0000, 0.0110])
    """

    def __init__(
        self,
        num_pairs: int,
        *,
        warmup_epochs: int = 1,
        beta_noisy: float = 3.0,
        beta_faulty: float = 3.0,
        weighting: Weighting = "gaussian_pdf",
        statistic: Statistic = "mean",
        location: Location = "mean",
        scope: Sequence[str] = (),
        min_group_size: int = 50,
        ema_decay: float = 0.5,
        max_weight: float | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        scope = tuple(scope) if not isinstance(scope, str) else scope
        validate_hparams(
            num_pairs,
            warmup_epochs,
            beta_noisy,
            beta_faulty,
            weighting,
            statistic=statistic,
            location=location,
            scope=scope,
            min_group_size=min_group_size,
            ema_decay=ema_decay,
            max_weight=max_weight,
        )
        self.num_pairs = int(num_pairs)
        self.warmup_epochs = int(warmup_epochs)
        self.beta_noisy = float(beta_noisy)
        self.beta_faulty = float(beta_faulty)
        self.weighting: str = weighting
        self.statistic: str = statistic
        self.location: str = location
        self.scope: tuple[str, ...] = tuple(scope)
        self.min_group_size = int(min_group_size)
        self.ema_decay = float(ema_decay)
        self.max_weight = None if max_weight is None else float(max_weight)
        self._warned_pdf = False
        # per group cell (O(groups)): the scope values, pairs with history, own thresholds
        self.group_table: list[dict[str, Any]] = []
        dev = torch.device("cpu") if device is None else torch.device(device)
        n = self.num_pairs
        self._history_sum = torch.zeros(n, dtype=torch.float32, device=dev)
        self._history_count = torch.zeros(n, dtype=torch.int16, device=dev)
        self._current_sum = torch.zeros(n, dtype=torch.float32, device=dev)
        self._current_count = torch.zeros(n, dtype=torch.int32, device=dev)
        self._flags = torch.zeros(n, dtype=torch.int8, device=dev)
        # skipped non-finite losses of the current epoch (local until the next sync)
        self._nonfinite_pending = torch.zeros((), dtype=torch.int64, device=dev)
        # True after sync()/load under DDP: every rank holds the global current-epoch sums
        self._replicated = False
        self._replica_group: Any = None
        self.epochs_completed = 0
        self.mu = math.nan
        self.sigma = math.nan
        self.threshold_noisy = math.nan
        self.threshold_faulty = math.nan
        self.num_noisy = 0
        self.num_faulty = 0
        self.num_with_history = 0
        self.num_seen_last_epoch = 0
        self._nonfinite_total = 0

    @classmethod
    def paper(cls, num_pairs: int, **kwargs: Any) -> BadPairMiner:
        """The paper's rule exactly (:data:`PAPER_SETTINGS`).

        History mean, global mean/std thresholds, beta = 3/3, ``"gaussian_pdf"`` weights without
        a cap; ``kwargs`` may set ``warmup_epochs`` or ``device`` (or override anything else).

        Example:
            >>> m = BadPairMiner.paper(10)
            >>> m.statistic, m.location, m.scope, m.beta_faulty, m.weighting, m.max_weight
            ('mean', 'mean', (), 3.0, 'gaussian_pdf', None)
        """
        settings: dict[str, Any] = dict(PAPER_SETTINGS)
        settings.update(kwargs)
        return cls(num_pairs, **settings)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        """Device that holds the state."""
        return self._flags.device

    @property
    def flags(self) -> Tensor:
        """(num_pairs,) int8 codes for the current epoch: 0 unflagged, 1 noisy, 2 faulty."""
        return self._flags

    @property
    def noisy_mask(self) -> Tensor:
        """(num_pairs,) bool, True for pairs flagged noisy for the current epoch."""
        return self._flags == NOISY

    @property
    def faulty_mask(self) -> Tensor:
        """(num_pairs,) bool, True for pairs flagged faulty for the current epoch."""
        return self._flags == FAULTY

    @property
    def flagged_mask(self) -> Tensor:
        """(num_pairs,) bool, True for pairs flagged noisy or faulty."""
        return self._flags != NOT_FLAGGED

    @property
    def history_count(self) -> Tensor:
        """(num_pairs,) int16 number of completed epochs in which each pair was seen."""
        return self._history_count

    @property
    def history_mean(self) -> Tensor:
        """(num_pairs,) float32 statistic that is thresholded; NaN without history.

        The mean of each pair's per-epoch mean losses (``statistic="mean"``, the paper) or the
        recency-weighted mean (``statistic="ema"``).
        """
        count = self._history_count
        return torch.where(count > 0, self._stat(0, self.num_pairs), math.nan)

    def _stat(self, s: int, e: int) -> Tensor:
        """The statistic of pairs ``s:e`` (0/0 = NaN or garbage without history: mask it)."""
        if self.statistic == "ema":
            return self._history_sum[s:e].clone()
        return self._history_sum[s:e] / self._history_count[s:e]

    @property
    def has_history(self) -> Tensor:
        """(num_pairs,) bool, True for pairs seen in at least one completed epoch."""
        return self._history_count > 0

    @property
    def flags_active(self) -> bool:
        """Whether the warm-up is over (flags may be set for the current epoch)."""
        return self.epochs_completed >= max(self.warmup_epochs, 1)

    @property
    def num_nonfinite(self) -> int:
        """Non-finite losses skipped so far.

        Completed epochs are summed over ranks; skips of the current epoch are this process's
        own until the next :meth:`sync`.
        """
        return self._nonfinite_total + int(self._nonfinite_pending)

    @property
    def nbytes(self) -> int:
        """Bytes held by the per-pair state (``15 * num_pairs``)."""
        return sum(t.element_size() * t.numel() for t in self._per_pair_tensors().values())

    @property
    def bytes_per_pair(self) -> float:
        """``nbytes / num_pairs`` (15.0 with the layout in the module docstring)."""
        return self.nbytes / self.num_pairs

    def _per_pair_tensors(self) -> dict[str, Tensor]:
        return {
            "history_sum": self._history_sum,
            "history_count": self._history_count,
            "current_sum": self._current_sum,
            "current_count": self._current_count,
            "flags": self._flags,
        }

    def to(self, device: torch.device | str) -> BadPairMiner:
        """Move the state to ``device`` (in place) and return ``self``."""
        device = torch.device(device)
        for name, t in self._per_pair_tensors().items():
            setattr(self, f"_{name}", t.to(device))
        self._nonfinite_pending = self._nonfinite_pending.to(device)
        return self

    # ------------------------------------------------------------------ input checks
    def _check_batch(self, index: Any, losses: Any, where: str) -> tuple[Tensor, Tensor]:
        if not isinstance(index, Tensor):
            raise TypeError(f"{where}: index must be a torch.Tensor, got {type(index).__name__}")
        if not isinstance(losses, Tensor):
            raise TypeError(f"{where}: losses must be a torch.Tensor, got {type(losses).__name__}")
        if not is_integer_tensor(index):
            raise TypeError(f"{where}: index must be an integer tensor, got {index.dtype}")
        if not losses.is_floating_point():
            raise TypeError(f"{where}: losses must be a floating-point tensor, got {losses.dtype}")
        if index.ndim != 1 or losses.ndim != 1 or index.shape[0] != losses.shape[0]:
            raise ValueError(
                f"{where}: index and losses must both be 1-D of the same length (B,), got index "
                f"shape {tuple(index.shape)} and losses shape {tuple(losses.shape)}"
            )
        if index.numel():
            lo, hi = (int(v) for v in torch.aminmax(index))
            if lo < 0 or hi >= self.num_pairs:
                raise ValueError(
                    f"{where}: index out of range [0, {self.num_pairs}): got values in "
                    f"[{lo}, {hi}] (num_pairs={self.num_pairs})"
                )
        return index.to(self.device, torch.long), losses.detach()

    # ------------------------------------------------------------------ the loop contract
    def record(self, index: Tensor, losses: Tensor) -> None:
        """Add a batch of raw per-pair losses of the current epoch.

        A pair recorded several times in an epoch (several batches, several ranks) contributes
        the mean of its finite losses. Non-finite losses are skipped and counted.

        Args:
            index: (B,) integer dataset indices in ``[0, num_pairs)``.
            losses: (B,) raw, unweighted per-pair losses (detached here).

        Raises:
            TypeError: if ``index`` is not an integer tensor or ``losses`` not a float tensor.
            ValueError: on a shape mismatch or an index outside ``[0, num_pairs)``.
        """
        index, losses = self._check_batch(index, losses, "record")
        self._drop_replica()
        values = losses.to(self.device, torch.float32)
        finite = torch.isfinite(values)
        self._current_sum.index_add_(0, index, torch.where(finite, values, 0.0))
        self._current_count.index_add_(0, index, finite.to(torch.int32))
        self._nonfinite_pending += (~finite).sum()

    def weights(self, index: Tensor, losses: Tensor) -> Tensor:
        """Detached (B,) weights for the current epoch: 1, or the weighting of flagged pairs.

        Args:
            index: (B,) integer dataset indices.
            losses: (B,) current per-pair losses (the weighting is evaluated at these values).

        Returns:
            (B,) tensor with ``losses``' dtype and device, without gradient.
        """
        index, losses = self._check_batch(index, losses, "weights")
        if self.num_noisy + self.num_faulty == 0:
            return torch.ones_like(losses)
        flagged = (self._flags.index_select(0, index) != NOT_FLAGGED).to(losses.device)
        values = losses.float()
        if self.weighting == "zero":
            down = torch.zeros_like(values)
        else:
            down = torch.exp(-((values - self.mu) ** 2) / (2.0 * self.sigma**2))
            if self.weighting == "gaussian_pdf":
                down = down / (self.sigma * _SQRT_2PI)
        if self.max_weight is not None:
            down = down.clamp(max=self.max_weight)
        return torch.where(flagged, down, torch.ones_like(values)).to(losses.dtype)

    def _drop_replica(self) -> None:
        """After a sync or a load, ranks other than 0 give their copy of the sums back."""
        if self._replicated:
            if dist_rank_world(self._replica_group)[0] != 0:
                self._current_sum.zero_()
                self._current_count.zero_()
                self._nonfinite_pending.zero_()
            self._replicated = False

    def _all_reduce_current(self, group: Any) -> bool:
        self._drop_replica()
        if dist_rank_world(group)[1] == 1:
            return False
        for t in (self._current_sum, self._current_count, self._nonfinite_pending):
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return True

    def sync(self, group: Any = None) -> None:
        """Sum the current-epoch accumulators over ``group`` (no-op without ``torch.distributed``).

        Must be called on every rank of ``group``; call it before :meth:`state_dict` when saving
        a checkpoint. Afterwards every rank holds the same sums (and the same state dict); the
        ranks other than 0 drop their copy before they record again or fold the epoch, so no loss
        is ever counted twice.
        """
        if self._all_reduce_current(group):
            self._replicated = True
            self._replica_group = group

    @torch.no_grad()
    def end_epoch(
        self,
        *,
        sync: bool = True,
        group: Any = None,
        groups: Mapping[str, Tensor] | None = None,
    ) -> dict[str, float | int]:
        """Fold the current epoch into the history and compute the flags for the next epoch.

        Args:
            sync: first sum the current-epoch accumulators over the ranks of ``group`` (when
                ``torch.distributed`` is initialised); must then be called on every rank.
            group: process group for the all-reduce (default: the world).
            groups: with a ``scope``, the group id of every pair for each scope attribute, as
                ``{attribute: (num_pairs,) integer tensor}`` (-1 = unknown); the same on every
                rank. Ignored without a scope.

        Returns:
            :meth:`summary` of the new state.

        Raises:
            ValueError: a scope attribute missing from ``groups`` or of the wrong shape.
        """
        if self.epochs_completed >= _MAX_EPOCHS:
            raise RuntimeError(f"BadPairMiner supports at most {_MAX_EPOCHS} epochs")
        cells = self._check_groups(groups)
        if sync:  # every rank gets the global sums, then folds them and clears them
            self._all_reduce_current(group)
        self._replicated = False
        n = self.num_pairs
        num_seen = 0
        ema = self.statistic == "ema"
        a = self.ema_decay
        median = self.location == "median"
        kept: list[Tensor] = []  # the statistic of pairs with history (median only)
        kept_cells: list[Tensor] = []
        cell_acc = None if cells is None else _CellMoments(cells[1])
        # pass 1: fold, and mean / M2 of the statistic (chunk-wise two-pass statistics
        # merged with Chan et al.'s parallel update, in float64)
        count_h, mean_h, m2_h = 0, 0.0, 0.0
        for s in range(0, n, _CHUNK):
            e = min(s + _CHUNK, n)
            count = self._current_count[s:e]
            seen = count > 0
            epoch_mean = torch.where(seen, self._current_sum[s:e] / count, 0.0)
            if ema:
                hist = self._history_sum[s:e]
                new = torch.where(
                    self._history_count[s:e] == 0, epoch_mean, a * epoch_mean + (1.0 - a) * hist
                )
                self._history_sum[s:e] = torch.where(seen, new, hist)
            else:
                self._history_sum[s:e] += epoch_mean
            self._history_count[s:e] += seen
            self._current_sum[s:e].zero_()
            count.zero_()
            num_seen += int(seen.sum())
            has = self._history_count[s:e] > 0
            values = self._stat(s, e)[has].double()
            if values.numel():
                n_c = values.numel()
                mean_c = float(values.mean())
                m2_c = float(((values - mean_c) ** 2).sum())
                total = count_h + n_c
                delta = mean_c - mean_h
                mean_h += delta * n_c / total
                m2_h += m2_c + delta * delta * count_h * n_c / total
                count_h = total
            if cells is not None:
                cell = self._cell_chunk(cells, s, e)[has]
                if median:
                    kept_cells.append(cell)
                else:
                    assert cell_acc is not None
                    cell_acc.add(cell, values)
            if median:
                kept.append(values)
        self._nonfinite_total += int(self._nonfinite_pending)
        self._nonfinite_pending.zero_()
        self.epochs_completed += 1
        self.num_seen_last_epoch = num_seen
        self.num_with_history = count_h

        all_values = torch.cat(kept) if median and kept else None
        if count_h == 0:
            self.mu = self.sigma = self.threshold_noisy = self.threshold_faulty = math.nan
        else:
            if all_values is not None:
                self.mu, self.sigma = _median_mad(all_values)
            else:
                self.mu = mean_h
                self.sigma = math.sqrt(max(m2_h, 0.0) / count_h)
            self.threshold_noisy = self._threshold(-self.beta_noisy)
            self.threshold_faulty = self._threshold(self.beta_faulty)
        self._warn_pdf_peak()

        # per-group thresholds (O(groups) numbers)
        cell_lo = cell_hi = cell_own = None
        self.group_table = []
        if cells is not None and count_h > 0:
            num_cells = cells[1][-1]
            if median:
                cell_all = torch.cat(kept_cells)
                assert all_values is not None
                stats = []
                for c in range(num_cells):
                    v = all_values[cell_all == c]
                    stats.append(
                        (v.numel(), *_median_mad(v)) if v.numel() else (0, math.nan, math.nan)
                    )
            else:
                assert cell_acc is not None
                stats = cell_acc.result()
            cell_lo = torch.full((num_cells,), self.threshold_noisy, dtype=torch.float64)
            cell_hi = torch.full((num_cells,), self.threshold_faulty, dtype=torch.float64)
            cell_own = torch.zeros(num_cells, dtype=torch.bool)
            for c, (cnt, loc, scale) in enumerate(stats):
                if cnt == 0:
                    continue
                own = cnt >= self.min_group_size
                lo = _threshold(loc, scale, -self.beta_noisy) if own else self.threshold_noisy
                hi = _threshold(loc, scale, self.beta_faulty) if own else self.threshold_faulty
                cell_lo[c], cell_hi[c], cell_own[c] = lo, hi, own
                self.group_table.append(
                    {
                        "group": _cell_values(cells, c),
                        "count": int(cnt),
                        "location": float(loc),
                        "scale": float(scale),
                        "own_threshold": bool(own),
                        "threshold_noisy": float(lo),
                        "threshold_faulty": float(hi),
                    }
                )
            cell_lo, cell_hi = cell_lo.to(self.device), cell_hi.to(self.device)
            cell_own = cell_own.to(self.device)

        # pass 2: flags (a pair without history is never below or above)
        self.num_noisy = self.num_faulty = 0
        if not (self.flags_active and count_h > 0):
            self._flags.zero_()
            return self.summary()
        lo, hi = self.threshold_noisy, self.threshold_faulty
        for s in range(0, n, _CHUNK):
            e = min(s + _CHUNK, n)
            has = self._history_count[s:e] > 0
            stat = torch.where(has, self._stat(s, e), math.nan)
            if cells is not None and cell_lo is not None:
                assert cell_hi is not None and cell_own is not None
                cell = self._cell_chunk(cells, s, e)
                safe = cell.clamp_min(0)
                judged_in_group = (cell >= 0) & cell_own[safe]
                stat64 = stat.double()
                noisy = stat64 < torch.where(judged_in_group, cell_lo[safe], lo)
                faulty = stat64 > torch.where(judged_in_group, cell_hi[safe], hi)
            else:
                noisy, faulty = stat < lo, stat > hi
            self._flags[s:e] = noisy.to(torch.int8) + FAULTY * faulty.to(torch.int8)
            self.num_noisy += int(noisy.sum())
            self.num_faulty += int(faulty.sum())
        return self.summary()

    # ------------------------------------------------------------------ group cells
    def _check_groups(
        self, groups: Mapping[str, Tensor] | None
    ) -> tuple[list[Tensor], list[int]] | None:
        """Validate ``groups`` for the scope; return the id tensors and the cumulative strides.

        The cell of a pair is ``sum_a g_a * stride_a`` (mixed radix over the scope attributes,
        radix = 1 + the largest id); the last stride is the number of cells.
        """
        if not self.scope:
            return None
        if groups is None or not isinstance(groups, Mapping):
            raise ValueError(
                f"BadPairMiner.end_epoch: scope={self.scope} needs groups={{attribute: "
                f"(num_pairs,) group ids}}, got {type(groups).__name__}"
            )
        tensors, strides = [], [1]
        for attr in self.scope:
            if attr not in groups:
                raise ValueError(
                    f"BadPairMiner.end_epoch: groups lacks scope attribute {attr!r}; got keys "
                    f"{sorted(groups)}"
                )
            g = groups[attr]
            if not isinstance(g, Tensor) or g.shape != (self.num_pairs,):
                got = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
                raise ValueError(
                    f"BadPairMiner.end_epoch: groups[{attr!r}] must be a tensor of shape "
                    f"({self.num_pairs},), got {got}"
                )
            check_integer_ids(g, f"groups[{attr!r}]", error=ValueError)
            lo, hi = (int(v) for v in torch.aminmax(g)) if g.numel() else (0, 0)
            if lo < -1:
                raise ValueError(f"groups[{attr!r}] values must be >= -1 (-1 = unknown), got {lo}")
            tensors.append(g.to(self.device))
            strides.append(strides[-1] * (max(hi, 0) + 1))
        if strides[-1] > _MAX_CELLS:
            raise ValueError(
                f"scope {self.scope} makes {strides[-1]} group cells; at most {_MAX_CELLS}"
            )
        return tensors, strides

    def _cell_chunk(self, cells: tuple[list[Tensor], list[int]], s: int, e: int) -> Tensor:
        tensors, strides = cells
        cell = torch.zeros(e - s, dtype=torch.long, device=self.device)
        unknown = torch.zeros(e - s, dtype=torch.bool, device=self.device)
        for g, stride in zip(tensors, strides, strict=False):
            v = g[s:e].long()
            unknown |= v < 0
            cell += v.clamp_min(0) * stride
        return torch.where(unknown, -1, cell)

    def _threshold(self, signed_beta: float) -> float:
        return _threshold(self.mu, self.sigma, signed_beta)

    def _warn_pdf_peak(self) -> None:
        if (
            self.weighting != "gaussian_pdf"
            or self.max_weight is not None
            or self._warned_pdf
            or not self.flags_active
            or not self.sigma > 0
        ):
            return
        peak = 1.0 / (self.sigma * _SQRT_2PI)
        if peak > PDF_PEAK_WARNING:
            self._warned_pdf = True
            warnings.warn(
                f"DBPM: sigma = {self.sigma:.3g}, so the 'gaussian_pdf' weight of a flagged pair "
                f"can reach {peak:.3g} (up-weighting it); set max_weight (e.g. 1.0) or use "
                "weighting='gaussian'",
                RuntimeWarning,
                stacklevel=3,
            )

    def summary(self) -> dict[str, float | int]:
        """Python numbers describing the current flags (what the callback logs).

        Keys: ``epochs_completed``, ``mu``, ``sigma``, ``threshold_noisy``,
        ``threshold_faulty``, ``num_noisy``, ``num_faulty``, ``num_with_history``,
        ``num_seen_last_epoch``, ``num_nonfinite``, ``num_own_threshold_groups`` (groups of the
        scope judged by their own thresholds; the per-group numbers are in
        :attr:`group_table`).
        """
        return {
            "epochs_completed": self.epochs_completed,
            "mu": self.mu,
            "sigma": self.sigma,
            "threshold_noisy": self.threshold_noisy,
            "threshold_faulty": self.threshold_faulty,
            "num_noisy": self.num_noisy,
            "num_faulty": self.num_faulty,
            "num_with_history": self.num_with_history,
            "num_seen_last_epoch": self.num_seen_last_epoch,
            "num_nonfinite": self.num_nonfinite,
            "num_own_threshold_groups": sum(row["own_threshold"] for row in self.group_table),
        }

    # ------------------------------------------------------------------ checkpointing
    _SCALARS: tuple[str, ...] = (
        "epochs_completed",
        "mu",
        "sigma",
        "threshold_noisy",
        "threshold_faulty",
        "num_noisy",
        "num_faulty",
        "num_with_history",
        "num_seen_last_epoch",
    )

    def state_dict(self) -> dict[str, Any]:
        """State as CPU tensors and Python numbers (loadable with ``weights_only=True``).

        No collective is performed: under ``torch.distributed`` call :meth:`sync` on every rank
        first, or the other ranks' pending current-epoch losses are missing.
        """
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "num_pairs": self.num_pairs,
            "warmup_epochs": self.warmup_epochs,
            "beta_noisy": self.beta_noisy,
            "beta_faulty": self.beta_faulty,
            "nonfinite_total": self._nonfinite_total,
            "nonfinite_pending": int(self._nonfinite_pending),
            "statistic": STATISTICS.index(self.statistic),
            **self._group_table_tensors(),
        }
        for name in self._SCALARS:
            state[name] = getattr(self, name)
        for name, t in self._per_pair_tensors().items():
            state[name] = t.detach().to("cpu", copy=True)
        return state

    def _group_table_tensors(self) -> dict[str, Tensor]:
        rows = self.group_table
        groups = torch.tensor([list(r["group"]) for r in rows], dtype=torch.long)
        stats = torch.tensor(
            [[float(r[k]) for k in _GROUP_TABLE_STATS] for r in rows], dtype=torch.float64
        )
        return {
            "group_table_groups": groups.reshape(len(rows), len(self.scope)),
            "group_table_stats": stats.reshape(len(rows), len(_GROUP_TABLE_STATS)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (history, current-epoch sums, flags, statistics).

        Hyper-parameters (betas, warm-up, weighting) stay those given to the constructor; the
        restored flags are those computed when the state was saved. Under ``torch.distributed``
        call it on every rank with the same state: the saved current-epoch sums are already
        global, so only rank 0 keeps them once recording resumes (as after :meth:`sync`).

        Raises:
            TypeError: if ``state`` is not a mapping.
            ValueError: on a missing key, a different ``num_pairs`` or a tensor of the wrong
                shape or dtype.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        required = ("num_pairs", *self._SCALARS, *_PER_PAIR)
        missing = [k for k in required if k not in state]
        if missing:
            raise ValueError(f"BadPairMiner state is missing keys {missing}")
        if int(state["num_pairs"]) != self.num_pairs:
            raise ValueError(
                f"BadPairMiner state has num_pairs={state['num_pairs']} but this miner has "
                f"num_pairs={self.num_pairs}; the training set changed size"
            )
        for name, dtype in _PER_PAIR.items():
            t = state[name]
            if not isinstance(t, Tensor) or t.shape != (self.num_pairs,) or t.dtype != dtype:
                got = (tuple(t.shape), t.dtype) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(
                    f"BadPairMiner state[{name!r}] must be a {dtype} tensor of shape "
                    f"({self.num_pairs},), got {got}"
                )
        saved_statistic = STATISTICS[int(state.get("statistic", 0))]
        if saved_statistic != self.statistic:
            raise ValueError(
                f"BadPairMiner state was saved with statistic={saved_statistic!r} but this miner "
                f"has statistic={self.statistic!r}; the stored history means different things"
            )
        for name, target in self._per_pair_tensors().items():
            target.copy_(state[name])
        self.group_table = _group_table_from_tensors(
            state.get("group_table_groups"), state.get("group_table_stats")
        )
        for name in self._SCALARS:
            value = state[name]
            setattr(self, name, int(value) if name.startswith(("num_", "epochs_")) else value)
        self.mu, self.sigma = float(self.mu), float(self.sigma)
        self.threshold_noisy = float(self.threshold_noisy)
        self.threshold_faulty = float(self.threshold_faulty)
        self._nonfinite_total = int(state.get("nonfinite_total", 0))
        self._nonfinite_pending.fill_(int(state.get("nonfinite_pending", 0)))
        # the saved current-epoch sums are global: every rank holds them, rank 0 keeps them
        self._replicated = dist_rank_world()[1] > 1
        self._replica_group = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_pairs={self.num_pairs}, warmup_epochs={self.warmup_epochs},"
            f" beta_noisy={self.beta_noisy}, beta_faulty={self.beta_faulty}, "
            f"weighting={self.weighting!r}, statistic={self.statistic!r}, "
            f"location={self.location!r}, scope={self.scope}, "
            f"epochs_completed={self.epochs_completed}, "
            f"num_noisy={self.num_noisy}, num_faulty={self.num_faulty})"
        )
