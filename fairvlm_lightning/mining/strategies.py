"""The small strategy objects a :class:`~fairvlm_lightning.mining.BadPairMiner` is made of.

A miner combines four independent choices; the paper's rule is the default of each:

* a **statistic** (:class:`MeanLoss`, :class:`EmaLoss`): the per-pair number folded from the
  pair's per-epoch mean losses and then judged;
* a **scope** (:class:`Scope`): one global judgement, or one per group cell of attributes;
* a **rule** (:class:`ThresholdRule`, :class:`GaussianMixtureRule`): how the statistics of a
  cell are turned into flags and weights. :class:`ThresholdRule` takes a **location**
  (:class:`MeanStd`, :class:`MedianMad`) that gives its ``mu`` and ``sigma``.

The paper's rule reads, in these objects::

    MinerSpec(statistic=MeanLoss(), scope=Scope(),
              rule=ThresholdRule(beta_noisy=3.0, beta_faulty=3.0, location=MeanStd(),
                                 weighting="gaussian_pdf", max_weight=None))

A new rule is a new subclass of :class:`MiningRule` (``fit`` the cells once per epoch,
``judge`` a chunk of pairs, ``step_weights`` for a batch). Every object validates its own
arguments and raises ``TypeError``/``ValueError`` naming the field.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from fairvlm_lightning.mining.mixture import (
    MIXTURE_COLUMNS,
    Chunks,
    MixtureFit,
    fit_two_gaussians_chunks,
    logit_bad,
    logit_coefficients,
)

__all__ = [
    "FAULTY",
    "LOCATIONS",
    "MAD_TO_SIGMA",
    "NOISY",
    "NOT_FLAGGED",
    "PAPER_SETTINGS",
    "PDF_PEAK_WARNING",
    "STATISTICS",
    "WEIGHTINGS",
    "CellStatistics",
    "EmaLoss",
    "GaussianMixtureRule",
    "Judgement",
    "Location",
    "LossStatistic",
    "MeanLoss",
    "MeanStd",
    "MedianMad",
    "MiningRule",
    "RuleFit",
    "Scope",
    "ThresholdRule",
    "median_mad",
    "strategies_from_options",
    "rule_name",
    "statistic_name",
]

Weighting = Literal["gaussian_pdf", "gaussian", "zero"]
WEIGHTINGS: tuple[str, ...] = ("gaussian_pdf", "gaussian", "zero")
STATISTICS: tuple[str, ...] = ("mean", "ema")
LOCATIONS: tuple[str, ...] = ("mean", "median")
MIXTURE_WEIGHTINGS: tuple[str, ...] = ("zero", "posterior")
#: 1 / Phi^-1(3/4): MAD * this estimates sigma for normal data
MAD_TO_SIGMA = 1.482602218505602
#: the ``gaussian_pdf`` weight peak ``1 / (sigma * sqrt(2 pi))`` above which the miner warns
PDF_PEAK_WARNING = 10.0
_SQRT_2PI = math.sqrt(2.0 * math.pi)

NOT_FLAGGED = 0
NOISY = 1
FAULTY = 2

#: The paper's rule as flat options (see :func:`strategies_from_options`).
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


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


# ---------------------------------------------------------------------- statistics
class LossStatistic:
    """The per-pair number that is judged, folded epoch by epoch into 4 bytes per pair.

    ``fold`` gets a chunk of the stored float32 ``history`` and int16 ``count`` (epochs seen
    before this one), the pair's mean loss of the epoch and whether it was seen, and returns the
    new stored value; ``value`` turns stored values into the statistic (garbage where
    ``count == 0``: the miner masks it).
    """

    #: stored in the miner's state so that a resume cannot mix two meanings of the history
    code: ClassVar[int] = -1
    name: ClassVar[str] = ""

    def fold(self, history: Tensor, count: Tensor, epoch_mean: Tensor, seen: Tensor) -> Tensor:
        """The new stored value of each pair of the chunk."""
        raise NotImplementedError

    def value(self, history: Tensor, count: Tensor) -> Tensor:
        """The statistic of each pair of the chunk."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, *sorted(vars(self).items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class MeanLoss(LossStatistic):
    """The paper's statistic: the mean of the pair's per-epoch mean losses.

    Stores the running sum; ``value = sum / epochs``.

    Example:
        >>> s = MeanLoss()
        >>> h = s.fold(torch.tensor([2.0]), torch.tensor([1]), torch.tensor([4.0]),
        ...            torch.tensor([True]))
        >>> s.value(h, torch.tensor([2])).tolist()
        [3.0]
    """

    code = 0
    name = "mean"

    def fold(self, history: Tensor, count: Tensor, epoch_mean: Tensor, seen: Tensor) -> Tensor:
        """``history + epoch_mean`` (``epoch_mean`` is 0 for pairs not seen)."""
        return history + epoch_mean

    def value(self, history: Tensor, count: Tensor) -> Tensor:
        """``history / count``."""
        return history / count


class EmaLoss(LossStatistic):
    """Recency-weighted mean: ``h <- x`` at the pair's first epoch, then ``h <- a x + (1-a) h``.

    ``x`` is the pair's mean loss in the epoch and ``a = decay``; epochs in which the pair is
    not seen leave ``h`` unchanged. Stores ``h`` itself.

    Args:
        decay: weight ``a`` of the newest epoch, in ``(0, 1]`` (1: only the last epoch).

    Example:
        >>> s = EmaLoss(decay=0.5)
        >>> s.fold(torch.tensor([2.0]), torch.tensor([1]), torch.tensor([4.0]),
        ...        torch.tensor([True])).tolist()
        [3.0]
    """

    code = 1
    name = "ema"

    def __init__(self, decay: float = 0.5) -> None:
        value = _check_number("ema_decay", decay)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"ema_decay must be in (0, 1], got {decay}")
        self.decay = value

    def fold(self, history: Tensor, count: Tensor, epoch_mean: Tensor, seen: Tensor) -> Tensor:
        """The EMA update for the pairs seen; the others keep their value."""
        a = self.decay
        new = torch.where(count == 0, epoch_mean, a * epoch_mean + (1.0 - a) * history)
        return torch.where(seen, new, history)

    def value(self, history: Tensor, count: Tensor) -> Tensor:
        """The stored EMA (a copy)."""
        return history.clone()


_STATISTIC_CODES: dict[int, str] = {MeanLoss.code: MeanLoss.name, EmaLoss.code: EmaLoss.name}


def statistic_name(code: int) -> str:
    """The name of the statistic stored under ``code`` in a miner state (``"mean"``, ...)."""
    return _STATISTIC_CODES.get(int(code), f"<unknown code {code}>")


# ---------------------------------------------------------------------- locations
def _median(values: Tensor) -> float:
    """Median as NumPy's (mean of the two middle values for an even count), in float64."""
    n = values.numel()
    lo = float(values.kthvalue((n + 1) // 2).values)
    hi = float(values.kthvalue(n // 2 + 1).values) if n % 2 == 0 else lo
    return 0.5 * (lo + hi)


def median_mad(values: Tensor) -> tuple[float, float]:
    """``(median, 1.4826 * median(|values - median|))`` of a 1-D float64 tensor.

    Example:
        >>> median_mad(torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64))
        (2.5, 1.482602218505602)
    """
    med = _median(values)
    return med, MAD_TO_SIGMA * _median((values - med).abs())


class Location:
    """Where the statistics of a cell lie and how spread they are: ``(mu, sigma)``.

    ``streaming`` locations are computed from chunk-wise merged moments (no copy of the
    values); the others get all the values of the cell (a transient float64 copy).
    """

    streaming: ClassVar[bool] = True
    name: ClassVar[str] = ""

    def from_values(self, values: Tensor) -> tuple[float, float]:
        """``(mu, sigma)`` of a 1-D float64 tensor."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self).__name__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MeanStd(Location):
    """The paper's location: the mean and the population standard deviation (streaming).

    Example:
        >>> MeanStd().from_values(torch.tensor([1.0, 3.0], dtype=torch.float64))
        (2.0, 1.0)
    """

    streaming = True
    name = "mean"

    def from_values(self, values: Tensor) -> tuple[float, float]:
        """Mean and population std."""
        mean = float(values.mean())
        return mean, math.sqrt(float(((values - mean) ** 2).mean()))


class MedianMad(Location):
    """The median and ``1.4826 * MAD`` (the normal-consistent median absolute deviation).

    Example:
        >>> MedianMad().from_values(torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64))
        (2.5, 1.482602218505602)
    """

    streaming = False
    name = "median"

    def from_values(self, values: Tensor) -> tuple[float, float]:
        """Median and normal-consistent MAD."""
        return median_mad(values)


_LOCATIONS: dict[str, type[Location]] = {"mean": MeanStd, "median": MedianMad}


# ---------------------------------------------------------------------- scope
class Scope:
    """Which pairs are judged together: all (``attributes=()``, the paper) or group cells.

    With attributes, e.g. ``("race",)``, each pair is judged against the pairs of its own
    group (for several attributes, its intersection cell). A cell with fewer than
    ``min_cell_size`` pairs with history, and a pair with an unknown (-1) value, are judged
    by the global fit.

    Args:
        attributes: the names of the group ids passed to ``BadPairMiner.end_epoch(groups=)``.
        min_cell_size: smallest cell with its own fit, >= 2.
        min_group_size: deprecated name of ``min_cell_size`` (a DeprecationWarning).

    Example:
        >>> Scope(("race",), min_cell_size=30)
        Scope(attributes=('race',), min_cell_size=30)
    """

    def __init__(
        self,
        attributes: Sequence[str] = (),
        min_cell_size: int = 50,
        *,
        min_group_size: int | None = None,
    ) -> None:
        if isinstance(attributes, str) or not all(isinstance(a, str) for a in attributes):
            raise TypeError(f"scope must be a sequence of attribute names, got {attributes!r}")
        attrs = tuple(attributes)
        if len(set(attrs)) != len(attrs):
            raise ValueError(f"scope has duplicates: {attrs}")
        if min_group_size is not None:
            warnings.warn(
                "Scope(min_group_size=...) is deprecated: the cell fallback size is called "
                "min_cell_size (min_group_size is the Sinkhorn term's batch minimum)",
                DeprecationWarning,
                stacklevel=2,
            )
            min_cell_size = min_group_size
        size = _check_int("min_cell_size", min_cell_size)
        if size < 2:
            raise ValueError(f"min_cell_size must be >= 2, got {min_cell_size}")
        self.attributes: tuple[str, ...] = attrs
        self.min_cell_size = size

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Scope)
            and self.attributes == other.attributes
            and self.min_cell_size == other.min_cell_size
        )

    def __hash__(self) -> int:
        return hash((self.attributes, self.min_cell_size))

    def __repr__(self) -> str:
        return f"Scope(attributes={self.attributes!r}, min_cell_size={self.min_cell_size})"


# ---------------------------------------------------------------------- rules
@dataclass
class CellStatistics:
    """What a rule sees of one epoch's statistics (built by the miner after folding).

    Attributes:
        count: pairs with history.
        mean: mean of their statistic (float64).
        m2: sum of squared deviations from ``mean`` (float64).
        values: float64 statistic of every pair with history, when the rule asked for them
            (``MiningRule.needs_values``), else ``None``.
        value_cells: the cell id of each of ``values`` (-1 = unknown), with a scope.
        cell_moments: ``(count, mean, population std)`` per cell for streaming rules with a
            scope.
        num_cells: number of group cells (0 without a scope).
        cell_names: the group ids of each scope attribute, per cell.
        min_cell_size: smallest cell with its own fit.
        chunks: re-readable chunks ``(statistic float32, NaN without history; cell id or
            None)`` of all pairs, for rules that need passes of their own (the mixture).
        minimum: smallest statistic of a pair with history (NaN without any).
        maximum: largest one.
    """

    count: int
    mean: float
    m2: float
    values: Tensor | None = None
    value_cells: Tensor | None = None
    cell_moments: list[tuple[int, float, float]] | None = None
    num_cells: int = 0
    cell_names: list[tuple[int, ...]] = field(default_factory=list)
    min_cell_size: int = 50
    chunks: Chunks | None = None
    minimum: float = math.nan
    maximum: float = math.nan


@dataclass
class RuleFit:
    """A rule's fitted parameters for one epoch.

    Attributes:
        mu: global location of the statistic (the weightings of :class:`ThresholdRule` use it).
        sigma: global scale.
        threshold_noisy: global lower threshold (NaN when the rule has none).
        threshold_faulty: global upper threshold (NaN when the rule has none).
        group_table: one dict per cell with pairs with history: ``group`` (the ids) and the
            rule's ``table_columns``.
        cell_params: rule-specific per-cell tensors used by ``judge`` (not checkpointed).
    """

    mu: float
    sigma: float
    threshold_noisy: float
    threshold_faulty: float
    group_table: list[dict[str, Any]] = field(default_factory=list)
    cell_params: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Judgement:
    """Flags of a chunk of pairs, and (soft rules) their weight for the next epoch."""

    noisy: Tensor
    faulty: Tensor
    keep_weight: Tensor | None = None


class MiningRule:
    """Turns the statistics of an epoch into flags, and a batch's losses into weights.

    Subclasses set ``needs_values`` (the fit needs every value, not only moments),
    ``soft_weights`` (every pair with history gets a stored weight, 1 byte per pair) and
    ``table_columns`` (the numeric columns of the per-cell table), and implement ``fit``,
    ``judge`` and ``step_weights``.
    """

    code: ClassVar[int] = -1
    table_columns: ClassVar[tuple[str, ...]] = ()

    @property
    def soft_weights(self) -> bool:
        """Whether every pair with history gets a stored weight (one more byte per pair)."""
        return False

    @property
    def needs_values(self) -> bool:
        """Whether :meth:`fit` needs the values (a transient float64 copy), not just moments."""
        return False

    @property
    def needs_cell_moments(self) -> bool:
        """Whether :meth:`fit` needs streaming per-cell moments (with a scope)."""
        return False

    def fit(self, stats: CellStatistics) -> RuleFit:
        """Fit the rule on the statistics of the pairs with history."""
        raise NotImplementedError

    def judge(self, fit: RuleFit, stat: Tensor, cell: Tensor | None) -> Judgement:
        """Flags of a chunk: ``stat`` is float32, NaN without history; ``cell`` -1 = unknown."""
        raise NotImplementedError

    def step_weights(
        self, fit: RuleFit, losses: Tensor, flagged: Tensor, keep: Tensor | None
    ) -> Tensor:
        """Weights of a batch: ``losses`` float32, ``flagged`` bool, ``keep`` stored weights."""
        raise NotImplementedError

    def fit_warning(self, fit: RuleFit) -> str | None:
        """A message to warn once about a fit (e.g. a huge weight), or ``None``."""
        return None

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self).__name__)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _threshold(location: float, scale: float, signed_beta: float) -> float:
    """``location + signed_beta * scale``; an infinite beta gives +-inf whatever the scale."""
    if math.isinf(signed_beta):
        return signed_beta
    return location + signed_beta * scale


THRESHOLD_COLUMNS = (
    "count",
    "location",
    "scale",
    "own_threshold",
    "threshold_noisy",
    "threshold_faulty",
)


class ThresholdRule(MiningRule):
    """The paper's two-sided threshold rule ``mu -+ beta * sigma`` with a loss weighting.

    A pair is noisy below ``mu - beta_noisy*sigma`` and faulty above ``mu + beta_faulty*sigma``;
    a flagged pair's loss ``l`` gets a detached weight. Weightings: ``"gaussian_pdf"`` =
    ``N(l; mu, sigma)`` (the paper; can exceed 1), ``"gaussian"`` =
    ``exp(-(l - mu)**2 / (2 sigma**2))``, ``"zero"`` drops the pair; ``max_weight`` caps the
    weight. The weighting always uses the global ``mu``, ``sigma``;
    the thresholds those of the pair's scope cell.

    Args:
        beta_noisy: ``math.inf`` disables noisy flags.
        beta_faulty: ``math.inf`` disables faulty flags.
        location: :class:`MeanStd` (paper) or :class:`MedianMad`.
        weighting: ``"gaussian_pdf"``, ``"gaussian"`` or ``"zero"``.
        max_weight: cap on a flagged pair's weight, ``None``: no cap.

    Example:
        >>> rule = ThresholdRule(beta_faulty=1.5, beta_noisy=math.inf, weighting="zero")
        >>> rule.beta_noisy, rule.location
        (inf, MeanStd())
    """

    code = 0
    table_columns = THRESHOLD_COLUMNS

    def __init__(
        self,
        beta_noisy: float = 3.0,
        beta_faulty: float = 3.0,
        location: Location | None = None,
        weighting: Weighting = "gaussian_pdf",
        max_weight: float | None = None,
    ) -> None:
        for name, beta in (("beta_noisy", beta_noisy), ("beta_faulty", beta_faulty)):
            value = _check_number(name, beta)
            if math.isnan(value) or value < 0:
                raise ValueError(f"{name} must be >= 0 (math.inf disables that side), got {beta}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        location = MeanStd() if location is None else location
        if not isinstance(location, Location):
            raise TypeError(f"location must be MeanStd() or MedianMad(), got {location!r}")
        if max_weight is not None:
            if isinstance(max_weight, bool) or not isinstance(max_weight, (int, float)):
                raise TypeError(
                    f"max_weight must be a number or None, got {type(max_weight).__name__}"
                )
            if not max_weight > 0 or math.isnan(max_weight):
                raise ValueError(f"max_weight must be > 0 (or None: no cap), got {max_weight}")
        self.beta_noisy = float(beta_noisy)
        self.beta_faulty = float(beta_faulty)
        self.location: Location = location
        self.weighting: str = weighting
        self.max_weight = None if max_weight is None else float(max_weight)

    @property
    def needs_values(self) -> bool:
        """Only a non-streaming location (the median) needs the values."""
        return not self.location.streaming

    @property
    def needs_cell_moments(self) -> bool:
        """A streaming location (mean/std) uses per-cell moments."""
        return self.location.streaming

    def fit(self, stats: CellStatistics) -> RuleFit:
        """Global and per-cell ``mu``, ``sigma`` and thresholds."""
        if stats.count == 0:
            return RuleFit(math.nan, math.nan, math.nan, math.nan)
        if stats.values is not None and not self.location.streaming:
            mu, sigma = self.location.from_values(stats.values)
        else:
            mu, sigma = stats.mean, math.sqrt(max(stats.m2, 0.0) / stats.count)
        lo_g = _threshold(mu, sigma, -self.beta_noisy)
        hi_g = _threshold(mu, sigma, self.beta_faulty)
        fit = RuleFit(mu, sigma, lo_g, hi_g)
        if not stats.num_cells:
            return fit
        num_cells = stats.num_cells
        if self.location.streaming:
            assert stats.cell_moments is not None
            cells = stats.cell_moments
        else:
            assert stats.values is not None and stats.value_cells is not None
            cells = []
            for c in range(num_cells):
                v = stats.values[stats.value_cells == c]
                cells.append(
                    (v.numel(), *self.location.from_values(v))
                    if v.numel()
                    else (0, math.nan, math.nan)
                )
        cell_lo = torch.full((num_cells,), lo_g, dtype=torch.float64)
        cell_hi = torch.full((num_cells,), hi_g, dtype=torch.float64)
        cell_own = torch.zeros(num_cells, dtype=torch.bool)
        for c, (cnt, loc, scale) in enumerate(cells):
            if cnt == 0:
                continue
            own = cnt >= stats.min_cell_size
            lo = _threshold(loc, scale, -self.beta_noisy) if own else lo_g
            hi = _threshold(loc, scale, self.beta_faulty) if own else hi_g
            cell_lo[c], cell_hi[c], cell_own[c] = lo, hi, own
            fit.group_table.append(
                {
                    "group": stats.cell_names[c],
                    "count": int(cnt),
                    "location": float(loc),
                    "scale": float(scale),
                    "own_threshold": bool(own),
                    "threshold_noisy": float(lo),
                    "threshold_faulty": float(hi),
                }
            )
        fit.cell_params = {"lo": cell_lo, "hi": cell_hi, "own": cell_own}
        return fit

    def judge(self, fit: RuleFit, stat: Tensor, cell: Tensor | None) -> Judgement:
        """``stat < lo`` noisy, ``stat > hi`` faulty (the cell's thresholds, else global)."""
        lo, hi = fit.threshold_noisy, fit.threshold_faulty
        if cell is not None and fit.cell_params:
            params = {k: v.to(stat.device) for k, v in fit.cell_params.items()}
            safe = cell.clamp_min(0)
            judged_in_group = (cell >= 0) & params["own"][safe]
            stat64 = stat.double()
            noisy = stat64 < torch.where(judged_in_group, params["lo"][safe], lo)
            faulty = stat64 > torch.where(judged_in_group, params["hi"][safe], hi)
        else:
            noisy, faulty = stat < lo, stat > hi
        return Judgement(noisy, faulty)

    def step_weights(
        self, fit: RuleFit, losses: Tensor, flagged: Tensor, keep: Tensor | None
    ) -> Tensor:
        """1 for unflagged pairs, the weighting at the current loss for flagged ones."""
        values = losses.float()
        if self.weighting == "zero":
            down = torch.zeros_like(values)
        else:
            down = torch.exp(-((values - fit.mu) ** 2) / (2.0 * fit.sigma**2))
            if self.weighting == "gaussian_pdf":
                down = down / (fit.sigma * _SQRT_2PI)
        if self.max_weight is not None:
            down = down.clamp(max=self.max_weight)
        return torch.where(flagged, down, torch.ones_like(values))

    def fit_warning(self, fit: RuleFit) -> str | None:
        """Warn when the uncapped ``gaussian_pdf`` weight can exceed :data:`PDF_PEAK_WARNING`."""
        if self.weighting != "gaussian_pdf" or self.max_weight is not None or not fit.sigma > 0:
            return None
        peak = 1.0 / (fit.sigma * _SQRT_2PI)
        if peak <= PDF_PEAK_WARNING:
            return None
        return (
            f"DBPM: sigma = {fit.sigma:.3g}, so the 'gaussian_pdf' weight of a flagged pair "
            f"can reach {peak:.3g} (up-weighting it); set max_weight (e.g. 1.0) or use "
            "weighting='gaussian'"
        )

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.beta_noisy, self.beta_faulty, self.weighting))


class GaussianMixtureRule(MiningRule):
    """Two-component 1-D Gaussian mixture per scope cell (NCR/DivideMix style).

    In each cell with at least ``min_cell_size`` pairs with history (else globally), a
    mixture of two Gaussians is fitted to the pairs' statistic by EM (see
    :func:`~fairvlm_lightning.mining.mixture.fit_two_gaussians`: ``iterations`` steps on a
    ``bins``-bin histogram of the cell, initialised at its 25th/75th percentiles, variance
    floor). ``p_bad(i)`` is the posterior of the component with the higher mean at the pair's
    statistic; the pair is flagged faulty when ``p_bad > threshold``. No noisy side.

    Weightings: ``"zero"``: flagged pairs get 0, all others 1. ``"posterior"``: *every* pair
    with history gets ``1 - p_bad`` (also the unflagged ones, so a pair with ``p_bad = 0.3`` is
    trained at 0.7), stored as one uint8 per pair (``round(255 * (1 - p_bad)) / 255``, so 1 is
    exact); pairs without history get 1.

    Args:
        threshold: flag when ``p_bad > threshold``, in ``[0, 1)``.
        weighting: ``"zero"`` or ``"posterior"``.
        iterations: EM steps (fixed, so every rank and every resume computes the same fit).
        bins: histogram bins per cell.

    Example:
        >>> GaussianMixtureRule(threshold=0.5, weighting="posterior").soft_weights
        True
    """

    code = 1
    table_columns = MIXTURE_COLUMNS

    def __init__(
        self,
        threshold: float = 0.5,
        weighting: Literal["zero", "posterior"] = "zero",
        iterations: int = 100,
        bins: int = 1024,
    ) -> None:
        value = _check_number("threshold", threshold)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if weighting not in MIXTURE_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {MIXTURE_WEIGHTINGS}, got {weighting!r}")
        if _check_int("iterations", iterations) < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if _check_int("bins", bins) < 8:
            raise ValueError(f"bins must be >= 8, got {bins}")
        self.threshold = value
        self.weighting: str = weighting
        self.iterations = int(iterations)
        self.bins = int(bins)

    @property
    def soft_weights(self) -> bool:
        """``True`` for ``weighting="posterior"``."""
        return self.weighting == "posterior"

    def fit(self, stats: CellStatistics) -> RuleFit:
        """The mixture of every cell (row ``num_cells`` of the parameters is the global fit)."""
        mu = stats.mean if stats.count else math.nan
        sigma = math.sqrt(max(stats.m2, 0.0) / stats.count) if stats.count else math.nan
        fit = RuleFit(mu, sigma, math.nan, math.nan)
        if stats.count == 0 or stats.chunks is None:
            return fit
        mix: MixtureFit = fit_two_gaussians_chunks(
            stats.chunks,
            stats.num_cells,
            stats.minimum,
            stats.maximum,
            bins=self.bins,
            iterations=self.iterations,
        )
        own = mix.count[: stats.num_cells] >= stats.min_cell_size
        fit.cell_params = {**mix.as_tensors(), "own": own}
        for c in range(stats.num_cells):
            cnt = int(mix.count[c])
            if cnt == 0:
                continue
            row = mix.row(c if bool(own[c]) else stats.num_cells)
            fit.group_table.append(
                {"group": stats.cell_names[c], **row, "count": cnt, "own_threshold": bool(own[c])}
            )
        return fit

    def logit(self, fit: RuleFit, stat: Tensor, cell: Tensor | None) -> Tensor:
        """``logit p_bad`` (float32) of each pair of a chunk, from its cell's or the global fit."""
        coefficients = logit_coefficients(fit.cell_params)
        own = fit.cell_params["own"].to(stat.device)
        glob = own.numel()
        if cell is None or not glob or not bool(own.any()):
            return logit_bad(stat, coefficients[glob:], None)
        safe = cell.clamp_min(0)
        row = torch.where((cell >= 0) & own[safe], safe, glob)
        return logit_bad(stat, coefficients, row)

    def judge(self, fit: RuleFit, stat: Tensor, cell: Tensor | None) -> Judgement:
        """Faulty where ``p_bad > threshold``; with ``"posterior"`` also ``1 - p_bad``."""
        has = ~torch.isnan(stat)
        if not fit.cell_params:
            none = torch.zeros_like(has)
            return Judgement(none, none, torch.ones_like(stat) if self.soft_weights else None)
        logit = self.logit(fit, stat, cell)
        cut = math.log(self.threshold / (1.0 - self.threshold)) if self.threshold else -math.inf
        faulty = has & (logit > cut)
        keep = torch.sigmoid(-logit) if self.soft_weights else None
        return Judgement(torch.zeros_like(has), faulty, keep)

    def step_weights(
        self, fit: RuleFit, losses: Tensor, flagged: Tensor, keep: Tensor | None
    ) -> Tensor:
        """``"zero"``: 0 if flagged else 1; ``"posterior"``: the stored ``1 - p_bad``."""
        values = losses.float()
        if self.soft_weights:
            assert keep is not None
            return keep.to(values.device, torch.float32)
        return torch.where(flagged, torch.zeros_like(values), torch.ones_like(values))

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.threshold, self.weighting))


_RULE_CODES: dict[int, str] = {
    ThresholdRule.code: "ThresholdRule",
    GaussianMixtureRule.code: "GaussianMixtureRule",
}


def rule_name(code: int) -> str:
    """The class name of the rule stored under ``code`` in a miner state."""
    return _RULE_CODES.get(int(code), f"<unknown code {code}>")


_RULE_OPTIONS = ("beta_noisy", "beta_faulty", "weighting", "location", "max_weight")


def strategies_from_options(
    statistic: LossStatistic | str | None = None,
    rule: MiningRule | None = None,
    scope: Scope | Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[LossStatistic, MiningRule, Scope]:
    """The strategy objects for objects and/or the flat options (one construction path).

    ``statistic`` may be ``"mean"``/``"ema"`` (with ``ema_decay`` in ``options``), ``scope`` a
    sequence of attribute names (with ``min_cell_size``; ``min_group_size`` is its deprecated
    name), and without ``rule`` the options
    ``beta_noisy``, ``beta_faulty``, ``weighting``, ``location`` (``"mean"``/``"median"``) and
    ``max_weight`` build a :class:`ThresholdRule`. An option that would be ignored (given
    together with the object it belongs to) raises.

    Example:
        >>> s, r, sc = strategies_from_options("ema", scope=("race",),
        ...     options={"beta_faulty": 1.5, "weighting": "zero", "ema_decay": 0.3})
        >>> s, r.beta_faulty, r.weighting, sc.attributes
        (EmaLoss(decay=0.3), 1.5, 'zero', ('race',))
    """
    opts = dict(options or {})
    if "min_group_size" in opts:
        warnings.warn(
            "the DBPM option min_group_size is deprecated: it is called min_cell_size (the "
            "Sinkhorn term's min_group_size is its batch minimum)",
            DeprecationWarning,
            stacklevel=3,
        )
        if "min_cell_size" in opts:
            raise ValueError("min_cell_size is given twice (also as min_group_size)")
        opts["min_cell_size"] = opts.pop("min_group_size")
    unknown = sorted(set(opts) - {*_RULE_OPTIONS, "ema_decay", "min_cell_size"})
    if unknown:
        raise TypeError(f"unexpected DBPM options {unknown}")
    decay = opts.pop("ema_decay", None)
    if statistic is None:
        statistic = "mean"
    if isinstance(statistic, str):
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        if statistic == "ema":
            statistic = EmaLoss(0.5 if decay is None else decay)
        else:
            if decay is not None:
                EmaLoss(decay)  # still validated, as before
            statistic = MeanLoss()
    elif not isinstance(statistic, LossStatistic):
        raise TypeError(f"statistic must be MeanLoss(), EmaLoss(...) or a name, got {statistic!r}")
    elif decay is not None:
        raise ValueError("ema_decay is given twice: pass EmaLoss(decay=...) only")
    size = opts.pop("min_cell_size", None)
    if scope is None:
        scope = ()
    if isinstance(scope, Scope):
        if size is not None:
            raise ValueError("min_cell_size is given twice: pass Scope(min_cell_size=...)")
    else:
        scope = Scope(scope, 50 if size is None else size)
    if rule is None:
        location = opts.pop("location", "mean")
        if isinstance(location, str):
            if location not in LOCATIONS:
                raise ValueError(f"location must be one of {LOCATIONS}, got {location!r}")
            location = _LOCATIONS[location]()
        rule = ThresholdRule(location=location, **opts)
    elif not isinstance(rule, MiningRule):
        raise TypeError(f"rule must be a MiningRule (ThresholdRule(...), ...), got {rule!r}")
    elif opts:
        raise ValueError(
            f"options {sorted(opts)} belong to the rule: pass them to {type(rule).__name__}"
        )
    return statistic, rule, scope
