"""Fairness metrics against scikit-learn, fairlearn and the closed-form ES formulas.

The references never use this package: AUC/accuracy come from scikit-learn, DPD/DEOdds from
fairlearn with ``sensitive_features``, ES-AUC/ES-Acc and the AUC disparities from their formulas
(FairCLIP reference code) applied to the scikit-learn values.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference as fl_dpd
from fairlearn.metrics import equalized_odds_difference as fl_deodds
from sklearn.metrics import accuracy_score, roc_auc_score
from torchmetrics.utilities.data import dim_zero_cat, dim_zero_sum

from fairvlm_lightning.metrics import (
    DemographicParityDifference,
    EqualizedOddsDifference,
    EquityScaledAccuracy,
    EquityScaledAUROC,
    FairnessMetrics,
    GroupAUROC,
)
from fairvlm_lightning.metrics.functional import (
    binary_auroc,
    demographic_parity_difference,
    equalized_odds_difference,
    equity_scaled_accuracy,
    equity_scaled_auroc,
    fairness_metrics,
    group_auroc,
)

ATOL = 1e-9


# ------------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------------
def ref_group_auc(p, y, g, num_groups):
    out = []
    for k in range(num_groups):
        m = g == k
        out.append(roc_auc_score(y[m], p[m]) if len(np.unique(y[m])) == 2 else np.nan)
    return np.array(out)


def ref_group_acc(p, y, g, num_groups, threshold):
    return np.array(
        [
            accuracy_score(y[g == k], p[g == k] >= threshold) if (g == k).any() else np.nan
            for k in range(num_groups)
        ]
    )


def ref_es(overall, per_group, alpha):
    defined = per_group[~np.isnan(per_group)]
    return overall / (1 + alpha * np.abs(defined - overall).sum())


def ref_dpd(p, y, g, threshold):
    known = g >= 0
    y_hat = (p[known] >= threshold).astype(int)
    return fl_dpd(y[known], y_hat, sensitive_features=g[known])


def ref_deodds(p, y, g, threshold):
    known = g >= 0
    y_hat = (p[known] >= threshold).astype(int)
    return fl_deodds(y[known], y_hat, sensitive_features=g[known])


def ref_report(p, y, groups, attributes, threshold=0.5, alpha=1.0):
    """The report computed "the usual way"; ``groups`` use -1 for unknown members."""
    auc = roc_auc_score(y, p)
    acc = accuracy_score(y, p >= threshold)
    out = {"auc": auc, "acc": acc}
    for name, num_groups in attributes.items():
        g = groups[name]
        aucs = ref_group_auc(p, y, g, num_groups)
        accs = ref_group_acc(p, y, g, num_groups, threshold)
        out[f"{name}/es_auc"] = ref_es(auc, aucs, alpha)
        out[f"{name}/es_acc"] = ref_es(acc, accs, alpha)
        for k in range(num_groups):
            out[f"{name}/auc_group_{k}"] = aucs[k]
        out[f"{name}/dpd"] = ref_dpd(p, y, g, threshold)
        out[f"{name}/deodds"] = ref_deodds(p, y, g, threshold)
        defined = aucs[~np.isnan(aucs)]
        out[f"{name}/auc_std_disparity"] = np.std(defined) / auc
        out[f"{name}/auc_max_disparity"] = (defined.max() - defined.min()) / auc
    return out


def assert_report_close(ours, ref, atol=ATOL):
    assert list(ours) == list(ref)
    for key, value in ref.items():
        got = ours[key]
        assert isinstance(got, torch.Tensor) and got.ndim == 0, key
        np.testing.assert_allclose(got.item(), value, atol=atol, rtol=0, err_msg=key)


# ------------------------------------------------------------------------------------------------
# random cases
# ------------------------------------------------------------------------------------------------
SCENARIOS = {
    # name: (n, num_groups, seed, extras)
    "2groups_ties_unknown": (300, 2, 0, {}),
    "3groups_single_class_group": (400, 3, 1, {"single_class_group": 1}),
    "5groups_one_sample_and_empty_group": (
        500,
        5,
        2,
        {"one_sample_group": 4, "empty_group": 3},
    ),
}


def make_case(
    n, num_groups, seed, single_class_group=None, one_sample_group=None, empty_group=None
):
    """Scores with many ties (two decimals), labels correlated with scores, ~10% unknown."""
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 2)
    y = (rng.random(n) < 0.2 + 0.6 * p).astype(np.int64)
    g = rng.integers(0, num_groups, n)
    if empty_group is not None:
        g[g == empty_group] = 0
    if one_sample_group is not None:
        g[g == one_sample_group] = 0
        g[rng.integers(n)] = one_sample_group
    if single_class_group is not None:
        y[g == single_class_group] = 1
    g[rng.random(n) < 0.1] = -1
    return p, y, g


def second_attribute(n, seed):
    rng = np.random.default_rng(seed + 100)
    g = rng.integers(0, 3, n)
    g[rng.random(n) < 0.05] = -1
    return g


def t(x, dtype=None):
    return torch.as_tensor(x) if dtype is None else torch.as_tensor(x).to(dtype)


# ------------------------------------------------------------------------------------------------
# functional API
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("target_bool", [False, True])
def test_binary_auroc_matches_sklearn_all_dtypes(dtype, target_bool):
    rng = np.random.default_rng(3)
    preds = torch.rand(2000, generator=torch.Generator().manual_seed(0)).to(dtype)
    p = preds.double().numpy()  # the values sklearn sees are the rounded low-precision ones
    y = (rng.random(2000) < p).astype(np.int64)
    target = t(y).bool() if target_bool else t(y)
    np.testing.assert_allclose(binary_auroc(preds, target).item(), roc_auc_score(y, p), atol=1e-12)


def test_binary_auroc_all_tied_and_extremes():
    y = np.array([0, 1, 1, 0, 1])
    assert binary_auroc(torch.full((5,), 0.5), t(y)).item() == roc_auc_score(y, np.full(5, 0.5))
    p = np.array([0.0, 1.0, 1.0, 0.0, -0.0])
    y = np.array([0, 1, 0, 1, 0])
    np.testing.assert_allclose(binary_auroc(t(p), t(y)).item(), roc_auc_score(y, p), atol=1e-12)


def test_sort_key_orders_negative_scores_when_validation_is_off():
    # the int64 sort key must order any float (here logits, with -0.0/+0.0 and ties), so that
    # validate_args=False on rank-only inputs still gives sklearn's AUC
    rng = np.random.default_rng(4)
    logits = np.round(rng.normal(size=500) * 3, 1)
    logits[:5], logits[5:10] = -0.0, 0.0
    y = (rng.random(500) < 1 / (1 + np.exp(-logits))).astype(np.int64)
    ours = binary_auroc(t(logits), t(y), validate_args=False).item()
    assert ours == pytest.approx(roc_auc_score(y, logits), abs=1e-12)


def test_binary_auroc_single_class_is_nan_with_warning():
    with pytest.warns(UserWarning, match="only one class"):
        assert torch.isnan(binary_auroc(torch.tensor([0.1, 0.9]), torch.tensor([1, 1])))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_functional_matches_references(scenario):
    n, num_groups, seed, extras = SCENARIOS[scenario]
    p, y, g = make_case(n, num_groups, seed, **extras)
    preds, target, groups = t(p).float(), t(y), t(g)
    p = preds.double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # undefined groups warn; tested elsewhere
        aucs = group_auroc(preds, target, groups, num_groups)
        np.testing.assert_allclose(aucs.numpy(), ref_group_auc(p, y, g, num_groups), atol=ATOL)
        overall = roc_auc_score(y, p)
        np.testing.assert_allclose(
            equity_scaled_auroc(preds, target, groups, num_groups, alpha=0.7).item(),
            ref_es(overall, ref_group_auc(p, y, g, num_groups), 0.7),
            atol=ATOL,
        )
        acc = accuracy_score(y, p >= 0.4)
        np.testing.assert_allclose(
            equity_scaled_accuracy(preds, target, groups, num_groups, threshold=0.4).item(),
            ref_es(acc, ref_group_acc(p, y, g, num_groups, 0.4), 1.0),
            atol=ATOL,
        )
        for thr in (0.5, 0.3):
            np.testing.assert_allclose(
                demographic_parity_difference(preds, target, groups, num_groups, threshold=thr),
                ref_dpd(p, y, g, thr),
                atol=ATOL,
            )
            np.testing.assert_allclose(
                equalized_odds_difference(preds, target, groups, num_groups, threshold=thr),
                ref_deodds(p, y, g, thr),
                atol=ATOL,
            )
        g2 = second_attribute(n, seed)
        attributes = {"attr": num_groups, "other": 3}
        ours = fairness_metrics(preds, target, {"attr": groups, "other": t(g2)}, attributes)
    assert_report_close(ours, ref_report(p, y, {"attr": g, "other": g2}, attributes))


def test_custom_ignore_index():
    p, y, g = make_case(200, 3, 5)
    g_custom = np.where(g == -1, -100, g)
    ref = ref_report(p, y, {"a": g}, {"a": 3}, threshold=0.5, alpha=2.0)
    ours = fairness_metrics(t(p), t(y), {"a": t(g_custom)}, {"a": 3}, alpha=2.0, ignore_index=-100)
    assert_report_close(ours, ref)
    # ignored samples count in the overall AUC (every sample), in no group term
    assert (g == -1).sum() > 0
    np.testing.assert_allclose(ours["auc"].item(), roc_auc_score(y, p), atol=ATOL)
    g_uint8 = torch.tensor(np.where(g == -1, 255, g), dtype=torch.uint8)
    np.testing.assert_allclose(
        group_auroc(t(p), t(y), g_uint8, 3, ignore_index=255), ref_group_auc(p, y, g, 3), atol=ATOL
    )


def test_threshold_is_inclusive():
    # FairCLIP binarises with ``preds >= 0.5``; a score of exactly 0.5 is positive
    p = np.array([0.5, 0.5, 0.2, 0.5, 0.9, 0.1])
    y = np.array([1, 0, 0, 1, 1, 0])
    g = np.array([0, 0, 0, 1, 1, 1])
    ours = fairness_metrics(t(p), t(y), {"a": t(g)}, {"a": 2})
    assert ours["acc"].item() == pytest.approx(accuracy_score(y, p >= 0.5))
    assert ours["a/dpd"].item() == pytest.approx(ref_dpd(p, y, g, 0.5))


def test_deodds_undefined_rate_counts_as_zero_like_fairlearn():
    # group 1 has no positives: fairlearn sets its TPR to 0 (not NaN), so the TPR gap is 1.0
    p = np.array([0.9, 0.8, 0.2, 0.9, 0.1, 0.2])
    y = np.array([1, 1, 0, 0, 0, 0])
    g = np.array([0, 0, 0, 1, 1, 1])
    ours = equalized_odds_difference(t(p), t(y), t(g), 2).item()
    assert ours == pytest.approx(ref_deodds(p, y, g, 0.5))
    assert ours == pytest.approx(1.0)  # skipping the undefined TPR would give 1/3


def test_parity_with_a_single_known_group_is_zero_and_none_is_nan():
    p, y = t([0.1, 0.7, 0.8]), t([0, 1, 0])
    assert demographic_parity_difference(p, y, t([1, 1, -1]), 3).item() == pytest.approx(
        fl_dpd([0, 1], [0, 1], sensitive_features=[1, 1])
    )
    assert equalized_odds_difference(p, y, t([1, 1, -1]), 3).item() == pytest.approx(
        fl_deodds([0, 1], [0, 1], sensitive_features=[1, 1])
    )
    for fn in (demographic_parity_difference, equalized_odds_difference):
        with pytest.warns(UserWarning, match="no sample belongs to a known group"):
            assert torch.isnan(fn(p, y, t([-1, -1, -1]), 3))


def test_es_leaves_out_undefined_groups_with_warning():
    p = np.array([0.2, 0.7, 0.6, 0.3, 0.8, 0.9])
    y = np.array([0, 1, 1, 1, 1, 1])
    g = np.array([0, 0, 0, 1, 1, 1])  # group 1 has no negative; group 2 has no samples
    with pytest.warns(UserWarning, match=r"group\(s\) \[1, 2\].*left out"):
        ours = equity_scaled_auroc(t(p), t(y), t(g), 3).item()
    assert ours == pytest.approx(ref_es(roc_auc_score(y, p), ref_group_auc(p, y, g, 3), 1.0))
    with pytest.warns(UserWarning, match=r"group\(s\) \[2\].*left out"):
        ours = equity_scaled_accuracy(t(p), t(y), t(g), 3).item()
    acc = accuracy_score(y, p >= 0.5)
    assert ours == pytest.approx(ref_es(acc, ref_group_acc(p, y, g, 3, 0.5), 1.0))


def test_groups_are_indexed_by_id_not_position():
    # a batch holding only group 2 updates group 2
    p, y = t([0.2, 0.7, 0.6, 0.3]), t([0, 1, 0, 1])
    aucs = group_auroc(p, y, t([2, 2, 2, 2]), 3)
    assert torch.isnan(aucs[:2]).all()
    assert aucs[2].item() == pytest.approx(roc_auc_score([0, 1, 0, 1], [0.2, 0.7, 0.6, 0.3]))
    metric = GroupAUROC(3)
    metric.update(p, y, t([2, 2, 2, 2]))
    torch.testing.assert_close(metric.compute(), aucs, equal_nan=True)


# ------------------------------------------------------------------------------------------------
# metric classes
# ------------------------------------------------------------------------------------------------
def _batches(n, seed, missing_group, groups):
    """Uneven batches; the first two contain no member of ``missing_group``."""
    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [np.flatnonzero(groups != missing_group), np.flatnonzero(groups == missing_group)]
    )
    head, tail = order[: n // 2], rng.permutation(order[n // 2 :])
    cuts = [0, len(head) // 3, len(head), len(head) + len(tail) // 2, n]
    idx = np.concatenate([head, tail])
    return [idx[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_classes_multi_batch_equal_single_shot_and_references(scenario):
    n, num_groups, seed, extras = SCENARIOS[scenario]
    p, y, g = make_case(n, num_groups, seed, **extras)
    g2 = second_attribute(n, seed)
    batches = _batches(n, seed, 1, g)
    assert all((g[b] != 1).all() for b in batches[:2]) and len({len(b) for b in batches}) > 1
    metrics = {
        "group_auroc": GroupAUROC(num_groups),
        "es_auc": EquityScaledAUROC(num_groups, alpha=0.5),
        "es_acc": EquityScaledAccuracy(num_groups, threshold=0.45),
        "dpd": DemographicParityDifference(num_groups),
        "deodds": EqualizedOddsDifference(num_groups),
        "report": FairnessMetrics({"attr": num_groups, "other": 3}),
    }
    dtypes = [torch.float32, torch.float16, torch.float64, torch.bfloat16]
    for i, b in enumerate(batches):
        # scores already on a 0.01 grid rounded through the lowest precision used below
        preds = t(p[b]).to(torch.bfloat16).to(dtypes[i % 4])
        target = t(y[b]).bool() if i % 2 else t(y[b])
        for name, metric in metrics.items():
            if name == "report":
                metric.update(preds, target, {"attr": t(g[b]), "other": t(g2[b])})
            else:
                metric.update(preds, target, t(g[b]))
    p = t(p).to(torch.bfloat16).double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = {name: metric.compute() for name, metric in metrics.items()}
        single = fairness_metrics(
            t(p), t(y), {"attr": t(g), "other": t(g2)}, {"attr": num_groups, "other": 3}
        )
    auc = roc_auc_score(y, p)
    np.testing.assert_allclose(out["group_auroc"], ref_group_auc(p, y, g, num_groups), atol=ATOL)
    np.testing.assert_allclose(
        out["es_auc"], ref_es(auc, ref_group_auc(p, y, g, num_groups), 0.5), atol=ATOL
    )
    np.testing.assert_allclose(
        out["es_acc"],
        ref_es(accuracy_score(y, p >= 0.45), ref_group_acc(p, y, g, num_groups, 0.45), 1.0),
        atol=ATOL,
    )
    np.testing.assert_allclose(out["dpd"], ref_dpd(p, y, g, 0.5), atol=ATOL)
    np.testing.assert_allclose(out["deodds"], ref_deodds(p, y, g, 0.5), atol=ATOL)
    ref = ref_report(p, y, {"attr": g, "other": g2}, {"attr": num_groups, "other": 3})
    assert_report_close(out["report"], ref)
    assert_report_close(single, ref)  # multi-batch class == single-shot function


def test_forward_returns_batch_value_and_accumulates():
    p, y, g = make_case(120, 2, 7)
    metric = EquityScaledAUROC(2)
    first = metric(t(p[:60]), t(y[:60]), t(g[:60]))
    metric(t(p[60:]), t(y[60:]), t(g[60:]))
    b = slice(0, 60)
    ref_first = ref_es(roc_auc_score(y[b], p[b]), ref_group_auc(p[b], y[b], g[b], 2), 1.0)
    assert first.item() == pytest.approx(ref_first)
    ref_all = ref_es(roc_auc_score(y, p), ref_group_auc(p, y, g, 2), 1.0)
    assert metric.compute().item() == pytest.approx(ref_all)
    report = FairnessMetrics({"a": 2})
    batch_report = report(t(p[:60]), t(y[:60]), {"a": t(g[:60])})
    assert batch_report["auc"].item() == pytest.approx(roc_auc_score(y[b], p[b]))


def test_reset_then_compute_is_empty_error():
    metric = GroupAUROC(2)
    metric.update(torch.tensor([0.2, 0.8]), torch.tensor([0, 1]), torch.tensor([0, 1]))
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update`` method"):
        with pytest.raises(ValueError, match="empty input"):
            metric.compute()


def test_metric_declarations_and_kwargs_forwarding():
    sample_metrics = [GroupAUROC(2), EquityScaledAUROC(2), FairnessMetrics({"a": 2})]
    confmat_metrics = [
        EquityScaledAccuracy(2),
        DemographicParityDifference(2),
        EqualizedOddsDifference(2),
    ]
    for metric in sample_metrics + confmat_metrics:
        assert metric.full_state_update is False and metric.is_differentiable is False
        assert set(metric._reductions) == set(metric._defaults)  # every state declares one
    for metric in sample_metrics:
        assert set(metric._reductions) == {"preds", "target", "groups"}
        assert all(fx is dim_zero_cat for fx in metric._reductions.values())
    for metric in confmat_metrics:
        assert metric._reductions == {"confmat": dim_zero_sum}
    assert GroupAUROC.higher_is_better and EquityScaledAUROC.higher_is_better
    assert EquityScaledAccuracy.higher_is_better
    assert DemographicParityDifference.higher_is_better is False
    assert EqualizedOddsDifference.higher_is_better is False
    metric = FairnessMetrics({"a": 2}, compute_on_cpu=True, dist_sync_on_step=True)
    assert metric.compute_on_cpu and metric.dist_sync_on_step
    assert GroupAUROC(3, sync_on_compute=False).sync_on_compute is False
    with pytest.raises(ValueError, match="Unexpected keyword arguments"):
        DemographicParityDifference(2, not_a_torchmetrics_kwarg=1)


def test_states_merge_by_their_declared_reductions():
    """What the reductions do: states filled on two halves and merged (torchmetrics applies each
    state's ``dist_reduce_fx``, as a sync does) give the references on all the data."""
    warnings.simplefilter("ignore", UserWarning)  # group 2 has one class; its AUC is undefined
    p, y, g = make_case(300, 3, 5, single_class_group=2)
    gender = np.random.default_rng(5).integers(-1, 2, len(p))
    groups = {"race": g, "gender": gender}
    attributes = {"race": 3, "gender": 2}
    p32 = torch.tensor(p, dtype=torch.float32)
    pd = p32.double().numpy()
    auc = roc_auc_score(y, pd)
    race_aucs = ref_group_auc(pd, y, g, 3)
    refs = {
        GroupAUROC: race_aucs,
        EquityScaledAUROC: ref_es(auc, race_aucs, 1.0),
        EquityScaledAccuracy: ref_es(
            accuracy_score(y, pd >= 0.5), ref_group_acc(pd, y, g, 3, 0.5), 1.0
        ),
        DemographicParityDifference: ref_dpd(pd, y, g, 0.5),
        EqualizedOddsDifference: ref_deodds(pd, y, g, 0.5),
    }
    halves = (slice(0, 110), slice(110, None))
    for cls, ref in refs.items():
        parts = [cls(3) for _ in halves]
        for metric, h in zip(parts, halves, strict=True):
            metric.update(p32[h], t(y[h]), t(g[h]))
        parts[0].merge_state(parts[1])
        np.testing.assert_allclose(parts[0].compute().numpy(), ref, atol=1e-9, err_msg=cls.__name__)
    parts = [FairnessMetrics(attributes) for _ in halves]
    for metric, h in zip(parts, halves, strict=True):
        metric.update(p32[h], t(y[h]), {k: t(v[h]) for k, v in groups.items()})
    parts[0].merge_state(parts[1])
    assert_report_close(parts[0].compute(), ref_report(pd, y, groups, attributes))


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
P, Y, G = torch.tensor([0.1, 0.9, 0.4]), torch.tensor([0, 1, 1]), torch.tensor([0, 1, -1])
FUNCTIONS = [
    group_auroc,
    equity_scaled_auroc,
    equity_scaled_accuracy,
    demographic_parity_difference,
    equalized_odds_difference,
]
CLASSES = [
    GroupAUROC,
    EquityScaledAUROC,
    EquityScaledAccuracy,
    DemographicParityDifference,
    EqualizedOddsDifference,
]
BAD_INPUTS = {
    "shape mismatch preds/target": ((P, Y[:2], G), ValueError, "shape mismatch"),
    "shape mismatch groups": ((P, Y, G[:2]), ValueError, "shape mismatch"),
    "score above 1": ((torch.tensor([0.1, 1.5, 0.4]), Y, G), ValueError, r"outside \[0, 1\]"),
    "score below 0": ((torch.tensor([0.1, -0.1, 0.4]), Y, G), ValueError, r"outside \[0, 1\]"),
    "score nan": ((torch.tensor([0.1, float("nan"), 0.4]), Y, G), ValueError, "non-finite scores"),
    "target not binary": ((P, torch.tensor([0, 2, 1]), G), ValueError, "target not binary"),
    "target negative": ((P, torch.tensor([0, -1, 1]), G), ValueError, "target not binary"),
    "group out of range": ((P, Y, torch.tensor([0, 2, 1])), ValueError, "group id out of range"),
    "group below ignore": ((P, Y, torch.tensor([0, -2, 1])), ValueError, "out of range"),
    "float target": ((P, Y.float(), G), TypeError, "target"),
    "integer preds": ((Y, Y, G), TypeError, "floating point"),
    "float groups": ((P, Y, G.float()), TypeError, "integer group ids"),
    "not a tensor": (([0.1, 0.9, 0.4], Y, G), TypeError, "torch.Tensor"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("index", range(len(FUNCTIONS)))
def test_bad_inputs_raise(case, index):
    args, exc, match = BAD_INPUTS[case]
    with pytest.raises(exc, match=match):
        FUNCTIONS[index](*args, num_groups=2)
    with pytest.raises(exc, match=match):
        CLASSES[index](2).update(*args)
    with pytest.raises(exc, match=match):
        FairnessMetrics({"a": 2}).update(args[0], args[1], {"a": args[2]})


@pytest.mark.parametrize("index", range(len(FUNCTIONS)))
def test_bad_arguments_raise(index):
    for num_groups, exc in ((1, ValueError), (0, ValueError), (2.0, TypeError)):
        with pytest.raises(exc, match="num_groups"):
            FUNCTIONS[index](P, Y, G, num_groups)
        with pytest.raises(exc, match="num_groups"):
            CLASSES[index](num_groups)
    with pytest.raises(ValueError, match="ignore_index"):
        FUNCTIONS[index](P, Y, G, 2, ignore_index=1)
    with pytest.raises(ValueError, match="ignore_index"):
        CLASSES[index](2, ignore_index=0)


def test_bad_threshold_alpha_and_attributes_raise():
    with pytest.raises(ValueError, match="threshold"):
        EquityScaledAccuracy(2, threshold=1.5)
    with pytest.raises(ValueError, match="threshold"):
        demographic_parity_difference(P, Y, G, 2, threshold=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        EquityScaledAUROC(2, alpha=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        FairnessMetrics({"a": 2}, alpha=float("inf"))
    with pytest.raises(ValueError, match="attributes\\['b'\\].*at least 2"):
        FairnessMetrics({"a": 2, "b": 1})
    with pytest.raises(ValueError, match="at least one attribute"):
        FairnessMetrics({})
    with pytest.raises(TypeError, match="mapping"):
        FairnessMetrics(["a"])  # type: ignore[arg-type]


def test_groups_mapping_keys_and_shapes_checked():
    metric = FairnessMetrics({"race": 3, "gender": 2})
    with pytest.raises(ValueError, match=r"missing: \['gender'\]"):
        metric.update(P, Y, {"race": G})
    with pytest.raises(ValueError, match=r"unexpected: \['age'\]"):
        metric.update(P, Y, {"race": G, "gender": G, "age": G})
    with pytest.raises(ValueError, match=r"groups\['gender'\].*shape mismatch|shape mismatch"):
        metric.update(P, Y, {"race": G, "gender": G[:2]})
    with pytest.raises(ValueError, match=r"groups\['race'\].*\[5\]"):
        metric.update(P, Y, {"race": torch.tensor([0, 5, 1]), "gender": G})
    with pytest.raises(TypeError, match="mapping"):
        metric.update(P, Y, G)  # type: ignore[arg-type]


def test_empty_input_raises():
    empty = torch.tensor([])
    empty_long = torch.tensor([], dtype=torch.long)
    for fn in FUNCTIONS:
        with pytest.raises(ValueError, match="empty input"):
            fn(empty, empty_long, empty_long, 2)
    with pytest.raises(ValueError, match="empty input"):
        binary_auroc(empty, empty_long)
    with pytest.raises(ValueError, match="empty input"):
        fairness_metrics(empty, empty_long, {"a": empty_long}, {"a": 2})
    for cls in CLASSES:
        metric = cls(2)
        with pytest.warns(UserWarning, match="before the ``update`` method"):
            with pytest.raises(ValueError, match="empty input"):
                metric.compute()
        metric = cls(2)
        metric.update(empty, empty_long, empty_long)  # an empty batch is allowed ...
        with pytest.raises(ValueError, match="empty input"):
            metric.compute()  # ... but there must be samples at compute time
    metric = FairnessMetrics({"a": 2})
    metric.update(empty, empty_long, {"a": empty_long})
    with pytest.raises(ValueError, match="empty input"):
        metric.compute()


# ------------------------------------------------------------------------------------------------
# plot
# ------------------------------------------------------------------------------------------------
def test_group_auroc_plot():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, y, g = make_case(200, 3, 9, single_class_group=2)
    metric = GroupAUROC(3)
    metric.update(t(p), t(y), t(g))
    fig, ax = metric.plot(group_names=["Asian", "Black", "White"])
    points = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()}
    expected = ref_group_auc(p, y, g, 3)
    assert list(points) == ["Asian", "Black", "White"]  # one labelled point per group
    np.testing.assert_allclose([points["Asian"], points["Black"]], expected[:2], atol=1e-9)
    assert np.isnan(points["White"]) and np.isnan(expected[2])  # undefined: not drawn ...
    assert [text.get_text() for text in ax.texts].count("n/a") == 1  # ... and marked n/a
    assert ax.get_ylabel() == "GroupAUROC"
    plt.close(fig)
    values = [torch.tensor([0.6, 0.7, 0.8]), torch.tensor([0.65, 0.75, 0.85])]
    fig, ax = metric.plot(values)
    lines = [list(line.get_ydata()) for line in ax.get_lines()]
    np.testing.assert_allclose(lines, [[0.6, 0.65], [0.7, 0.75], [0.8, 0.85]], atol=1e-6)
    assert [line.get_label() for line in ax.get_lines()] == ["group 0", "group 1", "group 2"]
    assert ax.get_xlabel() == "Step"
    plt.close(fig)
    _, own_ax = plt.subplots()
    fig, ax = metric.plot(values[0], ax=own_ax)
    assert ax is own_ax and fig is own_ax.get_figure()
    plt.close(fig)
    fig, ax = EquityScaledAUROC(2).plot(torch.tensor(0.5))  # scalar metrics: torchmetrics plot
    (point,) = ax.get_lines()
    assert list(point.get_ydata()) == [0.5] and ax.get_ylabel() == "EquityScaledAUROC"
    bounds = sorted(seg[0, 1] for seg in ax.collections[0].get_segments())
    assert bounds == [0.0, 1.0]  # plot_lower_bound / plot_upper_bound drawn as lines
    assert [text.get_text() for text in ax.texts] == ["Optimal \n value"]  # higher is better
    plt.close(fig)
    fig, ax = DemographicParityDifference(2).plot([torch.tensor(0.3), torch.tensor(0.1)])
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [0.3, 0.1], atol=1e-7)
    assert ax.get_xlabel() == "Step" and ax.get_ylabel() == "DemographicParityDifference"
    plt.close(fig)
    with pytest.raises(ValueError, match="group_names"):
        metric.plot(group_names=["a"])


def test_group_auroc_plot_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    metric = GroupAUROC(2)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        metric.plot(torch.tensor([0.5, 0.6]))
