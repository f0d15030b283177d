"""DualEncoder against the Hugging Face models' own forward pass and loss (tiny, no downloads)."""

from __future__ import annotations

import pytest
import torch
import transformers as hf
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput

from fairvlm_lightning.encoders import DualEncoder, DualEncoderOutput
from fairvlm_lightning.losses import pair_losses

B, L, VOCAB, IMG, PATCH = 4, 7, 99, 16, 8
TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)


def _vision(**extra):
    return dict(image_size=IMG, patch_size=PATCH, **TINY, **extra)


def _clip():
    text = dict(vocab_size=VOCAB, max_position_embeddings=16, eos_token_id=2, bos_token_id=0,
                pad_token_id=1, **TINY)
    return hf.CLIPModel(hf.CLIPConfig(text_config=text, vision_config=_vision(), projection_dim=16))


def _siglip():
    text = dict(vocab_size=VOCAB, max_position_embeddings=16, **TINY)
    model = hf.SiglipModel(hf.SiglipConfig(text_config=text, vision_config=_vision()))
    with torch.no_grad():
        model.logit_scale.fill_(1.7)
        model.logit_bias.fill_(-2.5)
    return model


def _siglip2():
    text = dict(vocab_size=VOCAB, max_position_embeddings=16, **TINY)
    vision = dict(patch_size=PATCH, num_patches=4, **TINY)
    model = hf.Siglip2Model(hf.Siglip2Config(text_config=text, vision_config=vision))
    with torch.no_grad():
        model.logit_scale.fill_(1.2)
        model.logit_bias.fill_(-1.5)
    return model


def _vision_text_dual():
    config = hf.VisionTextDualEncoderConfig.from_vision_text_configs(
        hf.ViTConfig(**_vision()),
        hf.BertConfig(vocab_size=VOCAB, max_position_embeddings=16, **TINY),
        projection_dim=16,
    )
    return hf.VisionTextDualEncoderModel(config=config)


def _altclip():
    text = dict(vocab_size=VOCAB, max_position_embeddings=20, project_dim=16, **TINY)
    return hf.AltCLIPModel(
        hf.AltCLIPConfig(text_config=text, vision_config=_vision(), projection_dim=16)
    )


def _chinese_clip():
    text = dict(vocab_size=VOCAB, max_position_embeddings=16, **TINY)
    return hf.ChineseCLIPModel(
        hf.ChineseCLIPConfig(text_config=text, vision_config=_vision(), projection_dim=16)
    )


BUILDERS = {
    "CLIPModel": (_clip, "clip"),
    "SiglipModel": (_siglip, "siglip"),
    "Siglip2Model": (_siglip2, "siglip"),
    "VisionTextDualEncoderModel": (_vision_text_dual, "clip"),
    "AltCLIPModel": (_altclip, "clip"),
    "ChineseCLIPModel": (_chinese_clip, "clip"),
}


def _inputs(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, L), generator=g)
    ids[:, 0] = 0
    ids[:, -1] = 2
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, -2:] = 0  # one padded text
    if name == "Siglip2Model":
        n = (IMG // PATCH) ** 2
        return dict(
            pixel_values=torch.randn(B, n, 3 * PATCH * PATCH, generator=g),
            pixel_attention_mask=torch.ones(B, n, dtype=torch.long),
            spatial_shapes=torch.tensor([[IMG // PATCH, IMG // PATCH]] * B),
            input_ids=ids,
            attention_mask=mask,
        )
    return dict(pixel_values=torch.randn(B, 3, IMG, IMG, generator=g), input_ids=ids,
                attention_mask=mask)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def hf_model(request):
    torch.manual_seed(0)
    build, kind = BUILDERS[request.param]
    return request.param, build().eval(), kind


def test_matches_model_forward_and_loss(hf_model):
    name, model, kind = hf_model
    inputs = _inputs(name)
    encoder = DualEncoder(model)
    assert encoder.loss_kind == kind
    assert encoder.model is model
    out = encoder(**inputs)
    assert isinstance(out, DualEncoderOutput)
    with torch.no_grad():
        ref = model(**inputs, return_loss=True)
    torch.testing.assert_close(out.image_embeds, ref.image_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.text_embeds, ref.text_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(B))
    torch.testing.assert_close(out.logit_scale, model.logit_scale.exp().reshape(()))
    assert out.logit_scale.ndim == 0
    if kind == "siglip":
        torch.testing.assert_close(out.logit_bias, model.logit_bias.reshape(()))
    else:
        assert out.logit_bias is None
    # The model's own logits and loss from the adapter's four outputs.
    logits = out.logit_scale * out.image_embeds @ out.text_embeds.T
    if out.logit_bias is not None:
        logits = logits + out.logit_bias
    torch.testing.assert_close(logits, ref.logits_per_image, atol=1e-5, rtol=1e-5)
    losses = pair_losses(*out, kind=encoder.loss_kind)
    assert losses.shape == (B,)
    torch.testing.assert_close(losses.mean(), ref.loss.reshape(()), atol=1e-5, rtol=1e-5)


def test_gradient_reaches_both_towers_and_scale(hf_model):
    name, model, _ = hf_model
    encoder = DualEncoder(model)
    model.zero_grad()
    out = encoder(**_inputs(name, seed=1))
    pair_losses(*out, kind=encoder.loss_kind).mean().backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().sum() > 0
    projections = [p for n, p in model.named_parameters() if "projection" in n or "head" in n]
    assert projections and all(p.grad is not None for p in projections)
    model.zero_grad()


class _Legacy(nn.Module):
    """transformers 4.x style: get_*_features return bare projected tensors."""

    def __init__(self, bias: bool = False):
        super().__init__()
        self.img = nn.Linear(6, 5)
        self.txt = nn.Embedding(11, 5)
        self.logit_scale = nn.Parameter(torch.tensor(0.7))
        if bias:
            self.logit_bias = nn.Parameter(torch.tensor(-1.0))

    def get_image_features(self, pixel_values):
        return self.img(pixel_values)

    def get_text_features(self, input_ids, attention_mask=None):
        emb = self.txt(input_ids)
        m = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return (emb * m[..., None]).sum(1) / m.sum(1, keepdim=True)


class _ObjectOutput(_Legacy):
    """*WithProjection style: output objects carrying image_embeds / text_embeds."""

    def get_image_features(self, pixel_values):
        return ModelOutput(image_embeds=super().get_image_features(pixel_values))

    def get_text_features(self, input_ids, attention_mask=None):
        feats = super().get_text_features(input_ids, attention_mask)
        return BaseModelOutputWithPooling(pooler_output=feats)


@pytest.mark.parametrize("cls", [_Legacy, _ObjectOutput])
def test_tensor_and_object_returns(cls):
    torch.manual_seed(0)
    model = cls()
    x, ids = torch.randn(3, 6), torch.randint(0, 11, (3, 4))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    out = DualEncoder(model)(x, ids, mask)
    img = model.img(x)
    emb = model.txt(ids)
    txt = (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(out.image_embeds, img / img.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out.text_embeds, txt / txt.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(out.logit_scale, torch.tensor(0.7).exp())


def test_loss_kind_inferred_and_overridden():
    assert DualEncoder(_Legacy(bias=True)).loss_kind == "siglip"
    assert DualEncoder(_Legacy()).loss_kind == "clip"
    enc = DualEncoder(_Legacy(bias=True), loss_kind="clip")
    assert enc.loss_kind == "clip" and enc.logit_params()[1] is None
    assert DualEncoder(_Legacy(), loss_kind="siglip").logit_params()[1] is None


def test_max_logit_scale_caps():
    model = _Legacy()
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(500.0)).item())
    scale, _ = DualEncoder(model, max_logit_scale=100.0).logit_params()
    assert scale.item() == pytest.approx(100.0)
    scale, _ = DualEncoder(model).logit_params()
    assert scale.item() == pytest.approx(500.0, rel=1e-5)


def test_missing_pieces_raise_type_error():
    torch.manual_seed(0)
    text_only = hf.CLIPTextModel(hf.CLIPTextConfig(vocab_size=VOCAB, **TINY))
    with pytest.raises(TypeError, match="get_image_features.*logit_scale"):
        DualEncoder(text_only)

    class NoScale(nn.Module):
        def get_image_features(self, pixel_values):
            return pixel_values

        def get_text_features(self, input_ids, attention_mask=None):
            return input_ids.float()

    with pytest.raises(TypeError, match="no logit_scale"):
        DualEncoder(NoScale())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        DualEncoder("openai/clip-vit-base-patch32")


def test_bad_outputs_and_arguments():
    class Weird(_Legacy):
        def get_image_features(self, pixel_values):
            return {"last_hidden_state": pixel_values}

    enc = DualEncoder(Weird())
    with pytest.raises(TypeError, match="get_image_features returned dict"):
        enc(torch.randn(2, 6), torch.zeros(2, 3, dtype=torch.long))
    enc = DualEncoder(_Legacy())
    with pytest.raises(TypeError, match="'spatial_shapes' is accepted by neither"):
        enc(torch.randn(2, 6), torch.zeros(2, 3, dtype=torch.long), spatial_shapes=None)
    with pytest.raises(ValueError, match="got 2 images but 3 texts"):
        enc(torch.randn(2, 6), torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="loss_kind"):
        DualEncoder(_Legacy(), loss_kind="infonce")
    with pytest.raises(ValueError, match="max_logit_scale"):
        DualEncoder(_Legacy(), max_logit_scale=0.0)


def test_ambiguous_keyword_raises():
    class Both(_Legacy):
        def get_image_features(self, pixel_values, position_ids=None):
            return super().get_image_features(pixel_values)

        def get_text_features(self, input_ids, attention_mask=None, position_ids=None):
            return super().get_text_features(input_ids, attention_mask)

    with pytest.raises(TypeError, match="'position_ids' is accepted by both"):
        DualEncoder(Both())(torch.randn(2, 6), torch.zeros(2, 3, dtype=torch.long),
                            position_ids=None)


# ---------------------------------------------------------------------- EncoderSpec


def test_encoder_spec_builds_what_the_direct_path_builds():
    """``EncoderSpec(...).build(model)`` == ``DualEncoder(model, ...)`` by hand, and its record
    rebuilds the same spec."""
    from fairvlm_lightning.encoders import EncoderSpec

    torch.manual_seed(0)
    model = _clip()
    spec = EncoderSpec(loss="siglip", max_logit_scale=20.0, gather_distributed=False)
    built = spec.build(model)
    assert built.encoder.model is model and built.tokenizer is None and built.peft is None
    direct = DualEncoder(model, loss_kind="siglip", max_logit_scale=20.0)
    pixels = torch.randn(2, 3, 16, 16)
    ids = torch.tensor([[5, 6, 2], [7, 8, 2]])
    for a, b in zip(built.encoder(pixels, ids), direct(pixels, ids), strict=True):
        torch.testing.assert_close(a, b)
    assert built.record == {"loss": "siglip", "max_logit_scale": 20.0, "gather_distributed": False}
    again = EncoderSpec.from_value(built.record)
    assert again.record() == built.record and EncoderSpec.from_value(None).record() is None
    with pytest.raises(ValueError, match="max_logit_scale must be positive"):
        EncoderSpec(max_logit_scale=0.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['model'\]"):
        EncoderSpec.from_value({"model": "x"})
