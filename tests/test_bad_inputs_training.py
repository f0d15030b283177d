"""Bad-input matrix of the training components: losses, metrics, module.

One place per component so the matrix can be read: data loading is in
``data/test_bad_inputs_data.py``, the command (checkpoints, run folders, resume) in
``app/test_bad_inputs_cli.py``. Each case expects a clear error naming the problem, never a
silently wrong value or an error that blames something else.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import CLIPConfig

from fairvlm_lightning.losses import local_pair_losses, pair_losses
from fairvlm_lightning.metrics import FairnessMetrics, GroupAUROC
from fairvlm_lightning.metrics.functional import group_auroc
from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.sinkhorn import SinkhornFairnessLoss

TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)


def _config() -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(vocab_size=99, max_position_embeddings=16, eos_token_id=2, **TINY),
        vision_config=dict(image_size=16, patch_size=8, **TINY),
        projection_dim=8,
    )


def _batch(n: int = 6, offset: int = 100, nan_at: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(n, 3, 16, 16, generator=g),
        "input_ids": torch.randint(3, 99, (n, 5), generator=g),
        "index": torch.arange(offset, offset + n),
        "race": torch.tensor([0, 1] * (n // 2)),
    }
    if nan_at is not None:
        batch["pixel_values"][nan_at, 0, 0, 0] = math.nan
    return batch


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("scale", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_pair_losses_refuse_non_finite_logit_scale(scale: float, as_tensor: bool) -> None:
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    value = torch.tensor(scale) if as_tensor else scale
    with pytest.raises(ValueError, match=r"logit_scale must be finite, got (inf|-inf|nan)"):
        pair_losses(x, x, value)
    with pytest.raises(ValueError, match="logit_scale must be finite"):
        local_pair_losses(x, x, x, x, value)


def test_pair_losses_refuse_non_finite_logit_bias() -> None:
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    with pytest.raises(ValueError, match="logit_bias must be finite, got inf"):
        pair_losses(x, x, 10.0, math.inf, kind="siglip")


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_metrics_say_non_finite_not_sigmoid(bad: float) -> None:
    preds = torch.tensor([0.1, 0.8, bad, 0.4])
    target = torch.tensor([0, 1, 1, 0])
    groups = torch.tensor([0, 0, 1, 1])
    for call in (
        lambda: group_auroc(preds, target, groups, num_groups=2),
        lambda: GroupAUROC(num_groups=2).update(preds, target, groups),
        lambda: FairnessMetrics({"race": 2}).update(preds, target, {"race": groups}),
    ):
        with pytest.raises(ValueError, match=r"non-finite scores") as err:
            call()
        assert "sigmoid" not in str(err.value)
        assert "1 non-finite value(s) at position(s) [2]" in str(err.value)


def test_metrics_out_of_range_still_suggests_a_sigmoid() -> None:
    with pytest.raises(ValueError, match="apply a sigmoid"):
        group_auroc(torch.tensor([0.1, 2.0]), torch.tensor([0, 1]), torch.tensor([0, 1]), 2)


# --------------------------------------------------------------------------- module: non-finite


@pytest.mark.parametrize("fairness_weight", [0.0, 0.5])
def test_non_finite_pair_loss_stops_the_step_naming_dataset_indices(fairness_weight: float) -> None:
    torch.manual_seed(0)
    module = FairVLMModule(
        _config(),
        fairness=SinkhornFairnessLoss(),
        fairness_weight=fairness_weight,
        fairness_attributes=("race",),
    )
    with pytest.raises(FloatingPointError) as err:
        module.training_step(_batch(nan_at=2), 0)
    msg = str(err.value)
    # A NaN image poisons every pair's softmax: all six pairs are named, by dataset index, and
    # the culprit is pointed at.
    assert "non-finite per-pair loss at dataset indices [100, 101, 102, 103, 104, 105]" in msg
    assert "non-finite pixel_values at dataset indices [102]" in msg
    assert "nonfinite_loss='skip'" in msg
    # a clean batch passes
    out = module.training_step(_batch(), 0)
    assert torch.isfinite(out["loss"])


def test_non_finite_step_through_the_trainer_raises_at_training_not_validation(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    module = FairVLMModule(_config(), fairness_weight=0.0)
    batches = [_batch(offset=0), _batch(offset=6, nan_at=4)]
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(
        FloatingPointError, match=r"non-finite pixel_values at dataset indices \[10\]"
    ):
        trainer.fit(module, DataLoader(batches, batch_size=None))
    assert all(torch.isfinite(p).all() for p in module.parameters())  # no NaN was stepped in


def test_non_finite_step_can_be_skipped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = FairVLMModule(_config(), fairness_weight=0.0, nonfinite_loss="skip")
    with pytest.warns(UserWarning, match=r"skipped the training step.*dataset indices \[102\]"):
        assert module.training_step(_batch(nan_at=2), 0) is None

    # Through the trainer: the bad batch is skipped, so training on [bad, good] gives exactly
    # the weights of training on [good] alone from the same start.
    def fit(batches: list[dict[str, torch.Tensor]]) -> FairVLMModule:
        torch.manual_seed(0)
        m = FairVLMModule(_config(), fairness_weight=0.0, nonfinite_loss="skip")
        pl.Trainer(
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        ).fit(m, DataLoader(batches, batch_size=None))
        return m

    with pytest.warns(UserWarning, match="skipped the training step"):
        skipped = fit([_batch(offset=0, nan_at=1), _batch(offset=6)])
    clean = fit([_batch(offset=6)])
    torch.manual_seed(0)
    start = FairVLMModule(_config(), fairness_weight=0.0)
    assert any(
        not torch.equal(a, b) for a, b in zip(start.parameters(), clean.parameters(), strict=True)
    )
    for (name, a), b in zip(skipped.named_parameters(), clean.parameters(), strict=True):
        assert torch.isfinite(a).all() and torch.equal(a, b), name
    with pytest.raises(ValueError, match="nonfinite_loss must be 'raise' or 'skip'"):
        FairVLMModule(_config(), nonfinite_loss="ignore")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- module: paths


def test_relative_model_folder_is_stored_resolved(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(synthetic_root)
    module = FairVLMModule("tiny_model", fairness_weight=0.0)
    assert module.hparams["model"] == str(synthetic_root / "tiny_model")
    ckpt = tmp_path / "m.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        ckpt,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = FairVLMModule.load_from_checkpoint(ckpt, weights_only=True)
    for (name, a), b in zip(module.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_missing_relative_model_folder_says_which_and_from_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError) as err:
        FairVLMModule(".fairvlm_cache/synthetic/tiny_model")
    msg = str(err.value)
    assert "'.fairvlm_cache/synthetic/tiny_model'" in msg
    assert f"working directory {os.getcwd()}" in msg
    assert str(tmp_path / ".fairvlm_cache" / "synthetic" / "tiny_model") in msg


# --------------------------------------------------------------------------- group ids (issue 19)


def test_group_id_above_the_declared_count_is_refused_in_training() -> None:
    """Race 7 of 3 groups stops the training step (it must not become an extra Sinkhorn group
    ``race/7``), naming the attribute, the value, the range and the pairs."""
    module = FairVLMModule(
        _config(),
        fairness=SinkhornFairnessLoss(),
        fairness_weight=0.5,
        fairness_attributes=("race", "gender"),
        metrics={"attributes": {"race": 3, "gender": 2}},
    )
    batch = _batch()
    batch["gender"] = torch.tensor([0, 1, 0, 1, 0, 1])
    batch["race"] = torch.tensor([0, 1, 7, 2, 7, -1])  # -1 = unknown: allowed
    with pytest.raises(ValueError) as err:
        module.training_step(batch, 0)
    msg = str(err.value)
    assert "'race'" in msg and "[7]" in msg and "0..2" in msg and "3 groups" in msg
    assert "dataset indices [102, 104]" in msg  # _batch's index starts at 100
    batch["race"] = torch.tensor([0, 1, 2, 2, 1, -1])
    batch["gender"] = torch.tensor([0, 1, 2, 1, 0, 1])
    with pytest.raises(ValueError, match=r"'gender' has group id\(s\) \[2\].*range 0\.\.1"):
        module.training_step(batch, 0)
    # in range (and unknowns): the step runs, and the term spans only the declared groups
    batch["gender"] = torch.tensor([0, 1, 0, 1, 0, -1])
    assert torch.isfinite(module.training_step(batch, 0)["loss"])  # type: ignore[index]
