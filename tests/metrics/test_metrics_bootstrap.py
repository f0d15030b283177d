"""Percentile-bootstrap intervals of the fairness report against a NumPy reference resampler."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fairvlm_lightning.metrics import FairnessMetrics
from fairvlm_lightning.metrics.functional import fairness_metrics

ATTRS = {"race": 3, "gender": 2}


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    race = rng.choice([0, 1, 2, -1], size=n, p=[0.1, 0.2, 0.65, 0.05])
    gender = rng.integers(0, 2, size=n)
    target = rng.integers(0, 2, size=n)
    preds = np.clip(0.5 + 0.2 * (target - 0.5) + 0.1 * (race == 1) + rng.normal(0, 0.2, n), 0, 1)
    preds = np.round(preds, 2)  # ties
    return preds, target, {"race": race, "gender": gender}


def _reference(preds, target, groups, bootstrap, ci, seed):
    """Resample in NumPy (one replicate at a time), score each resample with the plain report."""
    matrix = np.stack([groups[a] for a in ATTRS], axis=1)
    _, inverse = np.unique(matrix, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    rng = np.random.default_rng(seed)
    members = {s: np.flatnonzero(inverse == s) for s in np.unique(inverse)}
    slots = np.concatenate([members[s] for s in sorted(members)])
    values: dict[str, list[float]] = {}
    for _ in range(bootstrap):
        u = rng.random(len(preds))
        idx = np.empty(len(preds), dtype=np.int64)
        pos = 0
        for s in sorted(members):
            m = members[s]
            draw = np.minimum(np.floor(u[pos : pos + len(m)] * len(m)).astype(int), len(m) - 1)
            idx[pos : pos + len(m)] = m[draw]
            pos += len(m)
        assert pos == len(slots)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = fairness_metrics(
                torch.from_numpy(preds[idx]),
                torch.from_numpy(target[idx]),
                {a: torch.from_numpy(groups[a][idx]) for a in ATTRS},
                ATTRS,
            )
        for k, v in rep.items():
            values.setdefault(k, []).append(float(v))
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    out = {}
    for k, v in values.items():
        lo, hi = np.nanquantile(np.asarray(v), q)
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = lo, hi
    return out, values


def test_bootstrap_matches_numpy_reference():
    preds, target, groups = _data(400)
    expected, values = _reference(preds, target, groups, bootstrap=60, ci=0.9, seed=7)
    t = {a: torch.from_numpy(v) for a, v in groups.items()}
    got = fairness_metrics(
        torch.from_numpy(preds), torch.from_numpy(target), t, ATTRS, bootstrap=60, ci=0.9, seed=7
    )
    assert set(expected) <= set(got)
    for k, v in expected.items():
        np.testing.assert_allclose(float(got[k]), v, rtol=0, atol=1e-12, err_msg=k)
    # the reference's first replicate AUC is a real AUC (scikit-learn), not our own number
    assert len(values["auc"]) == 60
    # the class and the function agree, in chunks too
    metric = FairnessMetrics(ATTRS, bootstrap=60, ci=0.9, seed=7)
    half = len(preds) // 2
    for sl in (slice(0, half), slice(half, None)):
        metric.update(
            torch.from_numpy(preds[sl]),
            torch.from_numpy(target[sl]),
            {a: torch.from_numpy(v[sl]) for a, v in groups.items()},
        )
    report = metric.compute()
    for k, v in expected.items():
        np.testing.assert_allclose(float(report[k]), v, rtol=0, atol=1e-12, err_msg=k)


def test_bootstrap_resample_auc_equals_sklearn():
    """One replicate's AUC (bootstrap=1, ci ~ 0 → both ends = that value) equals scikit-learn."""
    preds, target, groups = _data(300, seed=3)
    t = {a: torch.from_numpy(v) for a, v in groups.items()}
    got = fairness_metrics(
        torch.from_numpy(preds), torch.from_numpy(target), t, ATTRS, bootstrap=1, seed=5
    )
    matrix = np.stack([groups[a] for a in ATTRS], axis=1)
    _, inverse = np.unique(matrix, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse)[inverse[order]]
    starts = (np.cumsum(np.bincount(inverse)) - np.bincount(inverse))[inverse[order]]
    u = np.random.default_rng(5).random((1, len(preds)))[0]
    idx = order[starts + np.minimum(np.floor(u * sizes).astype(int), sizes - 1)]
    ref = roc_auc_score(target[idx], preds[idx])
    assert float(got["auc_ci_low"]) == pytest.approx(ref, abs=1e-12)
    assert float(got["auc_ci_high"]) == pytest.approx(ref, abs=1e-12)
    white = idx[groups["race"][idx] == 2]
    assert float(got["race/auc_group_2_ci_low"]) == pytest.approx(
        roc_auc_score(target[white], preds[white]), abs=1e-12
    )
    # stratified: every group keeps its size in the resample
    for a in ATTRS:
        assert np.array_equal(np.bincount(groups[a][idx] + 1), np.bincount(groups[a] + 1))


def test_bootstrap_seed_and_bad_arguments():
    preds, target, groups = _data(200)
    args = (torch.from_numpy(preds), torch.from_numpy(target),
            {a: torch.from_numpy(v) for a, v in groups.items()}, ATTRS)
    a = fairness_metrics(*args, bootstrap=30, seed=1)
    b = fairness_metrics(*args, bootstrap=30, seed=1)
    c = fairness_metrics(*args, bootstrap=30, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["auc_ci_low"], c["auc_ci_low"])
    assert "auc_ci_low" not in fairness_metrics(*args)
    with pytest.raises(ValueError, match="bootstrap"):
        FairnessMetrics(ATTRS, bootstrap=-1)
    with pytest.raises(ValueError, match="ci"):
        FairnessMetrics(ATTRS, bootstrap=10, ci=1.5)
    with pytest.raises(TypeError, match="seed"):
        fairness_metrics(*args, bootstrap=10, seed=-3)


def test_bootstrap_is_vectorised():
    """1000 replicates over 10^4 scores well within a second or so (10^5 is the benchmark)."""
    preds, target, groups = _data(10_000)
    args = (torch.from_numpy(preds), torch.from_numpy(target),
            {a: torch.from_numpy(v) for a, v in groups.items()}, ATTRS)
    start = time.perf_counter()
    out = fairness_metrics(*args, bootstrap=1000, seed=0)
    assert time.perf_counter() - start < 30  # loose: catches a per-replicate Python loop
    assert out["auc_ci_low"] < out["auc"] < out["auc_ci_high"]
