"""FairnessMetrics vs scikit-learn + fairlearn: the full FairVLMed report on 10^6 scores.

Usage::

    python benchmarks/bench_metrics.py [--n 1000000] [--repeats 3] [--device cpu] [--threads 1]

The reference is the report computed "the usual way" (as the FairCLIP code does it): scikit-learn
``roc_auc_score`` / ``accuracy_score`` overall and per group, the ES formulas and ``np.std`` on
top, and fairlearn ``demographic_parity_difference`` / ``equalized_odds_difference`` per
attribute. The reference runs once (it takes tens of seconds); ours (``FairnessMetrics``:
``update`` + ``compute``, and the functional ``fairness_metrics``) is the best of ``--repeats``.
Prints a table and writes ``benchmarks/results/bench_metrics.json``.

scikit-learn and fairlearn run on one core here, so by default torch gets one thread too
(``--threads 1``): a like-for-like comparison that also stays stable on a shared machine, where
PyTorch's OpenMP threads can be slowed down tenfold by other processes. ``--threads 0`` keeps
torch's default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import accuracy_score, roc_auc_score

from fairvlm_lightning.metrics import FairnessMetrics
from fairvlm_lightning.metrics.functional import fairness_metrics
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS

ATTRIBUTES = ATTRIBUTE_GROUPS


def make_data(n: int, seed: int = 0):
    """float32 scores (model-like, so with ties), labels that depend on score and group."""
    rng = np.random.default_rng(seed)
    groups = {}
    for name, num_groups in ATTRIBUTES.items():
        g = rng.integers(0, num_groups, n)
        g[rng.random(n) < 0.05] = -1  # unknown members
        groups[name] = g
    logit = rng.normal(0.0, 1.5, n) + 0.3 * groups["race"]
    p = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    p = np.round(p, 4).astype(np.float32)  # scores on a 1e-4 grid: many ties
    y = (rng.random(n) < p).astype(np.int64)
    return p, y, groups


def reference_sklearn(p, y, groups, threshold=0.5, alpha=1.0):
    out = {"auc": roc_auc_score(y, p), "acc": accuracy_score(y, p >= threshold)}
    for name, num_groups in ATTRIBUTES.items():
        g = groups[name]
        aucs, accs = [], []
        for k in range(num_groups):
            m = g == k
            aucs.append(roc_auc_score(y[m], p[m]) if len(np.unique(y[m])) == 2 else np.nan)
            accs.append(accuracy_score(y[m], p[m] >= threshold) if m.any() else np.nan)
        aucs, accs = np.array(aucs), np.array(accs)
        da, dc = aucs[~np.isnan(aucs)], accs[~np.isnan(accs)]
        out[f"{name}/es_auc"] = out["auc"] / (1 + alpha * np.abs(da - out["auc"]).sum())
        out[f"{name}/es_acc"] = out["acc"] / (1 + alpha * np.abs(dc - out["acc"]).sum())
        for k in range(num_groups):
            out[f"{name}/auc_group_{k}"] = aucs[k]
        out[f"{name}/auc_std_disparity"] = np.std(da) / out["auc"]
        out[f"{name}/auc_max_disparity"] = (da.max() - da.min()) / out["auc"]
    return out


def reference_fairlearn(p, y, groups, threshold=0.5):
    out = {}
    for name in ATTRIBUTES:
        g = groups[name]
        known = g >= 0
        y_hat = (p[known] >= threshold).astype(np.int64)
        out[f"{name}/dpd"] = demographic_parity_difference(
            y[known], y_hat, sensitive_features=g[known]
        )
        out[f"{name}/deodds"] = equalized_odds_difference(
            y[known], y_hat, sensitive_features=g[known]
        )
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn, repeats: int, device: torch.device):
    best, result = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bench_metrics.json")
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    p, y, groups = make_data(args.n, args.seed)
    preds = torch.from_numpy(p).to(device)
    target = torch.from_numpy(y).to(device)
    tgroups = {k: torch.from_numpy(v).to(device) for k, v in groups.items()}

    warnings.simplefilter("ignore")  # sklearn/fairlearn/ours may warn about undefined groups
    p64 = p.astype(np.float64)
    start = time.perf_counter()
    ref = reference_sklearn(p64, y, groups)
    t_sklearn = time.perf_counter() - start
    start = time.perf_counter()
    ref.update(reference_fairlearn(p64, y, groups))
    t_fairlearn = time.perf_counter() - start

    def run_class():
        metric = FairnessMetrics(ATTRIBUTES).to(device)
        metric.update(preds, target, tgroups)
        return metric.compute()

    def run_functional():
        return fairness_metrics(preds, target, tgroups, ATTRIBUTES)

    run_class()  # warm-up (allocator, lazy imports)
    t_class, ours = best_of(run_class, args.repeats, device)
    t_func, ours_f = best_of(run_functional, args.repeats, device)

    diffs = []
    for key, value in ref.items():
        for got in (ours[key].item(), ours_f[key].item()):
            if np.isnan(value) and np.isnan(got):
                continue
            diffs.append(abs(got - value))
    assert set(ours) == set(ref), sorted(set(ours) ^ set(ref))
    max_abs_diff = float(max(diffs))
    t_ref = t_sklearn + t_fairlearn

    rows = [
        ("scikit-learn part (AUC, acc, ES, disparities)", t_sklearn, None),
        ("fairlearn part (DPD, DEOdds)", t_fairlearn, None),
        ("reference total", t_ref, None),
        (f"FairnessMetrics update+compute (best of {args.repeats})", t_class, t_ref / t_class),
        (f"functional fairness_metrics (best of {args.repeats})", t_func, t_ref / t_func),
    ]
    print(
        f"n={args.n:,} scores, {len(ATTRIBUTES)} attributes {ATTRIBUTES}, device={device}, "
        f"torch threads={torch.get_num_threads()}"
    )
    print(f"{'':58s} {'time [s]':>10s} {'speed-up':>10s}")
    for name, seconds, ratio in rows:
        ratio_text = f"{ratio:9.1f}x" if ratio is not None else ""
        print(f"{name:58s} {seconds:10.4f} {ratio_text:>10s}")
    print(f"{'ours vs scikit-learn part alone':58s} {'':10s} {t_sklearn / t_class:9.1f}x")
    print(f"{'ours vs fairlearn part alone':58s} {'':10s} {t_fairlearn / t_class:9.1f}x")
    print(
        f"largest absolute difference over {len(ref)} values: {max_abs_diff:.3e} "
        f"({'OK' if max_abs_diff <= 1e-6 else 'ABOVE'} 1e-6)"
    )

    result = {
        "n": args.n,
        "attributes": ATTRIBUTES,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "seconds": {
            "sklearn_part": t_sklearn,
            "fairlearn_part": t_fairlearn,
            "reference_total": t_ref,
            "ours_class": t_class,
            "ours_functional": t_func,
        },
        "speedup": {
            "total_vs_class": t_ref / t_class,
            "total_vs_functional": t_ref / t_func,
            "sklearn_part_vs_class": t_sklearn / t_class,
            "fairlearn_part_vs_class": t_fairlearn / t_class,
        },
        "max_abs_diff": max_abs_diff,
        "values": {k: float(v) for k, v in ref.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
