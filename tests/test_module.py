"""FairVLMModule: loss against Hugging Face's own loss and closed forms, DBPM weights, zero-shot
metrics against scikit-learn on an independent forward pass, bf16-mixed, checkpoints, 2-process DDP.
"""

from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ddp_utils import run_distributed
from sklearn.metrics import roc_auc_score
from transformers import AutoModel, AutoTokenizer, CLIPConfig, CLIPModel

from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
from fairvlm_lightning.callbacks import DynamicBadPairMining
from fairvlm_lightning.data import FairVLMedDataModule
from fairvlm_lightning.encoders import EncoderSpec
from fairvlm_lightning.module import DEFAULT_PROMPTS, FairVLMModule
from fairvlm_lightning.sinkhorn import SinkhornFairnessLoss
from fairvlm_lightning.zeroshot import ZeroShotPrompts

TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)


def tiny_config() -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(vocab_size=99, max_position_embeddings=16, eos_token_id=2, **TINY),
        vision_config=dict(image_size=16, patch_size=8, **TINY),
        projection_dim=8,
    )


def random_batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (n, 6), generator=g)
    ids[:, -1] = 2  # eos
    return {
        "pixel_values": torch.randn(n, 3, 16, 16, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones(n, 6, dtype=torch.long),
        "index": torch.arange(n),
        "label": torch.arange(n) % 2,
        "race": torch.tensor([0, 0, 0, 1, 1, 2, -1, 1])[:n],
        "gender": torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])[:n],
    }


def half_w2(x: np.ndarray, y: np.ndarray) -> float:
    """Exact 1/2 W_2^2 between uniform empirical measures on the line (quantile integral)."""
    x, y = np.sort(x), np.sort(y)
    ts = np.union1d(np.arange(1, len(x) + 1) / len(x), np.arange(1, len(y) + 1) / len(y))
    total, prev = 0.0, 0.0
    for t in ts:
        mid = (prev + t) / 2
        qx = x[int(np.ceil(mid * len(x))) - 1]
        qy = y[int(np.ceil(mid * len(y))) - 1]
        total += (t - prev) * (qx - qy) ** 2
        prev = t
    return total / 2


# ---------------------------------------------------------------------------------- unit level


def test_loss_equals_hugging_face_clip_loss() -> None:
    torch.manual_seed(0)
    module = FairVLMModule(tiny_config())
    batch = random_batch()
    out = module.training_step(batch, 0)
    hf = module.model(
        pixel_values=batch["pixel_values"],
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        return_loss=True,
    )
    torch.testing.assert_close(out["loss"], hf.loss, rtol=1e-5, atol=1e-6)
    assert out["pair_losses"].shape == (8,) and not out["pair_losses"].requires_grad
    assert out["index"] is batch["index"]


@pytest.mark.parametrize("statistic", ["loss", "similarity"])
def test_fairness_term_matches_closed_form(statistic: str) -> None:
    torch.manual_seed(0)
    weight = 0.7
    module = FairVLMModule(
        tiny_config(),
        fairness=SinkhornFairnessLoss(backend="exact1d"),
        fairness_weight=weight,
        fairness_attributes=["race", "gender"],
        fairness_statistic=statistic,
    )
    batch = random_batch()
    out = module.training_step(batch, 0)
    # Independent path: Hugging Face logits -> per-pair losses / matched cosines (numpy).
    with torch.no_grad():
        hf = module.model(
            pixel_values=batch["pixel_values"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
        )
    logits = hf.logits_per_image.double().numpy()
    n = len(logits)

    def ce(m: np.ndarray) -> np.ndarray:
        m = m - m.max(axis=1, keepdims=True)
        return -(np.diag(m) - np.log(np.exp(m).sum(axis=1)))

    losses = (ce(logits) + ce(logits.T)) / 2
    if statistic == "loss":
        values = losses
    else:
        values = (hf.image_embeds * hf.text_embeds).sum(-1).double().numpy()
    fair = 0.0
    for attr in ("race", "gender"):
        ids = batch[attr].numpy()
        for g in sorted(set(ids.tolist()) - {-1}):
            if (ids == g).sum() >= 2:  # min_group_size
                fair += half_w2(values[ids == g], values)
    expected = losses.mean() + weight * fair
    assert fair > 0
    assert math.isclose(out["loss"].item(), expected, rel_tol=1e-4)
    np.testing.assert_allclose(out["pair_losses"].numpy(), losses, rtol=1e-4)
    assert n == 8


def half_w2_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`half_w2` on tensors, differentiable (sorted values gathered at fixed quantiles)."""
    xs, ys = torch.sort(x).values, torch.sort(y).values
    nx, ny = len(x), len(y)
    ts = np.union1d(np.arange(1, nx + 1) / nx, np.arange(1, ny + 1) / ny)
    prev = np.concatenate([[0.0], ts[:-1]])
    mid = (prev + ts) / 2
    ix = torch.as_tensor(np.ceil(mid * nx).astype(int) - 1)
    iy = torch.as_tensor(np.ceil(mid * ny).astype(int) - 1)
    dt = torch.as_tensor(ts - prev, dtype=x.dtype)
    return (dt * (xs[ix] - ys[iy]) ** 2).sum() / 2


@pytest.mark.parametrize("weight", [0.0, 0.8])
def test_fairness_term_gradient_through_the_model(weight: float) -> None:
    """grad(total) = grad(contrastive) + weight * grad(fairness), both by a second path."""
    torch.manual_seed(0)
    module = FairVLMModule(
        tiny_config(),
        fairness=SinkhornFairnessLoss(backend="exact1d"),
        fairness_weight=weight,
        fairness_attributes=["race"],
    )
    params = [p for p in module.encoder.parameters() if p.requires_grad]
    batch = random_batch()
    total = module.training_step(batch, 0)["loss"]
    g_total = torch.autograd.grad(total, params, allow_unused=True)
    # Second path: Hugging Face's forward, its CLIP loss, and the per-pair losses from its logits.
    hf = module.model(
        pixel_values=batch["pixel_values"],
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        return_loss=True,
    )
    logits = hf.logits_per_image
    target = torch.arange(len(logits))
    losses = (
        F.cross_entropy(logits, target, reduction="none")
        + F.cross_entropy(logits.T, target, reduction="none")
    ) / 2
    race = batch["race"]
    fair = sum(half_w2_torch(losses[race == g], losses) for g in (0, 1))  # 2 has one member
    g_clip = torch.autograd.grad(hf.loss, params, retain_graph=True, allow_unused=True)
    g_fair = torch.autograd.grad(fair, params, allow_unused=True)

    def flat(grads: tuple) -> torch.Tensor:
        return torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).flatten()
                for p, g in zip(params, grads, strict=True)
            ]
        )

    g_total, g_clip, g_fair = flat(g_total), flat(g_clip), flat(g_fair)
    assert g_fair.norm() > 0.05 * g_clip.norm()  # the term moves the encoder
    error = (g_total - (g_clip + weight * g_fair)).norm()
    assert error <= 1e-5 * g_total.norm()  # float32 rounding: 3e-7 measured
    if weight:  # the fairness part of the total gradient is far above that rounding
        assert (g_total - g_clip).norm() > 1000 * error


def test_hparams_of_a_model_instance_are_plain(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = FairVLMModule(CLIPModel(tiny_config()), optimizer=partial(torch.optim.SGD, lr=0.1))
    assert module.hparams["model"]["model_type"] == "clip"
    assert "optimizer" not in module.hparams
    # A plain (weights_only) checkpoint of it loads back with the same weights.
    data = [random_batch(seed=s) for s in range(2)]
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = FairVLMModule.load_from_checkpoint(path, weights_only=True)
    for (k, a), (k2, b) in zip(
        module.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"encoder": {"loss": "infonce"}}, ValueError, "loss must be"),
        ({"encoder": {"lora": {}}}, ValueError, r"encoder has unknown key\(s\) \['lora'\]"),
        ({"encoder": 3}, TypeError, "encoder must be an EncoderSpec"),
        ({"fairness_statistic": "auc"}, ValueError, "fairness_statistic"),
        ({"fairness_weight": -1.0}, ValueError, "fairness_weight must be >= 0"),
        ({"fairness_weight": float("nan")}, ValueError, "finite"),
        ({"fairness_weight": 0.5}, ValueError, "needs a fairness term"),
        ({"fairness": "sinkhorn"}, TypeError, "fairness must be a SinkhornFairnessLoss"),
        ({"fairness": {"class_path": "torch.nn.Linear"}}, ValueError, "SinkhornFairnessLoss"),
        ({"fairness_attributes": "race"}, TypeError, "sequence of attribute names"),
        ({"zero_shot": {"prompts": {0: "a", 2: "b"}}}, ValueError, r"class ids 0\.\.C-1"),
        ({"zero_shot": {"prompts": {0: "a", 1: ""}}}, ValueError, r"prompts\[1\]"),
        ({"zero_shot": {"prompts": ["a", "b", "c"]}}, ValueError, "exactly two classes"),
        ({"zero_shot": {"prompts": "a b"}}, TypeError, "one entry per class"),
        ({"zero_shot": {"max_length": 0}}, ValueError, "zero_shot.max_length"),
        ({"zero_shot": {"length": 8}}, ValueError, "unknown key"),
        ({"metrics": ["race"]}, TypeError, "metrics must be a dict"),
        ({"metrics": {"attributes": ["race"]}}, TypeError, r"metrics\['attributes'\]"),
        ({"scheduler_config": {"interval": "batch"}}, ValueError, "interval"),
        ({"scheduler_config": {"every": 2}}, ValueError, "unknown key"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        FairVLMModule(tiny_config(), **kwargs)


def test_constructor_takes_at_most_twelve_components() -> None:
    import inspect

    params = list(inspect.signature(FairVLMModule.__init__).parameters)[1:]
    assert len(params) <= 12, params


def test_components_are_recorded_as_plain_values_and_rebuilt() -> None:
    """The hyper-parameters rebuild each component: a second construction from them agrees."""
    torch.manual_seed(0)
    module = FairVLMModule(
        tiny_config(),
        encoder=EncoderSpec(loss="siglip", max_logit_scale=50.0, gather_distributed=False),
        fairness=SinkhornFairnessLoss(blur=0.05, min_group_size=3, backend="exact1d"),
        fairness_weight=0.25,
        zero_shot=ZeroShotPrompts(("healthy", ["glaucoma", "an eye with glaucoma"]), 12),
        metrics={"attributes": {"race": 3}, "threshold": 0.4},
        scheduler_config={"interval": "step"},
    )
    hp = dict(module.hparams)
    assert hp["encoder"] == {"loss": "siglip", "max_logit_scale": 50.0, "gather_distributed": False}
    assert hp["fairness"]["init_args"] == {
        "blur": 0.05, "p": 2, "scaling": SinkhornFairnessLoss().scaling,
        "min_group_size": 3, "backend": "exact1d",
    }
    again = FairVLMModule(**hp)  # what load_from_checkpoint does with them
    assert again.loss_kind == "siglip" and again.encoder.max_logit_scale == 50.0
    assert again.gather_distributed is False
    assert (again.fairness.blur, again.fairness.min_group_size) == (0.05, 3)
    assert again.fairness_weight == 0.25
    assert again.prompts == {0: ["healthy"], 1: ["glaucoma", "an eye with glaucoma"]}
    assert again.prompt_max_length == 12
    assert again.metric_attributes == {"race": 3} and again.val_metrics.threshold == 0.4
    assert again.scheduler_config == {"interval": "step", "monitor": "val/loss"}
    assert dict(again.hparams) == hp


def test_fairness_weight_defaults_to_one_with_a_term_and_zero_without() -> None:
    torch.manual_seed(0)
    batch = random_batch()
    plain = FairVLMModule(tiny_config())
    assert plain.fairness is None and plain.fairness_weight == 0.0
    with_term = FairVLMModule(
        tiny_config(),
        fairness=SinkhornFairnessLoss(backend="exact1d"),
        fairness_attributes=["race"],
    )
    assert with_term.fairness_weight == 1.0
    with_term.load_state_dict(plain.state_dict())
    off = FairVLMModule(
        tiny_config(), fairness=SinkhornFairnessLoss(), fairness_weight=0.0,
        fairness_attributes=["race"],
    )
    off.load_state_dict(plain.state_dict())
    base = plain.training_step(batch, 0)["loss"]
    torch.testing.assert_close(off.training_step(batch, 0)["loss"], base)
    losses = plain.training_step(batch, 0)["pair_losses"].double().numpy()
    race = batch["race"].numpy()
    fair = sum(half_w2(losses[race == g], losses) for g in (0, 1))  # group 2 has one member
    assert with_term.training_step(batch, 0)["loss"].item() == pytest.approx(
        base.item() + fair, rel=1e-4
    )


def test_pair_weight_provider_weights_the_contrastive_mean() -> None:
    torch.manual_seed(0)
    module = FairVLMModule(tiny_config())
    batch = random_batch()
    plain = module.training_step(batch, 0)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def provider(index: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        seen.append((index, losses))
        return (index % 2).float()  # drop the even pairs

    module.set_pair_weight_provider(provider)
    weighted = module.training_step(batch, 0)
    assert seen[0][0] is batch["index"] and not seen[0][1].requires_grad
    ell = plain["pair_losses"]
    torch.testing.assert_close(weighted["loss"], (ell * (batch["index"] % 2)).mean())
    module.set_pair_weight_provider(None)
    torch.testing.assert_close(module.training_step(batch, 0)["loss"], plain["loss"])
    with pytest.raises(TypeError, match="callable"):
        module.set_pair_weight_provider(3)  # type: ignore[arg-type]


def test_bad_model_and_bad_batch(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="model must be"):
        FairVLMModule(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model_type"):
        FairVLMModule({"projection_dim": 8})
    with pytest.raises(OSError, match="ensure_synthetic_assets"):
        FairVLMModule(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="cannot serve as a dual encoder"):
        FairVLMModule(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    module = FairVLMModule(
        tiny_config(), fairness=SinkhornFairnessLoss(), fairness_attributes=["race"]
    )
    batch = random_batch()
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['index'\]"):
        module.training_step({k: v for k, v in batch.items() if k != "index"}, 0)
    with pytest.raises(ValueError, match=r"\['race'\]"):
        module.training_step({k: v for k, v in batch.items() if k != "race"}, 0)
    with pytest.raises(TypeError, match="dict of tensors"):
        module.training_step([batch["pixel_values"]], 0)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="needs a tokenizer"):
        module.encode_prompts()


# ---------------------------------------------------------------------- on the synthetic data


def _datamodule(root: Path, synthetic_kwargs: dict, **kwargs: Any) -> FairVLMedDataModule:
    kwargs.setdefault("batch_size", 16)
    kwargs.setdefault("eval_batch_size", 64)
    # str root: checkpoints then hold only plain hyper-parameters (weights_only loading).
    return SyntheticFairVLMedDataModule(
        str(root), synthetic_kwargs=synthetic_kwargs, **kwargs
    )


class _Capture(pl.Callback):
    """Records what training_step returned together with the DBPM state it was computed under."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        miner = next(c for c in trainer.callbacks if isinstance(c, DynamicBadPairMining)).miner
        self.steps.append(
            {
                "epoch": trainer.current_epoch,
                "loss": outputs["loss"].detach().clone(),
                "pair_losses": outputs["pair_losses"].clone(),
                "index": outputs["index"].clone(),
                "flagged": miner.flagged_mask[outputs["index"]].clone(),
                "mu": miner.mu,
                "sigma": miner.sigma,
            }
        )


@pytest.fixture(scope="module")
def fitted(synthetic_root: Path, synthetic_kwargs: dict, tmp_path_factory: pytest.TempPathFactory):
    """Two epochs with DBPM (beta 1 so pairs get flagged) and a checkpoint."""
    torch.manual_seed(0)
    dm = _datamodule(synthetic_root, synthetic_kwargs)
    module = FairVLMModule(
        str(synthetic_root / "tiny_model"),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
    )
    capture = _Capture()
    dbpm = DynamicBadPairMining(warmup_epochs=1, beta_noisy=1.0, beta_faulty=1.0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path_factory.mktemp("ckpt"), save_last=True)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        callbacks=[dbpm, capture, ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    return {"trainer": trainer, "module": module, "dm": dm, "steps": capture.steps, "ckpt": ckpt}


def test_dbpm_weights_enter_the_loss(fitted: dict) -> None:
    steps = [s for s in fitted["steps"] if s["epoch"] == 1]
    flagged = torch.cat([s["flagged"] for s in steps])
    assert flagged.any(), "beta=1 flags pairs after the warm-up epoch"
    for s in steps:
        mu, sigma = s["mu"], s["sigma"]
        ell = s["pair_losses"].double()
        pdf = torch.exp(-((ell - mu) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
        weights = torch.where(s["flagged"], pdf, torch.ones_like(ell))
        torch.testing.assert_close(s["loss"].double(), (weights * ell).mean(), rtol=1e-5, atol=0)
    for s in (s for s in fitted["steps"] if s["epoch"] == 0):  # warm-up: plain mean
        torch.testing.assert_close(s["loss"], s["pair_losses"].mean(), rtol=1e-5, atol=0)


def _reference_scores(model_dir: Path, hf_state: dict, dm: FairVLMedDataModule, split: str):
    """Zero-shot P(y=1) straight from the Hugging Face model (not through the module)."""
    model = AutoModel.from_pretrained(model_dir)
    model.load_state_dict(hf_state)
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = tok(
        [DEFAULT_PROMPTS[0], DEFAULT_PROMPTS[1]],
        padding="max_length",
        max_length=64,
        truncation=True,
        return_tensors="pt",
    )
    scores, labels, races = [], [], []
    with torch.no_grad():
        text = F.normalize(model.get_text_features(**prompts).pooler_output, dim=-1)
        for batch in getattr(dm, f"{split}_dataloader")():
            image = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
            logits = model.logit_scale.exp() * F.normalize(image, dim=-1) @ text.T
            scores.append(logits.softmax(-1)[:, 1])
            labels.append(batch["label"])
            races.append(batch["race"])
    return torch.cat(scores).numpy(), torch.cat(labels).numpy(), torch.cat(races).numpy()


def test_zero_shot_metrics_match_sklearn(fitted: dict, synthetic_root: Path) -> None:
    trainer, module, dm = fitted["trainer"], fitted["module"], fitted["dm"]
    logged = trainer.validate(module, dm, verbose=False)[0]
    hf_state = {k[len("encoder.model.") :]: v for k, v in module.state_dict().items()}
    scores, labels, races = _reference_scores(synthetic_root / "tiny_model", hf_state, dm, "val")
    assert logged["val/auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-5)
    for g in range(3):
        key = f"val/race/auc_group_{g}"
        in_g = races == g
        if len(set(labels[in_g].tolist())) == 2:
            assert logged[key] == pytest.approx(roc_auc_score(labels[in_g], scores[in_g]), abs=1e-5)
        else:
            assert math.isnan(logged[key])
    assert {"val/loss", "val/race/es_auc", "val/gender/dpd", "val/language/deodds"} <= set(logged)


def test_predict_returns_probabilities_and_embeddings(fitted: dict, synthetic_root: Path) -> None:
    trainer, module, dm = fitted["trainer"], fitted["module"], fitted["dm"]
    out = trainer.predict(module, dm)
    probs = torch.cat([o["probs"] for o in out])
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))
    hf_state = {k[len("encoder.model.") :]: v for k, v in module.state_dict().items()}
    scores, _, _ = _reference_scores(synthetic_root / "tiny_model", hf_state, dm, "predict")
    np.testing.assert_allclose(torch.cat([o["score"] for o in out]).numpy(), scores, atol=1e-5)
    emb = torch.cat([o["image_embeds"] for o in out])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(emb)))
    assert torch.cat([o["index"] for o in out]).tolist() == list(range(len(emb)))


def test_load_from_checkpoint_reproduces_the_model(fitted: dict) -> None:
    module, dm = fitted["module"], fitted["dm"]
    path = fitted["ckpt"].last_model_path
    loaded = FairVLMModule.load_from_checkpoint(path)  # weights_only loading (torch default)
    assert loaded.hparams["model"] == module.hparams["model"]
    for (k, a), b in zip(module.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    batch = next(iter(dm.val_dataloader()))
    module.eval()
    loaded.eval()
    with torch.no_grad():
        module.on_predict_epoch_start()
        loaded.on_predict_epoch_start()
        torch.testing.assert_close(
            module.predict_step(batch, 0)["probs"], loaded.predict_step(batch, 0)["probs"]
        )


class _DtypeSpy:
    def __init__(self, fn: Any) -> None:
        self.fn, self.calls = fn, []

    def __call__(self, values: torch.Tensor, groups: dict, **kwargs: Any) -> Any:
        self.calls.append((values.dtype, torch.is_autocast_enabled("cpu")))
        return self.fn(values, groups, **kwargs)


def test_bf16_mixed_fit_keeps_the_fairness_term_in_float32(
    synthetic_root: Path, synthetic_kwargs: dict
) -> None:
    torch.manual_seed(0)
    dm = _datamodule(synthetic_root, synthetic_kwargs)
    module = FairVLMModule(
        str(synthetic_root / "tiny_model"),
        fairness=SinkhornFairnessLoss(),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
    )
    before = [p.detach().clone() for p in module.parameters()]
    assert module.fairness is not None
    spy = _DtypeSpy(module.fairness.forward)
    module.fairness.forward = spy  # type: ignore[method-assign]
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        precision="bf16-mixed",
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    assert spy.calls and all(c == (torch.float32, False) for c in spy.calls)
    metrics = trainer.callback_metrics
    assert math.isfinite(metrics["train/loss_epoch"]) and math.isfinite(metrics["val/auc"])
    assert metrics["train/fairness_loss_epoch"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


# ------------------------------------------------------------------------- 2-process DDP fit


def _ddp_fit(rank: int, world_size: int, root: str, synthetic_kwargs: dict) -> dict:
    os.environ["LOCAL_RANK"] = str(rank)  # processes exist: Lightning joins this process group
    os.environ["NODE_RANK"] = "0"
    torch.manual_seed(0)
    dm = _datamodule(Path(root), synthetic_kwargs)
    module = FairVLMModule(
        str(Path(root) / "tiny_model"),
        fairness=SinkhornFairnessLoss(),
        fairness_weight=0.5,
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
    )
    dbpm = DynamicBadPairMining(warmup_epochs=1)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=world_size,
        strategy="ddp",
        callbacks=[dbpm],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    return {
        "params": torch.cat([p.detach().flatten() for p in module.parameters()]),
        "history_count": dbpm.miner.history_count.clone(),
        "history_mean": dbpm.miner.history_mean.clone(),
        "val_auc": float(trainer.callback_metrics["val/auc"]),
        "val_indices": list(trainer.val_dataloaders.sampler),
        "state": {k: v.clone() for k, v in module.encoder.model.state_dict().items()},
    }


def test_two_process_ddp_fit(synthetic_root: Path, synthetic_kwargs: dict) -> None:
    dm = _datamodule(synthetic_root, synthetic_kwargs)
    dm.prepare_data()  # fill the caches once, before the processes start
    out = run_distributed(
        _ddp_fit, world_size=2, root=str(synthetic_root), synthetic_kwargs=synthetic_kwargs
    )
    torch.testing.assert_close(out[0]["params"], out[1]["params"], rtol=0, atol=0)
    # DBPM memory is summed over the ranks: every training pair has both epochs on both ranks.
    n_train = synthetic_kwargs["sizes"]["train"]
    for r in out:
        assert r["history_count"].tolist() == [2] * n_train
    torch.testing.assert_close(out[0]["history_mean"], out[1]["history_mean"])
    assert out[0]["val_auc"] == out[1]["val_auc"]
    # The metric synchronised over ranks equals scikit-learn on the val split, each sample once.
    dm.setup("validate")
    scores, labels, _ = _reference_scores(synthetic_root / "tiny_model", out[0]["state"], dm, "val")
    assert sorted(out[0]["val_indices"] + out[1]["val_indices"]) == list(range(len(labels)))
    assert out[0]["val_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-5)
