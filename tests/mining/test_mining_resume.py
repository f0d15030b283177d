"""DBPM memory is never applied to other pairs: the callback checks the datamodule's
``train_fingerprint()`` on resume (through a Trainer and through ``fairvlm fit``)."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from synthetic_args import synthetic_overrides
from test_callbacks import N, PairData, Regressor, make_trainer
from torch.utils.data import DataLoader

from fairvlm_lightning.app.cli import main
from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
from fairvlm_lightning.callbacks import DynamicBadPairMining

CONFIGS = Path(__file__).resolve().parents[2] / "fairvlm_lightning" / "configs"


class PairDataModule(L.LightningDataModule):
    """Any datamodule with a ``train_fingerprint()`` (duck-typed: the callback imports none)."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__()
        self.fingerprint = fingerprint

    def train_dataloader(self):
        return DataLoader(PairData(), batch_size=8)

    def train_fingerprint(self) -> str:
        return self.fingerprint


def _fit(root, fingerprint, max_epochs, ckpt_path=None, **dbpm_kwargs):
    dbpm = DynamicBadPairMining(beta_faulty=1.5, **dbpm_kwargs)
    ckpt = ModelCheckpoint(dirpath=root, filename="{epoch}", save_top_k=-1)
    trainer = make_trainer(root, [dbpm, ckpt], max_epochs, enable_checkpointing=True)
    trainer.fit(Regressor(), datamodule=PairDataModule(fingerprint), ckpt_path=ckpt_path)
    return dbpm


def test_resume_onto_other_data_is_refused_or_reset(tmp_path):
    first = _fit(tmp_path / "a", "files-v1", 2)
    assert first.data_fingerprint == "files-v1"
    ckpt = tmp_path / "a" / "epoch=1.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"]["DynamicBadPairMining"]
    assert all(isinstance(v, (torch.Tensor, int, float, dict)) for v in state.values())

    same = _fit(tmp_path / "b", "files-v1", 3, ckpt_path=ckpt)  # same files: the memory goes on
    assert int(same.miner.history_count.max()) == 3 and same.miner.epochs_completed == 3

    with pytest.raises(ValueError, match="recorded on another training set") as err:
        _fit(tmp_path / "c", "files-v2", 3, ckpt_path=ckpt)
    assert "reset_on_mismatch=True" in str(err.value)

    with pytest.warns(RuntimeWarning, match="Starting the memory afresh"):
        fresh = _fit(tmp_path / "d", "files-v2", 3, ckpt_path=ckpt, reset_on_mismatch=True)
    # only the epoch after the resume is in the fresh memory, and it is the new data's
    assert int(fresh.miner.history_count.max()) == 1 and fresh.miner.epochs_completed == 1
    assert fresh.data_fingerprint == "files-v2"
    saved = torch.load(tmp_path / "d" / "epoch=2.ckpt", weights_only=True)
    fp = saved["callbacks"]["DynamicBadPairMining"]["data_fingerprint"]
    assert bytes(fp.tolist()).decode() == "files-v2"


def test_without_a_fingerprint_resume_works_as_before(tmp_path):
    data = PairData()
    dbpm = DynamicBadPairMining(num_pairs=N)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    trainer = make_trainer(tmp_path, [dbpm, ckpt], 2, enable_checkpointing=True)
    trainer.fit(Regressor(), DataLoader(data, batch_size=8))
    assert dbpm.data_fingerprint is None
    # a checkpoint without a fingerprint resumes onto a datamodule that has one
    resumed = _fit(tmp_path / "r", "files-v1", 3, ckpt_path=tmp_path / "epoch=1.ckpt")
    assert resumed.miner.epochs_completed == 3 and resumed.data_fingerprint == "files-v1"


def _rename_one_training_file(root: Path) -> None:
    """Rename the first training file so that it sorts last (and fix the notes CSV)."""
    train = root / "Training"
    first = sorted(train.glob("*.npz"))[0]
    new_name = "zz_" + first.name
    first.rename(train / new_name)
    for notes in root.glob("*summarized_notes.csv"):
        with notes.open(newline="") as f:
            rows = list(csv.reader(f))
        for row in rows:
            if row and row[0] == first.name:
                row[0] = new_name
        with notes.open("w", newline="") as f:
            csv.writer(f).writerows(rows)


def test_datamodule_fingerprint_follows_file_names(synthetic_root, synthetic_kwargs, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    dm = SyntheticFairVLMedDataModule(str(root), synthetic_kwargs=synthetic_kwargs)
    with pytest.raises(RuntimeError, match="call setup"):
        dm.train_fingerprint()
    dm.setup("fit")
    before = dm.train_fingerprint()
    again = SyntheticFairVLMedDataModule(str(root), synthetic_kwargs=synthetic_kwargs)
    again.setup("fit")
    assert again.train_fingerprint() == before
    _rename_one_training_file(root)
    renamed = SyntheticFairVLMedDataModule(str(root), synthetic_kwargs=synthetic_kwargs)
    renamed.setup("fit")
    assert len(renamed.split_dataset("train")) == len(dm.split_dataset("train"))
    assert renamed.train_fingerprint() != before


def test_cli_resume_onto_renamed_files_is_refused(
    synthetic_root, synthetic_kwargs, tmp_path, monkeypatch
):
    monkeypatch.setattr(sys, "argv", ["fairvlm"])
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    args = [
        "fit",
        "--config",
        str(CONFIGS / "synthetic_dbpm.yaml"),
        *synthetic_overrides(root, synthetic_kwargs),
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.num_sanity_val_steps",
        "0",
        "--test_after_fit",
        "false",
        "--print_table",
        "false",
    ]
    main([*args, "--trainer.max_epochs", "1"])
    last = tmp_path / "runs" / "synthetic_dbpm" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    main([*args, "--trainer.max_epochs", "2", "--ckpt_path", str(last)])  # same files: works
    resumed = tmp_path / "runs" / "synthetic_dbpm" / "version_1" / "checkpoints" / "last.ckpt"
    state = torch.load(resumed, weights_only=True)["callbacks"]["DynamicBadPairMining"]
    assert state["miner"]["epochs_completed"] == 2

    _rename_one_training_file(root)
    with pytest.raises(ValueError, match="recorded on another training set"):
        main([*args, "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
