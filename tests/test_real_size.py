"""The real-size path, offline: the FairVLMed config (`fairvlmed_clip_vitb16`, ViT-B/16 CLIP) run
end to end on CPU on a synthetic folder at 224 px, with a ViT-B/16 CLIP built from the
openai/clip-vit-base-patch16 hyper-parameters (random weights) and a locally trained tokenizer.

One `fit` (2 steps of batch 2, its validation loop, then the test of the best checkpoint) is
shared by `probe` and `export`; LoRA keeps the checkpoint small. Measured 20 s in the full suite
(173 s alone under heavy contention from other jobs on 2 cores); benchmarks/bench_real_size.py
records step time and memory at B=32."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, CLIPConfig

from fairvlm_lightning.app.cli import main
from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
from fairvlm_lightning.app.synthetic.tiny_model import MODEL_PRESETS
from fairvlm_lightning.module import FairVLMModule

KWARGS = {
    "seed": 0,
    "sizes": {"train": 8, "val": 4, "test": 4},
    "image_shape": [224, 224],
    "warm_start_steps": 0,
    "model_kwargs": {"preset": "clip-vit-base-patch16"},
}
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def test_fairvlmed_config_end_to_end_at_real_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["fairvlm"])
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "synthetic224"
    args = [
        "--config", "fairvlmed_clip_vitb16",
        "--data", "fairvlm_lightning.app.synthetic.SyntheticFairVLMedDataModule",
        "--data.root", str(root),
        "--data.synthetic_kwargs", json.dumps(KWARGS),
        "--model.model", str(root / "tiny_model"),
        "--model.encoder", json.dumps({"loss": "clip", "peft": LORA}),
        "--data.batch_size", "2", "--data.eval_batch_size", "4", "--data.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.precision", "32",
    ]  # fmt: skip
    main([
        "fit", *args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert "test: AUC" in out and "\nrace " in out
    # the model really is ViT-B/16 CLIP at 224 px with the Hub config's hyper-parameters
    config = CLIPConfig.from_pretrained(root / "tiny_model")
    preset = MODEL_PRESETS["clip-vit-base-patch16"]
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (224, 16)
    assert config.vision_config.hidden_size == 768 and config.vision_config.num_hidden_layers == 12
    assert config.text_config.hidden_size == 512 and config.text_config.num_hidden_layers == 12
    assert config.text_config.max_position_embeddings == 77 and config.projection_dim == 512
    assert config.vision_config.hidden_act == preset["vision"]["hidden_act"] == "quick_gelu"
    ckpt = next(ln for ln in out.splitlines() if ln.startswith("checkpoint: ")).split(": ", 1)[1]
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 2

    main(["probe", *args, "--ckpt_path", ckpt, "--weight_decays", "1e-2"])
    out = capsys.readouterr().out
    assert "probe: AUC" in out and "weight decay 0.01 chosen on validation" in out

    main(["export", "--ckpt_path", ckpt, "--out", str(tmp_path / "hf")])
    exported = AutoModel.from_pretrained(tmp_path / "hf").eval()
    module = FairVLMModule.load_from_checkpoint(ckpt, weights_only=True).eval()
    dm = SyntheticFairVLMedDataModule(str(root), synthetic_kwargs=KWARGS, max_length=77)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        ref = module.encoder.encode_image(batch["pixel_values"])
        got = exported.get_image_features(pixel_values=batch["pixel_values"])
        got = got if isinstance(got, torch.Tensor) else got.pooler_output
    assert batch["pixel_values"].shape[-2:] == (224, 224)
    torch.testing.assert_close(
        torch.nn.functional.normalize(got, dim=-1), ref, atol=1e-5, rtol=1e-4
    )
