"""Plots of benchmark results (matplotlib, the optional ``plot`` extra, imported lazily).

Every ``plot_*`` function takes plain numbers / NumPy arrays, writes one PNG (atomically) and
returns its path; :func:`es_auc_figure`, :func:`pareto_figure` and :func:`dbpm_histogram_figure`
return the matplotlib ``Figure`` instead, to show or restyle. Nothing here is imported by the
core package, so ``fairvlm_lightning`` works without matplotlib. Figures are at most about
1,000 px wide, so a page shows them unscaled.

* :func:`plot_es_auc` -- ES-AUC per method and attribute: mean over seeds with ± std bars;
* :func:`plot_pareto` -- AUC vs ES-AUC of every variant, its Pareto front drawn and in the
  legend, every point labelled without overlaps;
* :func:`plot_group_roc` -- ROC curves per protected group from test predictions;
* :func:`plot_dbpm_histogram` -- DBPM's per-pair statistic per group with its thresholds, clean
  and planted bad pairs coloured apart when the truth is known.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fairvlm_lightning.schema import ATTRIBUTES, BAD_PAIR_FIELD, GROUP_NAMES

__all__ = [
    "dbpm_histogram_figure",
    "es_auc_figure",
    "pareto_figure",
    "pareto_front",
    "plot_dbpm_histogram",
    "plot_es_auc",
    "plot_group_roc",
    "plot_pareto",
    "roc_curve",
]

DPI = 110  # pixels per inch of the saved PNGs (and of the figures, so layouts match)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plots need matplotlib: pip install matplotlib (or, in the fairvlm-lightning "
            "checkout, pip install -e '.[plot]')"
        ) from err
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG (to a temporary name, then renamed) and close it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        _pyplot().close(fig)
    return out


def _short(name: str) -> str:
    return name.removeprefix("synthetic_")


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (ties joined, as scikit-learn).

    Args:
        scores: ``(N,)`` scores, higher = more positive.
        labels: ``(N,)`` 0/1 labels with both classes present.

    Returns:
        ``(fpr, tpr)`` from ``(0, 0)`` to ``(1, 1)``.

    Example:
        >>> fpr, tpr = roc_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        raise ValueError("roc_curve needs both classes in labels")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # end of each tie block
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos]


def es_auc_figure(stats: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Any:
    """ES-AUC per attribute (x) and method (colour): mean over seeds as a point, ± std as a bar.

    Points rather than bars, so the y axis can zoom in on the values without a bar's length
    suggesting a ratio; the legend sits below the axes, outside the data.

    Args:
        stats: ``{method: {attribute: {"mean": m, "std": s}}}`` (``"mean"`` may be an
            attribute key too: the mean over attributes). NaN std draws no bar.

    Returns:
        The matplotlib ``Figure`` (one axes).

    Example:
        >>> fig = es_auc_figure({"clip": {"race": {"mean": 0.61, "std": 0.01}},
        ...                      "dbpm": {"race": {"mean": 0.63, "std": float("nan")}}})
        >>> [t.get_text() for t in fig.legends[0].get_texts()]
        ['clip', 'dbpm']
    """
    plt = _pyplot()
    methods = list(stats)
    attrs = list(next(iter(stats.values()))) if stats else []
    fig, ax = plt.subplots(figsize=(8.0, 4.2), dpi=DPI, layout="constrained")
    step = min(0.8 / max(1, len(methods)), 0.15)
    x = np.arange(len(attrs), dtype=np.float64)
    for i, m in enumerate(methods):
        means = [stats[m][a]["mean"] for a in attrs]
        errs = [0.0 if math.isnan(stats[m][a]["std"]) else stats[m][a]["std"] for a in attrs]
        ax.errorbar(x + (i - (len(methods) - 1) / 2) * step, means, yerr=errs, fmt="o", ms=5,
                    capsize=3, lw=1.2, label=_short(m))
    for k in range(len(attrs) - 1):
        ax.axvline(k + 0.5, color="0.85", lw=0.8, zorder=0)
    ax.set_xticks(x, ["mean of attributes" if a == "mean" else a for a in attrs])
    ax.set_xlim(-0.5, len(attrs) - 0.5)
    ax.set_xlabel("protected attribute")
    ax.set_ylabel("ES-AUC (test)")
    ax.yaxis.grid(True, lw=0.5, alpha=0.6)
    ax.set_axisbelow(True)
    ax.set_title("ES-AUC per attribute: mean over seeds ± std", fontsize=10)
    fig.legend(loc="outside lower center", ncol=min(3, max(1, len(methods))), fontsize=9,
               frameon=False)
    return fig


def plot_es_auc(
    stats: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | os.PathLike[str]
) -> Path:
    """Write :func:`es_auc_figure` as a PNG.

    Args:
        stats: ``{method: {attribute: {"mean": m, "std": s}}}``.
        path: PNG to write.

    Returns:
        ``path``.
    """
    return _save(es_auc_figure(stats), path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (higher is better).

    Example:
        >>> pareto_front([(0.8, 0.7), (0.85, 0.65), (0.79, 0.69), (0.7, 0.75)])
        [3, 0, 1]
    """
    idx = [i for i, p in enumerate(points) if not any(math.isnan(v) for v in p)]
    front = [
        i
        for i in idx
        if not any(
            points[j][0] >= points[i][0]
            and points[j][1] >= points[i][1]
            and points[j] != points[i]
            for j in idx
        )
    ]
    return sorted(front, key=lambda i: points[i][0])


def pareto_figure(points: Sequence[Mapping[str, Any]]) -> Any:
    """AUC (x) against ES-AUC (y), std error bars, the Pareto front and a label on every point.

    The front is drawn as the staircase bounding what it dominates (visible with a single
    front point too) and its points are ringed; the legend names the colours (one per
    ``group``) and the front. Labels are placed one by one at the first of a ring of offsets
    where the text overlaps no other label and no point marker (measured with the renderer),
    joined to their point by a thin line when moved away.

    Args:
        points: dicts with ``name``, ``auc``, ``es_auc`` and optionally ``label`` (default:
            ``name`` without ``synthetic_``), ``auc_std``, ``es_auc_std`` and ``group``
            (points of one group share a colour; default: their own).

    Returns:
        The matplotlib ``Figure`` (one axes).

    Example:
        >>> fig = pareto_figure([{"name": "clip", "auc": 0.85, "es_auc": 0.77},
        ...                      {"name": "fair", "auc": 0.86, "es_auc": 0.78}])
        >>> sorted(t.get_text() for t in fig.axes[0].texts)
        ['clip', 'fair']
        >>> "Pareto front" in [t.get_text() for t in fig.legends[0].get_texts()]
        True
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8.6, 5.4), dpi=DPI, layout="constrained")
    groups = list(dict.fromkeys(p.get("group", p["name"]) for p in points))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {g: colours[i % len(colours)] for i, g in enumerate(groups)}
    for p in points:
        c = colour[p.get("group", p["name"])]
        xerr = p.get("auc_std", math.nan)
        yerr = p.get("es_auc_std", math.nan)
        ax.errorbar(p["auc"], p["es_auc"], xerr=None if math.isnan(xerr) else xerr,
                    yerr=None if math.isnan(yerr) else yerr, fmt="none", ecolor=c, alpha=0.3,
                    lw=0.8, zorder=1)
        ax.plot(p["auc"], p["es_auc"], "o", color=c, ms=6, mec="white", mew=0.6, zorder=3)
    front = pareto_front([(p["auc"], p["es_auc"]) for p in points])
    handles = [Line2D([], [], ls="", marker="o", color=colour[g], label=_short(g)) for g in groups]
    if front:
        ax.autoscale_view()
        xlim, ylim = ax.get_xlim(), ax.get_ylim()
        fx = [points[i]["auc"] for i in front]
        fy = [points[i]["es_auc"] for i in front]
        sx, sy = [xlim[0]], [fy[0]]  # staircase: left edge -> each front point -> bottom edge
        for k, (x, y) in enumerate(zip(fx, fy, strict=True)):
            sx += [x, x]
            sy += [y, fy[k + 1] if k + 1 < len(fy) else ylim[0]]
        ax.plot(sx, sy, color="black", lw=1.4, zorder=4)
        ax.plot(fx, fy, "o", mfc="none", mec="black", ms=11, mew=1.3, zorder=5)
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
        handles.append(Line2D([], [], color="black", lw=1.4, marker="o", mfc="none", ms=9,
                              label="Pareto front"))
    ax.set_xlabel("AUC (test)")
    ax.set_ylabel("ES-AUC, mean of attributes (test)")
    ax.set_title("Utility vs fairness: mean over seeds ± std; up and right is better",
                 fontsize=10)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="config",
               title_fontsize=8)
    fig.canvas.draw()  # run the layout once, then freeze it: labels are placed in pixels
    fig.set_layout_engine("none")
    labels = [str(p.get("label", _short(p["name"]))) for p in points]
    _place_labels(ax, [(p["auc"], p["es_auc"]) for p in points], labels, first=front)
    return fig


def _place_labels(
    ax: Any, xy: Sequence[tuple[float, float]], labels: Sequence[str], first: Sequence[int] = ()
) -> None:
    """Annotate each point where its text overlaps no placed label and no marker.

    Each label's size is measured once with the renderer; candidate spots on rings of growing
    radius around the point are then tested arithmetically, and the first free one (inside the
    axes, clear of every marker and placed label) is used. Without a free spot, the candidate
    with the least overlap is.
    """
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    scale = ax.figure.dpi / 72.0  # pixels per point
    marker = 6.0 * scale  # half the ringed front marker, in pixels
    centres = [ax.transData.transform(p) for p in xy]
    blocked = [
        Bbox.from_bounds(cx - marker, cy - marker, 2 * marker, 2 * marker) for cx, cy in centres
    ]
    placed: list[Any] = []
    order = [*first, *sorted(set(range(len(xy))) - set(first), key=lambda i: -xy[i][1])]
    angles = np.deg2rad([45, 135, -45, -135, 0, 180, 90, -90, 22, 158, -22, -158, 68, 112,
                         -68, -112])
    offsets = [(r * math.cos(t), r * math.sin(t))
               for r in (7, 12, 18, 26, 36, 48, 62, 80, 100, 125) for t in angles]

    leaders: list[np.ndarray] = []  # sample points along the placed leader lines

    def crossings(box: Any, samples: np.ndarray) -> int:
        inside = ((samples[:, 0] > box.x0) & (samples[:, 0] < box.x1)
                  & (samples[:, 1] > box.y0) & (samples[:, 1] < box.y1))
        return int(inside.sum())

    def overlap(box: Any, other: Any) -> float:
        w = min(box.x1, other.x1) - max(box.x0, other.x0)
        h = min(box.y1, other.y1) - max(box.y0, other.y0)
        return max(w, 0.0) * max(h, 0.0)

    for i in order:
        probe = ax.text(0, 0, labels[i], fontsize=7.5)
        size = probe.get_window_extent(renderer)
        probe.remove()
        w, h = size.width + 3, size.height + 3  # 1.5 px of padding on each side
        best, best_cost = None, math.inf
        for dx, dy in offsets:
            ha = "left" if dx > 1 else "right" if dx < -1 else "center"
            va = "bottom" if dy > 1 else "top" if dy < -1 else "center"
            ax0 = centres[i][0] + dx * scale - {"left": 1.5, "right": w - 1.5, "center": w / 2}[ha]
            ay0 = centres[i][1] + dy * scale - {"bottom": 1.5, "top": h - 1.5, "center": h / 2}[va]
            box = Bbox.from_bounds(ax0, ay0, w, h)
            outside = (box.width * box.height) - overlap(box, frame)
            cost = outside + sum(overlap(box, b) for b in placed) + sum(
                overlap(box, b) for b in blocked)
            leader = _leader_samples(centres[i], box) if math.hypot(dx, dy) > 12 else None
            cost += 50.0 * sum(crossings(box, seg) for seg in leaders)
            if leader is not None:
                cost += 50.0 * sum(crossings(b, leader) for b in placed)
            if cost < best_cost:
                best, best_cost = (dx, dy, ha, va, box), cost
            if cost == 0:
                break
        assert best is not None
        dx, dy, ha, va, box = best
        if math.hypot(dx, dy) > 12:
            leaders.append(_leader_samples(centres[i], box))
        ax.annotate(
            labels[i], xy[i], xytext=(dx, dy), textcoords="offset points", fontsize=7.5,
            ha=ha, va=va, zorder=6,
            arrowprops=(dict(arrowstyle="-", lw=0.6, color="0.3", shrinkA=1, shrinkB=3)
                        if math.hypot(dx, dy) > 12 else None),
        )
        placed.append(box)


def _leader_samples(centre: Any, box: Any) -> np.ndarray:
    """Points along the line from a marker's edge to the nearest point of its label's box."""
    cx, cy = float(centre[0]), float(centre[1])
    nx, ny = min(max(cx, box.x0), box.x1), min(max(cy, box.y0), box.y1)
    t = np.linspace(0.0, 1.0, 24)[:, None]
    samples = np.array([cx, cy]) + t * np.array([nx - cx, ny - cy])
    return samples[np.hypot(samples[:, 0] - cx, samples[:, 1] - cy) > 5]


def plot_pareto(points: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write :func:`pareto_figure` as a PNG.

    Args:
        points: see :func:`pareto_figure`.
        path: PNG to write.

    Returns:
        ``path``.
    """
    return _save(pareto_figure(points), path)


def plot_group_roc(
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    attribute: str,
    path: str | os.PathLike[str],
) -> Path:
    """One panel per method: the ROC curve of each group of ``attribute``, AUC in the legend.

    Args:
        predictions: ``{method: {"score": (N,), "label": (N,), attribute: (N,)}}``.
        attribute: the protected attribute whose groups are drawn (``-1`` = unknown skipped).
        path: PNG to write.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    n = len(predictions)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), dpi=DPI,
                             squeeze=False, layout="constrained")
    names = GROUP_NAMES.get(attribute, ())
    for ax, (method, p) in zip(axes.flat, predictions.items(), strict=False):
        scores, labels, groups = p["score"], p["label"], p[attribute]
        for g in sorted(int(v) for v in np.unique(groups) if v >= 0):
            m = groups == g
            if len(np.unique(labels[m])) < 2:
                continue
            fpr, tpr = roc_curve(scores[m], labels[m])
            auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids
            label = names[g] if g < len(names) else f"group {g}"
            ax.plot(fpr, tpr, lw=1.2, label=f"{label} (AUC {auc:.3f}, n={int(m.sum())})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
        ax.set_title(method.replace("synthetic_", ""), fontsize=9)
        ax.set_xlabel("false-positive rate", fontsize=8)
        ax.set_ylabel("true-positive rate", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return _save(fig, path)


def dbpm_histogram_figure(
    state: Mapping[str, np.ndarray],
    thresholds: tuple[float, float],
    *,
    attribute: str = ATTRIBUTES[0],
    title: str = "",
    bins: int = 40,
) -> Any:
    """Histogram of DBPM's per-pair statistic (mean past loss) per group, with its thresholds.

    One panel per group of ``attribute`` (titled with its display name), a shared count axis
    (logarithmic when the planted truth is given: the bad pairs are few) and shared bins.

    Args:
        state: ``statistic`` (per-pair mean past loss, NaN = no history), optionally
            ``attribute`` group ids and ``is_bad_pair`` (the planted truth: then clean and bad
            pairs are drawn in two colours).
        thresholds: ``(noisy, faulty)``: pairs below / above are flagged.
        attribute: the key of the group ids in ``state``.
        title: figure title.
        bins: histogram bins (shared by every panel).

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> state = {"statistic": np.array([1.0, 1.2, 3.0, 0.9]), "race": np.array([0, 1, 2, 0])}
        >>> fig = dbpm_histogram_figure(state, (0.5, 2.5))
        >>> [ax.get_title() for ax in fig.axes], fig.axes[0].get_ylabel()
        (['Asian', 'Black', 'White'], 'pairs')
    """
    plt = _pyplot()
    stat = np.asarray(state["statistic"], dtype=np.float64)
    ok = ~np.isnan(stat)
    groups = np.asarray(state.get(attribute, np.zeros(stat.size, dtype=np.int64)))
    bad = state.get(BAD_PAIR_FIELD)
    ids = sorted(int(g) for g in np.unique(groups[ok]) if g >= 0) or [0]
    fig, axes = plt.subplots(1, len(ids), figsize=(min(3.0 * len(ids) + 0.6, 9.0), 3.2),
                             dpi=DPI, squeeze=False, sharey=True, layout="constrained")
    edges = np.histogram_bin_edges(stat[ok], bins=bins) if ok.any() else np.linspace(0, 1, bins)
    names = GROUP_NAMES.get(attribute, ())
    for ax, g in zip(axes.flat, ids, strict=False):
        m = ok & (groups == g)
        if bad is not None:
            b = np.asarray(bad, dtype=bool)
            ax.hist(stat[m & ~b], bins=edges, color="tab:blue", alpha=0.7, label="clean")
            ax.hist(stat[m & b], bins=edges, color="tab:red", alpha=0.7, label="planted bad")
        else:
            ax.hist(stat[m], bins=edges, color="tab:blue", alpha=0.7, label="pairs")
        for t, name in zip(thresholds, ("noisy", "faulty"), strict=True):
            if t is not None and math.isfinite(t):
                ax.axvline(t, color="k", ls="--", lw=0.8)
                ax.annotate(name, (t, 0.97), xycoords=("data", "axes fraction"), fontsize=7,
                            ha="left", va="top", xytext=(2, 0), textcoords="offset points")
        ax.set_title(names[g] if g < len(names) else f"group {g}", fontsize=9)
        ax.set_xlabel("mean past loss", fontsize=8)
        ax.tick_params(labelsize=8)
        if bad is not None:
            ax.set_yscale("log")  # a few hundred planted bad pairs beside thousands of clean ones
    axes[0, 0].set_ylabel("pairs (log scale)" if bad is not None else "pairs", fontsize=8)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_dbpm_histogram(
    state: Mapping[str, np.ndarray],
    thresholds: tuple[float, float],
    path: str | os.PathLike[str],
    *,
    attribute: str = ATTRIBUTES[0],
    title: str = "",
    bins: int = 40,
) -> Path:
    """Write :func:`dbpm_histogram_figure` as a PNG.

    Args:
        state: see :func:`dbpm_histogram_figure`.
        thresholds: ``(noisy, faulty)``.
        path: PNG to write.
        attribute: the key of the group ids in ``state``.
        title: figure title.
        bins: histogram bins.

    Returns:
        ``path``.
    """
    return _save(
        dbpm_histogram_figure(state, thresholds, attribute=attribute, title=title, bins=bins),
        path,
    )
