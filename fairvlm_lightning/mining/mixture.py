"""Two-component 1-D Gaussian mixtures fitted by EM on per-cell histograms (pure torch).

:func:`fit_two_gaussians` fits one mixture per group cell and one over all values at once, in
float64, vectorised over the cells. Each cell's values are put in ``bins`` equal-width bins
between the cell's min and max; EM then runs on the bins, each bin standing for its count of
values at the *mean* of its values (exact for point masses; the spread inside a bin is lost,
which is below ``(width / bins)**2 / 12``, and that is also the variance floor). The cost is
one pass over the values (two ``bincount``) plus ``iterations * cells * bins`` work, whatever
the number of values. Initialisation is deterministic: the component means at the cell's 25th
and 75th percentiles (its min and max if those coincide), both variances the cell's variance,
equal weights. The component with the higher mean is the "bad" one.

Example:
    >>> import torch
    >>> x = torch.tensor([-1.0, 1.0] * 50 + [9.0, 11.0] * 50, dtype=torch.float64)
    >>> fit = fit_two_gaussians(x, torch.full_like(x, -1, dtype=torch.long), 0)
    >>> [round(v, 3) for v in (fit.mean_clean[0].item(), fit.mean_bad[0].item())]
    [0.0, 10.0]
    >>> [round(v, 3) for v in (fit.var_clean[0].item(), fit.weight_bad[0].item())]
    [1.0, 0.5]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "MIXTURE_COLUMNS",
    "Chunks",
    "MixtureFit",
    "fit_two_gaussians",
    "fit_two_gaussians_chunks",
    "logit_bad",
    "logit_coefficients",
    "posterior_bad",
]

#: the per-cell table columns of :class:`~fairvlm_lightning.mining.GaussianMixtureRule`
MIXTURE_COLUMNS = (
    "count",
    "own_threshold",
    "mean_clean",
    "std_clean",
    "mean_bad",
    "std_bad",
    "weight_bad",
)
_PARAMS = ("count", "mean_clean", "var_clean", "mean_bad", "var_bad", "weight_bad")
_RELATIVE_FLOOR = 1e-6
_TINY = 1e-300


@dataclass
class MixtureFit:
    """Per-row mixture parameters (float64, shape ``(num_cells + 1,)``; the last row is global).

    Attributes:
        count: values of the row.
        mean_clean: mean of the lower component.
        var_clean: its variance.
        mean_bad: mean of the higher ("bad") component.
        var_bad: its variance.
        weight_bad: its mixing weight (0 for a row with fewer than 2 distinct values).
    """

    count: Tensor
    mean_clean: Tensor
    var_clean: Tensor
    mean_bad: Tensor
    var_bad: Tensor
    weight_bad: Tensor

    def as_tensors(self) -> dict[str, Tensor]:
        """The parameters as a dict (what :func:`posterior_bad` takes)."""
        return {name: getattr(self, name) for name in _PARAMS}

    def row(self, r: int) -> dict[str, float]:
        """Row ``r`` as Python floats (means, standard deviations, weight)."""
        return {
            "mean_clean": float(self.mean_clean[r]),
            "std_clean": math.sqrt(float(self.var_clean[r])),
            "mean_bad": float(self.mean_bad[r]),
            "std_bad": math.sqrt(float(self.var_bad[r])),
            "weight_bad": float(self.weight_bad[r]),
        }


Chunks = Callable[[], Iterable[tuple[Tensor, "Tensor | None"]]]


def _histograms(
    chunks: Chunks, num_cells: int, bins: int, lo: float, hi: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per row (cells, then global): ``(count, mean)`` of ``bins`` bins over ``[lo, hi]``.

    One pass over the chunks; every row uses the same bins, so the global row is the sum of
    the cell rows and of the values without a cell. Returns the bin width per row too.
    """
    rows = num_cells + 2  # cells, no cell, no value
    width = max(hi - lo, 0.0)
    scale = bins / width if width > 0 else 0.0
    count = torch.zeros(rows * bins, dtype=torch.float64)
    sums = torch.zeros(rows * bins, dtype=torch.float64)
    for stat, cell in chunks():
        has = ~torch.isnan(stat)
        if cell is None or not num_cells:
            row = torch.where(has, num_cells, num_cells + 1)
        else:
            row = torch.where(has, torch.where(cell >= 0, cell, num_cells), num_cells + 1)
        x = torch.where(has, stat, lo).float()
        b = ((x - lo) * scale).floor_().clamp_(0, bins - 1).long()
        flat = (row * bins + b).cpu()
        count += torch.bincount(flat, minlength=rows * bins).double()
        sums += torch.bincount(flat, weights=x.double().cpu(), minlength=rows * bins)
    count, sums = count.view(rows, bins)[:-1], sums.view(rows, bins)[:-1]
    count[num_cells] = count.sum(0)
    sums[num_cells] = sums.sum(0)
    mean = torch.where(count > 0, sums / count.clamp_min(1), lo)
    return count, mean, torch.full((num_cells + 1,), width, dtype=torch.float64)


def _em(count: Tensor, x: Tensor, width: Tensor, bins: int, iterations: int) -> MixtureFit:
    """EM for two Gaussians on binned rows ``count``/``x`` of shape ``(R, bins)``."""
    n = count.sum(1)
    safe_n = n.clamp_min(1)
    mean = (count * x).sum(1) / safe_n
    var = (count * (x - mean.unsqueeze(1)) ** 2).sum(1) / safe_n
    floor = torch.maximum(var * _RELATIVE_FLOOR, (width / bins) ** 2 / 12.0).clamp_min(_TINY)
    cum = count.cumsum(1)
    q = torch.stack([0.25 * n, 0.75 * n], 1)
    idx = torch.searchsorted(cum, q).clamp_(max=bins - 1)
    m0, m1 = x.gather(1, idx[:, :1]).squeeze(1), x.gather(1, idx[:, 1:]).squeeze(1)
    same = m1 <= m0
    last = (count > 0).double().cumsum(1).argmax(1, keepdim=True)  # last non-empty bin
    m0 = torch.where(same, x[:, 0], m0)
    m1 = torch.where(same, x.gather(1, last).squeeze(1), m1)
    v0 = v1 = var.clamp_min(floor)
    p1 = torch.full_like(n, 0.5)
    valid = (n >= 2) & (width > 0)
    for _ in range(iterations):
        c0 = (torch.log1p(-p1) - 0.5 * torch.log(v0))[:, None]
        c1 = (torch.log(p1) - 0.5 * torch.log(v1))[:, None]
        lp0 = c0 - (x - m0[:, None]) ** 2 / (2 * v0[:, None])
        lp1 = c1 - (x - m1[:, None]) ** 2 / (2 * v1[:, None])
        r1 = torch.sigmoid(lp1 - lp0)
        w1 = count * r1
        w0 = count - w1
        n0, n1 = w0.sum(1), w1.sum(1)
        ok0, ok1 = n0 > 0, n1 > 0
        nm0 = (w0 * x).sum(1) / n0.clamp_min(_TINY)
        nm1 = (w1 * x).sum(1) / n1.clamp_min(_TINY)
        nv0 = (w0 * (x - nm0[:, None]) ** 2).sum(1) / n0.clamp_min(_TINY)
        nv1 = (w1 * (x - nm1[:, None]) ** 2).sum(1) / n1.clamp_min(_TINY)
        m0, v0 = torch.where(ok0, nm0, m0), torch.where(ok0, nv0.clamp_min(floor), v0)
        m1, v1 = torch.where(ok1, nm1, m1), torch.where(ok1, nv1.clamp_min(floor), v1)
        p1 = (n1 / safe_n).clamp(1e-12, 1.0 - 1e-12)
    swap = m1 < m0
    m0, m1 = torch.where(swap, m1, m0), torch.where(swap, m0, m1)
    v0, v1 = torch.where(swap, v1, v0), torch.where(swap, v0, v1)
    p1 = torch.where(swap, 1.0 - p1, p1)
    p1 = torch.where(valid, p1, 0.0)
    return MixtureFit(n, m0, v0, m1, v1, p1)


def fit_two_gaussians(
    values: Tensor,
    cells: Tensor,
    num_cells: int,
    *,
    bins: int = 1024,
    iterations: int = 100,
) -> MixtureFit:
    """Fit a two-Gaussian mixture per cell and over all values (the last row).

    Args:
        values: (n,) statistics; NaN = no value (left out).
        cells: (n,) long cell of each value in ``[0, num_cells)``, or -1 (global fit only).
        num_cells: number of cells (0: only the global row).
        bins: histogram bins (the same edges, between the min and max value, for every row).
        iterations: EM steps.

    Returns:
        A :class:`MixtureFit` with ``num_cells + 1`` rows.
    """
    values, cells = values.detach().flatten(), cells.detach().flatten().long()
    finite = values[~torch.isnan(values)].double()
    lo = float(finite.min()) if finite.numel() else 0.0
    hi = float(finite.max()) if finite.numel() else 0.0
    return fit_two_gaussians_chunks(
        lambda: [(values, cells)], num_cells, lo, hi, bins=bins, iterations=iterations
    )


def fit_two_gaussians_chunks(
    chunks: Chunks,
    num_cells: int,
    lo: float,
    hi: float,
    *,
    bins: int = 1024,
    iterations: int = 100,
) -> MixtureFit:
    """:func:`fit_two_gaussians` over values given in chunks (one pass, never concatenated).

    ``chunks()`` returns an iterable of ``(values, cells)`` as in :func:`fit_two_gaussians`
    (``cells`` may be ``None``: global fit only); ``lo``/``hi`` are the min and max value.
    """
    count, x, width = _histograms(chunks, num_cells, bins, lo, hi)
    return _em(count, x, width, bins, iterations)


def logit_coefficients(params: Mapping[str, Tensor]) -> Tensor:
    """Per row, float32 ``(c, m0, h0, m1, h1)`` as columns of an ``(R, 5)`` tensor.

    ``logit p_bad(x) = c + h0 (x - m0)**2 - h1 (x - m1)**2``.
    """
    p1 = params["weight_bad"].double()
    v0, v1 = params["var_clean"].double(), params["var_bad"].double()
    c = torch.log(p1) - torch.log1p(-p1) - 0.5 * torch.log(v1 / v0)
    m0, m1 = params["mean_clean"].double(), params["mean_bad"].double()
    return torch.stack([c, m0, 0.5 / v0, m1, 0.5 / v1], 1).float()


def logit_bad(stat: Tensor, coefficients: Tensor, row: Tensor | None) -> Tensor:
    """``logit P(bad | stat)`` (float32) from :func:`logit_coefficients` of each value's row.

    ``row=None`` uses row 0 for every value (a one-row fit: no gather).
    """
    x = stat.float()
    coefficients = coefficients.to(x.device)
    if row is None:
        c, m0, h0, m1, h1 = (float(v) for v in coefficients[0])
        return c + h0 * (x - m0).square() - h1 * (x - m1).square()
    k = coefficients.t().contiguous()
    out = k[0].index_select(0, row)
    out += k[2].index_select(0, row) * (x - k[1].index_select(0, row)).square()
    out -= k[4].index_select(0, row) * (x - k[3].index_select(0, row)).square()
    return out


def posterior_bad(stat: Tensor, params: dict[str, Tensor], row: Tensor) -> Tensor:
    """``P(bad | stat)`` under the mixture of each value's ``row`` (float64).

    Example:
        >>> p = {"mean_clean": torch.tensor([0.0]), "var_clean": torch.tensor([1.0]),
        ...      "mean_bad": torch.tensor([2.0]), "var_bad": torch.tensor([1.0]),
        ...      "weight_bad": torch.tensor([0.5])}
        >>> posterior_bad(torch.tensor([1.0], dtype=torch.float64), p, torch.tensor([0]))
        tensor([0.5000], dtype=torch.float64)
    """
    m0, v0 = params["mean_clean"][row].double(), params["var_clean"][row].double()
    m1, v1 = params["mean_bad"][row].double(), params["var_bad"][row].double()
    p1 = params["weight_bad"][row].double()
    logit = (
        torch.log(p1)
        - torch.log1p(-p1)
        - 0.5 * torch.log(v1 / v0)
        - (stat - m1) ** 2 / (2 * v1)
        + (stat - m0) ** 2 / (2 * v0)
    )
    return torch.sigmoid(logit)
