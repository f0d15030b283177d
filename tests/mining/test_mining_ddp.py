"""2-process CPU (gloo) DDP: the miner driven by hand flags exactly as one process seeing every
pair, and a mid-epoch checkpoint resumes exactly. (Light imports: the workers re-import this.)"""

import math

import numpy as np
import pytest
import torch
from ddp_utils import run_distributed
from test_mining_reference import reference_dbpm

from fairvlm_lightning.mining import BadPairMiner

N = 120


def _stream(seed=0, epochs=3, batch=10):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        losses = 1.0 + 0.05 * rng.standard_normal(N)
        losses[[4, 60]] = 0.1
        losses[[9, 33, 101]] = 2.0 + 0.01 * rng.standard_normal(3)
        order = rng.permutation(N)
        out.append(
            [(order[s : s + batch], losses[order[s : s + batch]]) for s in range(0, N, batch)]
        )
    return out


def _plan(epochs, rank, world_size):
    """What each rank records: batch b goes to rank b % world; batch 0 also to the other rank,
    with a shifted loss (one pair seen on two ranks in the same epoch), and a NaN on rank 1."""
    plan = []
    for batches in epochs:
        mine = []
        for b, (index, losses) in enumerate(batches):
            if b % world_size == rank:
                mine.append((b, index, losses))
            elif b == 0:
                mine.append((b, index, losses + 0.5))
        plan.append(mine)
    if world_size > 1 and rank == 1:
        b, index, losses = plan[2][0]
        plan[2][0] = (b, index, np.concatenate([losses[:-1], [np.nan]]))
    return plan


def _record(miner, index, losses):
    miner.record(torch.as_tensor(index), torch.as_tensor(losses, dtype=torch.float32))


def _miner_worker(rank, world_size, epochs):
    plan = _plan(epochs, rank, world_size)
    miner = BadPairMiner(N)
    saved = None
    half = len(epochs[1]) // 2

    def mine(e, after):
        return [(b, i, loss) for b, i, loss in plan[e] if b > after]

    for e in range(len(plan)):
        for b, index, losses in plan[e]:
            if e == 1 and b > half and saved is None:
                # mid-epoch checkpoint: sync on every rank, then save
                miner.sync()
                saved = miner.state_dict()
            _record(miner, index, losses)
        miner.end_epoch()
    final = miner.state_dict()
    # resume from the mid-epoch state on every rank and finish: must land on the same state
    resumed = BadPairMiner(N)
    resumed.load_state_dict(saved)
    for e in range(1, len(plan)):
        for _, index, losses in mine(e, half if e == 1 else -1):
            _record(resumed, index, losses)
        resumed.end_epoch()
    return {"final": final, "resumed": resumed.state_dict(), "saved": saved}


def _all_batches_as_one_process(epochs):
    """The same (index, loss) records as both ranks together, in one list per epoch."""
    merged = [[] for _ in epochs]
    for rank in range(2):
        for e, batches in enumerate(_plan(epochs, rank, 2)):
            merged[e].extend((index, losses) for _, index, losses in batches)
    return merged


def test_two_process_miner_equals_one_process_seeing_all_pairs():
    epochs = _stream()
    results = run_distributed(_miner_worker, world_size=2, epochs=epochs)
    merged = _all_batches_as_one_process(epochs)
    single = BadPairMiner(N)
    for batches in merged:
        for index, losses in batches:
            _record(single, index, losses)
        single.end_epoch()
    ref = reference_dbpm(merged, N)[-1]
    expected = single.state_dict()
    np.testing.assert_array_equal(expected["flags"].numpy(), ref["flags"])
    assert sorted(np.nonzero(ref["flags"] == 2)[0].tolist()) == [9, 33, 101]
    assert sorted(np.nonzero(ref["flags"] == 1)[0].tolist()) == [4, 60]
    assert ref["nonfinite"] == 1
    for rank_result in results:
        for which in ("final", "resumed"):
            got = rank_result[which]
            for key in ("flags", "history_sum", "history_count"):
                assert torch.equal(got[key], expected[key]), (which, key)
            for key in ("mu", "sigma", "num_noisy", "num_faulty", "epochs_completed"):
                assert got[key] == expected[key], (which, key)
            assert got["nonfinite_total"] == 1
    # the mid-epoch checkpoint is identical on both ranks
    a, b = (r["saved"] for r in results)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), key


OPTIONS = dict(statistic="ema", location="median", scope=("race", "gender"), min_cell_size=10)


def _groups():
    race = np.arange(N) % 3
    race[:5] = -1
    return {"race": torch.as_tensor(race), "gender": torch.as_tensor(np.arange(N) // 60)}


def _options_worker(rank, world_size, epochs):
    plan = _plan(epochs, rank, world_size)
    groups = _groups()
    miner = BadPairMiner(N, beta_noisy=2.0, beta_faulty=2.0, **OPTIONS)
    saved = None
    for e in range(len(plan)):
        for b, index, losses in plan[e]:
            if e == 1 and b > 6 and saved is None:
                miner.sync()
                saved = miner.state_dict()
                resumed = BadPairMiner(N, beta_noisy=2.0, beta_faulty=2.0, **OPTIONS)
                resumed.load_state_dict(saved)
                miner = resumed  # go on from the checkpoint, as after a restart
            _record(miner, index, losses)
        miner.end_epoch(groups=groups)
    return miner.state_dict()


def test_two_process_options_equal_one_process_and_numpy_reference():
    from test_mining import reference_options

    epochs = _stream(seed=1)
    results = run_distributed(_options_worker, world_size=2, epochs=epochs)
    merged = _all_batches_as_one_process(epochs)
    single = BadPairMiner(N, beta_noisy=2.0, beta_faulty=2.0, **OPTIONS)
    for batches in merged:
        for index, losses in batches:
            _record(single, index, losses)
        single.end_epoch(groups=_groups())
    ref = reference_options(
        merged,
        N,
        {k: v.numpy() for k, v in _groups().items()},
        beta_noisy=2.0,
        beta_faulty=2.0,
        **OPTIONS,
    )[-1]
    expected = single.state_dict()
    np.testing.assert_array_equal(expected["flags"].numpy(), ref["flags"])
    assert {9, 33, 101} <= set(np.flatnonzero(ref["flags"] == 2).tolist())
    for got in results:
        for key in ("flags", "history_sum", "history_count", "group_table_stats"):
            assert torch.equal(got[key], expected[key]), key
        assert got["mu"] == expected["mu"] and got["sigma"] == expected["sigma"]


def _strategy(name):
    """Strategy objects by name (built in each process: the workers re-import this module)."""
    from fairvlm_lightning.mining import (
        EmaLoss,
        GaussianMixtureRule,
        MedianMad,
        Scope,
        ThresholdRule,
    )

    return {
        "ema-threshold-zero-race-median": dict(
            statistic=EmaLoss(),
            rule=ThresholdRule(math.inf, 1.5, MedianMad(), "zero"),
            scope=Scope(("race",), 10),
        ),
        "mixture-zero": dict(rule=GaussianMixtureRule()),
        "ema-mixture-posterior-race-gender": dict(
            statistic=EmaLoss(0.3),
            rule=GaussianMixtureRule(0.5, "posterior", bins=128),
            scope=Scope(("race", "gender"), 10),
        ),
    }[name]


def _strategy_worker(rank, world_size, epochs, name):
    plan = _plan(epochs, rank, world_size)
    groups = _groups()
    miner = BadPairMiner(N, **_strategy(name))
    saved = None
    for e in range(len(plan)):
        for b, index, losses in plan[e]:
            if e == 1 and b > 6 and saved is None:
                miner.sync()
                saved = miner.state_dict()
                resumed = BadPairMiner(N, **_strategy(name))
                resumed.load_state_dict(saved)
                miner = resumed  # go on from the checkpoint, as after a restart
            _record(miner, index, losses)
        miner.end_epoch(groups=groups)
    return miner.state_dict()


@pytest.mark.parametrize(
    "name", ["ema-threshold-zero-race-median", "mixture-zero", "ema-mixture-posterior-race-gender"]
)
def test_two_process_equals_one_process_for_every_strategy(name):
    epochs = _stream(seed=2)
    results = run_distributed(_strategy_worker, world_size=2, epochs=epochs, name=name)
    single = BadPairMiner(N, **_strategy(name))
    for batches in _all_batches_as_one_process(epochs):
        for index, losses in batches:
            _record(single, index, losses)
        single.end_epoch(groups=_groups())
    expected = single.state_dict()
    assert {9, 33, 101} <= set(torch.nonzero(expected["flags"] == 2).flatten().tolist())
    for got in results:
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key
            else:
                assert got[key] == value or (math.isnan(got[key]) and math.isnan(value)), key
