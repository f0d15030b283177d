"""The examples: a user's own LightningModule with DBPM + fairness metrics, and the Fabric loop on
one process and on two (`fabric run ... --strategy ddp`), which must train the same model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data_args(root: Path, synthetic_kwargs: dict) -> list[str]:
    # the settings the session's folder was written with (other settings would be refused)
    return ["--root", str(root), "--synthetic-kwargs", json.dumps(synthetic_kwargs)]


def test_existing_trainer_gains_dbpm_and_fairness_metrics(
    synthetic_root: Path, synthetic_kwargs: dict, tmp_path: Path
) -> None:
    example = _load("existing_trainer")
    out = example.main(
        [
            *_data_args(synthetic_root, synthetic_kwargs),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--beta",
            "1.0",
            "--log-dir",
            str(tmp_path),
        ]
    )
    dbpm, trainer, test = out["dbpm"], out["trainer"], out["test"]
    # DBPM saw every training pair in both epochs and flagged some with beta = 1.
    assert dbpm.miner.history_count.tolist() == [2] * synthetic_kwargs["sizes"]["train"]
    assert dbpm.miner.num_faulty + dbpm.miner.num_noisy > 0
    # The logged fairness metrics equal scikit-learn on the trained model's zero-shot scores.
    model = trainer.lightning_module.eval()
    scores, labels, races = [], [], []
    with torch.no_grad():
        prompts = model.embed(None, model.prompt_ids, model.prompt_mask)
        for batch in trainer.datamodule.test_dataloader():
            image = model.clip.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
            logits = model.clip.logit_scale.exp() * F.normalize(image, dim=-1) @ prompts.T
            scores.append(logits.softmax(-1)[:, 1])
            labels.append(batch["label"])
            races.append(batch["race"])
    scores, labels, races = (torch.cat(x).numpy() for x in (scores, labels, races))
    assert test["test/auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-5)
    white = races == 2
    assert test["test/race/auc_group_2"] == pytest.approx(
        roc_auc_score(labels[white], scores[white]), abs=1e-5
    )


def test_fabric_loop_on_one_and_on_two_processes(
    synthetic_root: Path, synthetic_kwargs: dict, tmp_path: Path
) -> None:
    args = [
        *_data_args(synthetic_root, synthetic_kwargs),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--beta",
        "1.0",
        "--fairness-weight",
        "0",  # the fairness term is per process; without it 1 and 2 processes must agree
    ]
    one = _load("fabric_train").main([*args, "--out", str(tmp_path / "one.json")])
    assert one["world_size"] == 1
    fabric = Path(sys.executable).with_name("fabric")
    cmd = [str(fabric), "run", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    cmd += [str(EXAMPLES / "fabric_train.py"), "--", *args, "--out", str(tmp_path / "two.json")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2
    # Same global batches, negatives gathered across processes, DBPM memory summed over them.
    np.testing.assert_allclose(two["history_mean"], one["history_mean"], rtol=1e-4, atol=1e-5)
    assert two["flagged"] == one["flagged"] and one["flagged"]
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        assert h2["dbpm"]["num_faulty"] == h1["dbpm"]["num_faulty"]
        assert h2["val"]["auc"] == pytest.approx(h1["val"]["auc"], abs=1e-4)
    assert two["test"]["auc"] == pytest.approx(one["test"]["auc"], abs=1e-4)
    assert "race      " in proc.stdout  # the table, printed once by rank 0
    assert proc.stdout.count("attribute  AUC") == 1
