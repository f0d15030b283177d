import csv
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import scipy.stats
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_mining_reference import reference_dbpm
from torch.utils.data import DataLoader, Dataset

from fairvlm_lightning.callbacks import DynamicBadPairMining, find_bad_pair_mining
from fairvlm_lightning.data.sampling import EpochShuffleSampler

N = 48
FAULTY = [2, 17, 40]


class PairData(Dataset):
    """Linear-regression 'pairs'; FAULTY have a corrupted target. race 1 holds two of them."""

    def __init__(self, n=N):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -1.0, 0.5]) + 0.1 * torch.randn(n, generator=g)
        self.y[FAULTY] += 6.0
        self.race = torch.arange(n) % 3
        self.race[[17, 40]] = 1
        self.race[5] = -1  # unknown

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "race": self.race[i], "index": i}


class Regressor(L.LightningModule):
    """Not ours: any module following the contract. It logs what it computed (second code path)."""

    def __init__(self, lr=0.05, momentum=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(3, 1)
        self.lr, self.momentum = lr, momentum
        self.log_losses = []  # (epoch, index, raw losses) as computed in training_step

    def training_step(self, batch, batch_idx):
        losses = (self.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2
        dbpm = find_bad_pair_mining(self.trainer)
        weights = dbpm.pair_weights(batch["index"], losses) if dbpm else 1.0
        loss = (weights * losses).mean()
        self.log_losses.append(
            (self.current_epoch, batch["index"].clone(), losses.detach().clone())
        )
        return {"loss": loss, "pair_losses": losses.detach(), "index": batch["index"]}

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", ((self.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def make_trainer(tmp_path, callbacks, max_epochs, **kwargs):
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        default_root_dir=tmp_path,
        **kwargs,
    )


def epochs_from_log(log, num_epochs):
    return [
        [(i.numpy(), loss.double().numpy()) for e, i, loss in log if e == epoch]
        for epoch in range(num_epochs)
    ]


def test_weights_reach_the_loss_of_a_custom_module(tmp_path):
    """Trainer + callback == a hand-written loop with the DBPM definition and scipy's pdf."""
    data = PairData()
    epochs = 4
    dbpm = DynamicBadPairMining(
        beta_faulty=2.0, group_keys=("race",), export_dir=tmp_path / "flags"
    )
    module = Regressor()
    make_trainer(tmp_path, [dbpm], epochs).fit(module, DataLoader(data, batch_size=8))

    # reference: plain PyTorch, same init and batches, weights from the definition (float64)
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    stream, ref, weights_seen = [], None, []
    for _epoch in range(epochs):
        batches = []
        for s in range(0, N, 8):
            index = torch.arange(s, s + 8)
            losses = (net(data.x[index]).squeeze(-1) - data.y[index]) ** 2
            w = torch.ones(8, dtype=torch.float64)
            if ref is not None:
                flagged = ref["flags"][index.numpy()] != 0
                pdf = scipy.stats.norm(ref["mu"], ref["sigma"]).pdf(
                    losses.detach().double().numpy()
                )
                w = torch.from_numpy(np.where(flagged, pdf, 1.0))
            weights_seen.append(w)
            loss = (w.float() * losses).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            batches.append((index.numpy(), losses.detach().double().numpy()))
        stream.append(batches)
        ref = reference_dbpm(stream, N, beta_faulty=2.0)[-1]

    assert sorted(np.nonzero(ref["flags"] == 2)[0].tolist()) == FAULTY
    assert any((w != 1).any() for w in weights_seen)  # the reweighting did happen
    torch.testing.assert_close(
        module.net.weight.detach(), net.weight.detach(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(module.net.bias.detach(), net.bias.detach(), rtol=1e-5, atol=1e-6)
    miner = dbpm.miner
    np.testing.assert_array_equal(miner.flags.numpy(), ref["flags"])
    np.testing.assert_allclose(miner.history_mean.numpy(), ref["history_mean"], rtol=1e-4)

    # logged numbers: global statistics and per-group flagged count / rate
    m = {k: float(v) for k, v in module.trainer.callback_metrics.items()}
    assert m["dbpm/num_faulty"] == 3 and m["dbpm/num_noisy"] == 0
    assert m["dbpm/mu"] == pytest.approx(ref["mu"], rel=1e-4)
    assert m["dbpm/sigma"] == pytest.approx(ref["sigma"], rel=1e-4)
    assert m["dbpm/threshold_faulty"] == pytest.approx(ref["hi"], rel=1e-4)
    assert m["dbpm/threshold_noisy"] == pytest.approx(ref["lo"], rel=1e-4)
    race = data.race.numpy()
    flagged = ref["flags"] != 0
    for g, name in [(-1, "unknown"), (0, "0"), (1, "1"), (2, "2")]:
        assert m[f"dbpm/race/flagged_count_group_{name}"] == flagged[race == g].sum()
        assert m[f"dbpm/race/flagged_rate_group_{name}"] == pytest.approx(flagged[race == g].mean())
    assert m["dbpm/race/flagged_count_group_1"] == 2  # concentrated in race 1

    # export: one CSV per epoch; the last one lists the flagged pairs with their group values
    files = sorted(p.name for p in (tmp_path / "flags").iterdir())
    assert files == [f"dbpm_flagged_epoch_{e:04d}.csv" for e in range(epochs)]
    with (tmp_path / "flags" / files[-1]).open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == FAULTY
    assert {r["flag"] for r in rows} == {"faulty"}
    assert [int(r["race"]) for r in rows] == race[FAULTY].tolist()
    assert [int(r["num_epochs"]) for r in rows] == [epochs] * 3
    np.testing.assert_allclose(
        [float(r["history_mean"]) for r in rows], ref["history_mean"][FAULTY], rtol=1e-4
    )


def _only_tensors_and_numbers(obj):
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _only_tensors_and_numbers(v) for k, v in obj.items())
    return isinstance(obj, (torch.Tensor, int, float))


@pytest.mark.parametrize(
    ("shuffle", "mixture"),
    [(False, False), (True, False), (True, True)],
    ids=["sequential+val", "epoch_shuffle+accum", "epoch_shuffle+accum+mixture_posterior"],
)
def test_resume_equals_uninterrupted_run(tmp_path, shuffle, mixture):
    data = PairData()
    epochs, k = 4, 1

    def loader():
        if shuffle:
            return DataLoader(data, batch_size=8, sampler=EpochShuffleSampler(data, seed=3))
        return DataLoader(data, batch_size=8)

    def run(root, ckpt_path=None):
        # sequential: validation each epoch and ModelCheckpoint saves in on_validation_end,
        # before the callback folds the epoch; shuffled: no validation, saved after the fold.
        # num_pairs is inferred in one case (state applied when the miner is built at
        # on_train_start) and given in the other (miner built at setup, state applied at once).
        if mixture:
            from fairvlm_lightning.mining import GaussianMixtureRule, MinerSpec

            spec = MinerSpec(rule=GaussianMixtureRule(weighting="posterior"))
            dbpm = DynamicBadPairMining(spec, num_pairs=N)
        else:
            dbpm = DynamicBadPairMining(num_pairs=N if shuffle else None, beta_faulty=2.0)
        ckpt = ModelCheckpoint(
            dirpath=root,
            filename="{epoch}",
            save_top_k=-1,
            every_n_epochs=1,
            save_on_train_epoch_end=shuffle,
        )
        trainer = make_trainer(
            root,
            [dbpm, ckpt],
            epochs,
            enable_checkpointing=True,
            accumulate_grad_batches=2 if shuffle else 1,
            limit_val_batches=0 if shuffle else 1,
        )
        module = Regressor(momentum=0.9)
        val = None if shuffle else DataLoader(data, batch_size=8)
        trainer.fit(module, loader(), val, ckpt_path=ckpt_path)
        return module, dbpm

    full_module, full = run(tmp_path / "full")
    ckpt_file = tmp_path / "full" / f"epoch={k}.ckpt"
    saved = torch.load(ckpt_file, weights_only=True)["callbacks"]["DynamicBadPairMining"]
    assert _only_tensors_and_numbers(saved)
    if not shuffle:  # saved at on_validation_end: epoch k recorded but not yet folded
        assert saved["recorded_epoch"] == k and saved["last_folded_epoch"] == k - 1
        assert int(saved["miner"]["current_count"].sum()) == N
    else:
        assert saved["last_folded_epoch"] == k
    resumed_module, resumed = run(tmp_path / "resumed", ckpt_path=ckpt_file)

    assert full.miner.num_faulty > 0  # the weights mattered after the checkpoint
    a, b = full.miner.state_dict(), resumed.miner.state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key] or (value != value and b[key] != b[key]), key
    for p, q in zip(full_module.parameters(), resumed_module.parameters(), strict=True):
        assert torch.equal(p, q)
    if mixture:  # the soft weights mattered: some pair trained below 1 after the checkpoint
        assert "keep_weight" in a and int(a["keep_weight"].min()) < 255
        return
    # and the history is the definition's, from the losses the module itself computed
    ref = reference_dbpm(epochs_from_log(full_module.log_losses, epochs), N, beta_faulty=2.0)[-1]
    np.testing.assert_array_equal(full.miner.flags.numpy(), ref["flags"])


def test_gradient_accumulation_and_limit_train_batches(tmp_path):
    data = PairData()
    dbpm = DynamicBadPairMining(beta_faulty=1.5)
    module = Regressor()
    trainer = make_trainer(tmp_path, [dbpm], 3, limit_train_batches=3, accumulate_grad_batches=2)
    trainer.fit(module, DataLoader(data, batch_size=8))
    miner = dbpm.miner
    assert miner.num_pairs == N
    assert miner.history_count[:24].tolist() == [3] * 24
    assert not miner.has_history[24:].any() and not miner.flagged_mask[24:].any()
    assert torch.isnan(miner.history_mean[24:]).all()
    ref = reference_dbpm(epochs_from_log(module.log_losses, 3), N, beta_faulty=1.5)[-1]
    np.testing.assert_array_equal(miner.flags.numpy(), ref["flags"])
    assert sorted(np.nonzero(ref["flags"])[0].tolist()) == [2, 17]  # 40 is never seen
    np.testing.assert_allclose(miner.history_mean[:24].numpy(), ref["history_mean"][:24], rtol=1e-5)
    assert miner.mu == pytest.approx(ref["mu"], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Hooks driven by hand (fast): restore order, error messages


def fake_trainer(epoch=0, loader=None, ckpt_path=None):
    return SimpleNamespace(
        current_epoch=epoch,
        ckpt_path=ckpt_path,
        is_global_zero=True,
        train_dataloader=loader if loader is not None else DataLoader(PairData(), batch_size=8),
        callbacks=[],
    )


FAKE_MODULE = SimpleNamespace(device=torch.device("cpu"), log_dict=lambda *a, **k: None)


def drive_epochs(cb, first_epoch, num_epochs, seed=0):
    rng = np.random.default_rng(seed)
    for epoch in range(first_epoch, first_epoch + num_epochs):
        trainer = fake_trainer(epoch)
        cb.on_train_epoch_start(trainer, FAKE_MODULE)
        for s in range(0, N, 8):
            index = torch.arange(s, s + 8)
            losses = torch.from_numpy(1 + 0.1 * rng.standard_normal(8)).float()
            losses[torch.isin(index, torch.tensor(FAULTY))] = 3.0
            batch = {"index": index, "race": PairData().race[index]}
            outputs = {"loss": losses.mean(), "pair_losses": losses}
            cb.on_train_batch_end(trainer, FAKE_MODULE, outputs, batch, s // 8)
        cb.on_train_epoch_end(trainer, FAKE_MODULE)


def start(cb, epoch=0, ckpt_path=None):
    trainer = fake_trainer(epoch, ckpt_path=ckpt_path)
    cb.setup(trainer, FAKE_MODULE, "fit")
    cb.on_train_start(trainer, FAKE_MODULE)


@pytest.mark.parametrize("num_pairs", [None, N])
@pytest.mark.parametrize("load_first", [True, False], ids=["load_before_start", "load_after_start"])
def test_restore_before_or_after_fit_start(num_pairs, load_first):
    original = DynamicBadPairMining(group_keys=("race",))
    start(original)
    drive_epochs(original, 0, 2)
    state = original.state_dict()

    cb = DynamicBadPairMining(num_pairs=num_pairs, group_keys=("race",))
    if load_first:
        cb.load_state_dict(state)
        assert cb.miner is None
        assert cb.state_dict().keys() == state.keys()  # pending state is not lost
        start(cb, epoch=2, ckpt_path="resumed.ckpt")
    else:
        start(cb, epoch=2, ckpt_path="resumed.ckpt")
        cb.load_state_dict(state)
    for c in (original, cb):
        drive_epochs(c, 2, 1, seed=7)
    a, b = original.state_dict(), cb.state_dict()
    for key in ("history_sum", "history_count", "flags"):
        assert torch.equal(a["miner"][key], b["miner"][key])
    assert torch.equal(a["group_values"]["race"], b["group_values"]["race"])
    assert original.miner.faulty_mask.nonzero().flatten().tolist() == FAULTY


def test_catch_up_fold_when_checkpoint_was_taken_before_epoch_end():
    original = DynamicBadPairMining()
    start(original)
    drive_epochs(original, 0, 1)
    # epoch 1 recorded but the checkpoint is taken before on_train_epoch_end
    trainer = fake_trainer(1)
    for s in range(0, N, 8):
        index = torch.arange(s, s + 8)
        outputs = {"loss": 1.0, "pair_losses": torch.full((8,), 1.0 + s), "index": index}
        original.on_train_batch_end(trainer, FAKE_MODULE, outputs, {}, 0)
    state = original.state_dict()
    cb = DynamicBadPairMining()
    cb.load_state_dict(state)
    start(cb, epoch=2, ckpt_path="resumed.ckpt")
    cb.on_train_epoch_start(fake_trainer(2), FAKE_MODULE)  # if Lightning resumes at epoch 2
    original.on_train_epoch_end(trainer, FAKE_MODULE)
    assert cb.miner.epochs_completed == original.miner.epochs_completed == 2
    assert torch.equal(cb.miner.history_mean, original.miner.history_mean)
    cb.on_train_epoch_end(fake_trainer(2), FAKE_MODULE)  # not folded twice for the same data
    assert cb.miner.epochs_completed == 3 and cb.miner.num_seen_last_epoch == 0


def test_hook_errors_name_the_problem():
    cb = DynamicBadPairMining(group_keys=("race",))
    start(cb)
    trainer, idx = fake_trainer(), torch.arange(4)
    losses = torch.ones(4)
    with pytest.raises(ValueError, match="must return a dict"):
        cb.on_train_batch_end(trainer, FAKE_MODULE, losses, {"index": idx}, 0)
    with pytest.raises(ValueError, match="lacks 'pair_losses'.*'loss'"):
        cb.on_train_batch_end(trainer, FAKE_MODULE, {"loss": losses.mean()}, {"index": idx}, 0)
    with pytest.raises(ValueError, match="'index'"):
        cb.on_train_batch_end(trainer, FAKE_MODULE, {"loss": 1, "pair_losses": losses}, (1, 2), 0)
    with pytest.raises(ValueError, match="group key 'race' is not in the batch"):
        cb.on_train_batch_end(
            trainer, FAKE_MODULE, {"loss": 1, "pair_losses": losses}, {"index": idx}, 0
        )
    bad = {"index": idx, "race": torch.tensor([0, 1, 200, 2])}
    with pytest.raises(ValueError, match=r"batch\['race'\] values must lie in \[-1, 127\]"):
        cb.on_train_batch_end(trainer, FAKE_MODULE, {"loss": 1, "pair_losses": losses}, bad, 0)
    bad = {"index": idx, "race": torch.zeros(3, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        cb.on_train_batch_end(trainer, FAKE_MODULE, {"loss": 1, "pair_losses": losses}, bad, 0)
    out_of_range = {"loss": 1, "pair_losses": losses, "index": idx + N}
    with pytest.raises(ValueError, match=r"out of range \[0, 48\)"):
        cb.on_train_batch_end(trainer, FAKE_MODULE, out_of_range, {"race": idx}, 0)
    with pytest.raises(TypeError, match="'index' must be a"):
        cb.on_train_batch_end(
            trainer, FAKE_MODULE, {"loss": 1, "pair_losses": losses}, {"index": [0]}, 0
        )
    # skipped steps are not errors and record nothing
    cb.on_train_batch_end(trainer, FAKE_MODULE, None, {}, 0)
    cb.on_train_batch_end(trainer, FAKE_MODULE, {"loss": None}, {}, 0)
    assert int(cb.miner.state_dict()["current_count"].sum()) == 0


def test_num_pairs_must_be_known():
    cb = DynamicBadPairMining()
    trainer = fake_trainer(loader=[{"index": torch.arange(2)}])  # no dataset with a length
    cb.setup(trainer, FAKE_MODULE, "fit")
    with pytest.raises(ValueError, match="could not infer num_pairs.*num_pairs="):
        cb.on_train_start(trainer, FAKE_MODULE)
    # before the miner exists, every weight is 1
    assert cb.pair_weights(torch.arange(3), torch.rand(3)).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"group_keys": (1,)}, TypeError, "group_keys must be strings"),
        ({"group_keys": ("race", "race")}, ValueError, "duplicates"),
        ({"weighting": "hard"}, ValueError, "weighting must be one of"),
        ({"num_pairs": 0}, ValueError, "num_pairs must be > 0"),
        ({"beta_noisy": -2}, ValueError, "beta_noisy"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DynamicBadPairMining(**kwargs)


def test_find_bad_pair_mining():
    cb = DynamicBadPairMining(group_keys="race")
    assert cb.group_keys == ("race",)
    assert find_bad_pair_mining(SimpleNamespace(callbacks=[object(), cb])) is cb
    assert find_bad_pair_mining(SimpleNamespace(callbacks=[])) is None
    assert find_bad_pair_mining(Regressor()) is None  # a module outside Trainer.fit
    trainer = L.Trainer(callbacks=[cb], logger=False, enable_checkpointing=False)
    module = Regressor()
    trainer.strategy.connect(module)
    module.trainer = trainer
    assert find_bad_pair_mining(module) is cb
    with pytest.raises(ValueError, match="2 DynamicBadPairMining callbacks"):
        find_bad_pair_mining(SimpleNamespace(callbacks=[cb, DynamicBadPairMining()]))


class ProviderRegressor(Regressor):
    """The provider form of the contract: the callback registers its weights on the module."""

    def __init__(self, fail_at_step=None):
        super().__init__()
        self.provider = None
        self.fail_at_step = fail_at_step
        self.providers_seen = []

    def set_pair_weight_provider(self, provider):
        self.provider = provider

    @property
    def pair_weight_provider(self):
        return self.provider

    def training_step(self, batch, batch_idx):
        self.providers_seen.append(self.provider)
        if self.fail_at_step is not None and self.global_step == self.fail_at_step:
            raise RuntimeError("stop here")
        losses = (self.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2
        weights = self.provider(batch["index"], losses.detach()) if self.provider else 1.0
        loss = (weights * losses).mean()
        self.log_losses.append(
            (self.current_epoch, batch["index"].clone(), losses.detach().clone())
        )
        return {"loss": loss, "pair_losses": losses.detach(), "index": batch["index"]}


def test_weight_provider_is_registered_for_fit_and_removed_after(tmp_path):
    """Same weights as the find_bad_pair_mining form; registered only while fit runs."""
    data = PairData()
    looked_up, provided = Regressor(), ProviderRegressor()
    for module in (looked_up, provided):
        dbpm = DynamicBadPairMining(beta_faulty=2.0, warmup_epochs=1)
        make_trainer(tmp_path, [dbpm], 3).fit(module, DataLoader(data, batch_size=8))
    assert all(p == dbpm.pair_weights for p in provided.providers_seen)
    assert provided.provider is None  # removed at the end of fit
    for (e1, i1, l1), (e2, i2, l2) in zip(
        looked_up.log_losses, provided.log_losses, strict=True
    ):
        assert e1 == e2 and torch.equal(i1, i2)
        torch.testing.assert_close(l1, l2, rtol=0, atol=0)
    failing = ProviderRegressor(fail_at_step=2)
    with pytest.raises(RuntimeError, match="stop here"):
        make_trainer(tmp_path, [DynamicBadPairMining()], 1).fit(
            failing, DataLoader(data, batch_size=8)
        )
    assert failing.providers_seen[0] is not None and failing.provider is None


def test_callback_reused_by_a_new_fit_keeps_mining():
    cb = DynamicBadPairMining()
    start(cb)
    drive_epochs(cb, 0, 2)
    start(cb)  # a second fit (new Trainer, no checkpoint) starts again at epoch 0
    drive_epochs(cb, 0, 1)
    assert cb.miner.epochs_completed == 3
    assert cb.miner.history_count.tolist() == [3] * N
    assert cb.miner.faulty_mask.nonzero().flatten().tolist() == FAULTY


class TruthData(PairData):
    """PairData with a ground-truth entry: the FAULTY pairs and pair 10 (clean in fact)."""

    def __init__(self):
        super().__init__()
        self.bad = torch.zeros(N, dtype=torch.bool)
        self.bad[FAULTY + [10]] = True

    def __getitem__(self, i):
        return {**super().__getitem__(i), "is_bad_pair": self.bad[i]}


def test_options_and_truth_metrics_through_the_trainer(tmp_path):
    from sklearn.metrics import precision_score, recall_score
    from test_mining import reference_options

    data = TruthData()
    epochs = 4
    kwargs = dict(beta_faulty=2.0, location="median", scope=("race",), min_cell_size=10)
    dbpm = DynamicBadPairMining(truth_key="is_bad_pair", group_keys=("race",), **kwargs)
    module = Regressor()
    make_trainer(tmp_path, [dbpm], epochs).fit(module, DataLoader(data, batch_size=8))
    ref = reference_options(
        epochs_from_log(module.log_losses, epochs), N, {"race": data.race.numpy()}, **kwargs
    )[-1]
    flags = dbpm.miner.flags.numpy()
    np.testing.assert_array_equal(flags, ref["flags"])
    assert set(FAULTY) <= set(np.flatnonzero(flags == 2).tolist())
    faulty, bad = flags == 2, data.bad.numpy()
    m = dbpm.last_metrics
    assert m["dbpm/num_bad"] == 4 and m["dbpm/num_flagged_bad"] == (faulty & bad).sum()
    assert m["dbpm/precision"] == pytest.approx(precision_score(bad, faulty))
    assert m["dbpm/recall"] == pytest.approx(recall_score(bad, faulty))
    race = data.race.numpy()
    for g in (0, 1, 2):
        sel = race == g
        assert m[f"dbpm/race/recall_group_{g}"] == pytest.approx(
            recall_score(bad[sel], faulty[sel], zero_division=np.nan) if bad[sel].any() else np.nan,
            nan_ok=True,
        )
        clean = sel & ~bad
        assert m[f"dbpm/race/clean_flag_rate_group_{g}"] == pytest.approx(faulty[clean].mean())
        thr = next(r for r in dbpm.miner.group_table if r["group"] == (g,))["threshold_faulty"]
        assert m[f"dbpm/race/threshold_faulty_group_{g}"] == thr
    # AUROC of the statistic separating bad from clean pairs, overall and within each group
    from sklearn.metrics import roc_auc_score

    stat = dbpm.miner.history_mean.numpy()
    assert m["dbpm/auroc"] == pytest.approx(roc_auc_score(bad, stat))
    for g in (0, 1, 2):
        sel = race == g
        ref_auc = roc_auc_score(bad[sel], stat[sel]) if 0 < bad[sel].sum() < sel.sum() else np.nan
        assert m[f"dbpm/race/auroc_group_{g}"] == pytest.approx(ref_auc, nan_ok=True)
    # the truth survives a weights_only checkpoint round trip
    state = dbpm.state_dict()
    torch.save(state, tmp_path / "cb.pt")
    restored = DynamicBadPairMining(num_pairs=N, truth_key="is_bad_pair", **kwargs)
    restored.load_state_dict(torch.load(tmp_path / "cb.pt", weights_only=True))
    restored.setup(None, None, "fit")
    assert torch.equal(restored.truth, dbpm.truth)
    assert restored.miner.group_table == dbpm.miner.group_table


def test_mixture_rule_weights_reach_the_loss(tmp_path):
    from fairvlm_lightning.mining import GaussianMixtureRule, MinerSpec

    spec = MinerSpec(rule=GaussianMixtureRule(weighting="posterior"))
    dbpm = DynamicBadPairMining(spec, truth_key="is_bad_pair")
    module = Regressor()
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 2:  # the weights the module gets, per index
                w = dbpm.pair_weights(batch["index"], torch.zeros(len(batch["index"])))
                seen.append((batch["index"].clone(), w))

    make_trainer(tmp_path, [dbpm, Spy()], 3).fit(module, DataLoader(TruthData(), batch_size=8))
    assert set(FAULTY) <= set(dbpm.miner.faulty_mask.nonzero().flatten().tolist())
    assert dbpm.miner.num_noisy == 0 and dbpm.last_metrics["dbpm/num_faulty"] > 0
    # during epoch 2 every pair's weight is 1 - p_bad of the fit made after epoch 1
    index = torch.cat([i for i, _ in seen])
    weights = torch.cat([w for _, w in seen])
    assert len(index) == N and weights[torch.isin(index, torch.tensor(FAULTY))].max() < 0.5
    assert weights.min() >= 0 and weights.max() <= 1 and (weights < 1).sum() > len(FAULTY)


def test_paper_preset_equals_default_callback(tmp_path):
    runs = []
    for cb in (DynamicBadPairMining.paper(), DynamicBadPairMining()):
        module = Regressor()
        make_trainer(tmp_path, [cb], 3).fit(module, DataLoader(PairData(), batch_size=8))
        runs.append(cb.state_dict()["miner"])
    for key, value in runs[1].items():
        same = (
            torch.equal(runs[0][key], value)
            if isinstance(value, torch.Tensor)
            else (runs[0][key] == value or (value != value and runs[0][key] != runs[0][key]))
        )
        assert same, key


def test_truth_key_errors_name_the_problem():
    cb = DynamicBadPairMining(num_pairs=4, truth_key="is_bad_pair")
    cb.setup(None, None, "fit")
    out = {"loss": torch.tensor(1.0), "pair_losses": torch.ones(2), "index": torch.arange(2)}
    trainer = SimpleNamespace(current_epoch=0)
    with pytest.raises(ValueError, match="truth_key 'is_bad_pair' is not in the batch"):
        cb.on_train_batch_end(trainer, None, out, {"index": torch.arange(2)}, 0)
    with pytest.raises(ValueError, match="must hold 0/1"):
        cb.on_train_batch_end(trainer, None, out, {"is_bad_pair": torch.tensor([0, 2])}, 0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        cb.on_train_batch_end(trainer, None, out, {"is_bad_pair": torch.tensor([0])}, 0)
    with pytest.raises(TypeError, match="truth_key must be a string"):
        DynamicBadPairMining(truth_key=1)
