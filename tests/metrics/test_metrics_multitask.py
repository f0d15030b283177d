"""Multi-class and multi-label fairness metrics, and intersectional groups, against references.

* multi-class: the FairCLIP paper's own evaluation code (``FairCLIP/src/modules.py`` of
  github.com/Harvard-Ophthalmology-AI-Lab/FairCLIP, its ``num_classes > 2`` branch), transcribed
  below as ``paper_*``, on 100 random cases;
* multi-label: scikit-learn's macro ``roc_auc_score`` and ``hamming_loss`` with the same ES
  formulas, on 100 random cases;
* DPD / DEOdds of several classes or labels: fairlearn's functions per class / label;
* intersections: cell ids built by hand, the binary report of those cells.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference as fl_dpd
from fairlearn.metrics import equalized_odds_difference as fl_deodds
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import hamming_loss, roc_auc_score, roc_curve
from test_metrics import ref_es, ref_report

from fairvlm_lightning.metrics import (
    DemographicParityDifference,
    EqualizedOddsDifference,
    EquityScaledAccuracy,
    EquityScaledAUROC,
    FairnessMetrics,
    GroupAUROC,
)
from fairvlm_lightning.metrics import functional as FM
from fairvlm_lightning.metrics.groups import (
    add_intersection_groups,
    expand_attributes,
    intersection_codes,
    intersection_group_names,
    parse_intersections,
    reported_group_names,
)
from fairvlm_lightning.schema import GROUP_NAMES

TOL = 1e-6  # the target of issue 21; the values agree to ~1e-15


# ------------------------------------------------------------------------------------------------
# the paper's evaluation code (FairCLIP/src/modules.py), multi-class branch, transcribed
# ------------------------------------------------------------------------------------------------
def paper_num_to_onehot(nums, num_to_class):
    nums = nums.astype(int)
    n_values = num_to_class
    onehot_vec = np.eye(n_values)[nums]
    return onehot_vec


def paper_compute_auc(pred_prob, y, num_classes=2):
    if num_classes == 2:
        fpr, tpr, thresholds = roc_curve(y, pred_prob)
        auc_val = sk_auc(fpr, tpr)
    elif num_classes > 2:
        y_onehot = paper_num_to_onehot(y, num_classes)
        auc_val = roc_auc_score(y_onehot, pred_prob, average="macro", multi_class="ovr")
    return auc_val


def paper_accuracy(output, target, topk=(1,)):
    with torch.no_grad():
        maxk = max(topk)
        batch_size = target.shape[0]
        _, pred = output.topk(maxk, dim=1)
        target = target.view(batch_size, 1).repeat(1, maxk)
        correct = pred == target
        topk_accuracy = []
        for k in topk:
            accuracy = correct[:, :k].float().sum().item()
            accuracy /= batch_size
            topk_accuracy.append(accuracy)
        return topk_accuracy[0]


def paper_equity_scaled_accuracy(output, target, attrs, alpha=1.0):
    overall_acc = np.sum(np.argmax(output, axis=1) == target) / target.shape[0]
    tmp = 0
    identity_wise_perf = []
    for one_attr in np.unique(attrs).astype(int):
        pred_group = output[attrs == one_attr]
        gt_group = target[attrs == one_attr]
        acc = np.sum(np.argmax(pred_group, axis=1) == gt_group) / gt_group.shape[0]
        identity_wise_perf.append(acc)
    for i in range(len(identity_wise_perf)):
        tmp += np.abs(identity_wise_perf[i] - overall_acc)
    return overall_acc / (alpha * tmp + 1)


def paper_equity_scaled_auc(output, target, attrs, alpha=1.0, num_classes=2):
    tmp = 0
    identity_wise_perf = []
    y_onehot = paper_num_to_onehot(target, num_classes)
    overall_auc = roc_auc_score(y_onehot, output, average="macro", multi_class="ovr")
    for one_attr in np.unique(attrs).astype(int):
        pred_group = output[attrs == one_attr]
        gt_group = target[attrs == one_attr]
        y_onehot = paper_num_to_onehot(gt_group, num_classes)
        group_auc = roc_auc_score(y_onehot, pred_group, average="macro", multi_class="ovr")
        identity_wise_perf.append(group_auc)
    for i in range(len(identity_wise_perf)):
        tmp += np.abs(identity_wise_perf[i] - overall_auc)
    return overall_auc / (alpha * tmp + 1)


def paper_between_group_disparity(auc_list, overall_auc):
    return np.std(auc_list) / overall_auc, (np.max(auc_list) - np.min(auc_list)) / overall_auc


def paper_comprehensive_perf(preds, gts, attrs, num_classes, group_aucs=True):
    """``evalute_comprehensive_perf`` without its DPD / DEOdds (see ``docs/metrics.md``).

    ``group_aucs=False`` skips the per-group AUC loop (and the disparities built on it), which
    repeats the scikit-learn calls ``equity_scaled_AUC`` already made."""
    overall_acc = paper_accuracy(torch.from_numpy(preds), torch.from_numpy(gts))
    overall_auc = paper_compute_auc(preds, gts, num_classes=num_classes)
    esaccs, esaucs, aucs_by_attrs, disparity = [], [], [], []
    for i in range(attrs.shape[0]):
        attr = attrs[i, :]
        esaccs.append(paper_equity_scaled_accuracy(preds, gts, attr))
        esaucs.append(paper_equity_scaled_auc(preds, gts, attr, num_classes=num_classes))
        if not group_aucs:
            aucs_by_attrs.append([])
            disparity.append((np.nan, np.nan))
            continue
        aucs_by_group = [
            paper_compute_auc(preds[attr == e], gts[attr == e], num_classes=num_classes)
            for e in np.unique(attr).astype(int)
        ]
        aucs_by_attrs.append(aucs_by_group)
        disparity.append(paper_between_group_disparity(aucs_by_group, overall_auc))
    return overall_acc, esaccs, overall_auc, esaucs, aucs_by_attrs, disparity


# ------------------------------------------------------------------------------------------------
# random cases
# ------------------------------------------------------------------------------------------------
def multiclass_case(seed: int):
    """(N, C) probabilities with ties (two decimals), labels, one attribute; every class in
    every group and every group with two classes at least (the paper's code needs both)."""
    rng = np.random.default_rng(seed)
    c, g = int(rng.integers(3, 5)), int(rng.integers(2, 4))
    n = int(rng.integers(40, 90))
    y = rng.integers(0, c, n)
    groups = rng.integers(0, g, n)
    cells = np.array([(gi, k) for gi in range(g) for k in range(c)])
    groups[: len(cells)], y[: len(cells)] = cells[:, 0], cells[:, 1]
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y] * rng.random((n, 1))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p = np.round(p, 2) + np.arange(c) * 1e-9  # ties within a class, none across a row's max
    return np.clip(p, 0, 1), y, groups, c, g


def multilabel_case(seed: int):
    """(N, L) probabilities with ties, multi-hot labels, an attribute with ~10 % unknown."""
    rng = np.random.default_rng(1000 + seed)
    labels, g = int(rng.integers(2, 5)), int(rng.integers(2, 4))
    n = int(rng.integers(50, 100))
    y = (rng.random((n, labels)) < rng.uniform(0.2, 0.6, labels)).astype(np.int64)
    groups = rng.integers(0, g, n)
    for gi in range(g):  # each group holds a positive and a negative of every label
        groups[4 * gi : 4 * gi + 4] = gi
        y[4 * gi : 4 * gi + 2], y[4 * gi + 2 : 4 * gi + 4] = 1, 0
    unknown = rng.random(n) < 0.1
    unknown[: 4 * g] = False
    groups[unknown] = -1
    p = np.round(np.clip(0.3 * y + rng.random((n, labels)) * 0.7, 0, 1), 2)
    return p, y, groups, labels, g


def _onehot(y, k):
    return np.eye(k, dtype=np.int64)[y]


def _auc_or_nan(y, p):
    return roc_auc_score(y, p) if len(np.unique(y)) == 2 else np.nan


def _nanmean(values, axis=None):
    values = np.asarray(values, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _value(report, key):
    return report[key].item()


# ------------------------------------------------------------------------------------------------
# multi-class == the paper's code
# ------------------------------------------------------------------------------------------------
def test_multiclass_equals_paper_code_on_100_random_cases():
    worst = 0.0
    for seed in range(100):
        p, y, groups, c, g = multiclass_case(seed)
        full = seed < 40  # the group-AUC loop (a repeat of ES-AUC's calls) on 40 cases
        paper = paper_comprehensive_perf(p, y, groups[None, :], c, group_aucs=full)
        acc, (es_acc,), auc, (es_auc,), (group_aucs,), ((std, spread),) = paper
        ours = FM.fairness_metrics(
            torch.from_numpy(p), torch.from_numpy(y), {"race": torch.from_numpy(groups)},
            {"race": g}, task="multiclass", num_classes=c,
        )
        expected = {"auc": auc, "acc": acc, "race/es_auc": es_auc, "race/es_acc": es_acc}
        if full:
            expected["race/auc_std_disparity"], expected["race/auc_max_disparity"] = std, spread
            expected.update({f"race/auc_group_{k}": v for k, v in enumerate(group_aucs)})
        for key, value in expected.items():
            diff = abs(_value(ours, key) - value)
            worst = max(worst, diff)
            assert diff <= TOL, (seed, key, _value(ours, key), value)
    assert worst < 1e-12


def test_multiclass_per_class_keys_and_parity_match_sklearn_and_fairlearn():
    for seed in range(3):  # fairlearn takes ~0.1 s a call here: a few cases
        p, y, groups, c, g = multiclass_case(seed)
        groups[::7] = -1  # unknown members: in auc / acc only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ours = FM.fairness_metrics(
                torch.from_numpy(p).float(), torch.from_numpy(y),
                {"race": torch.from_numpy(groups)}, {"race": g}, task="multiclass", num_classes=c,
            )
        p = torch.from_numpy(p).float().double().numpy()
        onehot, decided = _onehot(y, c), _onehot(p.argmax(1), c)
        known = groups >= 0
        dpds, deodds = [], []
        for k in range(c):
            assert _value(ours, f"auc_class_{k}") == pytest.approx(
                roc_auc_score(onehot[:, k], p[:, k]), abs=TOL
            )
            for gi in range(g):
                m = groups == gi
                assert _value(ours, f"race/auc_group_{gi}_class_{k}") == pytest.approx(
                    _auc_or_nan(onehot[m, k], p[m, k]), abs=TOL, nan_ok=True
                )
            dpds.append(
                fl_dpd(onehot[known, k], decided[known, k], sensitive_features=groups[known])
            )
            deodds.append(
                fl_deodds(onehot[known, k], decided[known, k], sensitive_features=groups[known])
            )
            assert _value(ours, f"race/dpd_class_{k}") == pytest.approx(dpds[-1], abs=TOL)
            assert _value(ours, f"race/deodds_class_{k}") == pytest.approx(deodds[-1], abs=TOL)
        assert _value(ours, "race/dpd") == pytest.approx(max(dpds), abs=TOL)
        assert _value(ours, "race/deodds") == pytest.approx(max(deodds), abs=TOL)
        assert _value(ours, "auc") == pytest.approx(
            roc_auc_score(onehot, p, average="macro"), abs=TOL
        )


# ------------------------------------------------------------------------------------------------
# multi-label == scikit-learn with the same formulas
# ------------------------------------------------------------------------------------------------
def test_multilabel_equals_sklearn_macro_on_100_random_cases():
    worst = 0.0
    for seed in range(100):
        p, y, groups, labels, g = multilabel_case(seed)
        ours = FM.fairness_metrics(
            torch.from_numpy(p), torch.from_numpy(y), {"site": torch.from_numpy(groups)},
            {"site": g}, task="multilabel", num_labels=labels, threshold=0.5,
        )
        auc = roc_auc_score(y, p, average="macro")
        acc = 1.0 - hamming_loss(y, (p >= 0.5).astype(int))
        group_auc = np.array(
            [roc_auc_score(y[groups == k], p[groups == k], average="macro") for k in range(g)]
        )
        group_acc = np.array(
            [1.0 - hamming_loss(y[groups == k], (p[groups == k] >= 0.5).astype(int))
             for k in range(g)]
        )
        expected = {
            "auc": auc, "acc": acc, "site/es_auc": ref_es(auc, group_auc, 1.0),
            "site/es_acc": ref_es(acc, group_acc, 1.0),
            "site/auc_std_disparity": np.std(group_auc) / auc,
            "site/auc_max_disparity": (group_auc.max() - group_auc.min()) / auc,
            **{f"site/auc_group_{k}": v for k, v in enumerate(group_auc)},
        }
        if seed < 20:  # per-label keys on a fifth of the cases (each sklearn call costs ~5 ms)
            expected.update(
                {f"auc_label_{k}": roc_auc_score(y[:, k], p[:, k]) for k in range(labels)}
            )
        for key, value in expected.items():
            diff = abs(_value(ours, key) - value)
            worst = max(worst, diff)
            assert diff <= TOL, (seed, key, _value(ours, key), value)
    assert worst < 1e-12


def test_multilabel_parity_per_label_matches_fairlearn():
    p, y, groups, labels, g = multilabel_case(7)
    ours = FM.fairness_metrics(
        torch.from_numpy(p), torch.from_numpy(y), {"site": torch.from_numpy(groups)},
        {"site": g}, task="multilabel", num_labels=labels, threshold=0.4,
    )
    known = groups >= 0
    dpds = [fl_dpd(y[known, k], p[known, k] >= 0.4, sensitive_features=groups[known])
            for k in range(labels)]
    deodds = [fl_deodds(y[known, k], p[known, k] >= 0.4, sensitive_features=groups[known])
              for k in range(labels)]
    for k in range(labels):
        assert _value(ours, f"site/dpd_label_{k}") == pytest.approx(dpds[k], abs=TOL)
        assert _value(ours, f"site/deodds_label_{k}") == pytest.approx(deodds[k], abs=TOL)
    assert _value(ours, "site/dpd") == pytest.approx(max(dpds), abs=TOL)
    assert _value(ours, "site/deodds") == pytest.approx(max(deodds), abs=TOL)


def test_undefined_label_in_a_group_is_left_out_of_its_macro_average():
    p, y, groups, labels, g = multilabel_case(3)
    y[groups == 1, 0] = 1  # label 0 has no negative in group 1
    with pytest.warns(UserWarning, match=r"left out of the group's macro average"):
        ours = FM.fairness_metrics(
            torch.from_numpy(p), torch.from_numpy(y), {"site": torch.from_numpy(groups)},
            {"site": g}, task="multilabel", num_labels=labels,
        )
    m = groups == 1
    per_label = [_auc_or_nan(y[m, k], p[m, k]) for k in range(labels)]
    assert np.isnan(per_label[0])
    assert _value(ours, "site/auc_group_1") == pytest.approx(_nanmean(per_label), abs=TOL)
    assert np.isnan(_value(ours, "site/auc_group_1_label_0"))


def test_keys_of_each_task():
    p, y, groups, c, g = multiclass_case(0)
    ours = FM.fairness_metrics(
        torch.from_numpy(p), torch.from_numpy(y), {"race": torch.from_numpy(groups)},
        {"race": 2 if g == 2 else g}, task="multiclass", num_classes=c,
    )
    head = ["auc", "acc", *[f"auc_class_{k}" for k in range(c)], "race/es_auc", "race/es_acc"]
    assert list(ours)[: len(head)] == head
    per_class = [f"race/{m}_class_1" for m in ("es_auc", "dpd", "deodds")]
    assert all(key in ours for key in per_class)
    assert all(v.dtype == torch.float64 and v.ndim == 0 for v in ours.values())


# ------------------------------------------------------------------------------------------------
# the single-attribute classes and functionals of each task
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_single_attribute_metrics_equal_report_keys(task):
    if task == "multiclass":
        p, y, groups, k, g = multiclass_case(5)
        kw = {"task": task, "num_classes": k}
    else:
        p, y, groups, k, g = multilabel_case(5)
        kw = {"task": task, "num_labels": k}
    preds, target, grp = torch.from_numpy(p), torch.from_numpy(y), torch.from_numpy(groups)
    report = FM.fairness_metrics(preds, target, {"a": grp}, {"a": g}, **kw)
    pairs = [
        (GroupAUROC, FM.group_auroc, [f"a/auc_group_{i}" for i in range(g)]),
        (EquityScaledAUROC, FM.equity_scaled_auroc, ["a/es_auc"]),
        (EquityScaledAccuracy, FM.equity_scaled_accuracy, ["a/es_acc"]),
        (DemographicParityDifference, FM.demographic_parity_difference, ["a/dpd"]),
        (EqualizedOddsDifference, FM.equalized_odds_difference, ["a/deodds"]),
    ]
    for cls, fn, keys in pairs:
        expected = torch.stack([report[key] for key in keys]).reshape(-1)
        metric = cls(g, **kw)
        metric.update(preds[:20], target[:20], grp[:20])
        metric.update(preds[20:], target[20:], grp[20:])
        torch.testing.assert_close(metric.compute().reshape(-1), expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            fn(preds, target, grp, g, **kw).reshape(-1), expected, rtol=0, atol=1e-12
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "multiclas", "num_classes": 3}, "`task` must be one of"),
        ({"task": "multiclass"}, "needs `num_classes`"),
        ({"task": "multilabel", "num_classes": 3}, "takes `num_labels`"),
        ({"task": "binary", "num_labels": 3}, "takes neither"),
        ({"task": "multiclass", "num_classes": 1}, "at least 2"),
    ],
)
def test_bad_task_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FairnessMetrics({"a": 2}, **kwargs)
    with pytest.raises(ValueError, match=match):
        GroupAUROC(2, **kwargs)


def test_bad_multitask_tensors_name_the_problem():
    probs, groups = torch.full((4, 3), 1 / 3), {"a": torch.tensor([0, 1, 0, 1])}
    run = FM.fairness_metrics
    kw = {"task": "multiclass", "num_classes": 3}
    with pytest.raises(ValueError, match=r"`preds` of shape \(N, 3\)"):
        run(probs[:, :2], torch.tensor([0, 1, 2, 0]), groups, {"a": 2}, **kw)
    with pytest.raises(ValueError, match=r"class id out of range.*\[3\]"):
        run(probs, torch.tensor([0, 1, 3, 0]), groups, {"a": 2}, **kw)
    with pytest.raises(ValueError, match=r"`target` of shape \(4,\)"):
        run(probs, torch.zeros(4, 3, dtype=torch.long), groups, {"a": 2}, **kw)
    with pytest.raises(ValueError, match="scores outside"):
        run(probs * 4, torch.tensor([0, 1, 2, 0]), groups, {"a": 2}, **kw)
    with pytest.raises(ValueError, match="not multi-hot"):
        run(probs, torch.full((4, 3), 2), groups, {"a": 2}, task="multilabel", num_labels=3)
    with pytest.raises(ValueError, match=r"groups\['a'\]"):
        run(probs, torch.tensor([0, 1, 2, 0]), {"a": torch.zeros(4, 3, dtype=torch.long)},
            {"a": 2}, **kw)


# ------------------------------------------------------------------------------------------------
# bootstrap of the multi-column tasks
# ------------------------------------------------------------------------------------------------
def test_multilabel_bootstrap_matches_resampled_reports():
    p, y, groups, labels, g = multilabel_case(11)
    bootstrap, ci, seed = 25, 0.8, 3
    # the documented scheme: strata = distinct group rows, replicate b = row b of the uniforms
    _, inverse = np.unique(groups[:, None], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    members = [np.flatnonzero(inverse == s) for s in range(inverse.max() + 1)]
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(bootstrap):
        u, pos, idx = rng.random(len(p)), 0, []
        for m in members:
            idx.append(m[np.minimum(np.floor(u[pos : pos + len(m)] * len(m)).astype(int),
                                    len(m) - 1)])
            pos += len(m)
        i = np.concatenate(idx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            rep = FM.fairness_metrics(
                torch.from_numpy(p[i]), torch.from_numpy(y[i]), {"s": torch.from_numpy(groups[i])},
                {"s": g}, task="multilabel", num_labels=labels,
            )
        for key, v in rep.items():
            values.setdefault(key, []).append(float(v))
    metric = FairnessMetrics(
        {"s": g}, task="multilabel", num_labels=labels, bootstrap=bootstrap, ci=ci, seed=seed
    )
    for part in (slice(0, 30), slice(30, None)):
        metric.update(
            torch.from_numpy(p[part]), torch.from_numpy(y[part]),
            {"s": torch.from_numpy(groups[part])},
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        got = metric.compute()
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    for key, v in values.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanquantile(np.asarray(v), q)
        np.testing.assert_allclose(float(got[f"{key}_ci_low"]), lo, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(float(got[f"{key}_ci_high"]), hi, atol=1e-12, err_msg=key)


# ------------------------------------------------------------------------------------------------
# intersections
# ------------------------------------------------------------------------------------------------
def test_intersection_codes_and_names_by_hand():
    race, gender = np.array([0, 1, 2, -1, 2, 1]), np.array([1, 0, -1, 0, 1, 1])
    codes = intersection_codes([torch.from_numpy(race), torch.from_numpy(gender)], [3, 2])
    expected = [r * 2 + s if r >= 0 and s >= 0 else -1 for r, s in zip(race, gender, strict=True)]
    assert codes.tolist() == expected
    three = intersection_codes(
        [torch.tensor([2]), torch.tensor([1]), torch.tensor([2])], [3, 2, 4], ignore_index=-5
    )
    assert three.tolist() == [(2 * 2 + 1) * 4 + 2]
    names = intersection_group_names(("race", "gender"), {"race": 3, "gender": 2}, GROUP_NAMES)
    assert names == tuple(f"{r} {s}" for r in GROUP_NAMES["race"] for s in GROUP_NAMES["gender"])
    assert names[1 * 2 + 0] == "Black Female"
    assert expand_attributes({"race": 3, "gender": 2}, ["race*gender"]) == {
        "race": 3, "gender": 2, "race*gender": 6,
    }
    reported = reported_group_names({"race": 3, "site": 2}, [("race", "site")], GROUP_NAMES)
    assert reported["race"] == GROUP_NAMES["race"] and reported["site"] == ("group 0", "group 1")
    assert reported["race*site"][3] == "Black site 1"


@pytest.mark.parametrize(
    ("intersections", "match"),
    [
        ([("race",)], "at least 2"),
        ([("race", "site")], "unknown attribute"),
        ([("race", "race")], "repeats"),
        ([("race", "gender"), "race*gender"], "given twice"),
        ("race*gender", "list of attribute-name lists"),
    ],
)
def test_bad_intersections(intersections, match):
    with pytest.raises((ValueError, TypeError), match=match):
        parse_intersections(intersections, {"race": 3, "gender": 2})
    with pytest.raises((ValueError, TypeError), match=match):
        FairnessMetrics({"race": 3, "gender": 2}, intersections=intersections)


def test_intersection_report_equals_binary_report_of_the_cells():
    rng = np.random.default_rng(5)
    n = 400
    p = np.round(rng.random(n), 2)
    y = (rng.random(n) < 0.2 + 0.6 * p).astype(np.int64)
    race, gender = rng.integers(-1, 3, n), rng.integers(0, 2, n)
    gender[rng.random(n) < 0.05] = -1
    cells = np.where((race >= 0) & (gender >= 0), race * 2 + gender, -1)
    attributes = {"race": 3, "gender": 2}
    groups = {"race": torch.from_numpy(race), "gender": torch.from_numpy(gender)}
    metric = FairnessMetrics(attributes, intersections=[["race", "gender"]])
    metric.update(torch.from_numpy(p[:150]), torch.from_numpy(y[:150]),
                  {k: v[:150] for k, v in groups.items()})
    metric.update(torch.from_numpy(p[150:]), torch.from_numpy(y[150:]),
                  {k: v[150:] for k, v in groups.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ours = metric.compute()
        expected = ref_report(
            p, y, {"race": race, "gender": gender, "race*gender": cells},
            {**attributes, "race*gender": 6},
        )
    assert list(ours) == list(expected)
    for key, value in expected.items():
        assert _value(ours, key) == pytest.approx(value, abs=1e-9, nan_ok=True), key
    # the groups helper gives the same cells to other code (Sinkhorn term, DBPM scope)
    added = add_intersection_groups(groups, attributes, [("race", "gender")])
    assert added["race*gender"].tolist() == cells.tolist()


def test_intersections_with_a_multiclass_task():
    p, y, groups, c, g = multiclass_case(9)
    rng = np.random.default_rng(9)
    sex = rng.integers(0, 2, len(y))
    cells = groups * 2 + sex
    ours = FM.fairness_metrics(
        torch.from_numpy(p), torch.from_numpy(y),
        {"race": torch.from_numpy(groups), "sex": torch.from_numpy(sex)},
        {"race": g, "sex": 2}, task="multiclass", num_classes=c, intersections=["race*sex"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        direct = FM.fairness_metrics(
            torch.from_numpy(p), torch.from_numpy(y), {"cell": torch.from_numpy(cells)},
            {"cell": 2 * g}, task="multiclass", num_classes=c,
        )
    for key, value in direct.items():
        if key.startswith("cell/"):
            torch.testing.assert_close(ours["race*sex/" + key[5:]], value, equal_nan=True)
