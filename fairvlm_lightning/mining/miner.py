"""Dynamic Bad Pair Mining (DBPM): a framework-free core that any training loop can drive.

DBPM keeps, for every image-text pair of the training set (keyed by its dataset ``index``, never
by its position in a batch), a statistic of its *raw, unweighted* loss over past epochs. At the
start of epoch ``e`` (once ``e >= max(warmup_epochs, 1)``) a rule judges the statistic of every
pair with history and flags pairs; a flagged pair's current loss is multiplied by a detached
weight. The paper's rule (the default, :meth:`BadPairMiner.paper`): with ``m_i`` the mean of pair
``i``'s past per-epoch mean losses and ``mu``, ``sigma`` the mean and population standard
deviation of ``{m_i}``, pair ``i`` is

* *noisy* if ``m_i < mu - beta_noisy * sigma`` (suspiciously easy), and
* *faulty* if ``m_i > mu + beta_faulty * sigma`` (consistently hard: e.g. a mismatched note),

and gets the weight ``N(l_i; mu, sigma)`` at its current loss ``l_i``; all other pairs get 1.

The statistic, the scope and the rule are small objects
(:mod:`fairvlm_lightning.mining.strategies`): ``MeanLoss``/``EmaLoss``, ``Scope``,
``ThresholdRule`` (with ``MeanStd``/``MedianMad``) and ``GaussianMixtureRule``. The flat
options (``statistic="ema"``, ``location="median"``, ``scope=("race",)``, ``beta_faulty=...``,
``weighting=...``, ``min_cell_size``, ``ema_decay``, ``max_weight``) build the same
objects (:func:`~fairvlm_lightning.mining.strategies.strategies_from_options`).

The loop contract is three calls: :meth:`BadPairMiner.weights` before reducing the loss,
:meth:`BadPairMiner.record` with the raw per-pair losses of the step, and
:meth:`BadPairMiner.end_epoch` after the last batch of every epoch. The Lightning callback
:class:`fairvlm_lightning.callbacks.DynamicBadPairMining` makes those calls for a ``Trainer``.

Memory layout (15 bytes per pair, 16 with a soft-weight rule, independent of the epochs)::

    history_sum    float32  4 B   the statistic's stored value (MeanLoss: the sum of the
                                  pair's per-epoch means; EmaLoss: the EMA itself)
    history_count  int16    2 B   number of past epochs in which the pair was seen (<= 32767)
    current_sum    float32  4 B   sum of this epoch's finite raw losses of the pair
    current_count  int32    4 B   number of this epoch's finite losses of the pair
    flags          int8     1 B   0 = unflagged, 1 = noisy, 2 = faulty (for the current epoch)
    keep_weight    uint8    1 B   only for a rule with ``soft_weights`` (GaussianMixtureRule
                                  with weighting="posterior"): round(255 * weight)

``current_count`` is int32 rather than int16 because NCCL cannot all-reduce int16 tensors.
``end_epoch`` works in chunks of 2**20 pairs, so its transient memory is a few MiB whatever the
number of pairs, except for a rule that needs all values (``MedianMad``, the mixture rule: a
transient float64 copy of the statistic and an int64 cell id of the pairs with history) and with
a ``scope`` (a transient int64 group-cell id per chunk).

Non-finite losses (NaN, +-inf) are skipped and counted (:attr:`BadPairMiner.num_nonfinite`); they
never enter a pair's history, so they cannot poison ``mu`` and ``sigma``.

Distributed training: every process records the pairs it saw. :meth:`BadPairMiner.end_epoch`
first sums the current-epoch accumulators over the ranks (all-reduce), so every rank computes the
same history, fit and flags (every rule is deterministic). :meth:`BadPairMiner.state_dict`
performs no collective: call :meth:`BadPairMiner.sync` on every rank before saving (the Lightning
callback does). After a sync, or a load of a saved state, every rank holds the global sums; the
ranks other than 0 drop their copy before they record again or fold the epoch, so recording can
go on and every loss is still counted exactly once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from fairvlm_lightning.mining.mixture import Chunks
from fairvlm_lightning.mining.strategies import (
    FAULTY,
    NOISY,
    NOT_FLAGGED,
    PAPER_SETTINGS,
    CellStatistics,
    LossStatistic,
    MiningRule,
    RuleFit,
    Scope,
    ThresholdRule,
    rule_name,
    statistic_name,
    strategies_from_options,
)
from fairvlm_lightning.validation import check_integer_ids, is_integer_tensor

__all__ = ["BadPairMiner", "MinerSpec", "check_num_pairs", "dist_rank_world"]

_CHUNK = 1 << 20
_STATE_VERSION = 3
_MAX_EPOCHS = torch.iinfo(torch.int16).max
_MAX_CELLS = 1 << 16
_KEEP_ONE = 255  # keep_weight code of weight 1

# name -> dtype of every per-pair tensor of the state (the layout above)
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


def check_num_pairs(num_pairs: Any) -> int:
    """``num_pairs`` as an int; ``TypeError``/``ValueError`` unless it is an int > 0.

    Example:
        >>> check_num_pairs(10)
        10
    """
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, int):
        raise TypeError(f"num_pairs must be an int, got {type(num_pairs).__name__}")
    if num_pairs <= 0:
        raise ValueError(f"num_pairs must be > 0, got {num_pairs}")
    return int(num_pairs)


def _check_warmup(warmup_epochs: Any) -> int:
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int):
        raise TypeError(f"warmup_epochs must be an int, got {type(warmup_epochs).__name__}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    return int(warmup_epochs)


def _group_table_from_tensors(
    groups: Any, stats: Any, columns: Sequence[str]
) -> list[dict[str, Any]]:
    if not isinstance(groups, Tensor) or not isinstance(stats, Tensor):
        return []
    if stats.ndim != 2 or stats.shape[1] != len(columns):
        return []
    out: list[dict[str, Any]] = []
    for g, row in zip(groups.tolist(), stats.tolist(), strict=True):
        entry: dict[str, Any] = {"group": tuple(int(v) for v in g)}
        for key, value in zip(columns, row, strict=True):
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


def _cell_chunk(cells: tuple[list[Tensor], list[int]], s: int, e: int) -> Tensor:
    """Group-cell id of pairs ``s:e`` (mixed radix over the scope attributes; -1 = unknown)."""
    tensors, strides = cells
    if len(tensors) == 1:  # one attribute: the cell is the id (-1 = unknown)
        return tensors[0][s:e].long()
    device = tensors[0].device
    cell = torch.zeros(e - s, dtype=torch.int32, device=device)
    unknown = torch.zeros(e - s, dtype=torch.bool, device=device)
    for g, stride in zip(tensors, strides, strict=False):
        v = g[s:e]
        unknown |= v < 0
        cell.add_(v.clamp_min(0), alpha=stride)
    return cell.masked_fill_(unknown, -1).long()


class _FoldStatistics:
    """What the rule fits on, accumulated chunk by chunk while an epoch is folded.

    Count, mean and M2 of the statistic of the pairs with history are chunk-wise two-pass
    statistics merged with Chan et al.'s parallel update, in float64; the values themselves
    (and their cells) are kept for rules that need them, per-cell moments for those that need
    them.
    """

    def __init__(
        self, cells: tuple[list[Tensor], list[int]] | None, keep_values: bool, moments: bool
    ) -> None:
        self.cells = cells
        self.keep_values = keep_values
        self.cell_acc = _CellMoments(cells[1]) if moments and cells is not None else None
        self.needs_cells = cells is not None and (keep_values or self.cell_acc is not None)
        self.kept: list[Tensor] = []
        self.kept_cells: list[Tensor] = []
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, values: Tensor, cell: Tensor | None) -> None:
        """One chunk's float64 statistic of the pairs with history (and their cell ids)."""
        if values.numel():
            n_c = values.numel()
            mean_c = float(values.mean())
            m2_c = float(((values - mean_c) ** 2).sum())
            total = self.count + n_c
            delta = mean_c - self.mean
            self.mean += delta * n_c / total
            self.m2 += m2_c + delta * delta * self.count * n_c / total
            self.count = total
            self.low = min(self.low, float(values.min()))
            self.high = max(self.high, float(values.max()))
        if cell is not None:
            if self.keep_values:
                self.kept_cells.append(cell.cpu())
            if self.cell_acc is not None:
                self.cell_acc.add(cell, values)
        if self.keep_values:
            self.kept.append(values.cpu())

    def statistics(self, chunks: Chunks, min_cell_size: int) -> CellStatistics:
        """The :class:`CellStatistics` of the folded epoch."""
        stats = CellStatistics(
            count=self.count,
            mean=self.mean,
            m2=self.m2,
            chunks=chunks,
            minimum=self.low if self.count else math.nan,
            maximum=self.high if self.count else math.nan,
        )
        if self.keep_values:
            stats.values = (
                torch.cat(self.kept) if self.kept else torch.zeros(0, dtype=torch.float64)
            )
        if self.cells is not None:
            stats.num_cells = self.cells[1][-1]
            stats.cell_names = _cell_names(self.cells[1])
            stats.min_cell_size = min_cell_size
            if self.keep_values:
                stats.value_cells = (
                    torch.cat(self.kept_cells)
                    if self.kept_cells
                    else torch.zeros(0, dtype=torch.long)
                )
            if self.cell_acc is not None:
                stats.cell_moments = self.cell_acc.result()
        return stats


def _cell_names(strides: list[int]) -> list[tuple[int, ...]]:
    """The group id of each scope attribute of every cell (inverse of the mixed radix)."""
    return [
        tuple((c // strides[i]) % (strides[i + 1] // strides[i]) for i in range(len(strides) - 1))
        for c in range(strides[-1])
    ]


def _check_batch(
    index: Any, losses: Any, num_pairs: int, device: torch.device, where: str
) -> tuple[Tensor, Tensor]:
    """``index`` as long on ``device`` and the detached ``losses``, after the checks."""
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
        if lo < 0 or hi >= num_pairs:
            raise ValueError(
                f"{where}: index out of range [0, {num_pairs}): got values in "
                f"[{lo}, {hi}] (num_pairs={num_pairs})"
            )
    return index.to(device, torch.long), losses.detach()


def _check_groups(
    groups: Mapping[str, Tensor] | None,
    attributes: tuple[str, ...],
    num_pairs: int,
    device: torch.device,
) -> tuple[list[Tensor], list[int]] | None:
    """Validate ``groups`` for the scope; return the id tensors and the cumulative strides.

    The cell of a pair is ``sum_a g_a * stride_a`` (mixed radix over the scope attributes,
    radix = 1 + the largest id); the last stride is the number of cells.
    """
    if not attributes:
        return None
    if groups is None or not isinstance(groups, Mapping):
        raise ValueError(
            f"BadPairMiner.end_epoch: scope={attributes} needs groups={{attribute: "
            f"(num_pairs,) group ids}}, got {type(groups).__name__}"
        )
    tensors, strides = [], [1]
    for attr in attributes:
        if attr not in groups:
            raise ValueError(
                f"BadPairMiner.end_epoch: groups lacks scope attribute {attr!r}; got keys "
                f"{sorted(groups)}"
            )
        g = groups[attr]
        if not isinstance(g, Tensor) or g.shape != (num_pairs,):
            got = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ValueError(
                f"BadPairMiner.end_epoch: groups[{attr!r}] must be a tensor of shape "
                f"({num_pairs},), got {got}"
            )
        check_integer_ids(g, f"groups[{attr!r}]", error=ValueError)
        lo, hi = (int(v) for v in torch.aminmax(g)) if g.numel() else (0, 0)
        if lo < -1:
            raise ValueError(f"groups[{attr!r}] values must be >= -1 (-1 = unknown), got {lo}")
        tensors.append(g.to(device))
        strides.append(strides[-1] * (max(hi, 0) + 1))
    if strides[-1] > _MAX_CELLS:
        raise ValueError(
            f"scope {attributes} makes {strides[-1]} group cells; at most {_MAX_CELLS}"
        )
    return tensors, strides


def _check_state(
    state: Any,
    required: Sequence[str],
    per_pair: Mapping[str, torch.dtype],
    num_pairs: int,
    statistic: str,
    rule: str,
) -> None:
    """Refuse a :meth:`BadPairMiner.state_dict` this miner cannot take (see its ``Raises``)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping, got {type(state).__name__}")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"BadPairMiner state is missing keys {missing}")
    if int(state["num_pairs"]) != num_pairs:
        raise ValueError(
            f"BadPairMiner state has num_pairs={state['num_pairs']} but this miner has "
            f"num_pairs={num_pairs}; the training set changed size"
        )
    for name, dtype in per_pair.items():
        t = state[name]
        if not isinstance(t, Tensor) or t.shape != (num_pairs,) or t.dtype != dtype:
            got = (tuple(t.shape), t.dtype) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"BadPairMiner state[{name!r}] must be a {dtype} tensor of shape "
                f"({num_pairs},), got {got}"
            )
    saved_statistic = statistic_name(state.get("statistic", 0))
    if saved_statistic != statistic:
        raise ValueError(
            f"BadPairMiner state was saved with statistic={saved_statistic!r} but this miner "
            f"has statistic={statistic!r}; the stored history means different things"
        )
    saved_rule = rule_name(state.get("rule", ThresholdRule.code))
    if saved_rule != rule:
        raise ValueError(
            f"BadPairMiner state was saved with rule {saved_rule} but this miner has "
            f"{rule}; its flags and fit mean different things"
        )


class MinerSpec:
    """A configured miner without its size: the statistic, rule, scope and warm-up.

    What :class:`~fairvlm_lightning.callbacks.DynamicBadPairMining` takes (the size is the
    training set's, known at fit start) and what a LightningCLI YAML configures with nested
    ``class_path``/``init_args``. ``None`` means the paper's choice. The flat options
    (``beta_faulty=``, ``weighting=``, ``location=``, ``statistic="ema"``, ``scope=("race",)``,
    ``min_cell_size=``, ``ema_decay=``, ``max_weight=``) are accepted and build the same
    objects.

    Args:
        warmup_epochs: no pair is flagged during the first ``max(warmup_epochs, 1)`` epochs.
        statistic: ``MeanLoss()`` (paper), ``EmaLoss(decay)``, or ``"mean"``/``"ema"``.
        rule: ``ThresholdRule(...)`` (paper with its defaults) or ``GaussianMixtureRule(...)``.
        scope: ``Scope(attributes, min_cell_size)`` or a sequence of attribute names; ``()``
            (paper) judges all pairs together.
        **options: the flat options above.

    Example:
        >>> from fairvlm_lightning.mining import EmaLoss, GaussianMixtureRule, Scope
        >>> spec = MinerSpec(statistic=EmaLoss(0.5), rule=GaussianMixtureRule(),
        ...                  scope=Scope(["race"]))
        >>> spec.build(1000).rule.threshold
        0.5
        >>> MinerSpec(beta_faulty=1.5).rule.beta_faulty
        1.5
    """

    def __init__(
        self,
        warmup_epochs: int = 1,
        statistic: LossStatistic | str | None = None,
        rule: MiningRule | None = None,
        scope: Scope | Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        self.warmup_epochs = _check_warmup(warmup_epochs)
        self.statistic, self.rule, self.scope = strategies_from_options(
            statistic, rule, scope, options
        )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MinerSpec:
        """A spec from the flat options as one mapping (``{"beta_faulty": 2.0, ...}``).

        Example:
            >>> MinerSpec.from_options({"warmup_epochs": 2, "statistic": "ema"}).statistic
            EmaLoss(decay=0.5)
        """
        if not isinstance(options, Mapping):
            raise TypeError(f"options must be a mapping, got {type(options).__name__}")
        return cls(**options)

    @classmethod
    def paper(cls, **overrides: Any) -> MinerSpec:
        """The paper's rule exactly (:data:`~fairvlm_lightning.mining.PAPER_SETTINGS`).

        Example:
            >>> rule = MinerSpec.paper().rule
            >>> rule.beta_noisy, rule.beta_faulty, rule.location, rule.weighting, rule.max_weight
            (3.0, 3.0, MeanStd(), 'gaussian_pdf', None)
        """
        settings: dict[str, Any] = dict(PAPER_SETTINGS)
        settings.update(overrides)
        return cls(**settings)

    def build(self, num_pairs: int, device: torch.device | str | None = None) -> BadPairMiner:
        """A fresh :class:`BadPairMiner` for ``num_pairs`` pairs with these strategies."""
        return BadPairMiner(
            num_pairs,
            warmup_epochs=self.warmup_epochs,
            statistic=self.statistic,
            rule=self.rule,
            scope=self.scope,
            device=device,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MinerSpec) and (
            self.warmup_epochs,
            self.statistic,
            self.rule,
            self.scope,
        ) == (other.warmup_epochs, other.statistic, other.rule, other.scope)

    def __hash__(self) -> int:
        return hash((self.warmup_epochs, self.statistic, self.rule, self.scope))

    def __repr__(self) -> str:
        return (
            f"MinerSpec(warmup_epochs={self.warmup_epochs}, statistic={self.statistic!r}, "
            f"rule={self.rule!r}, scope={self.scope!r})"
        )


class BadPairMiner:
    """Per-pair loss memory, fit, flags and weights of Dynamic Bad Pair Mining.

    Args:
        num_pairs: number of pairs in the training set; ``index`` values lie in
            ``[0, num_pairs)``.
        warmup_epochs: no pair is flagged during the first ``max(warmup_epochs, 1)`` epochs
            (``0`` and ``1`` behave alike: flags need at least one epoch of history).
        statistic: :class:`~fairvlm_lightning.mining.MeanLoss` (paper),
            :class:`~fairvlm_lightning.mining.EmaLoss`, or ``"mean"``/``"ema"``.
        rule: :class:`~fairvlm_lightning.mining.ThresholdRule` (default: the paper's) or
            :class:`~fairvlm_lightning.mining.GaussianMixtureRule`.
        scope: :class:`~fairvlm_lightning.mining.Scope` or attribute names whose groups
            (intersection cells for several) get their own fit; ``()`` (paper) is global. Needs
            ``groups=`` in :meth:`end_epoch`.
        device: where the state lives; keep it on the training device so that ``record`` and
            ``weights`` need no host transfer (:meth:`to` moves it later).
        **options: the flat options (``beta_noisy``, ``beta_faulty``, ``weighting``,
            ``location``, ``max_weight``, ``min_cell_size``, ``ema_decay``), which build the
            same objects.

    Example:
        >>> import torch
        >>> from fairvlm_lightning.mining import ThresholdRule
        >>> miner = BadPairMiner(6, rule=ThresholdRule(beta_noisy=1.5, beta_faulty=1.5))
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
        statistic: LossStatistic | str | None = None,
        rule: MiningRule | None = None,
        scope: Scope | Sequence[str] | None = None,
        device: torch.device | str | None = None,
        **options: Any,
    ) -> None:
        self.num_pairs = check_num_pairs(num_pairs)
        self.warmup_epochs = _check_warmup(warmup_epochs)
        self.statistic, self.rule, self.scope = strategies_from_options(
            statistic, rule, scope, options
        )
        self._warned = False
        self.fit = RuleFit(math.nan, math.nan, math.nan, math.nan)
        dev = torch.device("cpu") if device is None else torch.device(device)
        n = self.num_pairs
        self._history_sum = torch.zeros(n, dtype=torch.float32, device=dev)
        self._history_count = torch.zeros(n, dtype=torch.int16, device=dev)
        self._current_sum = torch.zeros(n, dtype=torch.float32, device=dev)
        self._current_count = torch.zeros(n, dtype=torch.int32, device=dev)
        self._flags = torch.zeros(n, dtype=torch.int8, device=dev)
        self._keep: Tensor | None = (
            torch.full((n,), _KEEP_ONE, dtype=torch.uint8, device=dev)
            if self.rule.soft_weights
            else None
        )
        # skipped non-finite losses of the current epoch (local until the next sync)
        self._nonfinite_pending = torch.zeros((), dtype=torch.int64, device=dev)
        # True after sync()/load under DDP: every rank holds the global current-epoch sums
        self._replicated = False
        self._replica_group: Any = None
        self.epochs_completed = 0
        self.num_noisy = 0
        self.num_faulty = 0
        self.num_with_history = 0
        self.num_seen_last_epoch = 0
        self._nonfinite_total = 0

    @classmethod
    def paper(cls, num_pairs: int, **kwargs: Any) -> BadPairMiner:
        """The paper's rule exactly (:data:`~fairvlm_lightning.mining.PAPER_SETTINGS`).

        History mean, global mean/std thresholds, beta = 3/3, ``"gaussian_pdf"`` weights without
        a cap; ``kwargs`` may set ``warmup_epochs`` or ``device`` (or override anything else).

        Example:
            >>> m = BadPairMiner.paper(10)
            >>> m.statistic, m.scope.attributes, m.rule.beta_faulty, m.rule.weighting
            (MeanLoss(), (), 3.0, 'gaussian_pdf')
        """
        settings: dict[str, Any] = dict(PAPER_SETTINGS)
        settings.update(kwargs)
        return cls(num_pairs, **settings)

    @property
    def spec(self) -> MinerSpec:
        """The :class:`MinerSpec` that builds a fresh miner like this one."""
        return MinerSpec(self.warmup_epochs, self.statistic, self.rule, self.scope)

    # ------------------------------------------------------------------ fit (read-only views)
    @property
    def mu(self) -> float:
        """Global location of the statistic (the threshold rule's ``mu``); NaN before a fit."""
        return self.fit.mu

    @property
    def sigma(self) -> float:
        """Global scale of the statistic (the threshold rule's ``sigma``)."""
        return self.fit.sigma

    @property
    def threshold_noisy(self) -> float:
        """Global lower threshold (NaN for a rule without one)."""
        return self.fit.threshold_noisy

    @property
    def threshold_faulty(self) -> float:
        """Global upper threshold (NaN for a rule without one)."""
        return self.fit.threshold_faulty

    @property
    def group_table(self) -> list[dict[str, Any]]:
        """One dict per scope cell with pairs with history: ``group`` and the rule's columns."""
        return self.fit.group_table

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
    def keep_weight(self) -> Tensor | None:
        """(num_pairs,) float32 stored weight of a soft-weight rule (``None`` for others)."""
        return None if self._keep is None else self._keep.float() / _KEEP_ONE

    @property
    def history_count(self) -> Tensor:
        """(num_pairs,) int16 number of completed epochs in which each pair was seen."""
        return self._history_count

    @property
    def history_mean(self) -> Tensor:
        """(num_pairs,) float32 statistic that is judged; NaN without history.

        The mean of each pair's per-epoch mean losses (``MeanLoss``, the paper) or the
        recency-weighted mean (``EmaLoss``).
        """
        count = self._history_count
        return torch.where(count > 0, self._stat(0, self.num_pairs), math.nan)

    def _stat(self, s: int, e: int) -> Tensor:
        """The statistic of pairs ``s:e`` (0/0 = NaN or garbage without history: mask it)."""
        return self.statistic.value(self._history_sum[s:e], self._history_count[s:e])

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
        """Bytes held by the per-pair state (15 or 16 times ``num_pairs``)."""
        return sum(t.element_size() * t.numel() for t in self._per_pair_tensors().values())

    @property
    def bytes_per_pair(self) -> float:
        """``nbytes / num_pairs`` (15.0, or 16.0 with a soft-weight rule)."""
        return self.nbytes / self.num_pairs

    def _per_pair_tensors(self) -> dict[str, Tensor]:
        out = {
            "history_sum": self._history_sum,
            "history_count": self._history_count,
            "current_sum": self._current_sum,
            "current_count": self._current_count,
            "flags": self._flags,
        }
        if self._keep is not None:
            out["keep_weight"] = self._keep
        return out

    def to(self, device: torch.device | str) -> BadPairMiner:
        """Move the state to ``device`` (in place) and return ``self``."""
        device = torch.device(device)
        for name, t in self._per_pair_tensors().items():
            attr = "_keep" if name == "keep_weight" else f"_{name}"
            setattr(self, attr, t.to(device))
        self._nonfinite_pending = self._nonfinite_pending.to(device)
        return self

    # ------------------------------------------------------------------ input checks
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
        index, losses = _check_batch(index, losses, self.num_pairs, self.device, "record")
        self._drop_replica()
        values = losses.to(self.device, torch.float32)
        finite = torch.isfinite(values)
        self._current_sum.index_add_(0, index, torch.where(finite, values, 0.0))
        self._current_count.index_add_(0, index, finite.to(torch.int32))
        self._nonfinite_pending += (~finite).sum()

    def weights(self, index: Tensor, losses: Tensor) -> Tensor:
        """Detached (B,) weights for the current epoch: 1, or the rule's weight.

        Args:
            index: (B,) integer dataset indices.
            losses: (B,) current per-pair losses (the threshold rule's weighting is evaluated
                at these values).

        Returns:
            (B,) tensor with ``losses``' dtype and device, without gradient.
        """
        index, losses = _check_batch(index, losses, self.num_pairs, self.device, "weights")
        if self._keep is None and self.num_noisy + self.num_faulty == 0:
            return torch.ones_like(losses)
        flagged = (self._flags.index_select(0, index) != NOT_FLAGGED).to(losses.device)
        keep = None
        if self._keep is not None:
            keep = (self._keep.index_select(0, index).float() / _KEEP_ONE).to(losses.device)
        w = self.rule.step_weights(self.fit, losses, flagged, keep)
        return w.to(losses.dtype)

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
        """Fold the current epoch into the history, fit the rule and flag for the next epoch.

        Args:
            sync: first sum the current-epoch accumulators over the ranks of ``group`` (when
                ``torch.distributed`` is initialised); must then be called on every rank.
            group: process group for the all-reduce (default: the world).
            groups: with a scope, the group id of every pair for each scope attribute, as
                ``{attribute: (num_pairs,) integer tensor}`` (-1 = unknown); the same on every
                rank. Ignored without a scope.

        Returns:
            :meth:`summary` of the new state.

        Raises:
            ValueError: a scope attribute missing from ``groups`` or of the wrong shape.
        """
        if self.epochs_completed >= _MAX_EPOCHS:
            raise RuntimeError(f"BadPairMiner supports at most {_MAX_EPOCHS} epochs")
        cells = _check_groups(groups, self.scope.attributes, self.num_pairs, self.device)
        if sync:  # every rank gets the global sums, then folds them and clears them
            self._all_reduce_current(group)
        self._replicated = False
        stats = self._fold_epoch(cells)
        count_h = stats.count
        self.fit = self.rule.fit(stats)
        del stats
        self._warn_fit()
        self._flag(cells, count_h)
        return self.summary()

    def _fold_epoch(self, cells: tuple[list[Tensor], list[int]] | None) -> CellStatistics:
        """Pass 1: fold the current epoch into the history; the statistics the rule fits on."""
        acc = _FoldStatistics(cells, self.rule.needs_values, self.rule.needs_cell_moments)
        num_seen = 0
        for s in range(0, self.num_pairs, _CHUNK):
            e = min(s + _CHUNK, self.num_pairs)
            count = self._current_count[s:e]
            seen = count > 0
            epoch_mean = torch.where(seen, self._current_sum[s:e] / count, 0.0)
            self._history_sum[s:e] = self.statistic.fold(
                self._history_sum[s:e], self._history_count[s:e], epoch_mean, seen
            )
            self._history_count[s:e] += seen
            self._current_sum[s:e].zero_()
            count.zero_()
            num_seen += int(seen.sum())
            has = self._history_count[s:e] > 0
            cell = _cell_chunk(cells, s, e)[has] if acc.needs_cells and cells else None
            acc.add(self._stat(s, e)[has].double(), cell)
        self._nonfinite_total += int(self._nonfinite_pending)
        self._nonfinite_pending.zero_()
        self.epochs_completed += 1
        self.num_seen_last_epoch = num_seen
        self.num_with_history = acc.count
        return acc.statistics(self._chunks(cells), self.scope.min_cell_size)

    def _flag(self, cells: tuple[list[Tensor], list[int]] | None, count_h: int) -> None:
        """Pass 2: flags from the fitted rule (a pair without history is never flagged)."""
        self.num_noisy = self.num_faulty = 0
        if not (self.flags_active and count_h > 0):
            self._flags.zero_()
            if self._keep is not None:
                self._keep.fill_(_KEEP_ONE)
            return
        for s, e, stat, cell_ids in self._iter_chunks(cells):
            has = ~torch.isnan(stat)
            judged = self.rule.judge(self.fit, stat, cell_ids)
            noisy, faulty = judged.noisy, judged.faulty
            self._flags[s:e] = noisy.to(torch.int8) + FAULTY * faulty.to(torch.int8)
            if self._keep is not None:
                assert judged.keep_weight is not None
                code = (judged.keep_weight * _KEEP_ONE).round().clamp_(0, _KEEP_ONE)
                self._keep[s:e] = torch.where(has, code.to(self._keep.device), _KEEP_ONE).to(
                    torch.uint8
                )
            self.num_noisy += int(noisy.sum())
            self.num_faulty += int(faulty.sum())

    def _iter_chunks(
        self, cells: tuple[list[Tensor], list[int]] | None
    ) -> Iterator[tuple[int, int, Tensor, Tensor | None]]:
        """``(s, e, statistic with NaN without history, cell ids or None)`` per chunk."""
        for s in range(0, self.num_pairs, _CHUNK):
            e = min(s + _CHUNK, self.num_pairs)
            has = self._history_count[s:e] > 0
            stat = torch.where(has, self._stat(s, e), math.nan)
            yield s, e, stat, _cell_chunk(cells, s, e) if cells is not None else None

    def _chunks(
        self, cells: tuple[list[Tensor], list[int]] | None
    ) -> Callable[[], Iterator[tuple[Tensor, Tensor | None]]]:
        def read() -> Iterator[tuple[Tensor, Tensor | None]]:
            for _, _, stat, cell in self._iter_chunks(cells):
                yield stat, cell

        return read

    def _warn_fit(self) -> None:
        if self._warned or not self.flags_active:
            return
        message = self.rule.fit_warning(self.fit)
        if message is not None:
            self._warned = True
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def summary(self) -> dict[str, float | int]:
        """Python numbers describing the current flags (what the callback logs).

        Keys: ``epochs_completed``, ``mu``, ``sigma``, ``threshold_noisy``,
        ``threshold_faulty``, ``num_noisy``, ``num_faulty``, ``num_with_history``,
        ``num_seen_last_epoch``, ``num_nonfinite``, ``num_own_threshold_groups`` (groups of the
        scope judged by their own fit; the per-group numbers are in :attr:`group_table`).
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
    _COUNTERS: tuple[str, ...] = (
        "epochs_completed",
        "num_noisy",
        "num_faulty",
        "num_with_history",
        "num_seen_last_epoch",
    )
    _FIT_SCALARS: tuple[str, ...] = ("mu", "sigma", "threshold_noisy", "threshold_faulty")

    def state_dict(self) -> dict[str, Any]:
        """State as CPU tensors and Python numbers (loadable with ``weights_only=True``).

        Holds the per-pair tensors, the counters and the rule's fit (global numbers, the
        per-cell table and the rule's per-cell parameters as ``rule_param.<name>`` tensors).
        No collective is performed: under ``torch.distributed`` call :meth:`sync` on every rank
        first, or the other ranks' pending current-epoch losses are missing.
        """
        fit = self.fit
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "num_pairs": self.num_pairs,
            "warmup_epochs": self.warmup_epochs,
            "nonfinite_total": self._nonfinite_total,
            "nonfinite_pending": int(self._nonfinite_pending),
            "statistic": self.statistic.code,
            "rule": self.rule.code,
            **{name: getattr(fit, name) for name in self._FIT_SCALARS},
            **self._group_table_tensors(),
        }
        for name, value in fit.cell_params.items():
            state[f"rule_param.{name}"] = value.detach().to("cpu", copy=True)
        for name in self._COUNTERS:
            state[name] = getattr(self, name)
        for name, t in self._per_pair_tensors().items():
            state[name] = t.detach().to("cpu", copy=True)
        return state

    def _group_table_tensors(self) -> dict[str, Tensor]:
        rows = self.group_table
        columns = self.rule.table_columns
        groups = torch.tensor([list(r["group"]) for r in rows], dtype=torch.long)
        stats = torch.tensor([[float(r[k]) for k in columns] for r in rows], dtype=torch.float64)
        return {
            "group_table_groups": groups.reshape(len(rows), len(self.scope.attributes)),
            "group_table_stats": stats.reshape(len(rows), len(columns)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (history, current-epoch sums, flags, the rule's fit).

        Hyper-parameters (betas, warm-up, weighting, threshold) stay those given to the
        constructor; the restored flags and weights are those computed when the state was
        saved. Under ``torch.distributed`` call it on every rank with the same state: the saved
        current-epoch sums are already global, so only rank 0 keeps them once recording resumes
        (as after :meth:`sync`).

        Raises:
            TypeError: if ``state`` is not a mapping.
            ValueError: on a missing key, a different ``num_pairs``, statistic or rule class,
                or a tensor of the wrong shape or dtype.
        """
        per_pair = dict(_PER_PAIR)
        if self._keep is not None:
            per_pair["keep_weight"] = torch.uint8
        _check_state(
            state,
            ("num_pairs", *self._COUNTERS, *self._FIT_SCALARS, *per_pair),
            per_pair,
            self.num_pairs,
            self.statistic.name,
            type(self.rule).__name__,
        )
        for name, target in self._per_pair_tensors().items():
            target.copy_(state[name])
        mu, sigma, lo, hi = (float(state[name]) for name in self._FIT_SCALARS)
        self.fit = RuleFit(
            mu,
            sigma,
            lo,
            hi,
            group_table=_group_table_from_tensors(
                state.get("group_table_groups"),
                state.get("group_table_stats"),
                self.rule.table_columns,
            ),
            cell_params={
                k.split(".", 1)[1]: v.clone()
                for k, v in state.items()
                if k.startswith("rule_param.") and isinstance(v, Tensor)
            },
        )
        for name in self._COUNTERS:
            setattr(self, name, int(state[name]))
        self._nonfinite_total = int(state.get("nonfinite_total", 0))
        self._nonfinite_pending.fill_(int(state.get("nonfinite_pending", 0)))
        # the saved current-epoch sums are global: every rank holds them, rank 0 keeps them
        self._replicated = dist_rank_world()[1] > 1
        self._replica_group = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_pairs={self.num_pairs}, warmup_epochs={self.warmup_epochs},"
            f" statistic={self.statistic!r}, rule={self.rule!r}, scope={self.scope!r}, "
            f"epochs_completed={self.epochs_completed}, "
            f"num_noisy={self.num_noisy}, num_faulty={self.num_faulty})"
        )
