"""The strategy objects of DBPM: the mixture rule against scikit-learn and closed forms, the
AUROC against scikit-learn, memory, exact resume for every strategy, and the YAML forms."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

import fairvlm_lightning.mining.miner as miner_module
from fairvlm_lightning.callbacks import DynamicBadPairMining
from fairvlm_lightning.mining import (
    BadPairMiner,
    EmaLoss,
    GaussianMixtureRule,
    MeanLoss,
    MeanStd,
    MedianMad,
    MinerSpec,
    Scope,
    ThresholdRule,
    fit_two_gaussians,
    posterior_bad,
)
from fairvlm_lightning.mining.scoring import auroc, export_flagged, truth_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "fairvlm_lightning" / "configs"


def _sklearn_mixture(x: np.ndarray) -> GaussianMixture:
    gm = GaussianMixture(2, tol=1e-10, max_iter=2000, random_state=0, reg_covar=0.0)
    return gm.fit(x.reshape(-1, 1))


def _sorted_params(gm: GaussianMixture) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(gm.means_.ravel())
    return gm.means_.ravel()[order], gm.covariances_.ravel()[order], gm.weights_[order]


def _two_clusters(rng, n=4000, bad_rate=0.15, clean=(1.0, 0.2), bad=(3.0, 0.3)):
    is_bad = rng.random(n) < bad_rate
    x = np.where(is_bad, rng.normal(bad[0], bad[1], n), rng.normal(clean[0], clean[1], n))
    return x, is_bad


# ---------------------------------------------------------------------- the mixture fit
def test_mixture_closed_form_tiny_case():
    # clusters {-1, 1} and {9, 11}, 50 each: means 0 and 10, variances 1, weights 1/2
    x = torch.tensor([-1.0, 1.0] * 25 + [9.0, 11.0] * 25, dtype=torch.float64)
    fit = fit_two_gaussians(x, torch.full((100,), -1), 0)
    assert fit.mean_clean[0].item() == pytest.approx(0.0, abs=1e-9)
    assert fit.mean_bad[0].item() == pytest.approx(10.0, abs=1e-9)
    assert fit.var_clean[0].item() == pytest.approx(1.0, rel=1e-9)
    assert fit.var_bad[0].item() == pytest.approx(1.0, rel=1e-9)
    assert fit.weight_bad[0].item() == pytest.approx(0.5, abs=1e-12)
    # equal weights and variances: logit p_bad(x) = (m1 - m0) (x - (m0 + m1) / 2) / v
    grid = torch.linspace(3.0, 7.0, 9, dtype=torch.float64)
    p = posterior_bad(grid, fit.as_tensors(), torch.zeros(9, dtype=torch.long))
    expected = 1.0 / (1.0 + torch.exp(-10.0 * (grid - 5.0)))
    torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-12)


def test_mixture_matches_sklearn_on_well_separated_data():
    rng = np.random.default_rng(0)
    x, _ = _two_clusters(rng)
    fit = fit_two_gaussians(torch.as_tensor(x), torch.full((len(x),), -1), 0)
    means, variances, weights = _sorted_params(_sklearn_mixture(x))
    got_means = [fit.mean_clean[0].item(), fit.mean_bad[0].item()]
    got_vars = [fit.var_clean[0].item(), fit.var_bad[0].item()]
    np.testing.assert_allclose(got_means, means, atol=2e-3)
    np.testing.assert_allclose(got_vars, variances, rtol=2e-2)
    assert fit.weight_bad[0].item() == pytest.approx(weights[1], abs=2e-3)
    grid = np.linspace(0.0, 4.0, 81)
    gm = _sklearn_mixture(x)
    bad_component = int(np.argmax(gm.means_.ravel()))
    ref = gm.predict_proba(grid.reshape(-1, 1))[:, bad_component]
    p = posterior_bad(
        torch.as_tensor(grid), fit.as_tensors(), torch.zeros(len(grid), dtype=torch.long)
    )
    np.testing.assert_allclose(p.numpy(), ref, atol=2e-2)


def test_mixture_per_cell_matches_sklearn_per_cell():
    rng = np.random.default_rng(1)
    xa, _ = _two_clusters(rng, n=3000, clean=(1.0, 0.1), bad=(2.0, 0.15))
    xb, _ = _two_clusters(rng, n=2000, bad_rate=0.25, clean=(3.0, 0.2), bad=(5.0, 0.3))
    x = np.concatenate([xa, xb, [7.0, 8.0]])  # two values of no cell (only in the global fit)
    cells = np.concatenate([np.zeros(len(xa)), np.ones(len(xb)), [-1, -1]]).astype(np.int64)
    fit = fit_two_gaussians(torch.as_tensor(x), torch.as_tensor(cells), 2)
    assert fit.count.tolist() == [len(xa), len(xb), len(x)]
    for c, values in enumerate((xa, xb)):
        means, variances, weights = _sorted_params(_sklearn_mixture(values))
        got = [fit.mean_clean[c].item(), fit.mean_bad[c].item()]
        np.testing.assert_allclose(got, means, atol=5e-3)
        np.testing.assert_allclose(
            [fit.var_clean[c].item(), fit.var_bad[c].item()], variances, rtol=5e-2
        )
        assert fit.weight_bad[c].item() == pytest.approx(weights[1], abs=5e-3)


def test_mixture_degenerate_rows_flag_nothing():
    x = torch.tensor([2.0] * 10 + [math.nan] * 3, dtype=torch.float64)
    fit = fit_two_gaussians(x, torch.full((13,), -1), 0)
    assert fit.weight_bad[0].item() == 0.0 and fit.count[0].item() == 10
    p = posterior_bad(
        torch.tensor([2.0, 5.0], dtype=torch.float64),
        fit.as_tensors(),
        torch.zeros(2, dtype=torch.long),
    )
    assert p.tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------- the rule in the miner
def _stream(x_per_pair: np.ndarray, epochs: int, seed: int = 0, noise: float = 0.02):
    rng = np.random.default_rng(seed)
    n = len(x_per_pair)
    out = []
    for _ in range(epochs):
        losses = x_per_pair + noise * rng.standard_normal(n)
        order = rng.permutation(n)
        out.append([(order[s : s + 64], losses[order[s : s + 64]]) for s in range(0, n, 64)])
    return out


def _drive(miner, epochs, groups=None):
    for batches in epochs:
        for index, losses in batches:
            miner.record(torch.as_tensor(index), torch.as_tensor(losses, dtype=torch.float32))
        miner.end_epoch(groups=groups)
    return miner


@pytest.mark.parametrize("weighting", ["zero", "posterior"])
def test_mixture_rule_flags_and_weights_match_sklearn(weighting):
    rng = np.random.default_rng(2)
    x, is_bad = _two_clusters(rng, n=3000)
    miner = _drive(
        BadPairMiner(len(x), rule=GaussianMixtureRule(weighting=weighting)), _stream(x, 3)
    )
    stat = miner.history_mean.double().numpy()
    gm = _sklearn_mixture(stat)
    p_ref = gm.predict_proba(stat.reshape(-1, 1))[:, int(np.argmax(gm.means_.ravel()))]
    flags = miner.faulty_mask.numpy()
    clear = np.abs(p_ref - 0.5) > 0.05  # pairs near the boundary may go either way
    np.testing.assert_array_equal(flags[clear], p_ref[clear] > 0.5)
    assert miner.num_noisy == 0 and (flags == is_bad).mean() > 0.99
    index = torch.arange(len(x))
    w = miner.weights(index, torch.ones(len(x))).numpy()
    if weighting == "zero":
        np.testing.assert_array_equal(w, np.where(flags, 0.0, 1.0))
        assert miner.bytes_per_pair == 15.0
    else:  # every pair with history: 1 - p_bad, quantised to 1/255
        np.testing.assert_allclose(w, 1.0 - p_ref, atol=1.0 / 255 + 0.02)
        assert np.all(w[~flags] > 0.45) and np.all(w[flags] < 0.55)
        assert miner.bytes_per_pair == 16.0


def test_mixture_rule_per_group_finds_bad_pairs_a_global_mixture_misses():
    # group 1's clean pairs are as hard as group 0's bad ones
    rng = np.random.default_rng(3)
    xa, bad_a = _two_clusters(rng, n=1500, clean=(1.0, 0.1), bad=(2.0, 0.1))
    xb, bad_b = _two_clusters(rng, n=1500, clean=(2.0, 0.1), bad=(3.0, 0.1))
    x, is_bad = np.concatenate([xa, xb]), np.concatenate([bad_a, bad_b])
    race = torch.as_tensor(np.repeat([0, 1], 1500))
    glob = _drive(BadPairMiner(3000, rule=GaussianMixtureRule()), _stream(x, 3))
    own = _drive(
        BadPairMiner(3000, rule=GaussianMixtureRule(), scope=Scope(("race",))),
        _stream(x, 3),
        groups={"race": race},
    )
    assert (own.faulty_mask.numpy() == is_bad).mean() > 0.98
    assert (glob.faulty_mask.numpy() == is_bad).mean() < 0.9
    assert [row["group"] for row in own.group_table] == [(0,), (1,)]
    assert all(row["own_threshold"] for row in own.group_table)
    assert own.group_table[1]["mean_bad"] == pytest.approx(3.0, abs=0.05)


def test_mixture_rule_small_and_unknown_groups_use_the_global_fit():
    rng = np.random.default_rng(4)
    x, _ = _two_clusters(rng, n=1000)
    race = np.zeros(1000, dtype=np.int64)
    race[:30] = 1  # too small for its own fit
    race[30:40] = -1
    miner = _drive(
        BadPairMiner(1000, rule=GaussianMixtureRule(), scope=Scope(("race",), min_cell_size=50)),
        _stream(x, 2),
        groups={"race": torch.as_tensor(race)},
    )
    by_group = {row["group"]: row for row in miner.group_table}
    assert by_group[(0,)]["own_threshold"] and not by_group[(1,)]["own_threshold"]
    # the fallback row shows the global fit: same numbers a global miner gets
    glob = _drive(BadPairMiner(1000, rule=GaussianMixtureRule()), _stream(x, 2))
    glob_p = glob.fit.cell_params
    assert by_group[(1,)]["mean_bad"] == pytest.approx(float(glob_p["mean_bad"][0]), rel=1e-12)
    np.testing.assert_array_equal(miner.faulty_mask[:40].numpy(), glob.faulty_mask[:40].numpy())


def test_mixture_rule_threshold_and_no_flags_during_warmup():
    rng = np.random.default_rng(5)
    x, _ = _two_clusters(rng, n=800, clean=(1.0, 0.3), bad=(2.0, 0.3))  # overlapping
    counts = []
    for threshold in (0.1, 0.5, 0.99):
        rule = GaussianMixtureRule(threshold=threshold, weighting="posterior")
        miner = BadPairMiner(800, warmup_epochs=2, rule=rule)
        epochs = _stream(x, 2)
        _drive(miner, epochs[:1])
        assert miner.num_faulty == 0 and torch.all(
            miner.weights(torch.arange(800), torch.ones(800)) == 1
        )
        _drive(miner, epochs[1:])
        counts.append(miner.num_faulty)
    assert counts[0] > counts[1] > counts[2] > 0


# ---------------------------------------------------------------------- every strategy
STRATEGIES = {
    "paper": dict(),
    "ema-median-race": dict(
        statistic=EmaLoss(0.3),
        rule=ThresholdRule(2.0, 2.0, MedianMad(), "gaussian", 1.0),
        scope=Scope(("race",), 30),
    ),
    "ema-threshold-zero": dict(
        statistic=EmaLoss(), rule=ThresholdRule(math.inf, 1.5, MeanStd(), "zero")
    ),
    "mixture-zero": dict(rule=GaussianMixtureRule()),
    "ema-mixture-posterior-race": dict(
        statistic=EmaLoss(), rule=GaussianMixtureRule(0.5, "posterior"), scope=Scope(("race",), 30)
    ),
    "mixture-posterior-race-gender": dict(
        rule=GaussianMixtureRule(0.4, "posterior", bins=64), scope=Scope(("race", "gender"), 20)
    ),
}


def _grouped(n=600, epochs=4, seed=6):
    rng = np.random.default_rng(seed)
    race = np.where(np.arange(n) % 3 == 0, 1, 0)
    race[:10] = -1
    gender = rng.integers(0, 2, n)
    base = np.where(race == 1, 2.0, 1.0)
    bad = rng.random(n) < 0.12
    out = []
    for e in range(epochs):
        losses = base + 0.1 * rng.standard_normal(n) + 1.0 * bad
        order = rng.permutation(n)[: n - (37 if e == 1 else 0)]
        out.append(
            [(order[s : s + 50], losses[order[s : s + 50]]) for s in range(0, len(order), 50)]
        )
    return out, {"race": torch.as_tensor(race), "gender": torch.as_tensor(gender)}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_resumes_exactly_and_stays_within_16_bytes(name, tmp_path, monkeypatch):
    monkeypatch.setattr(miner_module, "_CHUNK", 128)  # several chunks
    epochs, groups = _grouped()
    n = len(groups["race"])
    kwargs = STRATEGIES[name]
    full = _drive(BadPairMiner(n, **kwargs), epochs, groups)
    assert full.bytes_per_pair <= 16
    assert full.num_faulty > 0
    first = _drive(BadPairMiner(n, **kwargs), epochs[:2], groups)
    torch.save(first.state_dict(), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(isinstance(v, (torch.Tensor, int, float)) for v in state.values())
    resumed = BadPairMiner(n, **kwargs)
    resumed.load_state_dict(state)
    assert resumed.group_table == first.group_table
    same = {k: v == first.summary()[k] or v != v for k, v in resumed.summary().items()}
    assert all(same.values()), same
    for key, value in first.fit.cell_params.items():
        assert torch.equal(resumed.fit.cell_params[key], value), key
    index = torch.arange(n)
    losses = torch.linspace(0.5, 3.0, n)
    assert torch.equal(resumed.weights(index, losses), first.weights(index, losses))
    _drive(resumed, epochs[2:], groups)
    a, b = resumed.state_dict(), full.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), key


def test_resume_refuses_another_rule_or_statistic():
    state = _drive(BadPairMiner(10, rule=GaussianMixtureRule()), [[(np.arange(10), np.ones(10))]])
    state = state.state_dict()
    with pytest.raises(ValueError, match="saved with rule GaussianMixtureRule"):
        BadPairMiner(10).load_state_dict(state)
    with pytest.raises(ValueError, match="statistic='mean'"):
        BadPairMiner(10, statistic=EmaLoss(), rule=GaussianMixtureRule()).load_state_dict(state)
    with pytest.raises(ValueError, match="keep_weight"):
        BadPairMiner(10, rule=GaussianMixtureRule(weighting="posterior")).load_state_dict(state)


def test_flat_options_build_the_same_objects():
    flat = BadPairMiner(
        10,
        statistic="ema",
        ema_decay=0.3,
        location="median",
        scope=("race",),
        min_cell_size=7,
        beta_noisy=1.0,
        beta_faulty=2.0,
        weighting="zero",
        max_weight=2.0,
    )
    objects = BadPairMiner(
        10,
        statistic=EmaLoss(0.3),
        rule=ThresholdRule(1.0, 2.0, MedianMad(), "zero", 2.0),
        scope=Scope(("race",), 7),
    )
    assert flat.spec == objects.spec
    assert MinerSpec.paper() == MinerSpec() == BadPairMiner.paper(5).spec
    assert MinerSpec.paper().statistic == MeanLoss()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(rule=GaussianMixtureRule(), beta_faulty=2.0), ValueError, "belong to the rule"),
        (dict(statistic=EmaLoss(), ema_decay=0.2), ValueError, "ema_decay is given twice"),
        (dict(scope=Scope(("race",)), min_cell_size=3), ValueError, "min_cell_size is given"),
        (dict(bogus=1), TypeError, r"unexpected DBPM options \['bogus'\]"),
        (dict(rule="zero"), TypeError, "rule must be a MiningRule"),
        (dict(statistic=3), TypeError, "statistic must be"),
    ],
)
def test_conflicting_or_unknown_options_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BadPairMiner(10, **kwargs)


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: GaussianMixtureRule(threshold=1.0), ValueError, r"threshold must be in \[0, 1\)"),
        (lambda: GaussianMixtureRule(threshold="a"), TypeError, "threshold must be a number"),
        (lambda: GaussianMixtureRule(weighting="gaussian"), ValueError, "weighting must be one of"),
        (lambda: GaussianMixtureRule(iterations=0), ValueError, "iterations must be >= 1"),
        (lambda: GaussianMixtureRule(bins=4), ValueError, "bins must be >= 8"),
        (lambda: EmaLoss(1.5), ValueError, r"ema_decay must be in \(0, 1\]"),
        (lambda: ThresholdRule(location="median"), TypeError, "location must be MeanStd"),
        (lambda: Scope("race"), TypeError, "scope must be a sequence"),
        (lambda: MinerSpec(warmup_epochs=-1), ValueError, "warmup_epochs must be >= 0"),
        (lambda: DynamicBadPairMining(miner="paper"), TypeError, "miner must be a MinerSpec"),
        (lambda: DynamicBadPairMining(MinerSpec(), beta_faulty=1.0), ValueError, "not both"),
    ],
)
def test_bad_strategy_arguments_raise(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# ---------------------------------------------------------------------- scoring
def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(7)
    scores = np.round(rng.normal(size=500), 1)  # many ties
    labels = rng.random(500) < 0.3
    scores[labels] += 0.5
    got = auroc(torch.as_tensor(scores), torch.as_tensor(labels))
    assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1])) == 0.5
    assert math.isnan(auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])))


def test_truth_metrics_per_group_auroc_matches_sklearn():
    rng = np.random.default_rng(8)
    n = 400
    stat = rng.normal(size=n)
    truth = (rng.random(n) < 0.2).astype(np.int8)
    stat[truth == 1] += 1.0
    race = rng.integers(-1, 3, n).astype(np.int8)
    has = rng.random(n) < 0.9
    truth[~has & (rng.random(n) < 0.5)] = -1
    m = truth_metrics(
        torch.as_tensor(stat > 1.0),
        torch.as_tensor(has),
        torch.as_tensor(truth),
        torch.as_tensor(stat, dtype=torch.float32),
        {"race": torch.as_tensor(race)},
        ("race",),
        "dbpm",
    )
    known = has & (truth >= 0)
    assert m["dbpm/auroc"] == pytest.approx(roc_auc_score(truth[known], stat[known]), abs=1e-6)
    for g in (-1, 0, 1, 2):
        sel = known & (race == g)
        name = "unknown" if g < 0 else str(g)
        ref = roc_auc_score(truth[sel], stat[sel])
        assert m[f"dbpm/race/auroc_group_{name}"] == pytest.approx(ref, abs=1e-6)
        flagged = sel & (stat > 1.0)
        assert m[f"dbpm/race/precision_group_{name}"] == pytest.approx(
            (flagged & (truth == 1)).sum() / flagged.sum()
        )


def test_export_is_atomic_and_complete(tmp_path, monkeypatch):
    flags = torch.tensor([0, 2, 1, 0], dtype=torch.int8)
    path = export_flagged(
        tmp_path / "f.csv",
        flags,
        torch.tensor([1.0, 3.0, 0.1, 1.0]),
        torch.tensor([2, 2, 1, 0]),
        {"race": torch.tensor([0, 1, -1, 2])},
    )
    assert path.read_text().splitlines() == [
        "index,history_mean,num_epochs,flag,race",
        "1,3.0,2,faulty,1",
        "2,0.10000000149011612,1,noisy,-1",
    ]
    # a failure while writing leaves the previous file and no temporary file behind
    import fairvlm_lightning.mining.scoring as scoring

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(scoring.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        export_flagged(
            tmp_path / "f.csv", torch.zeros(4, dtype=torch.int8), torch.zeros(4), torch.zeros(4), {}
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]
    assert path.read_text().startswith("index,history_mean")


# ---------------------------------------------------------------------- YAML / LightningCLI
SNIPPETS = {
    "paper": (
        """
        miner:
          class_path: fairvlm_lightning.mining.MinerSpec
          init_args:
            warmup_epochs: 1
            statistic: {class_path: fairvlm_lightning.mining.MeanLoss}
            rule:
              class_path: fairvlm_lightning.mining.ThresholdRule
              init_args: {beta_noisy: 3.0, beta_faulty: 3.0, weighting: gaussian_pdf}
        """,
        MinerSpec.paper(),
    ),
    "ema_threshold": (
        """
        miner:
          class_path: fairvlm_lightning.mining.MinerSpec
          init_args:
            warmup_epochs: 2
            statistic: {class_path: fairvlm_lightning.mining.EmaLoss, init_args: {decay: 0.5}}
            rule:
              class_path: fairvlm_lightning.mining.ThresholdRule
              init_args: {beta_noisy: .inf, beta_faulty: 1.5, weighting: zero}
        """,
        MinerSpec(2, EmaLoss(0.5), ThresholdRule(math.inf, 1.5, weighting="zero")),
    ),
    "ema_mixture_race": (
        """
        miner:
          class_path: fairvlm_lightning.mining.MinerSpec
          init_args:
            warmup_epochs: 2
            statistic: {class_path: fairvlm_lightning.mining.EmaLoss, init_args: {decay: 0.5}}
            rule:
              class_path: fairvlm_lightning.mining.GaussianMixtureRule
              init_args: {threshold: 0.5, weighting: posterior}
            scope:
              class_path: fairvlm_lightning.mining.Scope
              init_args: {attributes: [race], min_cell_size: 50}
        """,
        MinerSpec(2, EmaLoss(0.5), GaussianMixtureRule(0.5, "posterior"), Scope(["race"], 50)),
    ),
}


def _cli_callback(tmp_path, monkeypatch, synthetic_root, synthetic_kwargs, extra_yaml=None):
    from synthetic_args import synthetic_overrides

    from fairvlm_lightning.app.cli import FairVLMCLI

    monkeypatch.setattr(sys, "argv", ["fairvlm"])
    args = ["--config", str(CONFIGS / "synthetic_dbpm.yaml")]
    if extra_yaml is not None:
        args += ["--config", str(extra_yaml)]
    cli = FairVLMCLI(
        args=[*args, *synthetic_overrides(synthetic_root, synthetic_kwargs)], run=False
    )
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, DynamicBadPairMining)]
    return cb


@pytest.mark.parametrize("name", list(SNIPPETS))
def test_yaml_snippets_configure_the_callback(
    name, tmp_path, monkeypatch, synthetic_root, synthetic_kwargs
):
    body, expected = SNIPPETS[name]
    indented = body.strip("\n")  # already indented under init_args
    yaml_text = (
        "trainer:\n  callbacks:\n"
        "    - class_path: fairvlm_lightning.callbacks.DynamicBadPairMining\n"
        "      init_args:\n" + indented + "\n        group_keys: [race]\n"
    )
    path = tmp_path / "dbpm.yaml"
    path.write_text(yaml_text)
    cb = _cli_callback(tmp_path, monkeypatch, synthetic_root, synthetic_kwargs, path)
    assert cb.spec == expected
    assert cb.group_keys == ("race",)


def test_shipped_config_keeps_its_values(tmp_path, monkeypatch, synthetic_root, synthetic_kwargs):
    cb = _cli_callback(tmp_path, monkeypatch, synthetic_root, synthetic_kwargs)
    # synthetic_dbpm.yaml: warmup 2, EMA statistic, beta inf/1.5, weighting zero (as flat options)
    old = MinerSpec.from_options(
        {"warmup_epochs": 2, "statistic": "ema", "ema_decay": 0.5, "beta_noisy": math.inf,
         "beta_faulty": 1.5, "weighting": "zero"}
    )
    assert cb.spec == old
    assert cb.truth_key == "is_bad_pair"


def test_min_group_size_is_the_deprecated_name_of_min_cell_size():
    """DBPM's cell fallback size is ``min_cell_size``; the old keyword warns and means the same."""
    with pytest.warns(DeprecationWarning, match="min_cell_size"):
        old = Scope(("race",), min_group_size=7)
    assert old == Scope(("race",), min_cell_size=7) and old.min_cell_size == 7
    with pytest.warns(DeprecationWarning, match="min_cell_size"):
        flat = BadPairMiner(10, scope=("race",), min_group_size=7)
    assert flat.spec == BadPairMiner(10, scope=Scope(("race",), 7)).spec
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="given twice"):
        BadPairMiner(10, scope=("race",), min_group_size=7, min_cell_size=7)
