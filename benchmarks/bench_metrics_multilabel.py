"""Multi-label FairnessMetrics vs per-label scikit-learn + fairlearn, side by side in one run.

Usage::

    python benchmarks/bench_metrics_multilabel.py [--n 1000000] [--labels 14]
        [--reference-labels 14] [--repeats 3] [--device cpu] [--threads 1]

Data: ``--n`` samples x ``--labels`` findings (chest-X-ray-like prevalences 2-40 %, float32
scores on a 1e-4 grid, so with ties), the four FairVLMed attributes (5 % unknown members) and
the intersection ``race*gender``. Ours: ``FairnessMetrics(task="multilabel",
intersections=[("race", "gender")])`` (``update`` + ``compute``) and the functional
``fairness_metrics``, best of ``--repeats``.

The reference is the report computed "the usual way", label by label: scikit-learn
``roc_auc_score`` overall and within every group of every attribute and of the intersection,
thresholded accuracy, and fairlearn ``demographic_parity_difference`` /
``equalized_odds_difference`` per label and attribute; then the macro averages and ES formulas.
Its cost is the same for every label (same n, same groups), so ``--reference-labels k < L``
times it on the first ``k`` labels and scales by ``L / k`` (printed as such; the values of
those ``k`` labels and of the per-label keys are still compared). fairlearn takes seconds per
call at 10^6 samples, so the full reference (``L x 5 x 2`` fairlearn calls) runs for many
minutes. Writes ``benchmarks/results/bench_metrics_multilabel.json``.
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
from sklearn.metrics import roc_auc_score

from fairvlm_lightning.metrics import FairnessMetrics
from fairvlm_lightning.metrics.functional import fairness_metrics
from fairvlm_lightning.metrics.groups import add_intersection_groups, expand_attributes
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS

ATTRIBUTES = ATTRIBUTE_GROUPS
INTERSECTIONS = [("race", "gender")]


def make_data(n: int, labels: int, seed: int = 0):
    """float32 label scores on a 1e-4 grid, multi-hot labels, groups with 5 % unknown."""
    rng = np.random.default_rng(seed)
    groups = {}
    for name, num_groups in ATTRIBUTES.items():
        g = rng.integers(0, num_groups, n)
        g[rng.random(n) < 0.05] = -1
        groups[name] = g
    prevalence = np.linspace(0.02, 0.4, labels)
    logit = rng.normal(0.0, 1.0, (n, labels)) + np.log(prevalence / (1 - prevalence))
    logit += 0.2 * groups["race"][:, None]
    p = 1.0 / (1.0 + np.exp(-logit))
    y = (rng.random((n, labels)) < p).astype(np.int64)
    scores = np.round(np.clip(p + rng.normal(0, 0.15, p.shape), 0, 1), 4).astype(np.float32)
    return scores, y, groups


def reference_label(p, y, groups, attributes, threshold=0.5):
    """scikit-learn + fairlearn for one label: (sklearn seconds, fairlearn seconds, values)."""
    start = time.perf_counter()
    out = {"auc": roc_auc_score(y, p), "acc": float(np.mean((p >= threshold) == (y == 1)))}
    for name, num_groups in attributes.items():
        g = groups[name]
        for k in range(num_groups):
            m = g == k
            out[f"{name}/auc_group_{k}"] = (
                roc_auc_score(y[m], p[m]) if len(np.unique(y[m])) == 2 else np.nan
            )
            out[f"{name}/acc_group_{k}"] = (
                float(np.mean((p[m] >= threshold) == (y[m] == 1))) if m.any() else np.nan
            )
    t_sklearn = time.perf_counter() - start
    start = time.perf_counter()
    for name in attributes:
        g = groups[name]
        known = g >= 0
        y_hat = (p[known] >= threshold).astype(np.int64)
        out[f"{name}/dpd"] = demographic_parity_difference(
            y[known], y_hat, sensitive_features=g[known]
        )
        out[f"{name}/deodds"] = equalized_odds_difference(
            y[known], y_hat, sensitive_features=g[known]
        )
    return t_sklearn, time.perf_counter() - start, out


def reference_report(per_label, attributes, alpha=1.0):
    """Macro averages and ES formulas over the per-label reference values."""
    labels = len(per_label)
    auc = np.nanmean([r["auc"] for r in per_label])
    acc = np.mean([r["acc"] for r in per_label])
    out = {"auc": auc, "acc": acc}
    out.update({f"auc_label_{k}": r["auc"] for k, r in enumerate(per_label)})
    for name, num_groups in attributes.items():
        per = np.array(
            [[r[f"{name}/auc_group_{g}"] for g in range(num_groups)] for r in per_label]
        )
        group_auc = np.array(
            [np.nanmean(per[:, g]) if (~np.isnan(per[:, g])).any() else np.nan
             for g in range(num_groups)]
        )
        group_acc = np.mean(
            [[r[f"{name}/acc_group_{g}"] for g in range(num_groups)] for r in per_label], axis=0
        )
        defined = group_auc[~np.isnan(group_auc)]
        out[f"{name}/es_auc"] = auc / (1 + alpha * np.abs(defined - auc).sum())
        out[f"{name}/es_acc"] = acc / (1 + alpha * np.abs(group_acc - acc).sum())
        for g in range(num_groups):
            out[f"{name}/auc_group_{g}"] = group_auc[g]
        out[f"{name}/dpd"] = max(r[f"{name}/dpd"] for r in per_label)
        out[f"{name}/deodds"] = max(r[f"{name}/deodds"] for r in per_label)
        for k in range(labels):
            out[f"{name}/dpd_label_{k}"] = per_label[k][f"{name}/dpd"]
            out[f"{name}/deodds_label_{k}"] = per_label[k][f"{name}/deodds"]
            for g in range(num_groups):
                out[f"{name}/auc_group_{g}_label_{k}"] = per[k, g]
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
    parser.add_argument("--labels", type=int, default=14)
    parser.add_argument(
        "--reference-labels", type=int, default=None,
        help="labels the reference runs on (default: all); its time is scaled to all labels",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bench_metrics_multilabel.json")
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    labels = args.labels
    ref_labels = labels if args.reference_labels is None else min(args.reference_labels, labels)
    attributes = expand_attributes(ATTRIBUTES, INTERSECTIONS)

    p, y, groups = make_data(args.n, labels, args.seed)
    preds = torch.from_numpy(p).to(device)
    target = torch.from_numpy(y).to(device)
    tgroups = {k: torch.from_numpy(v).to(device) for k, v in groups.items()}
    all_groups = {
        k: v.numpy()
        for k, v in add_intersection_groups(
            {k: torch.from_numpy(v) for k, v in groups.items()}, ATTRIBUTES, INTERSECTIONS
        ).items()
    }

    warnings.simplefilter("ignore")  # undefined groups warn in every library
    kw = {"task": "multilabel", "num_labels": labels, "intersections": INTERSECTIONS}

    def run_class():
        metric = FairnessMetrics(ATTRIBUTES, **kw).to(device)
        metric.update(preds, target, tgroups)
        return metric.compute()

    def run_functional():
        return fairness_metrics(preds, target, tgroups, ATTRIBUTES, **kw)

    run_class()  # warm-up (allocator, lazy imports)
    t_class, ours = best_of(run_class, args.repeats, device)
    t_func, ours_f = best_of(run_functional, args.repeats, device)

    p64 = p.astype(np.float64)
    per_label, t_sklearn, t_fairlearn = [], 0.0, 0.0
    for k in range(ref_labels):
        ts, tf, values = reference_label(p64[:, k], y[:, k], all_groups, attributes)
        t_sklearn += ts
        t_fairlearn += tf
        per_label.append(values)
    scale = labels / ref_labels
    t_ref = (t_sklearn + t_fairlearn) * scale

    diffs = []
    if ref_labels == labels:
        expected = reference_report(per_label, attributes)
    else:  # the keys of the labels the reference computed
        expected = {f"auc_label_{k}": r["auc"] for k, r in enumerate(per_label)}
        for name in attributes:
            for k, r in enumerate(per_label):
                expected[f"{name}/dpd_label_{k}"] = r[f"{name}/dpd"]
                expected[f"{name}/deodds_label_{k}"] = r[f"{name}/deodds"]
                for g in range(attributes[name]):
                    expected[f"{name}/auc_group_{g}_label_{k}"] = r[f"{name}/auc_group_{g}"]
    for key, value in expected.items():
        for got in (ours[key].item(), ours_f[key].item()):
            if not (np.isnan(value) and np.isnan(got)):
                diffs.append(abs(got - value))
    max_abs_diff = float(max(diffs))

    scaled = "" if ref_labels == labels else f" (x{scale:.1f}: timed on {ref_labels} labels)"
    rows = [
        (f"scikit-learn part{scaled}", t_sklearn * scale, None),
        (f"fairlearn part{scaled}", t_fairlearn * scale, None),
        ("reference total", t_ref, None),
        (f"FairnessMetrics update+compute (best of {args.repeats})", t_class, t_ref / t_class),
        (f"functional fairness_metrics (best of {args.repeats})", t_func, t_ref / t_func),
    ]
    print(
        f"n={args.n:,} x {labels} labels, attributes {attributes}, device={device}, "
        f"torch threads={torch.get_num_threads()}, {len(ours)} report keys"
    )
    print(f"{'':68s} {'time [s]':>10s} {'speed-up':>10s}")
    for name, seconds, ratio in rows:
        ratio_text = f"{ratio:9.1f}x" if ratio is not None else ""
        print(f"{name:68s} {seconds:10.3f} {ratio_text:>10s}")
    print(f"{'ours (class) vs the scikit-learn part alone':68s} {'':10s} "
          f"{t_sklearn * scale / t_class:9.1f}x")
    print(
        f"largest absolute difference over {len(expected)} values: {max_abs_diff:.3e} "
        f"({'OK' if max_abs_diff <= 1e-6 else 'ABOVE'} 1e-6)"
    )
    result = {
        "n": args.n,
        "labels": labels,
        "reference_labels": ref_labels,
        "attributes": attributes,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "seconds": {
            "sklearn_part": t_sklearn * scale,
            "fairlearn_part": t_fairlearn * scale,
            "reference_total": t_ref,
            "reference_measured": t_sklearn + t_fairlearn,
            "ours_class": t_class,
            "ours_functional": t_func,
        },
        "speedup": {
            "total_vs_class": t_ref / t_class,
            "total_vs_functional": t_ref / t_func,
            "sklearn_part_vs_class": t_sklearn * scale / t_class,
        },
        "max_abs_diff": max_abs_diff,
        "values_compared": len(expected),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
