"""``fairvlm benchmark``: the method against its ablations, over seeds, with confidence intervals.

Every run is a ``fairvlm fit`` of a config with ``--seed_everything <seed>`` (the epoch is
selected on the validation split by the config's ``ModelCheckpoint``, the best checkpoint is
tested), run in this process through the same :class:`~lightning.pytorch.cli.LightningCLI`
subclass as the command. After each run the best model is also validated (the validation numbers
of the selected checkpoint, used to choose λ and β) and its test predictions are kept for the
ROC plots; a DBPM run also keeps the miner's final per-pair statistic and flags, scored against
the planted bad pairs when the data carry them (the synthetic twin does).

Statistics (:func:`summarise`):

* per method, attribute and metric: mean ± sample std (``ddof=1``) over seeds;
* per method against the baseline: the paired difference (same seed, so the same training order
  and the same test set) with a **paired t interval over seeds**, ``mean(d) ± t_{n-1} sd(d) /
  sqrt(n)``. Seeds, not test samples, are the unit: the question is whether the method changes
  what training produces, and the dominant noise is the run-to-run spread (the issue measured
  ±0.01–0.03 ES-AUC between seeds). A paired bootstrap over 5 seeds has only 126 distinct
  resamples and its percentile interval under-covers; the t interval is exact for normal
  differences and honestly wide with few seeds. The test-sample uncertainty of each single run
  is reported separately (percentile bootstrap of
  :class:`~fairvlm_lightning.metrics.FairnessMetrics`).
* a verdict per metric: **better** / **worse** when the interval excludes 0 in the direction
  where the metric improves (up for AUC-like values, down for DPD and DEOdds), else **no
  detectable difference**.

Runs resume: a run is done when its ``result.json`` (written atomically, last) exists and
records the same settings; a crashed run leaves no ``result.json`` and is redone from scratch.
One benchmark at a time writes an output folder: it holds ``<out>/.benchmark.lock`` while it runs
(:class:`~fairvlm_lightning.atomic.FileLock`), and a second one fails at once with
:class:`~fairvlm_lightning.atomic.InUseError` naming the pid that holds it. ``result.json``,
``benchmark.json``, ``benchmark.md`` and the results page are written all or nothing
(:mod:`fairvlm_lightning.atomic`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

from fairvlm_lightning.atomic import (
    FileLock,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from fairvlm_lightning.callbacks import find_bad_pair_mining
from fairvlm_lightning.configs import resolve_config
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS, ATTRIBUTES, BAD_PAIR_FIELD, GROUP_NAMES

__all__ = [
    "BASELINE",
    "DATA_VARIANTS",
    "DEFAULT_CONFIGS",
    "HEADROOM_KEYS",
    "Variant",
    "config_settings",
    "data_variant_args",
    "detection_scores",
    "headroom",
    "benchmark_parser",
    "make_variants",
    "paired_t_interval",
    "run_benchmark",
    "student_t_ppf",
    "summarise",
    "verdict",
]

#: The shipped synthetic configs compared by default; the first is the baseline.
DEFAULT_CONFIGS: tuple[str, ...] = (
    "synthetic_clip",
    "synthetic_clip_balanced",
    "synthetic_fairclip",
    "synthetic_dbpm",
    "synthetic_robust_fair",
)
#: Name of the baseline method (plain CLIP fine-tuning).
BASELINE = "synthetic_clip"
#: Suffix of the clean-data oracle: the baseline trained without the planted bad pairs.
ORACLE_SUFFIX = "_oracle"
#: Metrics whose headroom (oracle - baseline) and capture are reported.
HEADROOM_KEYS: tuple[str, ...] = ("race/es_auc", "mean/es_auc", "auc")
#: Generator settings of the synthetic twin the benchmark can run on (``--data_variant``).
#: ``default`` is the shipped data; ``shifted`` is data the methods were not tuned on: another
#: generator seed, 15 % bad pairs instead of 10 %, 60 % of them in the minority race groups.
DATA_VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "shifted": {"seed": 1, "bad_pair_rate": 0.15, "bad_pair_concentration": 0.6},
}
_ATTRIBUTES: dict[str, int] = dict(ATTRIBUTE_GROUPS)
#: Attribute whose groups get a per-group DBPM record and ROC plot (FairVLMed: race, where the
#: synthetic twin concentrates its bad pairs).
_DETAIL_ATTRIBUTE = ATTRIBUTES[0]
_LOWER_IS_BETTER = ("dpd", "deodds", "auc_std_disparity", "auc_max_disparity")
_RESULT = "result.json"
_LOCK = ".benchmark.lock"
_RESULT_VERSION = 1


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
def _student_t_cdf(t: float, df: int) -> float:
    """CDF of Student's t with integer ``df`` (closed forms, Abramowitz & Stegun 26.7.3/4)."""
    theta = math.atan2(t, math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df == 1:
        a = 2.0 * theta / math.pi
    elif df % 2 == 1:
        term, total = c, c
        for k in range(3, df - 1, 2):
            term *= c * c * (k - 1) / k
            total += term
        a = 2.0 / math.pi * (theta + s * total)
    else:
        term, total = 1.0, 1.0
        for k in range(2, df - 1, 2):
            term *= c * c * (k - 1) / k
            total += term
        a = s * total
    return 0.5 * (1.0 + a)


def student_t_ppf(q: float, df: int) -> float:
    """Quantile of Student's t distribution with integer ``df`` degrees of freedom.

    Args:
        q: probability in (0, 1).
        df: degrees of freedom, at least 1.

    Returns:
        ``t`` with ``P(T <= t) = q`` (bisection on the closed-form CDF, to 1e-12).

    Example:
        >>> round(student_t_ppf(0.975, 4), 4), round(student_t_ppf(0.975, 1), 3)
        (2.7764, 12.706)
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be an int >= 1, got {df!r}")
    if q < 0.5:
        return -student_t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while _student_t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _student_t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


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
    half = student_t_ppf(0.5 + ci / 2.0, int(d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(
        d.size
    )
    return mean, mean - half, mean + half


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


def _metric_keys(attributes: Mapping[str, int]) -> list[str]:
    keys = ["auc", "acc", "mean/es_auc", "mean/es_acc", "mean/dpd", "mean/deodds"]
    for a, g in attributes.items():
        keys += [f"{a}/es_auc", f"{a}/es_acc", f"{a}/dpd", f"{a}/deodds"]
        keys += [f"{a}/auc_group_{i}" for i in range(g)]
    return keys


def _with_means(values: Mapping[str, float], attributes: Mapping[str, int]) -> dict[str, float]:
    """Add ``mean/{es_auc,es_acc,dpd,deodds}``: the mean over attributes (the overall line)."""
    out = dict(values)
    for name in ("es_auc", "es_acc", "dpd", "deodds"):
        vals = [values.get(f"{a}/{name}", math.nan) for a in attributes]
        out[f"mean/{name}"] = float(np.mean(vals)) if vals else math.nan
    return out


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
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
    attributes = dict(_ATTRIBUTES if attributes is None else attributes)
    keys = _metric_keys(attributes)
    by_variant: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in results:
        by_variant.setdefault(str(r["variant"]), {})[int(r["seed"])] = r
    methods: dict[str, Any] = {}
    for variant, runs in by_variant.items():
        seeds = sorted(runs)
        entry: dict[str, Any] = {"seeds": seeds}
        for stage in ("test", "val"):
            table = {}
            rows = [_with_means(runs[s].get(stage, {}), attributes) for s in seeds]
            for key in keys:
                table[key] = _mean_std([row.get(key, math.nan) for row in rows])
            entry[stage] = table
        dbpm: list[Mapping[str, Any]] = [
            runs[s]["dbpm"] for s in seeds if runs[s].get("dbpm")
        ]
        if dbpm:
            agg: dict[str, Any] = {}
            for key in ("precision", "recall", "num_flagged", "num_bad"):
                agg[key] = _mean_std([d.get(key, math.nan) for d in dbpm])
            entry["dbpm"] = agg
        detection = [
            _flat_detection(runs[s]["detection"]) for s in seeds if runs[s].get("detection")
        ]
        if detection:
            entry["detection"] = {
                key: _mean_std([d.get(key, math.nan) for d in detection])
                for key in sorted(set().union(*detection))
            }
        methods[variant] = entry
    comparisons: dict[str, Any] = {}
    base = by_variant.get(baseline, {})
    for variant, runs in by_variant.items():
        if variant == baseline or not base:
            continue
        seeds = sorted(set(runs) & set(base))
        own = {s: _with_means(runs[s]["test"], attributes) for s in seeds}
        ref = {s: _with_means(base[s]["test"], attributes) for s in seeds}
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


# ------------------------------------------------------------------------------------------------
# variants (configs x sweeps)
# ------------------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One method to benchmark: a config file plus overrides.

    Attributes:
        name: display and folder name (``synthetic_fairclip``, ``synthetic_fairclip_lambda0.01``).
        config: the YAML config file.
        overrides: extra ``fairvlm fit`` arguments (``["--model.fairness_weight", "0.01"]``).
        sweep: ``{"lambda": value}`` or ``{"beta": value}`` for a sweep point, else empty.
        base: the config's own name (the variant a sweep point belongs to).
        oracle: the baseline trained without the planted bad pairs (``--data.drop_bad_pairs``).
    """

    name: str
    config: Path
    overrides: list[str] = field(default_factory=list)
    sweep: dict[str, float] = field(default_factory=dict)
    base: str = ""
    oracle: bool = False


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"config {path} is not a YAML mapping")
    return data


def _dbpm_callback_index(cfg: Mapping[str, Any]) -> int | None:
    callbacks = (cfg.get("trainer") or {}).get("callbacks") or []
    for i, cb in enumerate(callbacks):
        if isinstance(cb, Mapping) and str(cb.get("class_path", "")).endswith(
            "DynamicBadPairMining"
        ):
            return i
    return None


def data_variant_args(name: str) -> list[str]:
    """``fairvlm fit`` arguments that point a synthetic config at the data variant ``name``.

    The variant's data and tiny model live in their own folder ``${FAIRVLM_CACHE}/synthetic_<name>``
    (written on first use), so variants never overwrite each other.

    Example:
        >>> data_variant_args("default")
        []
        >>> data_variant_args("shifted")[:2]
        ['--data.root', '${FAIRVLM_CACHE}/synthetic_shifted']
    """
    if name not in DATA_VARIANTS:
        raise ValueError(f"unknown data variant {name!r}; choose from {sorted(DATA_VARIANTS)}")
    kwargs = DATA_VARIANTS[name]
    if not kwargs:
        return []
    root = f"${{FAIRVLM_CACHE}}/synthetic_{name}"
    return [
        "--data.root",
        root,
        "--data.synthetic_kwargs",
        json.dumps(kwargs, sort_keys=True),
        "--model.model",
        f"{root}/tiny_model",
    ]


def _dbpm_rule_args(callback: dict[str, Any]) -> dict[str, Any]:
    """The ``init_args`` that hold the DBPM betas of a callback entry (made if absent).

    The nested form ``init_args.miner.init_args.rule.init_args`` (a ``ThresholdRule``); a
    callback still written with the flat options keeps them in its own ``init_args``.
    """
    init = callback.setdefault("init_args", {})
    if "miner" not in init and any(k in init for k in ("beta_noisy", "beta_faulty")):
        return init
    miner = init.setdefault("miner", {"class_path": "fairvlm_lightning.mining.MinerSpec"})
    rule = miner.setdefault("init_args", {}).setdefault(
        "rule", {"class_path": "fairvlm_lightning.mining.ThresholdRule"}
    )
    return rule.setdefault("init_args", {})


def make_variants(
    configs: Sequence[str | os.PathLike[str]],
    fairness_weights: Sequence[float] = (),
    betas: Sequence[float] = (),
) -> list[Variant]:
    """The configs, plus their λ sweep points (fairness term) and β sweep points (DBPM).

    A λ point sets ``model.fairness_weight``; a β point sets both ``beta_noisy`` and
    ``beta_faulty`` of the config's ``DynamicBadPairMining`` callback (written to a derived
    YAML, since a list entry cannot be overridden on the command line).

    Args:
        configs: config names or paths.
        fairness_weights: λ values to sweep (configs with ``fairness_weight > 0`` only).
        betas: β values to sweep (configs with a DBPM callback only).

    Returns:
        The variants, configs first in the given order, then their sweep points.
    """
    variants: list[Variant] = []
    for name in configs:
        path = Path(resolve_config(os.fspath(name)))
        base = path.stem
        variants.append(Variant(base, path, base=base))
        cfg = _read_yaml(path)
        weight = float((cfg.get("model") or {}).get("fairness_weight", 0.0) or 0.0)
        if weight > 0:
            for lam in fairness_weights:
                variants.append(
                    Variant(
                        f"{base}_lambda{lam:g}",
                        path,
                        ["--model.fairness_weight", repr(float(lam))],
                        {"lambda": float(lam)},
                        base,
                    )
                )
        if _dbpm_callback_index(cfg) is not None:
            for beta in betas:
                variants.append(
                    Variant(f"{base}_beta{beta:g}", path, [], {"beta": float(beta)}, base)
                )
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate configs or sweep values: {names}")
    return variants


def _materialise_config(variant: Variant, folder: Path) -> Path:
    """The config file to run: the original, or a derived copy for a β point."""
    if "beta" not in variant.sweep:
        return variant.config
    import yaml

    cfg = _read_yaml(variant.config)
    index = _dbpm_callback_index(cfg)
    assert index is not None
    init = _dbpm_rule_args(cfg["trainer"]["callbacks"][index])
    init["beta_noisy"] = init["beta_faulty"] = float(variant.sweep["beta"])
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{variant.name}.yaml"
    atomic_write_text(
        out,
        f"# derived from {variant.config} by fairvlm benchmark (beta sweep)\n"
        + yaml.safe_dump(cfg, sort_keys=False),
    )
    return out


# ------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------
def _run_key(config_text: str, args: Sequence[str]) -> str:
    body = json.dumps([_RESULT_VERSION, config_text, list(args)])
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_json(path, data)  # a unique temp name: never shared between processes


def _strip(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if k.startswith(prefix + "/"):
            out[k[len(prefix) + 1 :]] = float(v.item() if isinstance(v, torch.Tensor) else v)
    return out


def _dbpm_record(cli: Any, folder: Path) -> dict[str, Any] | None:
    """The miner's final per-pair statistic and flags, scored against the planted bad pairs."""
    trainer = cli.trainer
    dbpm = find_bad_pair_mining(trainer)
    if dbpm is None or dbpm.miner is None:
        return None
    miner = dbpm.miner
    stat = miner.history_mean.detach().cpu().double().numpy()
    flagged = miner.flagged_mask.detach().cpu().numpy().astype(bool)
    summary = {k: float(v) for k, v in miner.summary().items()}
    record: dict[str, Any] = {
        "threshold_noisy": summary.get("threshold_noisy", math.nan),
        "threshold_faulty": summary.get("threshold_faulty", math.nan),
        "mu": summary.get("mu", math.nan),
        "sigma": summary.get("sigma", math.nan),
        "num_flagged": float(flagged.sum()),
        "beta_noisy": float(getattr(dbpm, "beta_noisy", math.nan)),
        "beta_faulty": float(getattr(dbpm, "beta_faulty", math.nan)),
    }
    arrays: dict[str, np.ndarray] = {"statistic": stat, "flagged": flagged}
    train = getattr(cli.datamodule, "datasets", {}).get("train")
    if train is not None:
        index = np.asarray(train["index"], dtype=np.int64)
        order = np.argsort(index)
        detail = _DETAIL_ATTRIBUTE
        if detail in train.column_names:
            codes = np.full(len(stat), -1, dtype=np.int64)
            codes[index[order]] = np.asarray(train[detail])[order]
            arrays[detail] = codes
        if BAD_PAIR_FIELD in train.column_names:
            bad = np.zeros(len(stat), dtype=bool)
            bad[index[order]] = np.asarray(train[BAD_PAIR_FIELD], dtype=bool)[order]
            arrays[BAD_PAIR_FIELD] = bad
            hits = float((flagged & bad).sum())
            record["num_bad"] = float(bad.sum())
            flagged_total = record["num_flagged"]
            record["precision"] = hits / flagged_total if flagged_total else math.nan
            record["recall"] = hits / record["num_bad"] if record["num_bad"] else math.nan
            if detail in arrays:
                per_group = {}
                for g in range(ATTRIBUTE_GROUPS[detail]):
                    m = arrays[detail] == g
                    f, b = flagged & m, bad & m
                    per_group[str(g)] = {
                        "flagged": float(f.sum()),
                        "bad": float(b.sum()),
                        "precision": float((f & bad).sum() / f.sum()) if f.sum() else math.nan,
                        "recall": float((f & b).sum() / b.sum()) if b.sum() else math.nan,
                    }
                record[detail] = per_group
    np.savez_compressed(folder / "dbpm.npz", **arrays)  # type: ignore[arg-type]
    return record


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


def _predictions(cli: Any, folder: Path) -> None:
    """Test predictions of the selected model (for the ROC plots), saved as ``predictions.npz``."""
    outputs = cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=True)
    if not outputs:
        return
    keys = ["score", "label", *[k for k in _ATTRIBUTES if k in outputs[0]]]
    arrays = {k: torch.cat([o[k].detach().cpu() for o in outputs]).numpy() for k in keys}
    np.savez_compressed(folder / "predictions.npz", **arrays)  # type: ignore[arg-type]


def _run_one(
    cli_class: Callable[..., Any],
    variant: Variant,
    config: Path,
    seed: int,
    folder: Path,
    extra: Sequence[str],
    key: str,
) -> dict[str, Any]:
    """``fairvlm fit`` one (variant, seed) into ``folder``; return (and save) its record."""
    work = folder / "work"
    if work.exists():  # a crashed earlier attempt (the out_dir lock rules out a live one)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    args = [
        "fit",
        "--config",
        str(config),
        "--seed_everything",
        str(seed),
        *variant.overrides,
        "--trainer.logger.init_args.save_dir",
        str(work),
        "--trainer.logger.init_args.name",
        "logs",
        "--trainer.logger.init_args.version",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]
    start = time.perf_counter()
    log_path = folder / "log.txt"
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    try:
        for lg in loggers:  # Lightning's handlers hold the real stderr: route them to the log
            lg.handlers, lg.propagate = [handler], False
        with open(log_path, "a", encoding="utf-8") as log:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cli = cli_class(args=args)
                    if cli.trainer.interrupted:
                        raise RuntimeError(f"run {variant.name} seed {seed} was interrupted")
                    test = _strip(cli.test_results, "test")
                    val_out = cli.trainer.validate(
                        cli.model, datamodule=cli.datamodule, verbose=False
                    )
                    val = _strip(val_out[0] if val_out else {}, "val")
                    _predictions(cli, folder)
                    dbpm = _dbpm_record(cli, folder)
    except (Exception, SystemExit) as err:
        handler.close()
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise RuntimeError(
            f"benchmark run {variant.name} seed {seed} failed ({type(err).__name__}: {err}); "
            f"its log {log_path} ends with:\n{tail}"
        ) from err
    finally:
        handler.close()
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
    ckpt = cli.trainer.checkpoint_callback
    record = {
        "version": _RESULT_VERSION,
        "key": key,
        "variant": variant.name,
        "base": variant.base,
        "sweep": variant.sweep,
        "config": str(variant.config),
        "seed": seed,
        "seeds": getattr(cli, "seeds", {}),
        "args": args,
        "test": test,
        "val": val,
        "dbpm": dbpm,
        "best_checkpoint": str(getattr(ckpt, "best_model_path", "")),
        "best_val_auc": float(getattr(ckpt, "best_model_score", math.nan) or math.nan),
        "epochs": int(cli.trainer.current_epoch),
        "seconds": time.perf_counter() - start,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for path in (work / "logs" / "version_0" / "checkpoints").glob("*.ckpt"):
        path.unlink()  # checkpoints are large and not needed once the run is scored
    _write_json_atomic(folder / _RESULT, record)  # last: its presence marks the run done
    return record


def _load_done(folder: Path, key: str) -> dict[str, Any] | None:
    path = folder / _RESULT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("key") == key else None


# ------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _holding_out_dir_lock(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` holding the lock of its ``out_dir`` argument (created when missing)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out = Path(bound.arguments["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        with FileLock(out / _LOCK, what=f"benchmark output folder {out}"):
            return fn(*args, **kwargs)

    return locked


@_holding_out_dir_lock
def run_benchmark(
    cli_class: Callable[..., Any],
    *,
    configs: Sequence[str | os.PathLike[str]] = DEFAULT_CONFIGS,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    out_dir: str | os.PathLike[str] = "benchmarks/results/benchmark",
    baseline: str | None = None,
    max_epochs: int | None = None,
    fairness_weights: Sequence[float] = (),
    betas: Sequence[float] = (),
    bootstrap: int = 1000,
    ci: float = 0.95,
    plots: bool = True,
    results_page: str | os.PathLike[str] | None = None,
    command: str | None = None,
    progress: bool = True,
    extra_args: Sequence[str] = (),
    data_variant: str = "default",
    oracle: bool = True,
) -> dict[str, Any]:
    """Run configs × seeds as ``fairvlm fit`` would, then write the report into ``out_dir``.

    Writes ``benchmark.json`` (every run and the summary), ``benchmark.md`` (tables, verdicts,
    plots) and the PNGs (with matplotlib, the ``plot`` extra) into ``out_dir``; runs live in
    ``out_dir/runs/<variant>/seed_<s>/`` and are not redone once finished.

    Args:
        cli_class: the ``LightningCLI`` subclass of ``fairvlm`` (:class:`~fairvlm_lightning.cli.
            FairVLMCLI`); :func:`fairvlm_lightning.cli.benchmark` passes it for you.
        configs: config names (shipped) or paths; default the five synthetic configs.
        seeds: values of ``--seed_everything`` (the data order follows, see ``fairvlm fit``).
        out_dir: output folder.
        baseline: variant the others are compared to (default ``synthetic_clip`` when present,
            else the first config).
        max_epochs: override ``trainer.max_epochs`` of every config (``--quick`` uses fewer).
        fairness_weights: λ sweep points (configs with the fairness term).
        betas: β sweep points (configs with DBPM; ``beta_noisy = beta_faulty``).
        bootstrap: replicates of the per-run percentile bootstrap of the test metrics (0: off).
        ci: coverage of every interval.
        plots: write the PNGs (needs matplotlib; skipped with a warning when missing).
        results_page: also write this Markdown page (e.g. ``docs/results.md``), plots copied
            next to it into ``<stem>/``.
        command: the command line to record in the report.
        progress: show a progress bar on stderr.
        extra_args: more ``fairvlm fit`` arguments for every run.
        data_variant: generator setting of the synthetic twin (:data:`DATA_VARIANTS`).
        oracle: also train the baseline without the planted bad pairs (``<baseline>_oracle``)
            and report each method's capture of that headroom (:func:`headroom`); needs data
            with an ``is_bad_pair`` field (the synthetic twin).

    Returns:
        The content of ``benchmark.json``.

    Raises:
        fairvlm_lightning.atomic.InUseError: another benchmark is writing ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    variants = make_variants(configs, fairness_weights, betas)
    names = [v.name for v in variants]
    if baseline is None:
        baseline = BASELINE if BASELINE in names else names[0]
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not among the variants {names}")
    oracle_name = baseline + ORACLE_SUFFIX if oracle else None
    if oracle_name is not None:
        if oracle_name in names:
            raise ValueError(f"a config is named like the oracle variant {oracle_name!r}")
        base_variant = variants[names.index(baseline)]
        variants.insert(
            names.index(baseline) + 1,
            Variant(
                oracle_name,
                base_variant.config,
                [*base_variant.overrides, "--data.drop_bad_pairs", "true"],
                base=base_variant.base,
                oracle=True,
            ),
        )
    extra = [*data_variant_args(data_variant), *extra_args]
    if max_epochs is not None:
        extra += ["--trainer.max_epochs", str(int(max_epochs))]
    if bootstrap:
        extra += ["--model.metrics", json.dumps({"bootstrap": int(bootstrap), "ci": ci})]
    materialised = {v.name: _materialise_config(v, out / "configs") for v in variants}
    jobs = []
    for s in seeds:  # seed by seed: a partial benchmark still compares every method
        for v in variants:
            config = materialised[v.name]
            text = config.read_text(encoding="utf-8")
            folder = out / "runs" / v.name / f"seed_{s}"
            args = [*v.overrides, *extra, f"seed={s}"]
            jobs.append((v, config, s, folder, _run_key(text, args)))

    results: list[dict[str, Any]] = []
    todo = []
    for job in jobs:
        done = _load_done(job[3], job[4])
        if done is not None:
            results.append(done)
        else:
            todo.append(job)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(jobs),
            initial=len(jobs) - len(todo),
            desc="benchmark runs",
            unit="run",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    start = time.perf_counter()
    try:
        for i, (v, config, s, folder, key) in enumerate(todo):
            if bar is not None:
                bar.set_postfix_str(f"{v.name} seed {s}")
            folder.mkdir(parents=True, exist_ok=True)
            record = _run_one(cli_class, v, config, s, folder, extra, key)
            results.append(record)
            elapsed = time.perf_counter() - start
            left = elapsed / (i + 1) * (len(todo) - i - 1)
            if bar is not None:
                bar.update(1)
                bar.write(
                    f"{v.name} seed {s}: {record['seconds']:.0f} s, test AUC "
                    f"{record['test'].get('auc', math.nan):.3f}, mean ES-AUC "
                    f"{_with_means(record['test'], _ATTRIBUTES)['mean/es_auc']:.3f}; "
                    f"{len(todo) - i - 1} runs left, about {left / 60:.1f} min",
                    file=sys.stderr,
                )
    finally:
        if bar is not None:
            bar.close()
    for r in results:  # score the final flags from the saved per-pair state
        state = out / "runs" / str(r["variant"]) / f"seed_{r['seed']}" / "dbpm.npz"
        if r.get("dbpm") and state.is_file():
            with np.load(state) as z:
                if BAD_PAIR_FIELD in z:
                    groups = z[_DETAIL_ATTRIBUTE] if _DETAIL_ATTRIBUTE in z else None
                    r["detection"] = detection_scores(
                        z["statistic"], z["flagged"], z[BAD_PAIR_FIELD], groups
                    )
    rank = {v.name: i for i, v in enumerate(variants)}
    results.sort(key=lambda r: (rank.get(r["variant"], 0), int(r["seed"])))
    summary = summarise(results, baseline=baseline, ci=ci)
    sweeps = _sweep_table(variants, summary)
    report = {
        "command": command,
        "data_variant": data_variant,
        "data_settings": DATA_VARIANTS[data_variant],
        "headroom": headroom(summary, oracle_name) if oracle_name else {},
        "settings": {
            v.name: {
                "config": v.config.name,
                **config_settings(v.config),
                "overrides": list(v.overrides),
            }
            for v in variants
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seeds": seeds,
        "variants": [
            {"name": v.name, "config": str(v.config), "overrides": v.overrides, "sweep": v.sweep,
             "base": v.base, "oracle": v.oracle}
            for v in variants
        ],
        "max_epochs": max_epochs,
        "bootstrap": bootstrap,
        "summary": summary,
        "sweeps": sweeps,
        "runs": results,
        "total_run_seconds": float(sum(r.get("seconds", 0.0) for r in results)),
    }
    images: dict[str, str] = {}
    if plots:
        try:
            images = _make_plots(out, variants, results, summary, baseline)
        except ImportError as err:
            warnings.warn(f"plots skipped: {err}", stacklevel=2)
    report["plots"] = images
    _write_json_atomic(out / "benchmark.json", report)
    markdown = render_markdown(report, images)
    atomic_write_text(out / "benchmark.md", markdown)
    if results_page is not None:
        page = Path(results_page)
        page.parent.mkdir(parents=True, exist_ok=True)
        assets = page.parent / page.stem
        assets.mkdir(parents=True, exist_ok=True)
        moved = {}
        for name, file in images.items():
            atomic_write_bytes(assets / file, (out / file).read_bytes())
            moved[name] = f"{page.stem}/{file}"
        atomic_write_text(page, render_markdown(report, moved))
    return report


def config_value(config: str | os.PathLike[str], parameter: str) -> float | None:
    """The value a config itself gives a swept parameter (its shipped default).

    Args:
        config: config name or path.
        parameter: ``"lambda"`` (``model.fairness_weight``) or ``"beta"`` (the DBPM
            callback's ``beta_faulty``; the sweeps set ``beta_noisy`` to the same value).

    Returns:
        The value, or ``None`` when the config has no such setting (no DBPM callback).

    Example:
        >>> config_value("synthetic_clip", "lambda")
        0.0
        >>> config_value("synthetic_clip", "beta") is None
        True
    """
    from fairvlm_lightning.mining import PAPER_SETTINGS

    cfg = _read_yaml(Path(resolve_config(os.fspath(config))))
    if parameter == "lambda":
        return float((cfg.get("model") or {}).get("fairness_weight", 0.0) or 0.0)
    if parameter == "beta":
        index = _dbpm_callback_index(cfg)
        if index is None:
            return None
        init = _dbpm_rule_args(cfg["trainer"]["callbacks"][index])
        return float(init.get("beta_faulty", PAPER_SETTINGS["beta_faulty"]))
    raise ValueError(f"parameter must be 'lambda' or 'beta', got {parameter!r}")


def _describe(node: Any) -> str:
    """A YAML ``class_path``/``init_args`` tree as ``Class(arg=value, ...)`` (recursively)."""
    if isinstance(node, Mapping) and "class_path" in node:
        args = node.get("init_args") or {}
        inner = ", ".join(f"{k}={_describe(v)}" for k, v in args.items())
        return f"{str(node['class_path']).rsplit('.', 1)[-1]}({inner})"
    if isinstance(node, Mapping):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in node.items()) + "}"
    if isinstance(node, (list, tuple)):
        return "[" + ", ".join(_describe(v) for v in node) + "]"
    return f"{node:g}" if isinstance(node, float) else str(node)


#: DBPM callback arguments that only log or export (not part of the rule).
_DBPM_LOGGING = ("group_keys", "truth_key", "export_dir", "prefix", "reset_on_mismatch")


def config_settings(config: str | os.PathLike[str]) -> dict[str, str]:
    """What a config sets for the method: ``{"lambda": ..., "dbpm": ...}`` as display strings.

    ``dbpm`` is the DBPM callback's rule (its ``miner``, or its flat options) as
    ``Class(arg=value, ...)``, ``"–"`` without a DBPM callback. The benchmark page prints these
    for every method, so that a test can check the page against the shipped configs.

    Example:
        >>> config_settings("synthetic_clip")
        {'lambda': '0', 'dbpm': '–'}
    """
    cfg = _read_yaml(Path(resolve_config(os.fspath(config))))
    lam = float((cfg.get("model") or {}).get("fairness_weight", 0.0) or 0.0)
    index = _dbpm_callback_index(cfg)
    dbpm = "–"
    if index is not None:
        init = dict(cfg["trainer"]["callbacks"][index].get("init_args") or {})
        if "miner" in init:
            dbpm = _describe(init["miner"])
        else:
            rule = {k: v for k, v in init.items() if k not in _DBPM_LOGGING}
            dbpm = "paper rule" + (f" {_describe(rule)}" if rule else "")
    return {"lambda": f"{lam:g}", "dbpm": dbpm}


def _sweep_table(variants: Sequence[Variant], summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per swept config: every point's val/test AUC and mean ES-AUC; the choice made on val.

    The config's own value (the variant without a sweep) is one of the points, so the
    choice can keep the shipped default. Each point carries its paired test difference
    in mean ES-AUC and AUC against the benchmark's baseline.
    """
    methods = summary["methods"]
    comparisons = summary.get("comparisons", {})
    out = []
    for param in ("lambda", "beta"):
        bases = sorted({v.base for v in variants if param in v.sweep})
        for base in bases:
            own = next((v for v in variants if v.name == base and not v.sweep), None)
            points = [v for v in variants if v.base == base and param in v.sweep]
            values = {v.name: v.sweep[param] for v in points}
            default = config_value(own.config, param) if own is not None else None
            if own is not None and default is not None:
                points.append(own)
                values[own.name] = default
            rows = []
            for v in sorted(points, key=lambda p: values[p.name]):
                m = methods.get(v.name)
                if m is None:
                    continue
                comp = comparisons.get(v.name, {})
                rows.append(
                    {
                        "variant": v.name,
                        param: values[v.name],
                        "default": v is own,
                        "val_auc": m["val"]["auc"]["mean"],
                        "val_es_auc": m["val"]["mean/es_auc"]["mean"],
                        "val_es_auc_std": m["val"]["mean/es_auc"]["std"],
                        "test_auc": m["test"]["auc"]["mean"],
                        "test_auc_std": m["test"]["auc"]["std"],
                        "test_es_auc": m["test"]["mean/es_auc"]["mean"],
                        "test_es_auc_std": m["test"]["mean/es_auc"]["std"],
                        "paired_es_auc": dict(comp.get("mean/es_auc", {})),
                        "paired_auc": dict(comp.get("auc", {})),
                    }
                )
            valid = [r for r in rows if not math.isnan(r["val_es_auc"])]
            chosen = max(valid, key=lambda r: r["val_es_auc"])[param] if valid else None
            out.append(
                {"config": base, "parameter": param, "points": rows, "chosen_on_val": chosen,
                 "default": default}
            )
    return out


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def _group_name(attribute: str, group: int) -> str:
    """The display name of a group (``schema.GROUP_NAMES``), as the CLI prints it."""
    names = GROUP_NAMES.get(attribute, ())
    return names[group] if group < len(names) else f"group {group}"


def _pm(stat: Mapping[str, float]) -> str:
    mean, std = stat["mean"], stat["std"]
    if math.isnan(mean):
        return "nan"
    return f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f}"


def _signed(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:+.3f}"


def render_markdown(report: Mapping[str, Any], images: Mapping[str, str]) -> str:
    """The benchmark as a Markdown page (tables, paired intervals and verdicts, plots)."""
    summary = report["summary"]
    methods = summary["methods"]
    baseline = summary["baseline"]
    seeds = report["seeds"]
    main = [v["name"] for v in report["variants"] if not v["sweep"]]
    lines = [
        "# Benchmark: the method against its ablations",
        "",
        f"Generated by `{report.get('command') or 'fairvlm benchmark'}` on {report['date']}.",
        "",
        f"Data: the synthetic twin, variant `{report.get('data_variant', 'default')}` ("
        + (json.dumps(report["data_settings"]) if report.get("data_settings") else "the shipped "
           "generator settings")
        + "). "
        f"Seeds {seeds} (`--seed_everything`; the training order follows it). Every run is "
        "`fairvlm fit` of the config: the epoch is selected on the validation split (best "
        "`val/auc`), the numbers below are the **test** split of that checkpoint. "
        + (f"Epochs overridden to {report['max_epochs']}. " if report.get("max_epochs") else "")
        + f"Total training time {report['total_run_seconds'] / 60:.1f} min (shared, noisy "
        "machine).",
        "",
        "Values are mean ± std over seeds. *Paired difference* = method − baseline on the same "
        f"seed, with a {summary['ci']:.0%} paired t interval over seeds (seeds are the "
        "replication unit; see `fairvlm_lightning/benchmark.py` for why not a bootstrap). "
        "Verdict: better / worse when the interval excludes 0, else no detectable difference.",
        "",
        "## Overall (test)",
        "",
        "| method | AUC | Acc | ES-AUC (mean of 4 attributes) | ES-Acc | DPD | DEOdds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in main:
        t = methods[name]["test"]
        lines.append(
            f"| {name} | {_pm(t['auc'])} | {_pm(t['acc'])} | {_pm(t['mean/es_auc'])} | "
            f"{_pm(t['mean/es_acc'])} | {_pm(t['mean/dpd'])} | {_pm(t['mean/deodds'])} |"
        )
    settings = report.get("settings") or {}
    if settings:
        lines += [
            "",
            "## Settings of each method (from its config when this page was generated)",
            "",
            "| method | config | λ (fairness_weight) | DBPM rule | extra arguments |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name in main:
            st = settings.get(name) or {}
            lines.append(
                f"| {name} | `{st.get('config', '')}` | {st.get('lambda', '')} | "
                f"`{st.get('dbpm', '')}` | {' '.join(st.get('overrides', [])) or '–'} |"
            )
    lines += ["", f"## Paired differences against `{baseline}` (test)", ""]
    lines += [
        "| method | metric | difference | 95% CI | verdict |"
        if summary["ci"] == 0.95
        else "| method | metric | difference | CI | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    shown = ["auc", "mean/es_auc", "mean/dpd", "mean/deodds"] + [
        f"{a}/{m}" for a in _ATTRIBUTES for m in ("es_auc", "deodds")
    ]
    for name in main:
        comp = summary["comparisons"].get(name)
        if not comp:
            continue
        for key in shown:
            c = comp[key]
            lines.append(
                f"| {name} | {key} | {_signed(c['mean'])} | [{_signed(c['low'])}, "
                f"{_signed(c['high'])}] | {c['verdict']} |"
            )
    head_rows = _headroom_lines(report.get("headroom") or {}, markdown=True)
    if head_rows:
        lines += [
            "",
            "## Headroom: what clean data wins, and how much of it each method captures",
            "",
            f"`{report['headroom']['oracle']}` is `{baseline}` trained on the same data with the "
            "planted bad pairs removed (`--data.drop_bad_pairs true`): its gain over the "
            "baseline is what perfect bad-pair handling could win. *Capture* = (method − "
            "baseline) / (oracle − baseline), from the paired mean differences; the interval is "
            "the method's paired gain (the numerator).",
            "",
            *head_rows,
        ]
    if len(seeds) < 2:
        lines += [
            "",
            "**Only one seed: no paired interval can be computed, so no verdict is possible. "
            "This is a partial benchmark; rerun the command with more seeds (finished runs are "
            "reused).**",
        ]
    runs = report.get("runs", [])
    if runs and any("auc_ci_low" in r["test"] for r in runs):
        lines += [
            "",
            "## Single runs with their test-sample intervals (percentile bootstrap, "
            f"{report.get('bootstrap')} replicates, stratified by group)",
            "",
            "| method | seed | AUC | race ES-AUC | race DEOdds | best epoch val AUC |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in runs:
            t = r["test"]

            def cell(key: str, t: Mapping[str, float] = t) -> str:
                v, lo, hi = (t.get(k, math.nan) for k in (key, f"{key}_ci_low", f"{key}_ci_high"))
                return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"

            lines.append(
                f"| {r['variant']} | {r['seed']} | {cell('auc')} | {cell('race/es_auc')} | "
                f"{cell('race/deodds')} | {r.get('best_val_auc', math.nan):.3f} |"
            )
    lines += ["", "## Per attribute (test)", ""]
    for attr, groups in _ATTRIBUTES.items():
        lines += [
            f"### {attr}",
            "",
            "| method | ES-AUC | ES-Acc | DPD | DEOdds | "
            + " | ".join(f"AUC {_group_name(attr, g)}" for g in range(groups))
            + " |",
            "| --- " * (5 + groups) + "|",
        ]
        for name in main:
            t = methods[name]["test"]
            cells = [_pm(t[f"{attr}/{m}"]) for m in ("es_auc", "es_acc", "dpd", "deodds")]
            cells += [_pm(t[f"{attr}/auc_group_{g}"]) for g in range(groups)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    dbpm = [n for n in main if "dbpm" in methods[n]]
    if dbpm:
        lines += [
            "## DBPM against the planted bad pairs (training split, final flags)",
            "",
            "| method | flagged pairs | planted bad pairs | precision | recall |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name in dbpm:
            d = methods[name]["dbpm"]
            lines.append(
                f"| {name} | {_pm(d['num_flagged'])} | {_pm(d['num_bad'])} | "
                f"{_pm(d['precision'])} | {_pm(d['recall'])} |"
            )
        lines.append("")
    detect = [n for n in main if "detection" in methods[n]]
    if detect:
        names = GROUP_NAMES[_DETAIL_ATTRIBUTE]
        lines += [
            f"## Detection by {_DETAIL_ATTRIBUTE} group (final flags; AUROC of the statistic "
            "that drives them, within each group)",
            "",
            "| method | precision | recall | AUROC | "
            + " | ".join(f"recall {n}" for n in names) + " | "
            + " | ".join(f"AUROC {n}" for n in names) + " |",
            "| --- " * (4 + 2 * len(names)) + "|",
        ]
        for name in detect:
            d = methods[name]["detection"]
            nan = {"mean": math.nan, "std": math.nan}
            cells = [_pm(d.get(k, nan)) for k in ("precision", "recall", "auroc")]
            cells += [_pm(d.get(f"{g}/recall", nan)) for g in range(len(names))]
            cells += [_pm(d.get(f"{g}/auroc", nan)) for g in range(len(names))]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    for sweep in report.get("sweeps", []):
        param = sweep["parameter"]
        symbol = "λ (fairness_weight)" if param == "lambda" else "β (beta_noisy = beta_faulty)"
        default = sweep.get("default")
        chosen = sweep["chosen_on_val"]
        keep = (
            "the shipped default"
            if default is not None and chosen is not None and float(chosen) == float(default)
            else f"the shipped default is {default:g}" if default is not None else ""
        )
        lines += [
            f"## {symbol} sweep of `{sweep['config']}`",
            "",
            f"Chosen on the **validation** split (highest mean ES-AUC over the seeds): {param} = "
            f"{chosen:g}" + (f" ({keep})." if keep else ".") if chosen is not None
            else "No point has a validation ES-AUC.",
            "The test columns are reported for that choice, not used to make it. *Paired* is "
            f"the point − `{baseline}` on the same seed (95% paired t interval) with its verdict.",
            "",
            f"| {param} | val AUC | val ES-AUC | test AUC | test ES-AUC | paired ES-AUC | "
            "paired AUC |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sweep["points"]:
            mark = " (default)" if r.get("default") else ""
            mark += " **(chosen)**" if chosen is not None and r[param] == chosen else ""
            cells = []
            for key in ("paired_es_auc", "paired_auc"):
                c = r.get(key) or {}
                cells.append(
                    f"{_signed(c['mean'])} [{_signed(c['low'])}, {_signed(c['high'])}] "
                    f"{c['verdict']}" if c else "baseline"
                )
            lines.append(
                f"| {r[param]:g}{mark} | {r['val_auc']:.3f} | "
                f"{_pm({'mean': r['val_es_auc'], 'std': r.get('val_es_auc_std', math.nan)})} | "
                f"{_pm({'mean': r['test_auc'], 'std': r.get('test_auc_std', math.nan)})} | "
                f"{_pm({'mean': r['test_es_auc'], 'std': r['test_es_auc_std']})} | "
                f"{cells[0]} | {cells[1]} |"
            )
        lines.append("")
    if images:
        lines += ["## Plots", ""]
        for title, file in images.items():
            lines += [f"### {title}", "", f"![{title}]({file})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _make_plots(
    out: Path,
    variants: Sequence[Variant],
    results: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    baseline: str,
) -> dict[str, str]:
    from fairvlm_lightning import plots

    images: dict[str, str] = {}
    methods = summary["methods"]
    main = [v.name for v in variants if not v.sweep and v.name in methods]
    stats = {
        n: {a: methods[n]["test"][f"{a}/es_auc"] for a in [*_ATTRIBUTES, "mean"]} for n in main
    }
    plots.plot_es_auc(stats, out / "es_auc.png")
    images["ES-AUC per method (test, mean ± std over seeds)"] = "es_auc.png"
    points = []
    symbols = {"lambda": "λ", "beta": "β"}
    for v in variants:
        m = methods.get(v.name)
        if m is None or v.oracle:  # the oracle is a reference, not a method to choose
            continue
        short = (v.base or v.name).removeprefix("synthetic_")
        swept = " ".join(f"{symbols.get(k, k)}={x:g}" for k, x in v.sweep.items())
        points.append(
            {
                "name": v.name,
                "label": f"{short} {swept}" if swept else v.name.removeprefix("synthetic_"),
                "auc": m["test"]["auc"]["mean"],
                "es_auc": m["test"]["mean/es_auc"]["mean"],
                "auc_std": m["test"]["auc"]["std"],
                "es_auc_std": m["test"]["mean/es_auc"]["std"],
                "group": v.base,
            }
        )
    plots.plot_pareto(points, out / "pareto.png")
    images["AUC vs ES-AUC (test, every method but the oracle; Pareto front drawn)"] = "pareto.png"
    first_seed = min(int(r["seed"]) for r in results)
    preds = {}
    for r in results:
        if r["variant"] in main and int(r["seed"]) == first_seed:
            path = out / "runs" / r["variant"] / f"seed_{first_seed}" / "predictions.npz"
            if path.is_file():
                preds[r["variant"]] = dict(np.load(path))
    if preds:
        detail = _DETAIL_ATTRIBUTE
        plots.plot_group_roc(preds, detail, out / f"roc_{detail}.png")
        images[f"ROC curves per {detail} group (test, seed {first_seed})"] = f"roc_{detail}.png"
    for name in main:
        path = out / "runs" / name / f"seed_{first_seed}" / "dbpm.npz"
        record = next(
            (r for r in results if r["variant"] == name and int(r["seed"]) == first_seed), None
        )
        if path.is_file() and record and record.get("dbpm"):
            file = f"dbpm_hist_{name}.png"
            d = record["dbpm"]
            plots.plot_dbpm_histogram(
                dict(np.load(path)),
                (d["threshold_noisy"], d["threshold_faulty"]),
                out / file,
                title=f"{name}, seed {first_seed}",
            )
            images[f"DBPM statistic per race group, {name} (seed {first_seed})"] = file
    return images


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def benchmark_parser() -> argparse.ArgumentParser:
    """The ``fairvlm benchmark`` argument parser."""
    p = argparse.ArgumentParser(
        prog="fairvlm benchmark",
        description="Run configs x seeds as `fairvlm fit` would (select on validation, report "
        "test) and write benchmark.json, benchmark.md and plots into one folder. Finished runs "
        "are reused.",
    )
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                   help="config names (shipped) or YAML paths; default the five synthetic ones")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seed_everything values (default 0 1 2 3 4; --quick: 0 1)")
    p.add_argument("--out", default="benchmarks/results/benchmark", help="output folder")
    p.add_argument("--baseline", default=None, help="variant to compare against")
    p.add_argument("--max_epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--quick", action="store_true",
                   help="2 seeds and 4 epochs (a few minutes; for CI)")
    p.add_argument("--fairness_weights", nargs="*", type=float, default=[],
                   help="λ sweep points for the configs with the fairness term")
    p.add_argument("--betas", nargs="*", type=float, default=[],
                   help="β sweep points (beta_noisy = beta_faulty) for the configs with DBPM")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="per-run bootstrap replicates of the test metrics (0: off)")
    p.add_argument("--ci", type=float, default=0.95, help="interval coverage")
    p.add_argument("--no_plots", action="store_true", help="skip the PNGs")
    p.add_argument("--results_page", default=None,
                   help="also write this Markdown page (e.g. docs/results.md)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--data_variant", default="default", choices=sorted(DATA_VARIANTS),
                   help="generator setting of the synthetic twin: default, or shifted (another "
                   "seed, 15%% bad pairs, 60%% of them in the minority race groups)")
    p.add_argument("--no_oracle", action="store_true",
                   help="skip the clean-data oracle (baseline trained without the bad pairs)")
    p.add_argument("--fit_args", default="",
                   help="extra `fairvlm fit` arguments for every run, as one quoted string "
                   "(e.g. \"--data.root /data/synth --trainer.accelerator gpu\")")
    return p


def benchmark_main(cli_class: Callable[..., Any], argv: Sequence[str]) -> dict[str, Any]:
    """Parse ``fairvlm benchmark`` arguments, run, print the overall table and the verdicts."""
    ns = benchmark_parser().parse_args(list(argv))
    seeds = ns.seeds if ns.seeds is not None else ([0, 1] if ns.quick else [0, 1, 2, 3, 4])
    max_epochs = ns.max_epochs if ns.max_epochs is not None else (4 if ns.quick else None)
    report = run_benchmark(
        cli_class,
        configs=ns.configs,
        seeds=seeds,
        out_dir=ns.out,
        baseline=ns.baseline,
        max_epochs=max_epochs,
        fairness_weights=ns.fairness_weights,
        betas=ns.betas,
        bootstrap=ns.bootstrap,
        ci=ns.ci,
        plots=not ns.no_plots,
        results_page=ns.results_page,
        command="fairvlm benchmark " + " ".join(argv),
        progress=not ns.no_progress,
        extra_args=shlex.split(ns.fit_args),
        data_variant=ns.data_variant,
        oracle=not ns.no_oracle,
    )
    print(format_summary(report))
    print(f"report: {Path(ns.out) / 'benchmark.md'}")
    return report


def _capture(c: Mapping[str, Any]) -> str:
    return "n/a" if math.isnan(c["capture"]) else f"{100 * c['capture']:.0f} %"


def _interval(c: Mapping[str, Any]) -> str:
    return f"{_signed(c['mean'])} [{_signed(c['low'])}, {_signed(c['high'])}]"


def _headroom_lines(head: Mapping[str, Any], markdown: bool) -> list[str]:
    """The headroom and capture rows, as Markdown table rows or as plain text."""
    if not head or not head.get("oracle_gain"):
        return []
    keys = list(head["oracle_gain"])
    gain = head["oracle_gain"]
    if not markdown:
        lines = [
            f"headroom = {head['oracle']} − baseline: "
            + "; ".join(f"{k} {_interval(gain[k])}" for k in keys),
            "capture = (method − baseline) / headroom, with the method's paired gain:",
        ]
        for name, rows in head["methods"].items():
            lines.append(
                f"  {name}: "
                + "; ".join(f"{k} {_capture(rows[k])} ({_interval(rows[k])})" for k in rows)
            )
        return lines
    lines = [
        "| method | " + " | ".join(f"{k}: gain [95% CI]; capture" for k in keys) + " |",
        "| --- " * (len(keys) + 1) + "|",
        f"| **{head['oracle']}** (headroom) | "
        + " | ".join(f"{_interval(gain[k])} {gain[k]['verdict']}; 100 %" for k in keys)
        + " |",
    ]
    for name, rows in head["methods"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{_interval(rows[k])} {rows[k]['verdict']}; {_capture(rows[k])}"
                if k in rows else "–"
                for k in keys
            )
            + " |"
        )
    return lines


def format_summary(report: Mapping[str, Any]) -> str:
    """Plain-text overall table and verdicts of a benchmark report (what the command prints)."""
    summary = report["summary"]
    methods = summary["methods"]
    main = [v["name"] for v in report["variants"] if not v["sweep"]]
    width = max(len(n) for n in main)
    lines = [
        f"{'method':<{width}}  AUC            mean ES-AUC    mean DPD       mean DEOdds",
    ]
    for n in main:
        t = methods[n]["test"]
        lines.append(
            f"{n:<{width}}  {_pm(t['auc']):<13}  {_pm(t['mean/es_auc']):<13}  "
            f"{_pm(t['mean/dpd']):<13}  {_pm(t['mean/deodds'])}"
        )
    lines.append(f"paired vs {summary['baseline']} ({summary['ci']:.0%} t interval over seeds):")
    for n in main:
        comp = summary["comparisons"].get(n)
        if not comp:
            continue
        parts = []
        for key in ("auc", "mean/es_auc", "mean/deodds"):
            c = comp[key]
            parts.append(
                f"{key} {_signed(c['mean'])} [{_signed(c['low'])}, {_signed(c['high'])}] "
                f"{c['verdict']}"
            )
        lines.append(f"  {n}: " + "; ".join(parts))
    lines += _headroom_lines(report.get("headroom") or {}, markdown=False)
    for sweep in report.get("sweeps", []):
        lines.append(
            f"{sweep['parameter']} sweep of {sweep['config']}: chosen on val = "
            f"{sweep['chosen_on_val']}"
        )
    return "\n".join(lines)
