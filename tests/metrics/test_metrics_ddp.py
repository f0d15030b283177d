"""Two-process CPU DDP (gloo) results of every metric class equal the single-process references.

One spawn tests all classes: the data are split unevenly between the ranks (rank 1 also gets an
empty batch), and one extra ``FairnessMetrics`` / ``GroupAUROC`` pair is updated on rank 0 only,
so rank 1 syncs states it never filled.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from ddp_utils import run_distributed

from fairvlm_lightning.metrics import (
    DemographicParityDifference,
    EqualizedOddsDifference,
    EquityScaledAccuracy,
    EquityScaledAUROC,
    FairnessMetrics,
    GroupAUROC,
)

ATTRIBUTES = {"race": 3, "gender": 2, "language": 5}


def _worker(rank, world_size, preds, target, groups, rank_slices):
    warnings.simplefilter("ignore", UserWarning)  # undefined groups warn; values are checked
    lo, hi = rank_slices[rank]
    metrics = {
        "group_auroc": GroupAUROC(3),
        "es_auc": EquityScaledAUROC(3),
        "es_acc": EquityScaledAccuracy(3),
        "dpd": DemographicParityDifference(3),
        "deodds": EqualizedOddsDifference(3),
        "report": FairnessMetrics(ATTRIBUTES),
    }
    rank0_only = {"report": FairnessMetrics(ATTRIBUTES), "group_auroc": GroupAUROC(3)}
    cuts = np.linspace(lo, hi, 4).astype(int)  # three uneven-ish batches per rank
    batches = [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    if rank == 1:
        batches.append((hi, hi))  # an empty batch
    for a, b in batches:
        p, y = preds[a:b], target[a:b]
        g = {name: groups[name][a:b] for name in ATTRIBUTES}
        for name, metric in metrics.items():
            metric.update(p, y, g) if name == "report" else metric.update(p, y, g["race"])
        if rank == 0:
            rank0_only["report"].update(p, y, g)
            rank0_only["group_auroc"].update(p, y, g["race"])
    out = {name: metric.compute() for name, metric in metrics.items()}
    out["rank0_only/report"] = rank0_only["report"].compute()
    out["rank0_only/group_auroc"] = rank0_only["group_auroc"].compute()
    return out


def test_two_process_ddp_equals_single_process_references():
    from sklearn.metrics import accuracy_score, roc_auc_score
    from test_metrics import (
        assert_report_close,
        make_case,
        ref_deodds,
        ref_dpd,
        ref_es,
        ref_group_acc,
        ref_group_auc,
        ref_report,
    )

    n = 700
    p, y, race = make_case(n, 3, 11, single_class_group=2)
    rng = np.random.default_rng(12)
    gender = rng.integers(0, 2, n)
    language = rng.integers(0, 5, n)
    language[language == 4] = -1  # group 4 never appears
    language[rng.random(n) < 0.1] = -1
    groups = {"race": race, "gender": gender, "language": language}
    split = 250  # rank 0: 250 samples, rank 1: 450
    results = run_distributed(
        _worker,
        world_size=2,
        preds=torch.tensor(p, dtype=torch.float32),
        target=torch.tensor(y),
        groups={k: torch.tensor(v) for k, v in groups.items()},
        rank_slices=[(0, split), (split, n)],
    )
    p = torch.tensor(p, dtype=torch.float32).double().numpy()
    auc = roc_auc_score(y, p)
    race_aucs = ref_group_auc(p, y, race, 3)
    report = ref_report(p, y, groups, ATTRIBUTES)
    head = slice(0, split)
    report_rank0 = ref_report(p[head], y[head], {k: v[head] for k, v in groups.items()}, ATTRIBUTES)
    for out in results:  # both ranks see the synced values
        np.testing.assert_allclose(out["group_auroc"], race_aucs, atol=1e-9)
        np.testing.assert_allclose(out["es_auc"], ref_es(auc, race_aucs, 1.0), atol=1e-9)
        acc = accuracy_score(y, p >= 0.5)
        np.testing.assert_allclose(
            out["es_acc"], ref_es(acc, ref_group_acc(p, y, race, 3, 0.5), 1.0), atol=1e-9
        )
        np.testing.assert_allclose(out["dpd"], ref_dpd(p, y, race, 0.5), atol=1e-9)
        np.testing.assert_allclose(out["deodds"], ref_deodds(p, y, race, 0.5), atol=1e-9)
        assert_report_close(out["report"], report)
        assert_report_close(out["rank0_only/report"], report_rank0)
        np.testing.assert_allclose(
            out["rank0_only/group_auroc"], ref_group_auc(p[head], y[head], race[head], 3), atol=1e-9
        )
