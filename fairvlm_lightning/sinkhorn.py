r"""Sinkhorn fairness term: keep every protected group's loss distribution close to the batch's.

For each attribute ``a`` and each group ``g`` of ``a`` with at least ``min_group_size`` members
in the batch, the term is the debiased Sinkhorn divergence :math:`S_\varepsilon(D_g, D_{all})`
between the empirical 1-D distribution of a per-pair statistic over the group's pairs and over
the whole batch (GeomLoss ``SamplesLoss("sinkhorn", p=2, blur=..., debias=True)``, cost
:math:`|x-y|^2/2`). :class:`SinkhornFairnessLoss` returns the sum over attributes and groups.

Backends: ``"geomloss"`` calls ``geomloss.SamplesLoss`` once for all groups; ``"fused"``
computes the same divergence with a re-batched transcription of GeomLoss's loop
(:func:`sinkhorn_divergences`); ``"exact1d"`` computes the :math:`\varepsilon \to 0` limit in
closed form: for uniform empirical measures on the line optimal transport matches quantiles, so
:math:`S_0 = \tfrac1p W_p^p = \tfrac1p\int_0^1 |F^{-1}(t) - G^{-1}(t)|^p\,dt`, evaluated exactly
by sorting (:func:`quantile_transport_cost`); ``"auto"`` picks one per device
(:func:`auto_backend`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from fairvlm_lightning.validation import check_integer_ids

__all__ = [
    "DEFAULT_BLUR",
    "DEFAULT_SCALING",
    "SinkhornBackend",
    "SinkhornFairnessLoss",
    "auto_backend",
    "epsilon_schedule",
    "group_weights",
    "quantile_transport_cost",
    "sinkhorn_divergences",
]

#: Names accepted by ``SinkhornFairnessLoss(backend=...)``.
SinkhornBackend = Literal["auto", "fused", "geomloss", "exact1d"]

# Chosen by benchmarks/bench_sinkhorn.py (docs/losses.md): below blur ~1e-2 the gap to the exact
# value is set by the epsilon-scaling ratio, not by blur.
#: Default GeomLoss blur of :class:`SinkhornFairnessLoss` (and of ``FairVLMModule``).
DEFAULT_BLUR = 1e-2
#: Default GeomLoss epsilon-scaling ratio of :class:`SinkhornFairnessLoss`.
DEFAULT_SCALING = 0.95
# Elements per (problems x n x n) cost matrix in one batched call.
_MAX_BATCHED_ELEMENTS = 2**25
# backend="auto" per device type (docs/losses.md, "Choosing a backend"): on CPU the fused loop is
# measured faster than GeomLoss's; on CUDA the choice is reasoned, not measured: the fused loop
# launches fewer kernels and, with a fixed diameter, can be captured in a CUDA graph.
_AUTO_BACKEND = {"cpu": "fused", "cuda": "fused"}
# Largest (value range / blur)**p the GeomLoss backend accepts: beyond it C / eps in float32
# loses all digits of the soft-min (and overflows to inf, then NaN, near 1e38).
_MAX_RESOLUTION = 1e30


def quantile_transport_cost(x: Tensor, y: Tensor, p: int = 2) -> Tensor:
    r"""Exact optimal transport cost :math:`\tfrac1p W_p^p` between two 1-D empirical measures.

    Both samples carry uniform weights and may differ in size. The quantile functions of the
    two measures are step functions with breakpoints at ``k/n`` and ``k/m``; on every interval of
    the merged breakpoints both are constant, so
    :math:`\int_0^1 |F_x^{-1}(t) - F_y^{-1}(t)|^p dt` is an exact finite sum. Breakpoints are kept
    as integers over the common denominator ``n * m``. Cost ``O((n + m) log(n + m))``,
    differentiable with respect to ``x`` and ``y`` (through the sort).

    Args:
        x: ``(n,)`` samples of the first measure.
        y: ``(m,)`` samples of the second measure.
        p: 1 (:math:`W_1`) or 2 (:math:`\tfrac12 W_2^2`, the GeomLoss ``p=2`` convention).

    Returns:
        0-d tensor.

    Example:
        >>> import torch
        >>> x = torch.tensor([0.0, 1.0, 2.0])
        >>> quantile_transport_cost(x, x + 3.0)  # a shift by c costs c**2 / 2
        tensor(4.5000)
        >>> quantile_transport_cost(torch.tensor([0.0, 1.0]), torch.tensor([0.0]), p=1)
        tensor(0.5000)
    """
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")
    for name, t in (("x", x), ("y", y)):
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
    n, m = x.numel(), y.numel()
    xs = torch.sort(x).values
    ys = torch.sort(y).values
    if n == m:
        diff = xs - ys.to(xs.dtype)
        cost = diff.abs() if p == 1 else diff * diff
        return cost.mean() / p
    device = x.device
    # Breakpoints t = k/n and k/m written as integers over the denominator n*m.
    cuts = torch.cat(
        [
            torch.arange(1, n + 1, device=device) * m,
            torch.arange(1, m + 1, device=device) * n,
        ]
    ).unique(sorted=True)
    widths = torch.diff(cuts, prepend=cuts.new_zeros(1)).to(xs.dtype) / (n * m)
    # On (cuts[k-1], cuts[k]] the quantile of x is xs[(cuts[k]-1) // m], that of y ys[... // n].
    # index_select, not x[idx]: CPU advanced indexing goes multi-threaded from ~2k elements and
    # costs milliseconds on a busy machine.
    diff = xs.index_select(0, (cuts - 1) // m) - ys.index_select(0, (cuts - 1) // n).to(xs.dtype)
    cost = diff.abs() if p == 1 else diff * diff
    return (widths * cost).sum() / p


class _Layout(NamedTuple):
    names: list[str]  # "attr/id" of each usable group, attributes in dict order, ids ascending
    member: Tensor | None  # (G, B) bool
    sizes: list[int]  # members per group


# Constant for torch.compile: run eagerly at trace time (NumPy inside would be traced as tensors).
@torch.compiler.assume_constant_result
def epsilon_schedule(p: int, diameter: float, blur: float, scaling: float) -> list[float]:
    r"""GeomLoss's epsilon-scaling schedule: the temperatures of the Sinkhorn iterations.

    Starts at :math:`\text{diameter}^p`, then :math:`\exp(p \log d + k\,p \log s)` for
    ``k = 0, 1, ...`` while above :math:`\text{blur}^p`, and ends at :math:`\text{blur}^p`
    (the same closed form, and the same NumPy arithmetic, as GeomLoss's ``epsilon_schedule``).

    Args:
        p: exponent of the cost :math:`|x - y|^p / p`.
        diameter: upper bound of the distances between points, > 0.
        blur: target blur scale (:math:`\varepsilon = \text{blur}^p`), > 0.
        scaling: ratio between two successive blur scales, in (0, 1).

    Returns:
        The temperatures as Python floats.

    Example:
        >>> [round(e, 4) for e in epsilon_schedule(2, 1.0, 0.25, 0.5)]
        [1.0, 1.0, 0.25, 0.0625]
    """
    middle = np.exp(np.arange(p * np.log(diameter), p * np.log(blur), p * np.log(scaling)))
    return [float(diameter**p), *(float(e) for e in middle), float(blur**p)]


def auto_backend(device: torch.device | str) -> str:
    """The backend ``backend="auto"`` runs on ``device``: ``"fused"`` on CPU and on CUDA.

    Example:
        >>> auto_backend("cpu")
        'fused'
    """
    return _AUTO_BACKEND.get(torch.device(device).type, "fused")


@cache
def _keops_available() -> bool:
    try:
        import pykeops  # noqa: F401
    except ImportError:
        return False
    return True


def _samples_backend(device: torch.device) -> str:
    """GeomLoss backend for ``backend="geomloss"``: KeOps ``online`` on CUDA when installed."""
    return "online" if device.type == "cuda" and _keops_available() else "tensorized"


# exp(x) for x < -87.3 underflows float32; torch's vectorised CPU exp leaves its fast path there
# and runs 30-80x slower (measured: 0.25 ns vs 8-18 ns an element). Terms that far below the
# row maximum are below float64 resolution in the sum, so rounding them up to exp(-80) changes
# nothing but the time.
_LOG_FLOOR = -80.0


def _softmin(eps: float, c: Tensor, h: Tensor) -> Tensor:
    r"""GeomLoss's tensorized soft-C-transform ``-eps * logsumexp_j(h_j - C_ij / eps)``.

    Same formula and shapes as ``geomloss.sinkhorn_samples.softmin_tensorized`` (``c``:
    ``(P, N, M)`` or a shared ``(N, M)``, ``h``: ``(P, M)``), with the log-sum-exp written out
    so that terms more than 80 below each row's maximum are clamped to ``exp(-80)`` instead of
    sent down the slow underflow path of ``exp``.
    """
    return -eps * _lse(eps, c, h)


def _lse(eps: float, c: Tensor, h: Tensor) -> Tensor:
    """``logsumexp_j(h_j - C_ij / eps)`` with the floor above; in place without autograd."""
    s = torch.sub(h.unsqueeze(1), c, alpha=1.0 / eps)  # (P, N, M)
    top = s.amax(dim=2, keepdim=True)
    if torch.is_grad_enabled():
        return (s - top).clamp(min=_LOG_FLOOR).exp().sum(dim=2).log() + top.squeeze(2)
    return s.sub_(top).clamp_(min=_LOG_FLOOR).exp_().sum(dim=2).log_().add_(top.squeeze(2))


def _symmetric_sinkhorn(
    cost: Tensor, a: Tensor, batch_log: Tensor, eps_list: list[float]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""GeomLoss's symmetric Sinkhorn loop for all groups at once, one soft-min per iteration.

    The iteration of ``geomloss``'s ``sinkhorn_loop`` (balanced, debiased, single scale): start
    from the soft-min of the log-weights at the first temperature, then for every ``eps`` of the
    schedule replace each potential by the average of itself and its soft-C-transform, and end
    with one extrapolation step with autograd on (potentials detached, so the gradient is the
    envelope-theorem one: only through the cost matrix). The four problems of every group --
    :math:`f_{ab}, g_{ab}` (group vs batch), :math:`f_{aa}` (group vs itself) -- and the batch's
    :math:`g_{bb}` are rows of one ``(3G + 1, B)`` tensor, so each iteration is one batched
    soft-min over one shared ``(B, B)`` cost matrix.

    Args:
        cost: ``(B, B)`` cost ``C(v_i, v_j)``, differentiable in ``v_i`` only (as GeomLoss's).
        a: ``(G, B)`` group weights (``1/n_g`` on members, 0 elsewhere).
        batch_log: ``(1, B)`` log-weights of the batch.
        eps_list: temperatures (GeomLoss's ``epsilon_schedule``).

    Returns:
        ``f_ab, g_ab, f_aa`` of shape ``(G, B)`` and ``g_bb`` of shape ``(B,)``.
    """
    g, b = a.shape
    a_log = a.log()  # -inf off the group: exactly zero mass, whatever the potentials
    # Row r is updated from the potential in row swap[r], under the log-weights in row r.
    weights = torch.cat([batch_log.expand(g, b), a_log, a_log, batch_log])
    dev = a.device
    swap = torch.cat(
        [
            torch.arange(g, 2 * g, device=dev),
            torch.arange(g, device=dev),
            torch.arange(2 * g, 3 * g + 1, device=dev),
        ]
    )
    with torch.no_grad():
        c = cost.detach()
        # A device tensor (a Python scalar costs four copy ops per use; new_tensor a host copy).
        half = torch.full((), 0.5, dtype=c.dtype, device=dev)
        pot = _softmin(eps_list[0], c, weights)
        for eps in eps_list:
            lse = _lse(eps, c, torch.add(weights, pot.index_select(0, swap), alpha=1 / eps))
            pot.add_(lse, alpha=-eps).mul_(half)  # (f + softmin) / 2, as GeomLoss averages
        eps = eps_list[-1]
        h = torch.add(weights, pot.index_select(0, swap), alpha=1 / eps)
    pot = _softmin(eps, cost, h)
    return pot[:g], pot[g : 2 * g], pot[2 * g : 3 * g], pot[3 * g]


def _group_layout(
    groups: Mapping[str, Tensor], b: int, device: torch.device, min_group_size: int
) -> _Layout:
    """Usable groups of all attributes at once: names, ``(G, B)`` membership and sizes."""
    attrs = list(groups)
    if not attrs or b == 0:
        return _Layout([], None, [])
    ids = torch.stack([groups[a].to(device=device, dtype=torch.int64) for a in attrs])
    lo_hi = torch.stack([ids.amin(dim=1), ids.amax(dim=1)]).tolist()  # one host sync
    for attr, lo in zip(attrs, lo_hi[0], strict=True):
        if lo < -1:
            raise ValueError(f"groups[{attr!r}] holds id {lo}; ids must be >= 0, or -1 for unknown")
    span = max(lo_hi[1]) + 1
    if span <= 0:
        return _Layout([], None, [])
    # One key per (attribute, group id); unknowns (-1) get key -1. Sorted unique keys list the
    # attributes in dict order and the ids of each in ascending order.
    offsets = torch.arange(len(attrs), device=device).unsqueeze(1) * span
    keys = torch.where(ids >= 0, ids + offsets, -1)
    present, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    names: list[str] = []
    sizes: list[int] = []
    slots: list[int] = []
    for key, count in zip(present.tolist(), counts.tolist(), strict=True):
        if key >= 0 and count >= min_group_size:
            slots.append(len(names))
            names.append(f"{attrs[key // span]}/{key % span}")
            sizes.append(count)
        else:
            slots.append(-1)
    if not names:
        return _Layout([], None, [])
    slot = torch.tensor(slots, device=device)[inverse]  # (A, B): usable group or -1
    member = (slot.unsqueeze(-1) == torch.arange(len(names), device=device)).any(dim=0)
    return _Layout(names, member.T.contiguous(), sizes)  # (G, B) bool


def group_weights(
    groups: Mapping[str, Tensor], min_group_size: int = 2, device: torch.device | str | None = None
) -> tuple[list[str], Tensor]:
    """Names and ``(G, B)`` weights of the usable groups of a batch (``1/n_g`` on members).

    The layout :class:`SinkhornFairnessLoss` builds from the group ids (one host sync). Compute
    it once for a fixed group layout and pass the weights to :func:`sinkhorn_divergences` to
    run the term without any host sync (``torch.compile`` / CUDA graph capture).

    Args:
        groups: attribute name -> ``(B,)`` integer group ids, ``-1`` = unknown.
        min_group_size: groups with fewer members are left out.
        device: device of the weights (default: that of the first ids tensor).

    Returns:
        ``["attr/id", ...]`` (attributes in dict order, ids ascending) and the float32 weights.

    Example:
        >>> names, w = group_weights({"gender": torch.tensor([0, 0, 1, -1])}, min_group_size=1)
        >>> names, w.tolist()
        (['gender/0', 'gender/1'], [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    """
    first = next(iter(groups.values()), None)
    b = 0 if first is None else first.numel()
    dev = (
        torch.device(device)
        if device is not None
        else (first.device if first is not None else torch.device("cpu"))
    )
    layout = _group_layout(groups, b, dev, min_group_size)
    if layout.member is None:
        return [], torch.zeros(0, b, device=dev)
    return layout.names, _layout_weights(layout, torch.float32)


def _layout_weights(layout: _Layout, dtype: torch.dtype) -> Tensor:
    assert layout.member is not None
    sizes = torch.tensor(layout.sizes, device=layout.member.device, dtype=dtype)
    return layout.member.to(dtype) / sizes.unsqueeze(1)


def _exact_terms(values: Tensor, layout: _Layout, p: int) -> Tensor:
    r"""All groups' :math:`\tfrac1p W_p^p` to the batch in one batched quantile integration.

    Row ``g`` holds group ``g``'s sorted values padded to ``B``; the merged breakpoints
    ``k * B`` (group) and ``j * n_g`` (batch) over the denominator ``n_g * B`` are sorted per
    row (unused slots sort last with width 0), exactly as :func:`quantile_transport_cost`
    does for one group.
    """
    assert layout.member is not None
    b = values.numel()
    device = values.device
    ys, order = torch.sort(values)
    n = torch.tensor(layout.sizes, device=device)  # (G,)
    member = layout.member.index_select(1, order)  # (G, B) in sorted order
    pos = torch.arange(b, device=device)
    # Members first (ascending value), then the others: group g's sorted values in row g.
    slots = torch.sort(torch.where(member, pos, pos + b), dim=1).values
    xs = ys.index_select(0, (slots % b).flatten()).view(slots.shape)  # (G, B)
    k = pos + 1
    x_cuts = torch.where(k <= n.unsqueeze(1), k * b, b * b + 1)  # unused: sorted last
    y_cuts = k * n.unsqueeze(1)
    cuts = torch.sort(torch.cat([x_cuts, y_cuts], dim=1), dim=1).values  # (G, 2B)
    valid = cuts <= (n * b).unsqueeze(1)
    widths = torch.diff(cuts, dim=1, prepend=cuts.new_zeros(cuts.shape[0], 1))
    widths = torch.where(valid, widths, 0).to(values.dtype) / (n * b).unsqueeze(1)
    xi = ((cuts - 1) // b).clamp(max=b - 1)
    yi = ((cuts - 1) // n.unsqueeze(1)).clamp(max=b - 1)
    diff = xs.gather(1, xi) - ys.index_select(0, yi.flatten()).view(yi.shape)
    cost = diff.abs() if p == 1 else diff * diff
    return (widths * cost).sum(dim=1) / p


def _normalise(
    values: Tensor, blur: float, p: int, diameter: float | None
) -> tuple[Tensor, float, float]:
    """Map values to ``[0, 1]`` by their range (or to ``[0, range/diameter]``, no host sync)."""
    if diameter is None:
        lo, hi = torch.aminmax(values.detach())
        span = (hi - lo).item()
        if span != span or span == float("inf"):
            raise ValueError("values contain NaN or infinity")
        scale = max(span, blur)  # identical values do not crash (geomloss issue #51)
    else:
        lo = values.detach().amin()
        scale = float(diameter)
    if (scale / blur) ** p > _MAX_RESOLUTION:
        what = "values span" if diameter is None else "diameter="
        raise ValueError(
            f"{what} {scale:.3g}, {scale / blur:.3g} times blur={blur:g}: "
            f"Sinkhorn in float32 cannot resolve costs that far apart (limit "
            f"{_MAX_RESOLUTION ** (1 / p):.3g} times blur); use a larger blur or "
            "backend='exact1d'"
        )
    return (values - lo) / scale, scale, blur / scale


def sinkhorn_divergences(
    values: Tensor,
    weights: Tensor,
    blur: float = DEFAULT_BLUR,
    p: int = 2,
    scaling: float = DEFAULT_SCALING,
    diameter: float | None = None,
) -> Tensor:
    r"""Debiased Sinkhorn divergence of each weighted group of a batch to the whole batch.

    The ``"fused"`` backend: GeomLoss's symmetric Sinkhorn loop (same epsilon schedule, same
    averaged updates from the same start, same final extrapolation step for the gradient and
    the same debiasing formula), batched over all groups: every group is a reweighting of the
    batch, so one ``(B, B)`` cost matrix serves all problems and the ``3G + 1`` potentials are
    rows of one tensor, updated by one soft-min per iteration. Values are mapped to ``[0, 1]``
    (``blur`` with them) and the divergence scaled back by ``scale**p``.

    With ``diameter=None`` the scale is the batch's value range (one host sync, non-finite
    values raise). With a float ``diameter`` (an upper bound of the value range) the number of
    iterations and every shape are fixed by ``B`` and ``G``: no host sync, so
    ``torch.compile(fullgraph=True)`` and CUDA graphs capture the whole call; non-finite values
    then give NaN instead of an error.

    Args:
        values: ``(B,)`` float values (computed in their dtype; float32 or float64).
        weights: ``(G, B)`` non-negative group weights, each row summing to 1
            (:func:`group_weights`).
        blur: blur scale (:math:`\varepsilon = \text{blur}^p`) in the units of ``values``.
        p: exponent of the cost :math:`|x - y|^p / p`; 1 or 2.
        scaling: epsilon-scaling ratio in (0, 1).
        diameter: fixed scale of the values, or None for their range in this batch.

    Returns:
        ``(G,)`` divergences, differentiable with respect to ``values``.

    Example:
        >>> values = torch.tensor([0.0, 1.0, 2.0, 3.0])
        >>> names, w = group_weights({"gender": torch.tensor([0, 0, 1, 1])})
        >>> sinkhorn_divergences(values, w, blur=0.01).shape
        torch.Size([2])
    """
    z, scale, blur_z = _normalise(values, blur, p, diameter)
    b = z.numel()
    diff = z.unsqueeze(1) - z.detach().unsqueeze(0)  # C(x_i, y_j) with y detached, as GeomLoss
    if p == 2:
        cost = diff * diff / 2
    else:
        cost = torch.sqrt(torch.clamp_min(diff * diff, 1e-8 / (scale * scale)))
    batch_log = z.new_full((1, b), -math.log(b))
    eps_list = epsilon_schedule(p, 1.0, blur_z, scaling)
    per_call = max(1, _MAX_BATCHED_ELEMENTS // (3 * b * b))
    out: list[Tensor] = []
    for start in range(0, weights.shape[0], per_call):
        a = weights[start : start + per_call]
        f_ab, g_ab, f_aa, g_bb = _symmetric_sinkhorn(cost, a, batch_log, eps_list)
        out.append((a * (f_ab - f_aa)).sum(dim=1) + (g_ab - g_bb).mean(dim=1))
    return torch.cat(out) * scale**p


def _geomloss_divergences(
    values: Tensor, weights: Tensor, blur: float, p: int, scaling: float
) -> Tensor:
    """The same divergences from ``geomloss.SamplesLoss``: one batched call for all groups.

    Problem ``g`` of the batch is (group ``g``: all ``B`` points, weights ``weights[g]``, zero
    off the group) vs (the batch: uniform weights). GeomLoss gives zero weights the log-weight
    ``-1e5``; on values mapped to ``[0, 1]`` every ``C / eps`` is far below that, so zero-weight
    points carry no mass and receive no gradient.
    """
    from geomloss import SamplesLoss

    z, scale, blur_z = _normalise(values, blur, p, None)
    b = z.numel()
    loss = SamplesLoss(
        "sinkhorn",
        p=p,
        blur=blur_z,
        scaling=scaling,
        debias=True,
        diameter=1.0,
        backend=_samples_backend(z.device),
    )
    per_call = max(1, _MAX_BATCHED_ELEMENTS // (4 * b * b))
    grad = torch.is_grad_enabled()
    out: list[Tensor] = []
    for start in range(0, weights.shape[0], per_call):
        a = weights[start : start + per_call]
        x = z.view(1, b, 1).expand(a.shape[0], b, 1)
        # GeomLoss's loop ends with set_grad_enabled(True): restore the caller's mode.
        with torch.set_grad_enabled(grad):
            term = loss(a, x, torch.full_like(a, 1.0 / b), x)
        out.append(term if grad else term.detach())
    return torch.cat(out) * scale**p


class SinkhornFairnessLoss(nn.Module):
    r"""Sum over attributes and groups of :math:`S_\varepsilon(D_{group}, D_{batch})`.

    ``forward(values, groups)`` takes a ``(B,)`` per-pair statistic (per-pair losses by default
    in this project, or matched-pair similarities) and a dict of ``(B,)`` integer group ids, one
    per protected attribute, with ``-1`` = unknown. For each attribute and each group id
    ``g >= 0`` with at least ``min_group_size`` members, it compares the distribution of the
    group's values with that of the whole batch (all ``B`` values, unknowns included). Groups
    come from the same batch, so no extra forward passes are needed. All attributes and groups
    are computed in one batched call (one host sync lists the usable groups).

    Backends (docs/losses.md compares their speed and accuracy):

    * ``"geomloss"``: ``geomloss.SamplesLoss("sinkhorn", p, blur, scaling, debias=True)``, one
      batched call for all groups (``backend="tensorized"``; KeOps ``"online"`` on CUDA when
      ``pykeops`` is installed).
    * ``"fused"``: the same divergence from a re-batched transcription of GeomLoss's loop
      (:func:`sinkhorn_divergences`), equal to ``"geomloss"`` in value and gradient and faster.
    * ``"exact1d"``: the blur -> 0 limit, :math:`\tfrac1p W_p^p` by sorting
      (:func:`quantile_transport_cost`): exact and fastest, without entropic smoothing.
    * ``"auto"`` (default): :func:`auto_backend` of the values' device.

    The Sinkhorn backends cast values to float32 (float16/bfloat16 give NaN at small blur) with
    autocast disabled and map them to ``[0, 1]`` by the batch's value range (``blur`` with
    them; the divergence scales back exactly by ``range**p``), so identical values do not crash
    and the cost matrix stays far from float32 overflow; a range above ``1e15 * blur``
    (``p=2``) raises a ``ValueError``. Memory ``O(G * B^2)``.

    Args:
        blur: GeomLoss blur scale (:math:`\varepsilon = \text{blur}^p`), > 0.
        p: exponent of the ground cost :math:`|x - y|^p / p`; 1 or 2.
        scaling: epsilon-scaling ratio in (0, 1); closer to 1 is more accurate and slower.
        min_group_size: groups with fewer members in the batch are skipped (>= 1).
        backend: ``"auto"``, ``"fused"``, ``"geomloss"`` or ``"exact1d"``.

    Example:
        >>> import torch
        >>> values = torch.tensor([0.0, 1.0, 2.0, 3.0], requires_grad=True)
        >>> groups = {"gender": torch.tensor([0, 0, 1, 1]), "race": torch.tensor([0, 0, 0, -1])}
        >>> loss_fn = SinkhornFairnessLoss(backend="exact1d")
        >>> total, terms = loss_fn(values, groups, return_terms=True)
        >>> sorted(terms)
        ['gender/0', 'gender/1', 'race/0']
        >>> # quantiles of {0, 1} vs {0, 1, 2, 3} on quarters of [0, 1]: (0-0, 0-1, 1-2, 1-3)
        >>> terms["gender/0"].item()  # (0 + 1 + 1 + 4) / 4 / 2
        0.75
        >>> total.backward()
        >>> values.grad.shape
        torch.Size([4])
        >>> sinkhorn = SinkhornFairnessLoss()  # backend="auto": "fused" on CPU
        >>> round(sinkhorn(values, groups).item(), 1)  # exact1d's total is 1.75
        1.7
    """

    def __init__(
        self,
        blur: float = DEFAULT_BLUR,
        p: int = 2,
        scaling: float = DEFAULT_SCALING,
        min_group_size: int = 2,
        backend: SinkhornBackend = "auto",
    ) -> None:
        super().__init__()
        if not (isinstance(blur, (int, float)) and blur > 0):
            raise ValueError(f"blur must be a positive number, got {blur!r}")
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p!r}")
        if not (isinstance(scaling, (int, float)) and 0 < scaling < 1):
            raise ValueError(f"scaling must be in (0, 1), got {scaling!r}")
        if not (isinstance(min_group_size, int) and min_group_size >= 1):
            raise ValueError(f"min_group_size must be an integer >= 1, got {min_group_size!r}")
        if backend not in ("auto", "fused", "geomloss", "exact1d"):
            raise ValueError(
                f"backend must be 'auto', 'fused', 'geomloss' or 'exact1d', got {backend!r}"
            )
        self.blur = float(blur)
        self.p = p
        self.scaling = float(scaling)
        self.min_group_size = min_group_size
        self.backend = backend

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"backend={self.backend!r}, blur={self.blur}, p={self.p}, scaling={self.scaling}, "
            f"min_group_size={self.min_group_size}"
        )

    def _terms(self, vals: Tensor, layout: _Layout) -> Tensor:
        backend = auto_backend(vals.device) if self.backend == "auto" else self.backend
        if backend == "exact1d":
            if not torch.isfinite(vals).all():
                raise ValueError("values contain NaN or infinity")
            return _exact_terms(vals, layout, self.p)
        weights = _layout_weights(layout, vals.dtype)
        if backend == "geomloss":
            return _geomloss_divergences(vals, weights, self.blur, self.p, self.scaling)
        return sinkhorn_divergences(vals, weights, self.blur, self.p, self.scaling)

    def forward(
        self,
        values: Tensor,
        groups: Mapping[str, Tensor],
        return_terms: bool = False,
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Fairness penalty for one batch.

        Args:
            values: ``(B,)`` per-pair statistic (any float dtype; computed in float32).
            groups: attribute name -> ``(B,)`` integer group ids, ``-1`` = unknown.
            return_terms: also return each term by name ``"{attr}/{group_id}"``.

        Returns:
            The scalar sum of the terms (float32, differentiable w.r.t. ``values``; 0 with a
            gradient path when no group is usable), and with ``return_terms=True`` also the dict
            of terms.

        Raises:
            TypeError: ``values`` not a float tensor, ``groups`` not a mapping of integer tensors.
            ValueError: shapes that do not match ``(B,)``, group ids below -1, non-finite values.
        """
        if not isinstance(values, Tensor) or not values.is_floating_point():
            raise TypeError(
                "values must be a floating-point tensor, got "
                + (str(values.dtype) if isinstance(values, Tensor) else type(values).__name__)
            )
        if values.ndim != 1:
            raise ValueError(f"values must be 1-D (B,), got shape {tuple(values.shape)}")
        if not isinstance(groups, Mapping):
            raise TypeError(f"groups must be a dict of tensors, got {type(groups).__name__}")
        for attr, ids in groups.items():
            if not isinstance(ids, Tensor):
                raise TypeError(f"groups[{attr!r}] must be a tensor, got {type(ids).__name__}")
            check_integer_ids(ids, f"groups[{attr!r}]")
            if ids.shape != values.shape:
                raise ValueError(
                    f"groups[{attr!r}] has shape {tuple(ids.shape)} but values has "
                    f"{tuple(values.shape)}"
                )

        dtype = torch.promote_types(values.dtype, torch.float32)
        with torch.autocast(device_type=values.device.type, enabled=False):
            vals = values.to(dtype)
            layout = _group_layout(groups, vals.numel(), vals.device, self.min_group_size)
            term_values = self._terms(vals, layout) if layout.names else None
            if term_values is None:
                terms: dict[str, Tensor] = {}
                total = vals.sum() * 0.0
            else:
                total = term_values.sum()
                # One view per group: only when asked for, so a plain call stays O(1) in ops.
                terms = (
                    dict(zip(layout.names, term_values.unbind(0), strict=True))
                    if return_terms
                    else {}
                )
        if return_terms:
            return total, terms
        return total
