"""The `fairvlm` command: the README's fit command end to end, rerun without collisions, `test`,
every shipped config, and the printed table checked against scikit-learn on an independent pass.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from synthetic_args import synthetic_overrides
from transformers import AutoModel, AutoTokenizer

from fairvlm_lightning.app.cli import FairVLMCLI, dbpm_summary, main
from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
from fairvlm_lightning.callbacks import DynamicBadPairMining
from fairvlm_lightning.data import FairVLMedDataModule
from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.schema import CLASS_PROMPTS
from fairvlm_lightning.tables import fairness_table

CONFIGS = Path(__file__).resolve().parents[2] / "fairvlm_lightning" / "configs"
# The FairVLMed-twin configs (synthetic_cxr: tests/app/test_cli_multilabel.py).
SYNTHETIC = sorted(p.name for p in CONFIGS.glob("synthetic_*.yaml") if p.stem != "synthetic_cxr")


@pytest.fixture(autouse=True)
def _argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fairvlm"])  # as from the console script


def _sklearn_test_auc(ckpt: str, root: Path, synthetic_kwargs: dict) -> float:
    """AUC of the checkpoint's zero-shot scores on the test split, without the module's code."""
    checkpoint = torch.load(ckpt, weights_only=True)
    state = checkpoint["state_dict"]
    max_length = checkpoint["hyper_parameters"]["zero_shot"]["max_length"]  # = data's
    model = AutoModel.from_pretrained(root / "tiny_model")
    prefix = "encoder.model."
    model.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    model.eval()
    tok = AutoTokenizer.from_pretrained(root / "tiny_model")
    prompts = tok(
        list(CLASS_PROMPTS),
        padding="max_length",
        max_length=max_length,
        return_tensors="pt",
    )
    dm = SyntheticFairVLMedDataModule(
        str(root), synthetic_kwargs=synthetic_kwargs, max_length=max_length
    )
    dm.setup("test")
    scores, labels = [], []
    with torch.no_grad():
        text = F.normalize(model.get_text_features(**prompts).pooler_output, dim=-1)
        for batch in dm.test_dataloader():
            image = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
            logits = model.logit_scale.exp() * F.normalize(image, dim=-1) @ text.T
            scores.append(logits.softmax(-1)[:, 1])
            labels.append(batch["label"])
    return float(roc_auc_score(torch.cat(labels).numpy(), torch.cat(scores).numpy()))


def _check_dbpm_line(out: str, last_ckpt: Path, root: Path, synthetic_kwargs: dict) -> None:
    """The printed DBPM numbers are the last epoch's flags (checkpointed callback state) scored
    against the data's own ``is_bad_pair`` column; and DBPM flagged something."""
    number = r"(\d+(?:\.\d+)?)"
    match = re.search(
        rf"\nDBPM: {number} faulty \+ {number} noisy pairs flagged; {number} of the {number} "
        rf"pairs flagged faulty are true bad pairs \(precision +(\S+), recall +(\S+) of {number}\)",
        out,
    )
    assert match, out
    faulty, noisy, hits, faulty_again, precision, recall, bad = match.groups()
    state = torch.load(last_ckpt, weights_only=False)["callbacks"]["DynamicBadPairMining"]
    flags = state["miner"]["flags"]
    dm = SyntheticFairVLMedDataModule(str(root), synthetic_kwargs=synthetic_kwargs)
    dm.setup("fit")
    truth = torch.as_tensor(np.asarray(dm.datasets["train"]["is_bad_pair"])).bool()
    assert truth.shape == flags.shape and truth.any()
    # the callback scores the pairs with a loss history (seen in a finished epoch)
    seen = state["miner"]["history_count"] > 0
    assert 0 < int(seen.sum()) < len(seen)  # 3 batches of 16 of 96 pairs per epoch
    is_faulty = flags == 2
    assert int(faulty) + int(noisy) > 0, "DBPM flagged nothing after its warm-up"
    assert int(faulty) == int(faulty_again) == int(is_faulty.sum())
    assert int(noisy) == int((flags == 1).sum())
    assert int(hits) == int((is_faulty & truth & seen).sum())
    assert int(bad) == int((truth & seen).sum())
    if int(faulty):
        assert float(precision) == pytest.approx(int(hits) / int(faulty), abs=5e-4)
    assert float(recall) == pytest.approx(int(hits) / int(bad), abs=5e-4)


def test_readme_fit_command_then_test(
    synthetic_root: Path,
    synthetic_kwargs: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # runs/ goes here
    args = [
        "--config",
        str(CONFIGS / "synthetic_robust_fair.yaml"),
        *synthetic_overrides(synthetic_root, synthetic_kwargs),
        "--trainer.enable_progress_bar",
        "false",
    ]
    # 3 epochs: the config's 2 warm-up epochs, then one with flags
    main(["fit", *args, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "3"])
    out = capsys.readouterr().out
    assert "attribute  AUC    ES-AUC  DPD    DEOdds  group AUCs" in out
    for attr in ("race", "gender", "ethnicity", "language"):
        assert f"\n{attr} " in out
    run = tmp_path / "runs" / "synthetic_robust_fair" / "version_0"
    _check_dbpm_line(out, run / "checkpoints" / "last.ckpt", synthetic_root, synthetic_kwargs)
    assert "logs:       runs/synthetic_robust_fair/version_0" in out
    assert "\nseeds:      seed_everything=0, data.seed=0 (from seed_everything)\n" in out
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    fit_metrics = json.loads((run / "test_metrics.json").read_text())
    ckpt_line = next(line for line in out.splitlines() if line.startswith("checkpoint: "))
    ckpt = ckpt_line.split(": ", 1)[1].strip()
    assert Path(ckpt).is_file() and "checkpoints" in ckpt
    # The printed/saved test AUC is the best checkpoint's, as scikit-learn computes it.
    assert fit_metrics["test/auc"] == pytest.approx(
        _sklearn_test_auc(ckpt, synthetic_root, synthetic_kwargs), abs=1e-5
    )
    assert f"test: AUC {fit_metrics['test/auc']:.3f}" in out

    # The same command again, as `test` of that checkpoint: a new run folder, no collision.
    main(["test", *args, "--ckpt_path", ckpt])
    out = capsys.readouterr().out
    rerun = tmp_path / "runs" / "synthetic_robust_fair" / "version_1"
    assert (rerun / "config.yaml").is_file()
    test_metrics = json.loads((rerun / "test_metrics.json").read_text())
    assert test_metrics.keys() == fit_metrics.keys()
    assert fit_metrics["initial_weights"] is False and fit_metrics["ckpt_path"] == ckpt
    for key, value in fit_metrics.items():
        if not isinstance(value, float):  # what was evaluated: the same checkpoint
            assert test_metrics[key] == value, key
            continue
        assert (math.isnan(value) and math.isnan(test_metrics[key])) or test_metrics[
            key
        ] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_parses(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        FairVLMCLI(args=["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "model:" in printed and "data:" in printed


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_configs_build_what_they_say(
    name: str, synthetic_root: Path, synthetic_kwargs: dict
) -> None:
    cli = FairVLMCLI(
        args=[
            "--config", str(CONFIGS / name), *synthetic_overrides(synthetic_root, synthetic_kwargs)
        ],
        run=False,
    )
    module = cli.model
    assert isinstance(module, FairVLMModule)
    dbpm = [c for c in cli.trainer.callbacks if isinstance(c, DynamicBadPairMining)]
    assert bool(dbpm) == ("dbpm" in name or "robust" in name)
    assert (module.fairness_weight > 0) == ("fairclip" in name or "robust" in name)
    assert module.prompt_max_length == cli.datamodule.max_length  # linked
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    # the data module reads the tokenizer / processor of the module's model
    assert cli.datamodule.model == str(synthetic_root / "tiny_model")
    assert isinstance(cli.datamodule, SyntheticFairVLMedDataModule)
    assert cli.datamodule.cache_dir == synthetic_root / ".cache"


def test_missing_synthetic_assets_are_made_before_the_model_is_built(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    kwargs = {"sizes": {"train": 8, "val": 4, "test": 4}, "warm_start_steps": 0}
    cli = FairVLMCLI(
        args=[
            "--config",
            str(CONFIGS / "synthetic_robust_fair.yaml"),
            *synthetic_overrides(root, kwargs),
        ],
        run=False,
    )
    assert (root / "tiny_model" / "config.json").is_file()
    assert len(list((root / "Training").glob("*.npz"))) == 8
    assert isinstance(cli.model, FairVLMModule)


def test_library_data_class_writes_no_assets(synthetic_root: Path, tmp_path: Path) -> None:
    # the same config with the library's FairVLMedDataModule: nothing is generated
    root = tmp_path / "fresh"
    cli = FairVLMCLI(
        args=[
            "--config",
            str(CONFIGS / "synthetic_robust_fair.yaml"),
            "--data.class_path",
            "fairvlm_lightning.data.FairVLMedDataModule",
            "--data.root",
            str(root),
            "--model.model",
            str(synthetic_root / "tiny_model"),
        ],
        run=False,
    )
    assert type(cli.datamodule) is FairVLMedDataModule
    assert cli.datamodule.model == str(synthetic_root / "tiny_model")  # from model.model
    assert not root.exists()


def test_help_and_table_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "fit" in capsys.readouterr().out
    table = fairness_table({"val/auc": torch.tensor(0.5)}, {"race": 3}, prefix="val")
    assert "val: AUC 0.500 | Acc n/a" in table
    assert "Asian n/a, Black n/a, White n/a" in table
    assert dbpm_summary({"train/loss": 1.0}) == ""  # no DBPM callback
    assert dbpm_summary({"dbpm/num_faulty": 2, "dbpm/num_noisy": 0}).endswith("pairs flagged")
    with pytest.raises(TypeError, match="attributes must be a dict"):
        fairness_table({}, ["race"])  # type: ignore[arg-type]


def test_seed_everything_seeds_the_data_unless_data_seed_is_given(
    synthetic_root: Path, synthetic_kwargs: dict
) -> None:
    base = [
        "--config",
        str(CONFIGS / "synthetic_clip.yaml"),
        *synthetic_overrides(synthetic_root, synthetic_kwargs),
    ]
    cli = FairVLMCLI(args=[*base, "--seed_everything", "3"], run=False)
    assert cli.datamodule.seed == 3 and cli.datamodule.hparams["seed"] == 3
    assert cli.seeds == {
        "seed_everything": 3,
        "data.seed": 3,
        "data.seed_source": "seed_everything",
    }
    cli = FairVLMCLI(args=[*base, "--seed_everything", "3", "--data.seed", "7"], run=False)
    assert cli.datamodule.seed == 7
    assert cli.seeds["data.seed_source"] == "explicit"  # the summary says "(given)"
    cli = FairVLMCLI(args=[*base, "--seed_everything", "false"], run=False)
    assert cli.datamodule.seed == 0
    # the training order differs between seeds (the order is a function of (seed, epoch))
    orders = []
    for seed in ("1", "2"):
        cli = FairVLMCLI(args=[*base, "--seed_everything", seed], run=False)
        cli.datamodule.setup("fit")
        orders.append(next(iter(cli.datamodule.train_dataloader()))["index"].tolist())
    assert orders[0] != orders[1]


def test_balanced_config_balances_race(synthetic_root: Path, synthetic_kwargs: dict) -> None:
    from fairvlm_lightning.data import GroupBalancedSampler

    cli = FairVLMCLI(
        args=[
            "--config",
            str(CONFIGS / "synthetic_clip_balanced.yaml"),
            *synthetic_overrides(synthetic_root, synthetic_kwargs),
            "--seed_everything",
            "5",
        ],
        run=False,
    )
    assert cli.datamodule.balance_attribute == "race" and cli.model.fairness_weight == 0
    cli.datamodule.setup("fit")
    sampler = cli.datamodule.train_dataloader().sampler
    assert isinstance(sampler, GroupBalancedSampler) and sampler.seed == 5
