"""Statistics of a benchmark: mean ± std over seeds, paired t intervals, verdicts, capture.

Seeds are the replication unit: each method is compared with the baseline on the same seed and
the paired differences get a Student t interval (:func:`scipy.stats.ttest_1samp`). The
protocol is described in ``docs/results.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fairvlm_lightning.app.benchmark.variants import BASELINE
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS

__all__ = [
    "metric_keys",
    "HEADROOM_KEYS",
    "detection_scores",
    "headroom",
    "mean_std",
    "paired_t_interval",
    "scipy_stats",
    "summarise",
    "verdict",
    "with_means",
]

#: Metrics whose headroom (oracle - baseline) and capture are reported.
HEADROOM_KEYS: tuple[str, ...] = ("race/es_auc", "mean/es_auc", "auc")
_LOWER_IS_BETTER = ("dpd", "deodds", "auc_std_disparity", "auc_max_disparity")


def paired_t_interval(
    differences: Sequence[float], ci: float = 0.95
) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided Student t confidence interval.

    Args:
        differences: one difference per seed (method − baseline); NaNs are dropped.
        ci: coverage in (0, 1).

    Returns:
        ``(mean, low, high)``; ``low``/``high`` are NaN with fewer than 2 differences.

    Example:
        >>> mean, low, high = paired_t_interval([0.01, 0.02, 0.03])
        >>> round(mean, 3), round(low, 4), round(high, 4)
        (0.02, -0.0048, 0.0448)
    """
    d = np.asarray([x for x in differences if not math.isnan(float(x))], dtype=np.float64)
    if d.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    if d.size < 2:
        return mean, math.nan, math.nan
    if float(d.std()) == 0.0:  # every seed gains the same: a zero-width interval
        return mean, mean, mean
    interval = scipy_stats().ttest_1samp(d, 0.0).confidence_interval(confidence_level=ci)
    return mean, float(interval.low), float(interval.high)


def scipy_stats() -> Any:
    """:mod:`scipy.stats`, or an ImportError saying which extra installs it."""
    try:
        from scipy import stats
    except ImportError as err:  # pragma: no cover - scipy is in the app and dev extras
        raise ImportError(
            "the benchmark statistics need scipy: pip install 'fairvlm-lightning[app]'"
        ) from err
    return stats


def _lower_is_better(metric: str) -> bool:
    return metric.split("/")[-1].startswith(_LOWER_IS_BETTER)


def verdict(metric: str, low: float, high: float) -> str:
    """Plain verdict of a paired interval: ``better``, ``worse`` or ``no detectable difference``.

    Args:
        metric: the metric's key; DPD, DEOdds and the AUC disparities improve downwards, every
            other value upwards.
        low: lower end of the interval of (method − baseline).
        high: upper end.

    Example:
        >>> verdict("race/es_auc", 0.01, 0.03), verdict("race/dpd", 0.01, 0.03)
        ('better', 'worse')
        >>> verdict("auc", -0.01, 0.02)
        'no detectable difference'
    """
    if math.isnan(low) or math.isnan(high):
        return "not enough seeds"
    sign = -1.0 if _lower_is_better(metric) else 1.0
    if sign * low > 0 and sign * high > 0:
        return "better"
    if sign * low < 0 and sign * high < 0:
        return "worse"
    return "no detectable difference"


def metric_keys(attributes: Mapping[str, int]) -> list[str]:
    """The metric keys a benchmark aggregates: overall, mean over attributes, per attribute."""
    keys = ["auc", "acc", "mean/es_auc", "mean/es_acc", "mean/dpd", "mean/deodds"]
    for a, g in attributes.items():
        keys += [f"{a}/es_auc", f"{a}/es_acc", f"{a}/dpd", f"{a}/deodds"]
        keys += [f"{a}/auc_group_{i}" for i in range(g)]
    return keys


def with_means(values: Mapping[str, float], attributes: Mapping[str, int]) -> dict[str, float]:
    """Add ``mean/{es_auc,es_acc,dpd,deodds}``: the mean over attributes (the overall line)."""
    out = dict(values)
    for name in ("es_auc", "es_acc", "dpd", "deodds"):
        vals = [values.get(f"{a}/{name}", math.nan) for a in attributes]
        out[f"mean/{name}"] = float(np.mean(vals)) if vals else math.nan
    return out


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample std (``ddof=1``) of the non-NaN values, and every value.

    Example:
        >>> mean_std([1.0, 3.0, float("nan")])["mean"]
        2.0
    """
    vals = np.asarray(values, dtype=np.float64)
    ok = vals[~np.isnan(vals)]
    return {
        "mean": float(ok.mean()) if ok.size else math.nan,
        "std": float(ok.std(ddof=1)) if ok.size > 1 else math.nan,
        "values": [float(v) for v in vals],
    }


def _flat_detection(d: Mapping[str, Any]) -> dict[str, float]:
    """``detection_scores`` output as flat keys (``recall``, ``0/recall``, ...)."""
    out = {k: float(v) for k, v in d.items() if k != "groups"}
    for g, row in (d.get("groups") or {}).items():
        out.update({f"{g}/{k}": float(v) for k, v in row.items()})
    return out


def summarise(
    results: Sequence[Mapping[str, Any]],
    baseline: str = BASELINE,
    attributes: Mapping[str, int] | None = None,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Aggregate run results: mean ± std per method, paired t intervals against the baseline.

    Args:
        results: run records (``variant``, ``seed``, ``test`` and ``val`` dicts keyed like the
            metrics without the stage prefix, optional ``dbpm``).
        baseline: the variant every other one is compared to.
        attributes: attribute → number of groups (default the four FairVLMed attributes).
        ci: coverage of the paired intervals.

    Returns:
        ``{"methods": {variant: {"seeds", "test": {key: {"mean", "std", "values"}}, "val":
        ..., "dbpm": ...}}, "comparisons": {variant: {key: {"mean", "low", "high",
        "verdict", "n"}}}}``.

    Example:
        >>> runs = [{"variant": v, "seed": s, "test": {"auc": a}, "val": {"auc": a}}
        ...         for v, s, a in [("base", 0, 0.80), ("base", 1, 0.82), ("new", 0, 0.85),
        ...                         ("new", 1, 0.86)]]
        >>> out = summarise(runs, baseline="base", attributes={})
        >>> out["methods"]["new"]["test"]["auc"]["mean"]
        0.855
        >>> out["comparisons"]["new"]["auc"]["verdict"]
        'no detectable difference'
    """
    attributes = dict(ATTRIBUTE_GROUPS if attributes is None else attributes)
    keys = metric_keys(attributes)
    by_variant: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in results:
        by_variant.setdefault(str(r["variant"]), {})[int(r["seed"])] = r
    methods: dict[str, Any] = {}
    for variant, runs in by_variant.items():
        seeds = sorted(runs)
        entry: dict[str, Any] = {"seeds": seeds}
        for stage in ("test", "val"):
            table = {}
            rows = [with_means(runs[s].get(stage, {}), attributes) for s in seeds]
            for key in keys:
                table[key] = mean_std([row.get(key, math.nan) for row in rows])
            entry[stage] = table
        dbpm: list[Mapping[str, Any]] = [
            runs[s]["dbpm"] for s in seeds if runs[s].get("dbpm")
        ]
        if dbpm:
            agg: dict[str, Any] = {}
            for key in ("precision", "recall", "num_flagged", "num_bad"):
                agg[key] = mean_std([d.get(key, math.nan) for d in dbpm])
            entry["dbpm"] = agg
        detection = [
            _flat_detection(runs[s]["detection"]) for s in seeds if runs[s].get("detection")
        ]
        if detection:
            entry["detection"] = {
                key: mean_std([d.get(key, math.nan) for d in detection])
                for key in sorted(set().union(*detection))
            }
        methods[variant] = entry
    comparisons: dict[str, Any] = {}
    base = by_variant.get(baseline, {})
    for variant, runs in by_variant.items():
        if variant == baseline or not base:
            continue
        seeds = sorted(set(runs) & set(base))
        own = {s: with_means(runs[s]["test"], attributes) for s in seeds}
        ref = {s: with_means(base[s]["test"], attributes) for s in seeds}
        comp: dict[str, Any] = {}
        for key in keys:
            diffs = [own[s].get(key, math.nan) - ref[s].get(key, math.nan) for s in seeds]
            mean, low, high = paired_t_interval(diffs, ci)
            comp[key] = {
                "mean": mean,
                "low": low,
                "high": high,
                "verdict": verdict(key, low, high),
                "n": len(seeds),
                "differences": [float(d) for d in diffs],
            }
        comparisons[variant] = comp
    return {"baseline": baseline, "ci": ci, "methods": methods, "comparisons": comparisons}


def headroom(
    summary: Mapping[str, Any], oracle: str, keys: Sequence[str] = HEADROOM_KEYS
) -> dict[str, Any]:
    """Each method's capture of the clean-data headroom: (method − baseline) / (oracle − baseline).

    The numerator and the denominator are the paired mean differences against the baseline of
    :func:`summarise` (same seeds); the numerator's paired interval comes with it. The capture is
    NaN where the oracle gains nothing (``|oracle − baseline| < 1e-9``) or either is missing.

    Args:
        summary: the output of :func:`summarise`.
        oracle: the oracle variant's name.
        keys: metric keys (``"race/es_auc"``, ``"mean/es_auc"``, ``"auc"``).

    Returns:
        ``{"oracle": name, "oracle_gain": {key: comparison}, "methods": {variant: {key:
        {"capture", "mean", "low", "high", "verdict"}}}}``.

    Example:
        >>> runs = [{"variant": v, "seed": s, "test": {"auc": a}, "val": {}}
        ...         for v, a0 in [("base", 0.80), ("clean", 0.90), ("new", 0.85)]
        ...         for s, a in [(0, a0), (1, a0 + 0.01), (2, a0 - 0.01)]]
        >>> h = headroom(summarise(runs, "base", attributes={}), "clean", keys=("auc",))
        >>> round(h["methods"]["new"]["auc"]["capture"], 6)
        0.5
    """
    comparisons = summary["comparisons"]
    gain = comparisons.get(oracle, {})
    out: dict[str, Any] = {
        "oracle": oracle,
        "oracle_gain": {k: gain[k] for k in keys if k in gain},
        "methods": {},
    }
    for variant, comp in comparisons.items():
        if variant == oracle:
            continue
        rows = {}
        for key in keys:
            if key not in comp:
                continue
            denom = gain.get(key, {}).get("mean", math.nan)
            num = comp[key]["mean"]
            ok = not (math.isnan(num) or math.isnan(denom)) and abs(denom) >= 1e-9
            rows[key] = {
                "capture": num / denom if ok else math.nan,
                **{f: comp[key][f] for f in ("mean", "low", "high", "verdict")},
            }
        out["methods"][variant] = rows
    return out


def detection_scores(
    statistic: np.ndarray, flagged: np.ndarray, bad: np.ndarray, groups: np.ndarray | None = None
) -> dict[str, Any]:
    """How well DBPM's final flags and statistic find the planted bad pairs, overall and per group.

    Counts only pairs with a finite statistic (pairs with history). The AUROC is that of the
    statistic that drives the flags as a score for "truly bad" (torchmetrics' binary AUROC);
    per group it is the *within-group* AUROC, which a global threshold cannot exceed.

    Args:
        statistic: (N,) per-pair statistic (NaN for pairs without history).
        flagged: (N,) bool, the pairs DBPM down-weights.
        bad: (N,) bool, the planted bad pairs.
        groups: (N,) group codes (-1 unknown) for the per-group rows, or ``None``.

    Returns:
        ``{"precision", "recall", "auroc", "num_flagged", "num_bad", "groups": {g: {...}}}``
        (NaN where a ratio has no denominator or a group lacks one of the two classes).

    Example:
        >>> s = np.array([0.1, 0.2, 0.9, 0.8, 0.3]); bad = np.array([0, 0, 1, 1, 0], bool)
        >>> d = detection_scores(s, s > 0.5, bad)
        >>> d["precision"], d["recall"], d["auroc"]
        (1.0, 1.0, 1.0)
    """
    from torchmetrics.functional.classification import binary_auroc

    statistic = np.asarray(statistic, dtype=np.float64)
    flagged, bad = np.asarray(flagged, dtype=bool), np.asarray(bad, dtype=bool)
    has = np.isfinite(statistic)

    def scores(m: np.ndarray) -> dict[str, float]:
        f, b = flagged & m, bad & m
        n_f, n_b, n_clean = float(f.sum()), float(b.sum()), float((m & ~bad).sum())
        auroc = math.nan
        if n_b and n_clean:
            auroc = float(
                binary_auroc(torch.from_numpy(statistic[m]), torch.from_numpy(bad[m]).long())
            )
        return {
            "num_flagged": n_f,
            "num_bad": n_b,
            "precision": float((f & bad).sum()) / n_f if n_f else math.nan,
            "recall": float((f & b).sum()) / n_b if n_b else math.nan,
            "clean_flag_rate": float((f & ~bad).sum()) / n_clean if n_clean else math.nan,
            "auroc": auroc,
        }

    out: dict[str, Any] = scores(has)
    if groups is not None:
        groups = np.asarray(groups)
        out["groups"] = {
            str(int(g)): scores(has & (groups == g)) for g in np.unique(groups) if g >= 0
        }
    return out
