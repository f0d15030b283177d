"""`fairvlm fit` with the LoRA config by bare name, then `fairvlm probe` and `fairvlm export` of its
checkpoint: the exported Hugging Face folder loads with AutoModel, gives the checkpoint's
embeddings (LoRA merged), carries tokenizer, image processor and a model card with the test
table, and FairVLMModule accepts it. Also `fairvlm configs` and a plain (non-LoRA) export."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from synthetic_args import synthetic_overrides
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from fairvlm_lightning.cli import main, resolve_config, shipped_configs
from fairvlm_lightning.data import FairVLMedDataModule
from fairvlm_lightning.export import export_checkpoint, export_module
from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.probe import probe_datamodule


@pytest.fixture(autouse=True)
def _argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fairvlm"])


def _overrides(root: Path, kwargs: dict) -> list[str]:
    return [
        *synthetic_overrides(root, kwargs, eval_batch_size=48),
        "--trainer.enable_progress_bar",
        "false",
    ]


def _embeddings(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    def feats(x):
        return x if isinstance(x, torch.Tensor) else x.pooler_output

    with torch.no_grad():
        img = feats(model.get_image_features(pixel_values=batch["pixel_values"]))
        txt = feats(
            model.get_text_features(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )
        )
    return torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)


def test_fit_probe_export_round_trip(
    synthetic_root: Path,
    synthetic_kwargs: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--config", "synthetic_robust_fair_lora", *_overrides(synthetic_root, synthetic_kwargs)]
    main(["fit", *args, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2"])
    out = capsys.readouterr().out
    params = re.search(r"parameters: ([\d,]+) trainable / ([\d,]+) total", out)
    assert params is not None
    trainable, total = (int(g.replace(",", "")) for g in params.groups())
    assert 0 < trainable < total / 5  # LoRA: a small share trains
    ckpt = next(ln for ln in out.splitlines() if ln.startswith("checkpoint: ")).split(": ", 1)[1]
    run = tmp_path / "runs" / "synthetic_robust_fair_lora" / "version_0"
    test_metrics = json.loads((run / "test_metrics.json").read_text())

    # probe of the checkpoint from the CLI == the Python API on load_from_checkpoint
    main(["probe", *args, "--ckpt_path", ckpt, "--weight_decays", "1e-2", "--json", "p.json"])
    out = capsys.readouterr().out
    assert "attribute  AUC    ES-AUC  DPD    DEOdds  group AUCs" in out and "probe: AUC" in out
    cli_values = json.loads((tmp_path / "p.json").read_text())
    module = FairVLMModule.load_from_checkpoint(ckpt, weights_only=True)
    dm = FairVLMedDataModule(
        str(synthetic_root),
        synthetic=True,
        synthetic_kwargs=synthetic_kwargs,
        max_length=32,
        eval_batch_size=48,
    )
    values, _ = probe_datamodule(module, dm, module.metric_attributes, weight_decays=(1e-2,))
    assert cli_values["probe/auc"] == pytest.approx(float(values["auc"]), abs=1e-6)
    assert f"probe: AUC {cli_values['probe/auc']:.3f}" in out

    # export: a plain HF folder with merged LoRA, same embeddings as the checkpoint's model
    main(["export", "--ckpt_path", ckpt, "--out", str(tmp_path / "hf")])
    hf = tmp_path / "hf"
    exported = AutoModel.from_pretrained(hf).eval()
    assert not any("lora" in k for k in exported.state_dict())
    AutoTokenizer.from_pretrained(hf)
    AutoImageProcessor.from_pretrained(hf)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    module.eval()
    ref_img = module.encoder.encode_image(batch["pixel_values"]).detach()
    ref_txt = module.encoder.encode_text(batch["input_ids"], batch["attention_mask"]).detach()
    img, txt = _embeddings(exported, batch)
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=1e-4)
    # the LoRA adapters changed something: the base model alone gives other embeddings
    base_img, _ = _embeddings(
        AutoModel.from_pretrained(synthetic_root / "tiny_model").eval(), batch
    )
    assert not torch.allclose(base_img, ref_img, atol=1e-4)
    card = (hf / "README.md").read_text()
    assert "## Training configuration" in card and '"fairness_weight": 0.1' in card
    assert f"| race | {test_metrics['test/auc']:.3f} |" in card
    assert "LORA adapters" in card
    # FairVLMModule accepts the folder (tokenizer included) and scores zero-shot
    again = FairVLMModule(model=str(hf), prompt_max_length=32)
    assert again.encode_prompts().shape[0] == 2
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_checkpoint(ckpt, hf)


def test_plain_export_and_errors(synthetic_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = FairVLMModule(str(synthetic_root / "tiny_model"), prompt_max_length=32)
    with torch.no_grad():
        module.model.visual_projection.weight.mul_(1.5)  # "fine-tuned"
    out = export_module(module, tmp_path / "plain")
    exported = AutoModel.from_pretrained(out)
    for k, v in module.model.state_dict().items():
        assert torch.equal(exported.state_dict()[k], v), k
    assert "Not known at export time" in (out / "README.md").read_text()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "x")
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match="not a FairVLMModule"):
        export_checkpoint(bad, tmp_path / "y")


def test_configs_command_and_bare_names(capsys: pytest.CaptureFixture[str]) -> None:
    main(["configs"])
    out = capsys.readouterr().out
    for name in shipped_configs():
        assert f"  {name} " in out
    assert {"synthetic_robust_fair", "synthetic_robust_fair_lora", "fairvlmed_clip_vitb16"} <= set(
        shipped_configs()
    )
    path = Path(resolve_config("synthetic_robust_fair.yaml"))
    assert path.is_file() and path.parent.name == "configs"
    with pytest.raises(FileNotFoundError, match="shipped"):
        resolve_config("no_such_config")
