"""The callback under a real 2-process Trainer (ddp_spawn, gloo, CPU): same flags, logs, export
and checkpoint as the DBPM definition applied to all pairs in one process."""

import csv
import math

import lightning as L
import numpy as np
import torch
from test_mining_reference import reference_dbpm
from torch.utils.data import DataLoader, Dataset

from fairvlm_lightning.callbacks import DynamicBadPairMining, find_bad_pair_mining


class _PairData(Dataset):
    def __init__(self, n=48):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = self.x.sum(1) + 0.1 * torch.randn(n, generator=g)
        self.y[[2, 17, 40]] += 25.0  # faulty pairs
        self.race = torch.arange(n) % 3
        self.race[[17, 40]] = 1

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "race": self.race[i], "index": i}


class _FrozenRegressor(L.LightningModule):
    """lr = 0: every epoch gives each pair the same loss, on any number of processes."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)
        with torch.no_grad():
            self.net.weight.fill_(1.0)
            self.net.bias.zero_()

    def training_step(self, batch, batch_idx):
        losses = (self.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2
        dbpm = find_bad_pair_mining(self.trainer)
        loss = (dbpm.pair_weights(batch["index"], losses) * losses).mean()
        return {"loss": loss, "pair_losses": losses.detach(), "index": batch["index"]}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_ddp_spawn_two_processes_matches_reference(tmp_path):
    data = _PairData()
    dbpm = DynamicBadPairMining(group_keys=("race",), export_dir=tmp_path / "export")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        callbacks=[dbpm],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_FrozenRegressor(), DataLoader(data, batch_size=4, shuffle=False))

    losses = ((data.x.sum(1) - data.y) ** 2).double().numpy()
    ref = reference_dbpm([[(np.arange(48), losses)]] * 2, 48)[-1]
    assert sorted(np.nonzero(ref["flags"])[0].tolist()) == [2, 17, 40]
    metrics = trainer.callback_metrics
    assert metrics["dbpm/num_faulty"] == 3 and metrics["dbpm/num_noisy"] == 0
    assert metrics["dbpm/num_with_history"] == 48
    assert math.isclose(metrics["dbpm/mu"], ref["mu"], rel_tol=1e-5)
    assert math.isclose(metrics["dbpm/sigma"], ref["sigma"], rel_tol=1e-5)
    # group values were recorded on different ranks and merged: race 1 holds 17 and 40
    race = data.race.numpy()
    flagged = ref["flags"] != 0
    for g in range(3):
        assert metrics[f"dbpm/race/flagged_count_group_{g}"] == flagged[race == g].sum()
        assert math.isclose(
            metrics[f"dbpm/race/flagged_rate_group_{g}"], flagged[race == g].mean(), rel_tol=1e-6
        )
    # rank 0 alone exported one file per epoch; the last lists the flagged pairs
    files = sorted((tmp_path / "export").iterdir())
    assert [f.name for f in files] == ["dbpm_flagged_epoch_0000.csv", "dbpm_flagged_epoch_0001.csv"]
    rows = list(csv.DictReader(files[-1].open()))
    assert [int(r["index"]) for r in rows] == [2, 17, 40]
    assert [int(r["race"]) for r in rows] == race[[2, 17, 40]].tolist()
    np.testing.assert_allclose(
        [float(r["history_mean"]) for r in rows], ref["history_mean"][[2, 17, 40]], rtol=1e-6
    )
    # the checkpoint written by rank 0 holds the merged state, loadable with weights_only=True
    (ckpt,) = tmp_path.rglob("*.ckpt")
    state = torch.load(ckpt, weights_only=True)["callbacks"]["DynamicBadPairMining"]
    assert state["miner"]["history_count"].tolist() == [2] * 48
    np.testing.assert_allclose(
        state["miner"]["history_sum"].double().numpy() / 2, ref["history_mean"], rtol=1e-6
    )
    assert state["group_values"]["race"].tolist() == race.tolist()
