"""`fairvlm fit` under DDP: two CPU processes (gloo) through the real command.

The run must finish on every rank, print the table and the summary once, and write
``test_metrics.json`` (``Trainer.log_dir`` is a collective call, so the summary must not ask for it
from rank 0 alone). The reference is the one-process ``fairvlm test`` of the same checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_args import synthetic_overrides

REPO = Path(__file__).resolve().parents[2]


def _fairvlm(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fairvlm_lightning.app.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ddp_fit_through_the_cli_writes_the_metrics_of_its_checkpoint(
    synthetic_root: Path, synthetic_kwargs: dict, tmp_path: Path
) -> None:
    common = [
        "--config",
        "synthetic_robust_fair",
        *synthetic_overrides(synthetic_root, synthetic_kwargs, eval_batch_size=16),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.num_sanity_val_steps",
        "0",
    ]
    fit = _fairvlm(
        [
            "fit",
            *common,
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
        ],
        tmp_path,
    )
    log = fit.stdout + fit.stderr
    assert fit.returncode == 0, log[-4000:]
    assert "sync_dist" not in log, log[-4000:]
    run = tmp_path / "runs" / "synthetic_robust_fair" / "version_0"
    ddp = json.loads((run / "test_metrics.json").read_text())
    assert fit.stdout.count("\ntest: AUC") == 1  # rank 0 alone prints the summary
    ckpt = ddp["ckpt_path"]
    assert f"checkpoint: {ckpt}" in fit.stdout and Path(tmp_path, ckpt).is_file()

    single = _fairvlm(["test", *common, "--ckpt_path", ckpt], tmp_path)
    assert single.returncode == 0, (single.stdout + single.stderr)[-4000:]
    ref = json.loads((run.parent / "version_1" / "test_metrics.json").read_text())
    assert ddp.keys() == ref.keys() and ref["ckpt_path"] == ckpt
    # test/loss is the mean in-batch contrastive loss: it depends on which pairs share a batch,
    # and each process batches its own shard, so it is no DDP-invariant; every fairness metric
    # is a function of the per-sample scores and must agree.
    floats = [k for k, v in ref.items() if isinstance(v, float) and k != "test/loss"]
    assert "test/auc" in floats and "test/race/es_auc" in floats
    for key in floats:
        if math.isnan(ref[key]):
            assert math.isnan(ddp[key]), key
        else:
            assert ddp[key] == pytest.approx(ref[key], abs=1e-6), key
