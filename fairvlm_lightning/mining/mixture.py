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
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MIXTURE_COLUMNS", "MixtureFit", "fit_two_gaussians", "posterior_bad"]

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


def _histogram(values: Tensor, rows: Tensor, num_rows: int, bins: int) -> tuple[Tensor, ...]:
    """Per-row ``(count, mean)`` of ``bins`` equal-width bins, and each row's bin width."""
    big = torch.full((num_rows,), math.inf, dtype=torch.float64)
    lo = big.scatter_reduce(0, rows, values, "amin", include_self=True)
    hi = (-big).scatter_reduce(0, rows, values, "amax", include_self=True)
    width = torch.where(torch.isfinite(lo), hi - lo, 0.0)
    lo = torch.where(torch.isfinite(lo), lo, 0.0)
    scale = torch.where(width > 0, bins / width.clamp_min(_TINY), 0.0)
    b = ((values - lo[rows]) * scale[rows]).floor().long().clamp_(0, bins - 1)
    flat = rows * bins + b
    del b
    count = torch.bincount(flat, minlength=num_rows * bins).double().view(num_rows, bins)
    sums = torch.bincount(flat, weights=values, minlength=num_rows * bins).view(num_rows, bins)
    mean = torch.where(count > 0, sums / count.clamp_min(1), lo.unsqueeze(1))
    return count, mean, width


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
        values: (n,) statistics (float64 is used).
        cells: (n,) long cell of each value in ``[0, num_cells)``, or -1 (global fit only).
        num_cells: number of cells (0: only the global row).
        bins: histogram bins per row.
        iterations: EM steps.

    Returns:
        A :class:`MixtureFit` with ``num_cells + 1`` rows.
    """
    values = values.detach().to("cpu", torch.float64).flatten()
    cells = cells.detach().to("cpu", torch.long).flatten()
    known = cells >= 0
    parts = []
    if num_cells:
        parts.append(_histogram(values[known], cells[known], num_cells, bins))
    parts.append(_histogram(values, torch.zeros_like(cells), 1, bins))
    count, x, width = (torch.cat(t) for t in zip(*parts, strict=True))
    return _em(count, x, width, bins, iterations)


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
