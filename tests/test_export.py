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

from fairvlm_lightning.app.cli import main, resolve_config, shipped_configs
from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
from fairvlm_lightning.data import FairVLMedDataModule
from fairvlm_lightning.export import export_checkpoint, export_module
from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.probe import probe_datamodule
from fairvlm_lightning.zeroshot import ZeroShotPrompts


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
    dm = SyntheticFairVLMedDataModule(
        str(synthetic_root),
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
    again = FairVLMModule(model=str(hf), zero_shot=ZeroShotPrompts(max_length=32))
    assert again.encode_prompts().shape[0] == 2
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_checkpoint(ckpt, hf)

    # issue 19.1: the card of ANOTHER checkpoint of the run (a last.ckpt whose weights differ
    # from the best one that fit tested) shows that checkpoint's numbers, not the run's record
    last = Path(ckpt).parent / "last.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for k, v in raw["state_dict"].items():
        if "visual_projection" in k:
            v.add_(torch.randn(v.shape, generator=gen) * v.std())
    torch.save(raw, last)
    main(["test", *args, "--ckpt_path", str(last)])  # the reference: the CLI's own test run
    out = capsys.readouterr().out
    ref_path = Path(next(ln for ln in out.splitlines() if ln.startswith("metrics: ")).split()[1])
    reference = json.loads(ref_path.read_text())
    assert ref_path.parent != run and reference["ckpt_path"] == str(last)
    keys = ["test/auc", *(f"test/{a}/{m}" for a in ("race", "gender") for m in ("es_auc", "dpd"))]
    assert [f"{reference[k]:.3f}" for k in keys] != [f"{test_metrics[k]:.3f}" for k in keys]
    main(["export", "--ckpt_path", str(last), "--out", str(tmp_path / "hf_last")])
    card = (tmp_path / "hf_last" / "README.md").read_text()
    for attr in ("race", "gender", "ethnicity", "language"):
        row = next(ln for ln in card.splitlines() if ln.startswith(f"| {attr} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        expected = [
            f"{reference[k]:.3f}"
            for k in ("test/auc", f"test/{attr}/es_auc", f"test/{attr}/dpd", f"test/{attr}/deodds")
        ]
        assert cells[1:5] == expected, (attr, cells)
    assert "Evaluated at export" in card and "another checkpoint (epoch=" in card
    assert f"sha256 {reference['ckpt_sha256']}" in card
    # no absolute local path in either card
    for text in (card, (hf / "README.md").read_text()):
        assert str(tmp_path) not in text and str(synthetic_root) not in text
        assert not re.search(r"(?<![\w<>])/(tmp|home|root|Users)/", text), text
    # an explicit record of another checkpoint is refused; the matching one is used as is
    with pytest.raises(ValueError, match="another checkpoint"):
        export_checkpoint(last, tmp_path / "x", metrics=run / "test_metrics.json")

    def no_eval(*a: object, **k: object) -> None:
        raise AssertionError("a matching record must not be re-evaluated")

    monkeypatch.setattr("fairvlm_lightning.export.evaluate_checkpoint", no_eval)
    export_checkpoint(last, tmp_path / "hf_last", metrics=ref_path, overwrite=True)
    card = (tmp_path / "hf_last" / "README.md").read_text()
    assert f"| race | {reference['test/auc']:.3f} | {reference['test/race/es_auc']:.3f} |" in card
    assert "recorded for this checkpoint" in card


def test_plain_export_and_errors(synthetic_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = FairVLMModule(
        str(synthetic_root / "tiny_model"), zero_shot=ZeroShotPrompts(max_length=32)
    )
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


def test_card_without_data_says_why_and_names_no_local_path(
    synthetic_root: Path, tmp_path: Path
) -> None:
    import lightning

    module = FairVLMModule(
        str(synthetic_root / "tiny_model"), zero_shot=ZeroShotPrompts(max_length=32)
    )
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "datamodule_hyper_parameters": {"root": str(tmp_path / "moved"), "synthetic": True},
            "pytorch-lightning_version": lightning.__version__,
        },
        ckpt,
    )
    # the run's record is of the initial weights: not taken
    (tmp_path / "run" / "test_metrics.json").write_text(
        json.dumps({"test/auc": 0.99, "initial_weights": True, "ckpt_path": None})
    )
    card = (export_checkpoint(ckpt, tmp_path / "a") / "README.md").read_text()
    assert "Not known: the run's test_metrics.json was not used: it is of the initial" in card
    assert "data folder <local>/moved is not there" in card and "0.990" not in card
    assert str(tmp_path) not in card
    card = (export_checkpoint(ckpt, tmp_path / "b", evaluate=False) / "README.md").read_text()
    assert "(evaluation at export was turned off)" in card
    with pytest.raises(ValueError, match="does not record which checkpoint"):
        export_checkpoint(ckpt, tmp_path / "c", metrics={"test/auc": 0.5})


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


_KILLED_EXPORT = """
import sys, time
from pathlib import Path
from transformers import PreTrainedTokenizerBase
from fairvlm_lightning.export import export_module
from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.zeroshot import ZeroShotPrompts

tiny, out, ready = sys.argv[1:4]
def stall(self, *args, **kwargs):  # model.safetensors is written, the tokenizer is not
    Path(ready).touch()
    time.sleep(120)
PreTrainedTokenizerBase.save_pretrained = stall
export_module(FairVLMModule(tiny, zero_shot=ZeroShotPrompts(max_length=32)), out, overwrite=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_overwrite_replaces_whole_and_a_killed_export_is_never_half(
    synthetic_root: Path, tmp_path: Path
) -> None:
    """Issue 19.2 (stale adapter files survive --overwrite) and 19.3 (a SIGKILLed export
    leaves a loadable folder with a broken tokenizer)."""
    import os
    import signal
    import subprocess
    import time

    from fairvlm_lightning.atomic import MARKER, IncompleteFolderError

    tiny = synthetic_root / "tiny_model"
    torch.manual_seed(0)
    module = FairVLMModule(str(tiny), zero_shot=ZeroShotPrompts(max_length=32))
    fresh = export_module(module, tmp_path / "fresh", image_processor=str(tiny))
    expected = sorted(p.name for p in fresh.iterdir())
    assert {MARKER, "model.safetensors", "README.md", "tokenizer.json"} <= set(expected)

    # an earlier (PEFT) export left adapter files: --overwrite must not keep them
    out = tmp_path / "hf"
    out.mkdir()
    (out / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (out / "adapter_model.safetensors").write_bytes(b"old adapter")
    (out / "README.md").write_text("old card")
    export_module(module, out, image_processor=str(tiny), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == expected
    assert json.loads((out / MARKER).read_text())["writer"] == "fairvlm export"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fresh.lock", ".hf.lock", "fresh", "hf"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # SIGKILL between the weights and the tokenizer: the old export stays, whole
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_EXPORT, str(tiny), str(out), str(ready)], env=env
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, f"child exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the child never reached the tokenizer"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    partial = next(tmp_path.glob(".hf.tmp-*"))  # the killed child's folder: weights, no tokenizer
    assert (partial / "model.safetensors").is_file() and not (partial / "tokenizer.json").exists()
    # the old export still loads
    FairVLMModule(model=str(out), zero_shot=ZeroShotPrompts(max_length=32))
    dm = FairVLMedDataModule(tmp_path / "no_data", model=str(out), max_length=32)
    assert dm.tokenize("A photo of glaucoma")["input_ids"].shape == (1, 32)
    # the killed export's temporary folder is refused, with a reason
    with pytest.raises(IncompleteFolderError, match="temporary export folder"):
        FairVLMModule(model=str(partial))
    # an export folder that lost its marker (or predates markers) is refused too
    (out / MARKER).unlink()
    with pytest.raises(IncompleteFolderError, match=r"no completion marker .*--overwrite"):
        FairVLMModule(model=str(out))
    with pytest.raises(IncompleteFolderError, match="no completion marker"):  # its tokenizer too
        FairVLMedDataModule(tmp_path / "no_data", model=str(out)).tokenize("A photo")
    # the next export cleans up after the killed one
    export_module(module, out, image_processor=str(tiny), overwrite=True)
    assert not list(tmp_path.glob(".hf.tmp-*"))
    assert sorted(p.name for p in out.iterdir()) == expected
