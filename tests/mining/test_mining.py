import math

import numpy as np
import pytest
import scipy.stats
import torch
from test_mining_reference import reference_dbpm

import fairvlm_lightning.mining as mining
from fairvlm_lightning.mining import FAULTY, NOISY, BadPairMiner

N = 300
NOISY_PAIRS = [3, 50, 120]
FAULTY_PAIRS = [7, 99, 150, 299]


def planted_stream(num_epochs=4, seed=0, batch_size=32, shuffle=True):
    """Pairs ~1 +- 0.05; NOISY_PAIRS consistently ~0.2, FAULTY_PAIRS consistently ~1.8.

    The loss values depend on ``seed`` only; ``shuffle`` and ``batch_size`` change the order.
    """
    rng = np.random.default_rng(seed)
    order_rng = np.random.default_rng(seed + 1000)
    epochs = []
    for _ in range(num_epochs):
        losses = 1.0 + 0.05 * rng.standard_normal(N)
        losses[NOISY_PAIRS] = 0.2 + 0.01 * rng.standard_normal(len(NOISY_PAIRS))
        losses[FAULTY_PAIRS] = 1.8 + 0.01 * rng.standard_normal(len(FAULTY_PAIRS))
        order = order_rng.permutation(N) if shuffle else np.arange(N)
        epochs.append(
            [
                (order[s : s + batch_size], losses[order[s : s + batch_size]])
                for s in range(0, N, batch_size)
            ]
        )
    return epochs


def drive(miner, epochs, after_epoch=None):
    for e, batches in enumerate(epochs):
        for index, losses in batches:
            miner.record(torch.as_tensor(index), torch.as_tensor(losses, dtype=torch.float32))
        miner.end_epoch()
        if after_epoch is not None:
            after_epoch(e, miner)
    return miner


def assert_matches_reference(miner, ref):
    np.testing.assert_array_equal(miner.flags.numpy(), ref["flags"])
    np.testing.assert_array_equal(miner.history_count.numpy(), ref["count"])
    np.testing.assert_allclose(miner.history_mean.numpy(), ref["history_mean"], rtol=1e-6)
    assert miner.mu == pytest.approx(ref["mu"], rel=1e-6)
    assert miner.sigma == pytest.approx(ref["sigma"], rel=1e-5)
    assert miner.threshold_noisy == pytest.approx(ref["lo"], rel=1e-5)
    assert miner.threshold_faulty == pytest.approx(ref["hi"], rel=1e-5)
    assert miner.num_noisy == int((ref["flags"] == 1).sum())
    assert miner.num_faulty == int((ref["flags"] == 2).sum())


def test_planted_outliers_flagged_exactly_after_warmup():
    epochs = planted_stream()
    ref = reference_dbpm(epochs, N, warmup_epochs=2)
    seen_flags = []

    def check(e, miner):
        assert_matches_reference(miner, ref[e])
        seen_flags.append(miner.flags.clone())

    drive(BadPairMiner(N, warmup_epochs=2), epochs, check)
    assert all(int(f.count_nonzero()) == 0 for f in seen_flags[:1])  # warm-up: no flags
    for flags in seen_flags[1:]:
        assert sorted(torch.nonzero(flags == NOISY).flatten().tolist()) == NOISY_PAIRS
        assert sorted(torch.nonzero(flags == FAULTY).flatten().tolist()) == FAULTY_PAIRS


def test_shuffled_order_gives_same_flags_and_history():
    a = drive(BadPairMiner(N), planted_stream(shuffle=False, batch_size=50))
    b = drive(BadPairMiner(N), planted_stream(shuffle=True, batch_size=7))
    assert torch.equal(a.flags, b.flags)
    assert torch.equal(a.state_dict()["history_sum"], b.state_dict()["history_sum"])
    assert a.num_faulty == len(FAULTY_PAIRS) and a.num_noisy == len(NOISY_PAIRS)


def test_warmup_zero_behaves_like_one_and_longer_warmup_delays_flags():
    epochs = planted_stream(num_epochs=3)
    flags0, flags1, flags3 = [], [], []
    drive(BadPairMiner(N, warmup_epochs=0), epochs, lambda e, m: flags0.append(m.num_faulty))
    drive(BadPairMiner(N, warmup_epochs=1), epochs, lambda e, m: flags1.append(m.num_faulty))
    drive(BadPairMiner(N, warmup_epochs=3), epochs, lambda e, m: flags3.append(m.num_faulty))
    assert flags0 == flags1 == [4, 4, 4]
    assert flags3 == [0, 0, 4]


def test_pair_seen_twice_in_an_epoch_is_averaged():
    m = BadPairMiner(3)
    m.record(torch.tensor([0, 1, 0]), torch.tensor([1.0, 4.0, 3.0]))
    m.record(torch.tensor([0]), torch.tensor([8.0]))
    m.end_epoch()
    m.record(torch.tensor([0, 1]), torch.tensor([2.0, 6.0]))
    m.end_epoch()
    # pair 0: epoch means 4 and 2 -> 3; pair 1: 4 and 6 -> 5; pair 2 never seen
    assert m.history_mean[:2].tolist() == [3.0, 5.0]
    assert math.isnan(m.history_mean[2])
    assert m.history_count.tolist() == [2, 2, 0]
    assert m.mu == 4.0 and m.sigma == 1.0
    assert m.num_with_history == 2 and m.num_seen_last_epoch == 2


def test_unseen_pairs_keep_no_history_and_are_never_flagged():
    # only the first half is ever seen (limit_train_batches-like); pairs 0..149
    epochs = [
        [(i, loss) for i, loss in ep if i.max() < 150]
        for ep in planted_stream(batch_size=10, shuffle=False)
    ]
    miner = drive(BadPairMiner(N), epochs)
    ref = reference_dbpm(epochs, N)[-1]
    assert_matches_reference(miner, ref)
    assert not miner.has_history[150:].any()
    assert not miner.flagged_mask[150:].any()
    assert torch.isnan(miner.history_mean[150:]).all()
    assert miner.num_with_history == 150


def test_non_finite_losses_are_skipped_and_counted():
    epochs = planted_stream(num_epochs=3)
    # poison some losses: pair p only has NaN in epoch 1; three more in epoch 2
    idx, losses = epochs[1][0]
    p = int(idx[0])
    losses = losses.copy()
    losses[0] = np.nan
    epochs[1][0] = (idx, losses)
    idx, losses = epochs[2][0]
    losses = losses.copy()
    losses[:3] = [np.inf, -np.inf, np.nan]
    epochs[2][0] = (idx, losses)
    miner = drive(BadPairMiner(N), epochs)
    ref = reference_dbpm(epochs, N)[-1]
    assert ref["nonfinite"] == 4
    assert miner.num_nonfinite == 4
    assert math.isfinite(miner.mu) and math.isfinite(miner.sigma)
    assert_matches_reference(miner, ref)
    assert miner.history_count[p] == ref["count"][p] < 3


@pytest.mark.parametrize("weighting", ["gaussian_pdf", "gaussian", "zero"])
def test_weights_match_closed_forms(weighting):
    miner = drive(BadPairMiner(N, weighting=weighting), planted_stream(num_epochs=2))
    index = torch.tensor([0, 3, 7, 99, 1, 150])
    losses = torch.tensor([1.0, 0.21, 1.2, 2.5, 0.9, 1.1], requires_grad=True)
    w = miner.weights(index, losses)
    assert not w.requires_grad and w.dtype == losses.dtype and w.shape == (6,)
    flagged = np.isin(index.numpy(), NOISY_PAIRS + FAULTY_PAIRS)
    x = losses.detach().double().numpy()
    if weighting == "gaussian_pdf":
        expected = scipy.stats.norm(miner.mu, miner.sigma).pdf(x)
    elif weighting == "gaussian":
        expected = np.exp(-((x - miner.mu) ** 2) / (2 * miner.sigma**2))
    else:
        expected = np.zeros_like(x)
    expected = np.where(flagged, expected, 1.0)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5, atol=1e-30)


def test_gaussian_pdf_can_exceed_one_like_the_paper():
    miner = drive(BadPairMiner(N), planted_stream(num_epochs=2))
    assert miner.sigma < 1 / math.sqrt(2 * math.pi)  # so the density at mu exceeds 1
    w = miner.weights(
        torch.tensor([7], dtype=torch.int32), torch.tensor([miner.mu], dtype=torch.float64)
    )
    assert w.dtype == torch.float64
    expected = scipy.stats.norm(miner.mu, miner.sigma).pdf(miner.mu)
    assert expected > 1
    assert float(w) == pytest.approx(expected, rel=1e-6)


def test_no_flags_before_any_epoch_gives_unit_weights():
    miner = BadPairMiner(10)
    w = miner.weights(torch.arange(4), torch.rand(4, dtype=torch.float16))
    assert w.dtype == torch.float16 and w.tolist() == [1.0] * 4
    assert math.isnan(miner.mu) and miner.num_with_history == 0


def test_inf_beta_disables_one_side():
    miner = drive(BadPairMiner(N, beta_noisy=math.inf), planted_stream(num_epochs=2))
    assert miner.num_noisy == 0 and miner.num_faulty == len(FAULTY_PAIRS)
    assert miner.threshold_noisy == -math.inf


def test_end_epoch_in_chunks_matches_single_chunk(monkeypatch):
    epochs = planted_stream(num_epochs=3)
    whole = drive(BadPairMiner(N), epochs)
    monkeypatch.setattr(mining.miner, "_CHUNK", 7)
    chunked = drive(BadPairMiner(N), epochs)
    assert torch.equal(whole.flags, chunked.flags)
    np.testing.assert_array_equal(whole.history_mean.numpy(), chunked.history_mean.numpy())
    assert chunked.mu == pytest.approx(whole.mu, rel=1e-12)
    assert chunked.sigma == pytest.approx(whole.sigma, rel=1e-9)


def test_memory_is_at_most_16_bytes_per_pair_whatever_the_epochs():
    miner = BadPairMiner(1000)

    def per_pair_bytes(m):
        # every tensor the object holds, found independently of the miner's own accounting
        return (
            sum(
                t.nbytes
                for t in vars(m).values()
                if isinstance(t, torch.Tensor) and t.numel() >= 1000
            )
            / 1000
        )

    before = per_pair_bytes(miner)
    for _ in range(6):
        miner.record(torch.arange(1000), torch.rand(1000))
        miner.end_epoch()
    assert per_pair_bytes(miner) == before == miner.bytes_per_pair == 15.0
    assert miner.nbytes == 15_000


def test_state_dict_round_trip_weights_only(tmp_path):
    epochs = planted_stream(num_epochs=4)
    full = drive(BadPairMiner(N), epochs)

    first = drive(BadPairMiner(N), epochs[:2])
    # half of epoch 2 recorded before saving (mid-epoch checkpoint)
    for index, losses in epochs[2][:4]:
        first.record(torch.as_tensor(index), torch.as_tensor(losses, dtype=torch.float32))
    first.record(torch.tensor([0]), torch.tensor([float("nan")]))
    path = tmp_path / "miner.pt"
    torch.save(first.state_dict(), path)
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, (torch.Tensor, int, float)) for v in state.values())

    resumed = BadPairMiner(N)
    resumed.load_state_dict(state)
    assert resumed.num_nonfinite == 1 and resumed.epochs_completed == 2
    assert torch.equal(resumed.flags, first.flags) and resumed.mu == first.mu
    for index, losses in epochs[2][4:]:
        resumed.record(torch.as_tensor(index), torch.as_tensor(losses, dtype=torch.float32))
    resumed.end_epoch()
    drive(resumed, epochs[3:])
    for key in ("history_sum", "history_count", "flags"):
        assert torch.equal(resumed.state_dict()[key], full.state_dict()[key]), key
    assert resumed.mu == full.mu and resumed.sigma == full.sigma
    assert resumed.num_nonfinite == 1


def test_load_state_dict_errors_name_the_problem():
    state = BadPairMiner(10).state_dict()
    with pytest.raises(ValueError, match="num_pairs=10 but this miner has num_pairs=11"):
        BadPairMiner(11).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys.*flags"):
        BadPairMiner(10).load_state_dict({k: v for k, v in state.items() if k != "flags"})
    bad = dict(state, history_count=torch.zeros(10, dtype=torch.int64))
    with pytest.raises(ValueError, match="history_count"):
        BadPairMiner(10).load_state_dict(bad)
    with pytest.raises(TypeError, match="mapping"):
        BadPairMiner(10).load_state_dict([1, 2])


@pytest.mark.parametrize(
    ("index", "losses", "exc", "match"),
    [
        (torch.tensor([0.0, 1.0]), torch.ones(2), TypeError, "index must be an integer"),
        (torch.tensor([0, 1]), torch.ones(2, dtype=torch.int64), TypeError, "floating-point"),
        ([0, 1], torch.ones(2), TypeError, "index must be a torch.Tensor"),
        (torch.tensor([0, 1]), [1.0, 2.0], TypeError, "losses must be a torch.Tensor"),
        (
            torch.tensor([0, 1, 2]),
            torch.ones(2),
            ValueError,
            r"index shape \(3,\) and losses shape \(2,\)",
        ),
        (torch.tensor([[0, 1]]), torch.ones(1, 2), ValueError, "1-D"),
        (torch.tensor([0, 10]), torch.ones(2), ValueError, r"out of range \[0, 10\).*\[0, 10\]"),
        (torch.tensor([-1, 3]), torch.ones(2), ValueError, "out of range"),
    ],
)
def test_bad_batches_raise(index, losses, exc, match):
    miner = BadPairMiner(10)
    with pytest.raises(exc, match=match):
        miner.record(index, losses)
    with pytest.raises(exc, match=match):
        miner.weights(index, losses)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"num_pairs": 0}, ValueError, "num_pairs must be > 0"),
        ({"num_pairs": 2.5}, TypeError, "num_pairs must be an int"),
        ({"num_pairs": True}, TypeError, "num_pairs must be an int"),
        ({"warmup_epochs": -1}, ValueError, "warmup_epochs must be >= 0"),
        ({"warmup_epochs": 1.0}, TypeError, "warmup_epochs"),
        ({"beta_noisy": -1.0}, ValueError, "beta_noisy must be >= 0"),
        ({"beta_faulty": float("nan")}, ValueError, "beta_faulty"),
        ({"beta_faulty": "3"}, TypeError, "beta_faulty must be a number"),
        ({"weighting": "median"}, ValueError, "weighting must be one of"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, exc, match):
    kwargs = {"num_pairs": 10, **kwargs}
    with pytest.raises(exc, match=match):
        BadPairMiner(kwargs.pop("num_pairs"), **kwargs)


def test_hand_driven_fabric_loop_reweights_the_loss():
    """The core in a Fabric loop (no Trainer): a planted mismatched pair stops pulling the fit."""
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    y[5] += 40.0  # a faulty pair
    index = torch.arange(64)
    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    model, opt = fabric.setup(model, opt)
    miner = BadPairMiner(64, weighting="zero")
    applied = []
    for _ in range(4):
        for s in range(0, 64, 16):
            b = slice(s, s + 16)
            losses = (model(x[b]).squeeze(-1) - y[b]) ** 2
            w = miner.weights(index[b], losses)
            applied.append(w)
            loss = (w * losses).mean()
            opt.zero_grad()
            fabric.backward(loss)
            opt.step()
            miner.record(index[b], losses)
        miner.end_epoch()
    assert miner.faulty_mask.nonzero().flatten().tolist() == [5]
    assert float(applied[-4][5]) == 0.0  # epoch 3, first batch: pair 5 dropped
    # weighted gradient equals the gradient on the data without pair 5 (closed form check)
    losses = (model(x[:16]).squeeze(-1) - y[:16]) ** 2
    w = miner.weights(index[:16], losses)
    (grad,) = torch.autograd.grad((w * losses).mean(), model.weight)
    keep = torch.arange(16) != 5
    resid = model(x[:16]).squeeze(-1).detach() - y[:16]
    expected = (2 * resid[keep, None] * x[:16][keep]).sum(0) / 16
    torch.testing.assert_close(grad.flatten(), expected)


# ---------------------------------------------------------------------------- the options
def reference_options(
    epochs,
    num_pairs,
    groups=None,
    *,
    warmup_epochs=1,
    beta_noisy=3.0,
    beta_faulty=3.0,
    statistic="mean",
    location="mean",
    scope=(),
    min_cell_size=50,
    ema_decay=0.5,
):
    """NumPy float64 reference of the options, written from the formulas in docs/mining.md.

    Returns per epoch ``stat`` (NaN without history), ``mu``, ``sigma``, ``flags`` and
    ``groups`` = {cell tuple: (count, lo, hi, own)}.
    """
    per_pair = [[] for _ in range(num_pairs)]
    out = []
    for e, batches in enumerate(epochs):
        sums, counts = {}, {}
        for index, losses in batches:
            values = np.asarray(losses, dtype=np.float64)
            for i, v in zip(np.asarray(index).tolist(), values, strict=True):
                if math.isfinite(v):
                    sums[i] = sums.get(i, 0.0) + v
                    counts[i] = counts.get(i, 0) + 1
        for i in sums:
            per_pair[i].append(sums[i] / counts[i])
        stat = np.full(num_pairs, np.nan)
        for i, h in enumerate(per_pair):
            if not h:
                continue
            if statistic == "mean":
                stat[i] = np.mean(h)
            else:  # h_1 = x_1, h_t = a x_t + (1 - a) h_{t-1}
                v = h[0]
                for x in h[1:]:
                    v = ema_decay * x + (1 - ema_decay) * v
                stat[i] = v
        has = ~np.isnan(stat)

        def loc_scale(v):
            if location == "mean":
                return v.mean(), v.std()
            med = np.median(v)
            return med, 1.482602218505602 * np.median(np.abs(v - med))

        mu, sigma = loc_scale(stat[has])
        lo = np.full(num_pairs, mu - beta_noisy * sigma)
        hi = np.full(num_pairs, mu + beta_faulty * sigma)
        table = {}
        if scope:
            keys = np.stack([np.asarray(groups[a]) for a in scope], axis=1)
            known = (keys >= 0).all(axis=1)
            for cell in {tuple(k) for k in keys[known & has].tolist()}:
                members = known & has & (keys == np.array(cell)).all(axis=1)
                if members.sum() >= min_cell_size:
                    m, s = loc_scale(stat[members])
                    sel = known & (keys == np.array(cell)).all(axis=1)
                    lo[sel], hi[sel] = m - beta_noisy * s, m + beta_faulty * s
                    table[cell] = (
                        int(members.sum()),
                        m - beta_noisy * s,
                        m + beta_faulty * s,
                        True,
                    )
                else:
                    table[cell] = (int(members.sum()), lo[0], hi[0], False)
        flags = np.zeros(num_pairs, dtype=np.int64)
        if e + 1 >= max(warmup_epochs, 1):
            flags[has & (stat < lo)] = 1
            flags[has & (stat > hi)] = 2
        out.append({"stat": stat, "mu": mu, "sigma": sigma, "flags": flags, "groups": table})
    return out


def grouped_stream(num_epochs=4, seed=3, n=600):
    """Three groups with different loss levels (group 2 is small); unknown group for some.

    Group 0 ~ 1.0 +- 0.05, group 1 ~ 2.0 +- 0.1 (a harder group), group 2 (20 pairs) ~ 1.5;
    a few pairs planted high within each group. Some pairs miss epoch 1 (history gaps).
    """
    rng = np.random.default_rng(seed)
    race = np.where(np.arange(n) % 3 == 0, 1, 0)
    race[:20] = 2
    race[20:30] = -1
    gender = rng.integers(0, 2, n)
    base = np.choose(np.clip(race, 0, 2), [1.0, 2.0, 1.5])
    scale = np.choose(np.clip(race, 0, 2), [0.05, 0.1, 0.05])
    planted = [40, 41, 42, 45, 300, 301]
    epochs = []
    for e in range(num_epochs):
        losses = base + scale * rng.standard_normal(n)
        losses[planted] += 0.6
        order = rng.permutation(n)
        if e == 1:
            order = order[: n - 37]
        epochs.append(
            [(order[s : s + 50], losses[order[s : s + 50]]) for s in range(0, len(order), 50)]
        )
    return epochs, {"race": race, "gender": gender}


OPTION_CASES = [
    dict(statistic="mean", location="mean", scope=()),
    dict(statistic="mean", location="median", scope=()),
    dict(statistic="ema", location="mean", scope=()),
    dict(statistic="ema", location="median", scope=("race",), min_cell_size=30),
    dict(statistic="mean", location="mean", scope=("race",), min_cell_size=30),
    dict(statistic="mean", location="median", scope=("race",), min_cell_size=30),
    dict(statistic="mean", location="mean", scope=("race", "gender"), min_cell_size=25),
    dict(statistic="ema", location="mean", scope=("gender",), ema_decay=0.3),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_options_match_numpy_reference(case, monkeypatch):
    monkeypatch.setattr(mining.miner, "_CHUNK", 128)  # several chunks: exercises the merges
    epochs, groups = grouped_stream()
    n = len(groups["race"])
    kwargs = dict(beta_noisy=2.0, beta_faulty=2.0, **case)
    miner = BadPairMiner(n, **kwargs)
    ref = reference_options(epochs, n, groups, **kwargs)
    tg = {k: torch.as_tensor(v) for k, v in groups.items()}
    for e, batches in enumerate(epochs):
        for index, losses in batches:
            miner.record(torch.as_tensor(index), torch.as_tensor(losses, dtype=torch.float32))
        miner.end_epoch(groups=tg)
        r = ref[e]
        np.testing.assert_allclose(miner.history_mean.numpy(), r["stat"], rtol=1e-6)
        assert miner.mu == pytest.approx(r["mu"], rel=1e-6)
        assert miner.sigma == pytest.approx(r["sigma"], rel=1e-5)
        np.testing.assert_array_equal(miner.flags.numpy(), r["flags"])
        got = {row["group"]: row for row in miner.group_table}
        assert set(got) == set(r["groups"]), e
        for cell, (count, lo, hi, own) in r["groups"].items():
            assert got[cell]["count"] == count and got[cell]["own_threshold"] == own
            assert got[cell]["threshold_noisy"] == pytest.approx(lo, rel=1e-5)
            assert got[cell]["threshold_faulty"] == pytest.approx(hi, rel=1e-5)
    assert miner.num_faulty > 0


def test_group_scope_finds_planted_pairs_that_a_global_threshold_misses():
    epochs, groups = grouped_stream()
    n = len(groups["race"])
    tg = {k: torch.as_tensor(v) for k, v in groups.items()}
    glob = drive(BadPairMiner(n, beta_faulty=3.0), epochs)
    own = BadPairMiner(n, beta_faulty=3.0, scope=("race",), min_cell_size=30)
    for batches in epochs:
        for index, losses in batches:
            own.record(torch.as_tensor(index), torch.as_tensor(losses, dtype=torch.float32))
        own.end_epoch(groups=tg)
    # group 0 (~1.0) planted pairs at ~1.6 sit below the global mu + 3 sigma (the hard group 1
    # inflates sigma) but far above their own group's
    assert own.faulty_mask.nonzero().flatten().tolist() == [40, 41, 42, 45, 300, 301]
    assert glob.num_faulty < own.num_faulty
    assert own.summary()["num_own_threshold_groups"] == 2  # group 2 (20 pairs) falls back


def test_paper_preset_is_the_default_rule_and_the_reference():
    epochs = planted_stream()
    paper = drive(BadPairMiner.paper(N), epochs)
    default = drive(BadPairMiner(N), epochs)
    for key, value in default.state_dict().items():
        got = paper.state_dict()[key]
        assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value, key
    assert_matches_reference(paper, reference_dbpm(epochs, N)[-1])
    assert mining.PAPER_SETTINGS["scope"] == () and paper.rule.max_weight is None


def test_max_weight_caps_and_tiny_sigma_warns():
    miner = BadPairMiner(4, beta_faulty=1.0)
    losses = torch.tensor([1.0, 1.0, 1.0, 1.000004])
    miner.record(torch.arange(4), losses)
    with pytest.warns(RuntimeWarning, match="gaussian_pdf.*can reach"):
        miner.end_epoch()
    sigma = miner.sigma
    assert sigma < 1e-5 and miner.faulty_mask.tolist() == [False, False, False, True]
    w = miner.weights(torch.tensor([3]), torch.tensor([miner.mu], dtype=torch.float32))
    assert float(w) == pytest.approx(1 / (sigma * math.sqrt(2 * math.pi)), rel=1e-3)
    assert float(w) > 1e4
    capped = BadPairMiner(4, beta_faulty=1.0, max_weight=1.0)
    capped.record(torch.arange(4), losses)
    capped.end_epoch()  # no warning with a cap
    w = capped.weights(torch.tensor([3, 0]), torch.tensor([capped.mu, 1.0], dtype=torch.float32))
    assert w.tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(statistic="median"), ValueError, "statistic must be one of"),
        (dict(location="trimmed"), ValueError, "location must be one of"),
        (dict(scope="race"), TypeError, "scope must be a sequence"),
        (dict(scope=("race", "race")), ValueError, "duplicates"),
        (dict(min_cell_size=1), ValueError, "min_cell_size must be >= 2"),
        (dict(ema_decay=0.0), ValueError, r"ema_decay must be in \(0, 1\]"),
        (dict(max_weight=0.0), ValueError, "max_weight must be > 0"),
    ],
)
def test_bad_options_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        BadPairMiner(10, **kwargs)


def test_bad_groups_raise_and_do_not_fold():
    miner = BadPairMiner(10, scope=("race",))
    miner.record(torch.arange(10), torch.ones(10))
    with pytest.raises(ValueError, match="needs groups"):
        miner.end_epoch()
    with pytest.raises(ValueError, match="lacks scope attribute 'race'"):
        miner.end_epoch(groups={"gender": torch.zeros(10, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        miner.end_epoch(groups={"race": torch.zeros(9, dtype=torch.long)})
    with pytest.raises(ValueError, match="integer group ids"):
        miner.end_epoch(groups={"race": torch.zeros(10)})
    with pytest.raises(ValueError, match=">= -1"):
        miner.end_epoch(groups={"race": torch.full((10,), -2)})
    assert miner.epochs_completed == 0  # nothing was folded by the failed calls
    miner.end_epoch(groups={"race": torch.zeros(10, dtype=torch.long)})
    assert miner.history_count.tolist() == [1] * 10


def test_options_state_round_trip_resumes_exactly(tmp_path):
    epochs, groups = grouped_stream()
    n = len(groups["race"])
    tg = {k: torch.as_tensor(v) for k, v in groups.items()}
    kwargs = dict(statistic="ema", location="median", scope=("race",), min_cell_size=30)

    def run(miner, part):
        for batches in part:
            for index, losses in batches:
                miner.record(torch.as_tensor(index), torch.as_tensor(losses, dtype=torch.float32))
            miner.end_epoch(groups=tg)
        return miner

    full = run(BadPairMiner(n, **kwargs), epochs)
    first = run(BadPairMiner(n, **kwargs), epochs[:2])
    torch.save(first.state_dict(), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert all(isinstance(v, (torch.Tensor, int, float)) for v in state.values())
    resumed = BadPairMiner(n, **kwargs)
    resumed.load_state_dict(state)
    assert resumed.group_table == first.group_table
    run(resumed, epochs[2:])
    for key in ("history_sum", "history_count", "flags", "group_table_stats"):
        assert torch.equal(resumed.state_dict()[key], full.state_dict()[key]), key
    with pytest.raises(ValueError, match="statistic='ema'"):
        BadPairMiner(n).load_state_dict(state)
