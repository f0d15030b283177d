"""Plots of benchmark results (matplotlib, the optional ``plot`` extra, imported lazily).

Every function takes plain numbers / NumPy arrays, writes one PNG and returns its path; nothing
here is imported by the core package, so ``fairvlm_lightning`` works without matplotlib.

* :func:`plot_es_auc` -- ES-AUC per method and attribute with error bars (std over seeds);
* :func:`plot_pareto` -- AUC vs ES-AUC of every variant, the Pareto front joined;
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

__all__ = ["plot_dbpm_histogram", "plot_es_auc", "plot_group_roc", "plot_pareto", "roc_curve"]

def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plots need matplotlib: pip install 'fairvlm-lightning[plot]'"
        ) from err
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


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


def plot_es_auc(
    stats: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | os.PathLike[str]
) -> Path:
    """Grouped bars: ES-AUC per method (bars) and attribute (groups), std over seeds as errors.

    Args:
        stats: ``{method: {attribute: {"mean": m, "std": s}}}`` (``"mean"`` may be an
            attribute key too: the mean over attributes).
        path: PNG to write.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    methods = list(stats)
    attrs = list(next(iter(stats.values()))) if stats else []
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(attrs) * max(1, len(methods)) / 2), 4))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(attrs))
    for i, m in enumerate(methods):
        means = [stats[m][a]["mean"] for a in attrs]
        errs = [0.0 if math.isnan(stats[m][a]["std"]) else stats[m][a]["std"] for a in attrs]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=errs, capsize=3,
               label=m)
    ax.set_xticks(x, attrs)
    ax.set_ylabel("ES-AUC (test)")
    finite = [stats[m][a]["mean"] for m in methods for a in attrs
              if not math.isnan(stats[m][a]["mean"])]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.05))
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("ES-AUC per attribute, mean ± std over seeds")
    return _save(fig, path)


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


def plot_pareto(points: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """AUC (x) against ES-AUC (y) with std error bars; the Pareto front is joined by a line.

    Args:
        points: dicts with ``name``, ``auc``, ``es_auc`` and optionally ``auc_std``,
            ``es_auc_std`` and ``group`` (points of one group share a colour).
        path: PNG to write.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups = list(dict.fromkeys(p.get("group", p["name"]) for p in points))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for p in points:
        c = colours[groups.index(p.get("group", p["name"])) % len(colours)]
        xerr = p.get("auc_std", math.nan)
        yerr = p.get("es_auc_std", math.nan)
        ax.errorbar(p["auc"], p["es_auc"], xerr=None if math.isnan(xerr) else xerr,
                    yerr=None if math.isnan(yerr) else yerr, fmt="o", color=c, capsize=2)
        ax.annotate(p["name"].replace("synthetic_", ""), (p["auc"], p["es_auc"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    front = pareto_front([(p["auc"], p["es_auc"]) for p in points])
    if len(front) > 1:
        ax.plot([points[i]["auc"] for i in front], [points[i]["es_auc"] for i in front], "k--",
                lw=0.8, label="Pareto front")
        ax.legend(fontsize=7)
    ax.set_xlabel("AUC (test)")
    ax.set_ylabel("ES-AUC, mean of attributes (test)")
    ax.set_title("Utility vs fairness")
    return _save(fig, path)


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
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
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
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return _save(fig, path)


def plot_dbpm_histogram(
    state: Mapping[str, np.ndarray],
    thresholds: tuple[float, float],
    path: str | os.PathLike[str],
    *,
    attribute: str = ATTRIBUTES[0],
    title: str = "",
    bins: int = 40,
) -> Path:
    """Histogram of DBPM's per-pair statistic (mean past loss) per group, with its thresholds.

    Args:
        state: ``statistic`` (per-pair mean past loss, NaN = no history), optionally
            ``attribute`` group ids and ``is_bad_pair`` (the planted truth: then clean and bad
            pairs are drawn in two colours).
        thresholds: ``(noisy, faulty)``: pairs below / above are flagged.
        path: PNG to write.
        attribute: the key of the group ids in ``state``.
        title: figure title.
        bins: histogram bins (shared by every panel).

    Returns:
        ``path``.
    """
    plt = _pyplot()
    stat = np.asarray(state["statistic"], dtype=np.float64)
    ok = ~np.isnan(stat)
    groups = np.asarray(state.get(attribute, np.zeros(stat.size, dtype=np.int64)))
    bad = state.get(BAD_PAIR_FIELD)
    ids = sorted(int(g) for g in np.unique(groups[ok]) if g >= 0) or [0]
    fig, axes = plt.subplots(1, len(ids), figsize=(3.4 * len(ids), 3.0), squeeze=False)
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
                ax.annotate(name, (t, 0.95), xycoords=("data", "axes fraction"), fontsize=6)
        ax.set_title(names[g] if g < len(names) else f"group {g}", fontsize=9)
        ax.set_xlabel("mean past loss", fontsize=8)
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
