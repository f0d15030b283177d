"""ZeroShotPrompts: class embeddings and logits against the Hugging Face model's own forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from fairvlm_lightning.encoders import DualEncoder
from fairvlm_lightning.zeroshot import DEFAULT_PROMPTS, ZeroShotPrompts


@pytest.fixture(scope="module")
def tiny(synthetic_root: Path):
    folder = synthetic_root / "tiny_model"
    model = AutoModel.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def test_class_embeddings_average_each_class_prompts(tiny) -> None:
    model, tok = tiny
    zs = ZeroShotPrompts(("a healthy eye", ["glaucoma", "an eye with glaucoma"]), max_length=16)
    got = zs.encode(DualEncoder(model), tok, torch.device("cpu"))
    # Second path: Hugging Face's text tower, one prompt at a time, averaged by hand.
    with torch.no_grad():
        def embed(text: str) -> torch.Tensor:
            t = tok(text, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
            return F.normalize(model.get_text_features(**t).pooler_output[0], dim=-1)

        want = torch.stack(
            [
                F.normalize(embed("a healthy eye"), dim=-1),
                F.normalize((embed("glaucoma") + embed("an eye with glaucoma")) / 2, dim=-1),
            ]
        )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_logits_are_the_models_logits_per_image(tiny) -> None:
    model, tok = tiny
    zs = ZeroShotPrompts(max_length=16)
    encoder = DualEncoder(model)
    size = model.config.vision_config.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image = encoder.encode_image(pixels)
        logits = zs.logits(encoder, image, zs.encode(encoder, tok, torch.device("cpu")))
        text = tok(
            [DEFAULT_PROMPTS[0], DEFAULT_PROMPTS[1]],
            padding="max_length", max_length=16, truncation=True, return_tensors="pt",
        )
        hf = model(pixel_values=pixels, **text).logits_per_image
    torch.testing.assert_close(logits, hf, rtol=1e-5, atol=1e-5)


def test_forms_and_record() -> None:
    as_dict = ZeroShotPrompts({1: ["b", "c"], 0: "a"}, max_length=8)
    as_list = ZeroShotPrompts(["a", ("b", "c")], max_length=8)
    assert as_dict == as_list and as_list.texts == ["a", "b", "c"]
    assert ZeroShotPrompts.from_value(as_list.to_dict()) == as_list
    assert ZeroShotPrompts.from_value(None) == ZeroShotPrompts()
    assert ZeroShotPrompts().class_prompts == tuple((DEFAULT_PROMPTS[c],) for c in (0, 1))
    with pytest.raises(TypeError, match="ZeroShotPrompts or a dict"):
        ZeroShotPrompts.from_value(["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"prompt keys must be class ids"):
        ZeroShotPrompts({"x": "a", 1: "b"})


def test_predictions_of_each_task_by_closed_form() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.1], [1.0, 0.5, -0.5, 0.0]])
    binary = ZeroShotPrompts(["a", "b"])
    e = logits[:, :2].exp()
    torch.testing.assert_close(binary.predict(logits[:, :2]), e[:, 1] / e.sum(1))
    multi = ZeroShotPrompts(["a", "b", "c", "d"], task="multiclass")
    torch.testing.assert_close(multi.predict(logits), logits.exp() / logits.exp().sum(1, True))
    labels = ZeroShotPrompts([["no a", "a"], ["no b", ["b", "bb"]]], task="multilabel")
    # P(positive) of label k = sigmoid(positive logit - negative logit)
    want = torch.sigmoid(logits[:, [1, 3]] - logits[:, [0, 2]])
    torch.testing.assert_close(labels.predict(logits), want)
    assert labels.texts == ["no a", "a", "no b", "b", "bb"] and labels.num_outputs == 2
    assert labels.metric_task() == {"task": "multilabel", "num_labels": 2}
    assert multi.metric_task() == {"task": "multiclass", "num_classes": 4}
    assert ZeroShotPrompts.from_value(labels.to_dict()) == labels
    with pytest.raises(ValueError, match=r"prompts\[1\] must be a \(negative, positive\) pair"):
        ZeroShotPrompts([["no a", "a"], "b"], task="multilabel")
    with pytest.raises(ValueError, match="exactly two classes"):
        ZeroShotPrompts(["a", "b", "c"])
    with pytest.raises(ValueError, match="task must be"):
        ZeroShotPrompts(["a", "b"], task="ordinal")  # type: ignore[arg-type]
