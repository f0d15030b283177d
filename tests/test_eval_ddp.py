"""Evaluation under 2-process DDP equals evaluation in 1 process, on an uneven test split.

Lightning's ``DistributedSampler`` pads the shards of an uneven split by repeating samples; the
fairness metrics gather every score, so they would count those samples twice. The data module
shards its val/test splits with :class:`~fairvlm_lightning.data.UnpaddedDistributedSampler`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from ddp_utils import run_distributed

from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
from fairvlm_lightning.data import UnpaddedDistributedSampler
from fairvlm_lightning.module import FairVLMModule

EVAL_BATCH = 5  # 41 test samples: rank 0 gets 21 (5 batches), rank 1 gets 20 (4 batches)


def _evaluate(root: str, synthetic_kwargs: dict, devices: int) -> dict[str, Any]:
    dm = SyntheticFairVLMedDataModule(
        root, synthetic_kwargs=synthetic_kwargs, eval_batch_size=EVAL_BATCH
    )
    module = FairVLMModule(str(Path(root) / "tiny_model"))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    out: dict[str, Any] = {}
    for run in (trainer.validate, trainer.test):
        run(module, datamodule=dm, verbose=False)
        out.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    out["n_batches"] = [int(n) for n in trainer.num_test_batches]
    return out


def _worker(rank: int, world_size: int, root: str, synthetic_kwargs: dict) -> dict[str, Any]:
    os.environ["LOCAL_RANK"] = str(rank)  # processes exist: Lightning joins this process group
    os.environ["NODE_RANK"] = "0"
    return _evaluate(root, synthetic_kwargs, devices=world_size)


def test_two_process_evaluation_equals_one_process(
    synthetic_root: Path, synthetic_kwargs: dict
) -> None:
    dm = SyntheticFairVLMedDataModule(str(synthetic_root), synthetic_kwargs=synthetic_kwargs)
    dm.prepare_data()  # fill the caches once, before the processes start
    dm.setup("test")
    n_test = len(dm.split_dataset("test"))
    assert n_test % 2 == 1, "the check needs an uneven test split (a padded shard)"
    torch.manual_seed(0)
    single = _evaluate(str(synthetic_root), synthetic_kwargs, devices=1)
    ranks = run_distributed(
        _worker, world_size=2, root=str(synthetic_root), synthetic_kwargs=synthetic_kwargs
    )
    # */loss is the in-batch contrastive loss: it depends on which samples share a batch, and
    # the shards batch differently from one file-order pass, so it is not compared
    keys = sorted(k for k in single if k != "n_batches" and not k.endswith("/loss"))
    assert any(k.startswith("test/") and "es_auc" in k for k in keys)
    assert any(k.startswith("val/") for k in keys)
    for out in ranks:
        assert sorted(k for k in out if k != "n_batches" and not k.endswith("/loss")) == keys
        for k in keys:
            # the sample-state metrics see the same scores (only in another order): equal up to
            # float rounding of the sums
            assert out[k] == pytest.approx(single[k], rel=1e-6, abs=1e-7, nan_ok=True), k
    # uneven shards, not padded: 21 + 20 samples in 5 + 4 batches of at most 5
    assert [r["n_batches"] for r in ranks] == [[5], [4]]


@pytest.mark.parametrize("n", [1, 2, 7, 13, 41, 44])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_unpadded_sampler_shards_every_sample_once(n: int, world: int) -> None:
    if n < world:
        with pytest.raises(ValueError, match=f"cannot shard {n} samples over {world} processes"):
            UnpaddedDistributedSampler(range(n), num_replicas=world, rank=0)
        return
    shards = [
        list(UnpaddedDistributedSampler(range(n), num_replicas=world, rank=r)) for r in range(world)
    ]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [
        len(UnpaddedDistributedSampler(range(n), num_replicas=world, rank=r)) for r in range(world)
    ] == [len(s) for s in shards]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # what torch's sampler does instead: pads to equal length by repeating samples
    padded = [
        list(torch.utils.data.DistributedSampler(range(n), world, r, shuffle=False))
        for r in range(world)
    ]
    assert sum(map(len, padded)) == world * -(-n // world)


def test_data_module_shards_only_under_a_multi_process_trainer(
    synthetic_root: Path, synthetic_kwargs: dict
) -> None:
    class _Trainer:  # what the data module reads of a Trainer
        def __init__(self, kwargs: dict | None) -> None:
            self.distributed_sampler_kwargs = kwargs
            self.accelerator = None

    dm = SyntheticFairVLMedDataModule(str(synthetic_root), synthetic_kwargs=synthetic_kwargs)
    dm.prepare_data()
    dm.setup("validate")
    n = len(dm.split_dataset("val"))
    for kwargs in (None, {"num_replicas": 1, "rank": 0}):
        dm.trainer = _Trainer(kwargs)  # type: ignore[assignment]
        assert not isinstance(dm.val_dataloader().sampler, UnpaddedDistributedSampler)
    seen = []
    for rank in range(3):
        dm.trainer = _Trainer({"num_replicas": 3, "rank": rank})  # type: ignore[assignment]
        sampler = dm.val_dataloader().sampler
        assert isinstance(sampler, UnpaddedDistributedSampler)
        seen += list(sampler)
    assert sorted(seen) == list(range(n))
