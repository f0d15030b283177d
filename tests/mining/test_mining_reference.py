"""An independent NumPy (float64) implementation of the DBPM definition in DESIGN.md.

Used by the mining and callback tests as the reference; tested here on a hand-computed case.
"""

from __future__ import annotations

import math

import numpy as np


def reference_dbpm(epochs, num_pairs, *, warmup_epochs=1, beta_noisy=3.0, beta_faulty=3.0):
    """Replay a loss stream through the DBPM definition.

    Args:
        epochs: list over epochs of lists of ``(index, losses)`` array pairs (raw losses).

    Returns:
        list over epochs of dicts with ``history_mean`` (NaN without history), ``count``
        (epochs with history), ``mu``, ``sigma``, ``lo``, ``hi``, ``flags`` (0/1 noisy/2 faulty,
        the flags for the *next* epoch) and ``nonfinite`` (cumulative skipped losses).
    """
    per_pair: list[list[float]] = [[] for _ in range(num_pairs)]
    out = []
    nonfinite = 0
    for e, batches in enumerate(epochs):
        sums: dict[int, float] = {}
        counts: dict[int, int] = {}
        for index, losses in batches:
            values = np.asarray(losses, dtype=np.float64)
            for i, value in zip(np.asarray(index).tolist(), values, strict=True):
                if not math.isfinite(value):
                    nonfinite += 1
                    continue
                sums[i] = sums.get(i, 0.0) + float(value)
                counts[i] = counts.get(i, 0) + 1
        for i, s in sums.items():
            per_pair[i].append(s / counts[i])
        count = np.array([len(h) for h in per_pair])
        mean = np.array([np.mean(h) if h else np.nan for h in per_pair])
        has = count > 0
        mu = float(mean[has].mean()) if has.any() else math.nan
        sigma = float(mean[has].std()) if has.any() else math.nan  # population std
        lo, hi = mu - beta_noisy * sigma, mu + beta_faulty * sigma
        flags = np.zeros(num_pairs, dtype=np.int64)
        if e + 1 >= max(warmup_epochs, 1) and has.any():
            flags[has & (mean < lo)] = 1
            flags[has & (mean > hi)] = 2
        out.append(
            {
                "history_mean": mean,
                "count": count,
                "mu": mu,
                "sigma": sigma,
                "lo": lo,
                "hi": hi,
                "flags": flags,
                "nonfinite": nonfinite,
            }
        )
    return out


def test_reference_on_hand_computed_case():
    # pair 0: epoch losses 1, 3 -> mean 2; pair 1: 2, 2 (seen twice in epoch 1: 1 and 3);
    # pair 2: 8 only in epoch 0; pair 3 never seen.
    epochs = [
        [(np.array([0, 1, 2]), np.array([1.0, 2.0, 8.0]))],
        [(np.array([0, 1]), np.array([3.0, 1.0])), (np.array([1]), np.array([3.0]))],
    ]
    ref = reference_dbpm(epochs, 4, beta_noisy=1.0, beta_faulty=1.0)
    last = ref[-1]
    np.testing.assert_allclose(last["history_mean"][:3], [2.0, 2.0, 8.0])
    assert math.isnan(last["history_mean"][3])
    assert last["count"].tolist() == [2, 2, 1, 0]
    assert last["mu"] == 4.0
    assert math.isclose(last["sigma"], math.sqrt(8.0))  # deviations -2, -2, 4
    assert last["flags"].tolist() == [0, 0, 2, 0]  # 8 > 4 + 2.83; 2 > 4 - 2.83
