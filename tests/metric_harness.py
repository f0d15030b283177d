"""A small torchmetrics-style tester: one set of checks for every metric class.

The idea of torchmetrics' ``MetricTester`` (``tests/unittests/_helpers/testers.py``), at the size
this project needs. For a metric class, its functional twin and an independent reference
(scikit-learn / fairlearn, from ``test_metrics``):

* :func:`check_batches`: the class (after a pickle round trip) updated over several uneven
  batches (one of them empty) equals the functional form on the concatenation, and both equal
  the reference; ``forward`` returns the batch's own value; a clone keeps the value, ``reset``
  forgets it, the ``state_dict`` stays empty; all for an input dtype (float64, float32, float16,
  bfloat16 -- the reference sees the same rounded scores).
* :func:`check_distributed`: every case in one 2-process gloo spawn, uneven shards (one rank
  with an empty batch), equals one process and the reference, on both ranks; and a second copy
  of each metric filled on rank 0 only (rank 1 syncs states it never filled) equals the
  reference on rank 0's data.

A case is a :class:`MetricCase` in :data:`CASES`, looked up by name in the spawned workers. Every
class has a binary case and, named ``Class[multiclass]`` / ``Class[multilabel]``, a case of each
multi-column task, whose reference is the closed form (rank-sum AUC per column, fairlearn's rates
per column) in NumPy.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ddp_utils import run_distributed
from test_metrics import (
    make_case,
    ref_deodds,
    ref_dpd,
    ref_es,
    ref_group_acc,
    ref_group_auc,
    ref_report,
    second_attribute,
)
from torchmetrics import Metric

from fairvlm_lightning.metrics import (
    DemographicParityDifference,
    EqualizedOddsDifference,
    EquityScaledAccuracy,
    EquityScaledAUROC,
    FairnessMetrics,
    GroupAUROC,
)
from fairvlm_lightning.metrics import functional as FM

NUM_GROUPS = 4  # race-like attribute of the single-attribute metrics
ATTRIBUTES = {"race": NUM_GROUPS, "gender": 3}
ATOL = 1e-9
Groups = dict[str, np.ndarray]


@dataclass(frozen=True)
class MetricCase:
    """A metric class with its functional twin and an independent reference.

    ``metric()`` builds the class; ``functional(preds, target, groups)`` and
    ``reference(p, y, groups)`` take all attributes (``groups`` a dict) and pick what they need.
    """

    metric: Callable[[], Metric]
    functional: Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], Any]
    reference: Callable[[np.ndarray, np.ndarray, Groups], Any]
    all_attributes: bool = False  # update(preds, target, groups dict) instead of one attribute
    task: str = "binary"


def _sklearn_es_auc(p: np.ndarray, y: np.ndarray, g: Groups) -> float:
    from sklearn.metrics import roc_auc_score

    return ref_es(roc_auc_score(y, p), ref_group_auc(p, y, g["race"], NUM_GROUPS), 1.0)


def _sklearn_es_acc(p: np.ndarray, y: np.ndarray, g: Groups) -> float:
    from sklearn.metrics import accuracy_score

    acc = accuracy_score(y, p >= 0.5)
    return ref_es(acc, ref_group_acc(p, y, g["race"], NUM_GROUPS, 0.5), 1.0)


CASES: dict[str, MetricCase] = {
    "GroupAUROC": MetricCase(
        lambda: GroupAUROC(NUM_GROUPS),
        lambda p, y, g: FM.group_auroc(p, y, g["race"], NUM_GROUPS),
        lambda p, y, g: ref_group_auc(p, y, g["race"], NUM_GROUPS),
    ),
    "EquityScaledAUROC": MetricCase(
        lambda: EquityScaledAUROC(NUM_GROUPS),
        lambda p, y, g: FM.equity_scaled_auroc(p, y, g["race"], NUM_GROUPS),
        _sklearn_es_auc,
    ),
    "EquityScaledAccuracy": MetricCase(
        lambda: EquityScaledAccuracy(NUM_GROUPS),
        lambda p, y, g: FM.equity_scaled_accuracy(p, y, g["race"], NUM_GROUPS),
        _sklearn_es_acc,
    ),
    "DemographicParityDifference": MetricCase(
        lambda: DemographicParityDifference(NUM_GROUPS),
        lambda p, y, g: FM.demographic_parity_difference(p, y, g["race"], NUM_GROUPS),
        lambda p, y, g: ref_dpd(p, y, g["race"], 0.5),
    ),
    "EqualizedOddsDifference": MetricCase(
        lambda: EqualizedOddsDifference(NUM_GROUPS),
        lambda p, y, g: FM.equalized_odds_difference(p, y, g["race"], NUM_GROUPS),
        lambda p, y, g: ref_deodds(p, y, g["race"], 0.5),
    ),
    "FairnessMetrics": MetricCase(
        lambda: FairnessMetrics(ATTRIBUTES),
        lambda p, y, g: FM.fairness_metrics(p, y, g, ATTRIBUTES),
        lambda p, y, g: ref_report(p, y, g, ATTRIBUTES),
        all_attributes=True,
    ),
}

NUM_COLUMNS = 3  # classes of the multi-class cases, labels of the multi-label cases


def _rank_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUC from mid-ranks (ties count one half), NaN with one class only."""
    from scipy.stats import rankdata

    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    return float((rankdata(p)[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _mean_defined(values: np.ndarray, axis: int) -> np.ndarray:
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis)
    count = defined.sum(axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _max_defined(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.max()) if defined.size else float("nan")


def _multi_columns(p: np.ndarray, y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    if task == "multiclass":
        eye = np.eye(p.shape[1], dtype=np.int64)
        return eye[y], eye[p.argmax(1)].astype(bool)
    return y.astype(np.int64), p >= 0.5


def _multi_acc(y: np.ndarray, p: np.ndarray, task: str) -> float:
    if len(y) == 0:
        return float("nan")
    if task == "multiclass":
        return float((p.argmax(1) == y).mean())
    return float(((p >= 0.5) == (y == 1)).mean())


def _parity_column(y: np.ndarray, y_hat: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """fairlearn's DPD and DEOdds of one column in closed form (undefined rate = 0)."""
    present = [k for k in np.unique(g) if k >= 0]
    if not present:
        return float("nan"), float("nan")
    rate, tpr, fpr = [], [], []
    for k in present:
        m = g == k
        rate.append(y_hat[m].mean())
        pos, neg = m & (y == 1), m & (y == 0)
        tpr.append(y_hat[pos].mean() if pos.any() else 0.0)
        fpr.append(y_hat[neg].mean() if neg.any() else 0.0)
    return float(np.ptp(rate)), float(max(np.ptp(tpr), np.ptp(fpr)))


def ref_multi_report(
    p: np.ndarray, y: np.ndarray, groups: Groups, attributes: Mapping[str, int], task: str
) -> dict[str, float]:
    """The multi-column report in NumPy: every key, in the report's order."""
    word = "class" if task == "multiclass" else "label"
    ycol, decided = _multi_columns(p, y, task)
    k = p.shape[1]
    column_auc = np.array([_rank_auc(ycol[:, c], p[:, c]) for c in range(k)])
    auc = float(_mean_defined(column_auc, 0))
    acc = _multi_acc(y, p, task)
    out = {"auc": auc, "acc": acc, **{f"auc_{word}_{c}": column_auc[c] for c in range(k)}}
    for name, num_groups in attributes.items():
        g = groups[name]
        per = np.array(
            [[_rank_auc(ycol[g == j, c], p[g == j, c]) for j in range(num_groups)]
             for c in range(k)]
        )
        group_auc = _mean_defined(per, 0)
        group_acc = np.array([_multi_acc(y[g == j], p[g == j], task) for j in range(num_groups)])
        out[f"{name}/es_auc"] = ref_es(auc, group_auc, 1.0)
        out[f"{name}/es_acc"] = ref_es(acc, group_acc, 1.0)
        for j in range(num_groups):
            out[f"{name}/auc_group_{j}"] = group_auc[j]
        parity = np.array([_parity_column(ycol[:, c], decided[:, c], g) for c in range(k)])
        out[f"{name}/dpd"] = _max_defined(parity[:, 0])
        out[f"{name}/deodds"] = _max_defined(parity[:, 1])
        defined = group_auc[~np.isnan(group_auc)]
        out[f"{name}/auc_std_disparity"] = np.std(defined) / auc
        out[f"{name}/auc_max_disparity"] = (defined.max() - defined.min()) / auc
        for c in range(k):
            out[f"{name}/es_auc_{word}_{c}"] = ref_es(column_auc[c], per[c], 1.0)
            for j in range(num_groups):
                out[f"{name}/auc_group_{j}_{word}_{c}"] = per[c, j]
            out[f"{name}/dpd_{word}_{c}"] = parity[c, 0]
            out[f"{name}/deodds_{word}_{c}"] = parity[c, 1]
    return out


def _multi_cases(task: str) -> dict[str, MetricCase]:
    kw: dict[str, Any] = (
        {"task": task, "num_classes": NUM_COLUMNS}
        if task == "multiclass"
        else {"task": task, "num_labels": NUM_COLUMNS}
    )
    race = {"race": NUM_GROUPS}

    def report(key: str) -> Callable[[np.ndarray, np.ndarray, Groups], Any]:
        def ref(p: np.ndarray, y: np.ndarray, g: Groups) -> Any:
            out = ref_multi_report(p, y, {"race": g["race"]}, race, task)
            if key == "groups":
                return np.array([out[f"race/auc_group_{j}"] for j in range(NUM_GROUPS)])
            return out[f"race/{key}"]

        return ref

    classes: list[tuple[Callable[..., Metric], Callable[..., Any], str]] = [
        (GroupAUROC, FM.group_auroc, "groups"),
        (EquityScaledAUROC, FM.equity_scaled_auroc, "es_auc"),
        (EquityScaledAccuracy, FM.equity_scaled_accuracy, "es_acc"),
        (DemographicParityDifference, FM.demographic_parity_difference, "dpd"),
        (EqualizedOddsDifference, FM.equalized_odds_difference, "deodds"),
    ]
    out = {
        f"{cls.__name__}[{task}]": MetricCase(
            lambda cls=cls: cls(NUM_GROUPS, **kw),
            lambda p, y, g, fn=fn: fn(p, y, g["race"], NUM_GROUPS, **kw),
            report(key),
            task=task,
        )
        for cls, fn, key in classes
    }
    out[f"FairnessMetrics[{task}]"] = MetricCase(
        lambda: FairnessMetrics(ATTRIBUTES, **kw),
        lambda p, y, g: FM.fairness_metrics(p, y, g, ATTRIBUTES, **kw),
        lambda p, y, g: ref_multi_report(p, y, g, ATTRIBUTES, task),
        all_attributes=True,
        task=task,
    )
    return out


CASES.update(_multi_cases("multiclass"))
CASES.update(_multi_cases("multilabel"))

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def make_data(
    n: int = 240, seed: int = 3, task: str = "binary"
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Scores with ties, a group with one class only, ~10% unknown members (``-1``).

    Half of the scores are moved by less than float32 resolves (1e-9): in float64 they break
    the ties of the two-decimal scores, so a metric that kept float64 inputs in lower precision
    would differ from the reference. Multi-column tasks get ``(n, 3)`` scores built the same way
    per column (the binary labels of column 0 give the class ids or the first label); group 2
    of race holds one class only in the first column."""
    p, y, race = make_case(n, NUM_GROUPS, seed, single_class_group=2)
    rng = np.random.default_rng(seed)
    groups = {"race": torch.tensor(race), "gender": torch.tensor(second_attribute(n, seed))}
    if task != "binary":
        extra = np.round(rng.random((n, NUM_COLUMNS - 1)), 2)
        p = np.concatenate([p[:, None], extra], axis=1)
        if task == "multiclass":
            y = np.where(y == 1, 0, 1 + (extra[:, 0] > 0.5)).astype(np.int64)
            y[race == 2] = 0
        else:
            y = np.concatenate([y[:, None], (rng.random((n, NUM_COLUMNS - 1)) < extra)], 1)
            y = y.astype(np.int64)
    p[::2] += rng.uniform(-1e-9, 1e-9, p[::2].shape)
    p = np.clip(p, 0.0, 1.0)
    return torch.tensor(p, dtype=torch.float64), torch.tensor(y), groups


def _call(case: MetricCase, fn: Callable[..., Any], p: torch.Tensor, y: torch.Tensor, g: dict):
    """``fn`` (``update`` / ``forward`` of the class) with the groups the class takes."""
    return fn(p, y, g) if case.all_attributes else fn(p, y, g["race"])


def assert_values_close(ours: Any, ref: Any, what: str, atol: float = ATOL) -> None:
    """Tensors, arrays or floats (NaN equals NaN), or dicts of them with the same keys."""
    if isinstance(ref, Mapping):
        assert isinstance(ours, Mapping) and list(ours) == list(ref), what
        for key in ref:
            assert_values_close(ours[key], ref[key], f"{what}[{key}]", atol)
        return
    got = ours.detach().double().cpu().numpy() if isinstance(ours, torch.Tensor) else ours
    np.testing.assert_allclose(got, np.asarray(ref, dtype=float), atol=atol, rtol=0, err_msg=what)


def _batches(n: int) -> list[slice]:
    cuts = [0, 1, 37, 37, 120, n]  # uneven, with a one-sample and an empty batch
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def check_batches(name: str, dtype: torch.dtype) -> None:
    """Class over batches == functional on the concatenation == reference; forward per batch."""
    case = CASES[name]
    p, y, groups = make_data(task=case.task)
    p = p.to(dtype)
    p_np = p.double().numpy()  # the reference sees the scores as rounded to dtype
    g_np = {k: v.numpy() for k, v in groups.items()}
    metric = pickle.loads(pickle.dumps(case.metric()))  # works after a pickle round trip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # undefined groups warn; values are checked
        for s in _batches(len(p)):
            batch = {k: v[s] for k, v in groups.items()}
            if s.stop - s.start > 30:  # forward: the batch's own value, state accumulated
                value = _call(case, metric, p[s], y[s], batch)
                ref = case.reference(p_np[s], y[s].numpy(), {k: v[s] for k, v in g_np.items()})
                assert_values_close(value, ref, f"{name} forward on batch {s}")
            else:
                _call(case, metric.update, p[s], y[s], batch)
        accumulated = metric.compute()
        functional = case.functional(p, y, groups)
        reference = case.reference(p_np, y.numpy(), g_np)
        assert metric.state_dict() == {}  # states are not saved in checkpoints by default
        clone = metric.clone()
        metric.reset()  # a reset metric forgets everything: the last batch alone
        last = _batches(len(p))[-1]
        _call(case, metric.update, p[last], y[last], {k: v[last] for k, v in groups.items()})
        reference_last = case.reference(
            p_np[last], y[last].numpy(), {k: v[last] for k, v in g_np.items()}
        )
        assert_values_close(metric.compute(), reference_last, f"{name} after reset")
        assert_values_close(clone.compute(), reference, f"{name}: clone")
    assert_values_close(accumulated, functional, f"{name}: class vs functional ({dtype})")
    assert_values_close(functional, reference, f"{name}: functional vs reference ({dtype})")


def _worker(rank: int, world_size: int, names: list[str], split: int) -> dict[str, Any]:
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name in names:
            case = CASES[name]
            p, y, groups = make_data(task=case.task)
            lo, hi = (0, split) if rank == 0 else (split, len(p))
            cuts = [lo, (lo + hi) // 3, hi] + ([hi] if rank == 1 else [])  # rank 1: empty batch
            metric = case.metric()
            for a, b in zip(cuts[:-1], cuts[1:], strict=True):
                batch = {k: v[a:b] for k, v in groups.items()}
                _call(case, metric.update, p[a:b], y[a:b], batch)
            out[name] = metric.compute()
            only = case.metric()  # rank 1 never updates: it syncs empty states
            if rank == 0:
                _call(
                    case, only.update, p[lo:hi], y[lo:hi], {k: v[lo:hi] for k, v in groups.items()}
                )
            out[f"{name}/rank0_only"] = only.compute()
    return out


def check_distributed(names: list[str], world_size: int = 2, split: int = 90) -> None:
    """All ``names`` in one spawn: each rank's synced value == one process == the reference."""
    results = run_distributed(_worker, world_size=world_size, names=names, split=split)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name in names:
            case = CASES[name]
            p, y, groups = make_data(task=case.task)
            g_np = {k: v.numpy() for k, v in groups.items()}
            single = case.metric()
            _call(case, single.update, p, y, groups)
            one_process = single.compute()
            reference = case.reference(p.numpy(), y.numpy(), g_np)
            assert_values_close(one_process, reference, f"{name}: 1 process vs reference")
            head = {k: v[:split] for k, v in g_np.items()}
            reference_head = case.reference(p.numpy()[:split], y.numpy()[:split], head)
            for rank, out in enumerate(results):
                assert_values_close(out[name], one_process, f"{name}: rank {rank} vs 1 process")
                assert_values_close(
                    out[f"{name}/rank0_only"], reference_head, f"{name}: rank 0's data only"
                )
