"""Bootstrap intervals of the full report: vectorised vs one report per resample (NumPy loop).

Usage::

    python benchmarks/bench_bootstrap.py [--n 100000] [--bootstrap 1000] [--loop 20] [--threads 1]

Ours: ``fairness_metrics(..., bootstrap=B)`` (stratified resampling, all replicates from
multiplicities on one sort). Reference: the same stratified NumPy resampler, then the plain
report on each resampled copy, timed for ``--loop`` replicates and extrapolated to ``B``.
Prints a table and writes ``benchmarks/results/bench_bootstrap.json``. Single-threaded by
default, so the ratio stays meaningful on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fairvlm_lightning.metrics.functional import fairness_metrics
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS

ATTRIBUTES = ATTRIBUTE_GROUPS


def data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, n)
    race = rng.choice([0, 1, 2], n, p=[0.08, 0.15, 0.77])
    preds = np.clip(0.5 + 0.15 * (target - 0.5) + 0.05 * (race == 2) + rng.normal(0, 0.2, n), 0, 1)
    groups = {
        "race": race,
        "gender": rng.integers(0, 2, n),
        "ethnicity": rng.choice([0, 1, -1], n, p=[0.88, 0.07, 0.05]),
        "language": rng.choice([0, 1, 2, -1], n, p=[0.85, 0.05, 0.05, 0.05]),
    }
    return preds, target, groups


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--loop", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    preds, target, groups = data(args.n)
    tp, tt = torch.from_numpy(preds), torch.from_numpy(target)
    tg = {a: torch.from_numpy(v) for a, v in groups.items()}

    start = time.perf_counter()
    ours = fairness_metrics(tp, tt, tg, ATTRIBUTES, bootstrap=args.bootstrap, seed=0)
    t_ours = time.perf_counter() - start

    matrix = np.stack([groups[a] for a in ATTRIBUTES], axis=1)
    _, inverse = np.unique(matrix, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    members = [np.flatnonzero(inverse == s) for s in range(inverse.max() + 1)]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(args.loop):
        u = rng.random(args.n)
        idx, pos = np.empty(args.n, dtype=np.int64), 0
        for m in members:
            idx[pos : pos + len(m)] = m[np.minimum((u[pos : pos + len(m)] * len(m)).astype(int),
                                                   len(m) - 1)]
            pos += len(m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fairness_metrics(tp[idx], tt[idx], {a: v[idx] for a, v in tg.items()}, ATTRIBUTES)
    t_loop = (time.perf_counter() - start) / args.loop * args.bootstrap

    rows = {
        "n": args.n,
        "bootstrap": args.bootstrap,
        "threads": torch.get_num_threads(),
        "vectorised_s": t_ours,
        "loop_s_extrapolated": t_loop,
        "speedup": t_loop / t_ours,
        "auc": float(ours["auc"]),
        "auc_ci": [float(ours["auc_ci_low"]), float(ours["auc_ci_high"])],
        "machine": platform.processor() or platform.machine(),
    }
    print(f"{'method':<34} {'seconds':>9}")
    print(f"{'vectorised (ours)':<34} {t_ours:9.2f}")
    print(f"{'loop of reports (extrapolated)':<34} {t_loop:9.2f}")
    print(f"speed-up {rows['speedup']:.1f}x; AUC {rows['auc']:.4f} "
          f"[{rows['auc_ci'][0]:.4f}, {rows['auc_ci'][1]:.4f}]")
    out = Path(__file__).parent / "results" / "bench_bootstrap.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
