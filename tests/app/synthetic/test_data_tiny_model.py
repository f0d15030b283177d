"""The tiny dual encoder and its locally trained tokenizer, loaded back through Auto* classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    CLIPModel,
)

from fairvlm_lightning.app.synthetic import build_tiny_dual_encoder, train_note_tokenizer

NOTES = [
    "Cup-to-disc ratio 0.72 OD. Assessment: glaucoma. Intraocular pressure 22 mmHg.",
    "c/d ratio of 0.4 in the left eye. Healthy optic nerve, non-glaucoma.",
    "Vertical cup to disc ratio measured at 0.55. Optic nerve appearance reviewed.",
] * 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dual_encoder(
        tmp_path_factory.mktemp("tiny"),
        NOTES,
        seed=1,
        image_size=32,
        patch_size=8,
        hidden_size=32,
        max_length=24,
        image_mean=0.4,
        image_std=0.2,
    )


def test_auto_classes_load_offline(tiny: Path, synthetic_root: Path) -> None:
    for folder in (tiny, synthetic_root / "tiny_model"):
        model = AutoModel.from_pretrained(folder)
        assert isinstance(model, CLIPModel)
        tok = AutoTokenizer.from_pretrained(folder)
        proc = AutoImageProcessor.from_pretrained(folder)
        both = AutoProcessor.from_pretrained(folder)
        assert both.tokenizer.get_vocab() == tok.get_vocab()
        assert len(tok) == model.config.text_config.vocab_size
        ids = (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
        cfg = model.config.text_config
        assert ids == (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 2, 3)
        assert proc.crop_size["height"] == model.config.vision_config.image_size
    cfg = json.loads((tiny / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_tokenizer_lowercases_and_keeps_eos_when_truncating(tiny: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny)
    assert tok("GLAUCOMA")["input_ids"] == tok("glaucoma")["input_ids"]
    assert tok.decode(tok("Cup-to-disc ratio 0.72")["input_ids"], skip_special_tokens=True) == (
        "cup - to - disc ratio 0 . 72"
    )
    long = " ".join(NOTES)
    enc = tok([long, "glaucoma"], padding="max_length", truncation=True, max_length=24)
    for ids, mask in zip(enc["input_ids"], enc["attention_mask"], strict=True):
        n = sum(mask)
        assert ids[0] == 2 and ids[n - 1] == 3 and all(i == 0 for i in ids[n:])
    assert tok.unk_token_id not in tok("zebra quokka 123 #%!")["input_ids"]


def test_text_pooling_uses_eos_and_ignores_padding(tiny: Path) -> None:
    model = AutoModel.from_pretrained(tiny).eval()
    tok = AutoTokenizer.from_pretrained(tiny)
    text = "c/d 0.7, glaucoma"
    short = tok([text], return_tensors="pt")
    padded = tok([text], padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        out = model.text_model(**padded)
        eos = int(short["input_ids"].shape[1]) - 1
        torch.testing.assert_close(out.pooler_output[0], out.last_hidden_state[0, eos])
        a = model.get_text_features(**short).pooler_output
        b = model.get_text_features(**padded).pooler_output
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_image_processor_on_grayscale(tiny: Path) -> None:
    proc = AutoImageProcessor.from_pretrained(tiny)
    img = np.full((48, 40), 102, dtype=np.uint8)  # 102 / 255 = 0.4 = mean -> zeros
    out = proc(images=Image.fromarray(img), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 32, 32)
    torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-6, rtol=0)
    model = AutoModel.from_pretrained(tiny)
    with torch.no_grad():
        assert model.get_image_features(pixel_values=out).pooler_output.shape == (1, 64)


def test_deterministic_for_a_seed(tmp_path: Path, tiny: Path) -> None:
    kw = dict(
        image_size=32, patch_size=8, hidden_size=32, max_length=24, image_mean=0.4, image_std=0.2
    )
    same = build_tiny_dual_encoder(tmp_path / "same", NOTES, seed=1, **kw)
    other = build_tiny_dual_encoder(tmp_path / "other", NOTES, seed=2, **kw)
    assert (same / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()
    a, b, c = (AutoModel.from_pretrained(p).state_dict() for p in (tiny, same, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_global_rng_untouched(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_dual_encoder(tmp_path, NOTES, hidden_size=16, image_size=16, patch_size=8)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"patch_size": 7}, ValueError, "must divide image_size"),
        ({"num_heads": 5}, ValueError, "must divide hidden_size"),
        ({"hidden_size": 0}, ValueError, "hidden_size must be positive"),
        ({"vocab_size": 50}, ValueError, "vocab_size must be >="),
        ({"image_std": 0.0}, ValueError, "std > 0"),
        ({"image_mean": [0.1, 0.2]}, ValueError, "3 values"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build_tiny_dual_encoder(tmp_path, NOTES, **kwargs)


def test_bad_texts() -> None:
    with pytest.raises(TypeError, match="iterable of str"):
        train_note_tokenizer([])
    with pytest.raises(TypeError, match="iterable of str"):
        train_note_tokenizer(["ok", 3])  # type: ignore[list-item]


def _zero_shot_auc(folder: Path, images: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    from fairvlm_lightning.data import ImageTransform

    model = AutoModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    t = ImageTransform.from_processor(AutoImageProcessor.from_pretrained(folder))
    prompts = tok(
        ["A photo of non-glaucoma", "A photo of glaucoma"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        txt = torch.nn.functional.normalize(
            model.get_text_features(**prompts).pooler_output, dim=-1
        )
        img = model.get_image_features(pixel_values=t.normalize(t.resize(images))).pooler_output
        img = torch.nn.functional.normalize(img, dim=-1)
    return roc_auc_score(labels, (img @ txt.T).softmax(-1)[:, 1].numpy())


def test_warm_start_aligns_towers_deterministically(tmp_path: Path) -> None:
    from fairvlm_lightning.app.synthetic import warm_start_dual_encoder, write_synthetic_fairvlmed

    data = write_synthetic_fairvlmed(
        tmp_path / "d",
        sizes={"train": 560, "val": 0, "test": 0},
        image_shape=(32, 32),
        bad_pair_rate=0.0,
        group_effect=0.0,
    )
    files = sorted((data / "Training").glob("*.npz"))
    images = np.stack([np.load(p)["slo_fundus"] for p in files])
    labels = np.array([int(np.load(p)["glaucoma"]) for p in files])
    notes = [str(np.load(p)["note"]) for p in files]
    kw = dict(image_size=32, patch_size=16, hidden_size=32, max_length=64)
    a = build_tiny_dual_encoder(tmp_path / "a", [*notes, "A photo of glaucoma"], **kw)
    b = build_tiny_dual_encoder(tmp_path / "b", [*notes, "A photo of glaucoma"], **kw)
    before = _zero_shot_auc(a, images[400:], labels[400:])
    threads = torch.get_num_threads()
    for folder in (a, b):
        warm_start_dual_encoder(folder, images[:400], notes[:400], labels[:400], steps=60)
    assert torch.get_num_threads() == threads
    after = _zero_shot_auc(a, images[400:], labels[400:])  # held-out samples
    assert after > 0.75 and after > before + 0.15, (before, after)
    sa, sb = (AutoModel.from_pretrained(p).state_dict() for p in (a, b))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_warm_start_bad_input(tiny: Path) -> None:
    from fairvlm_lightning.app.synthetic import warm_start_dual_encoder

    images = np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="differ in length"):
        warm_start_dual_encoder(tiny, images, ["a"] * 3, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        warm_start_dual_encoder(tiny, images, ["a"] * 4, [0, 1, 2, 1])
    with pytest.raises(ValueError, match="steps must be >= 0"):
        warm_start_dual_encoder(tiny, images, ["a"] * 4, [0, 1, 0, 1], steps=-1)
