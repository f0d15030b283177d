"""Per-pair CLIP / SigLIP losses: independent references, local-vs-global split, 2-process gloo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ddp_utils import run_distributed
from scipy.special import log_expit, logsumexp
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from fairvlm_lightning.losses import gather_features, local_pair_losses, pair_losses


def _embeds(n: int, d: int = 8, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return img.to(dtype), txt.to(dtype)


def _numpy_reference(img, txt, scale, bias, kind):
    """Per-pair losses written out element by element in float64 (scipy special functions)."""
    x, t = img.double().numpy(), txt.double().numpy()
    n = x.shape[0]
    out = np.zeros(n)
    for i in range(n):
        if kind == "clip":
            row = np.array([scale * x[i] @ t[j] + bias for j in range(n)])
            col = np.array([scale * t[i] @ x[j] + bias for j in range(n)])
            out[i] = 0.5 * ((logsumexp(row) - row[i]) + (logsumexp(col) - col[i]))
        else:
            out[i] = -sum(
                log_expit((1.0 if i == j else -1.0) * (scale * x[i] @ t[j] + bias))
                for j in range(n)
            )
    return torch.from_numpy(out)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("bias", [None, -3.0])
def test_matches_elementwise_reference(kind, bias):
    img, txt = _embeds(6)
    got = pair_losses(img, txt, torch.tensor(7.5), None if bias is None else torch.tensor(bias),
                      kind=kind)
    ref = _numpy_reference(img, txt, 7.5, 0.0 if bias is None else bias, kind)
    assert got.dtype == torch.float32 and got.shape == (6,)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_clip_mean_is_hugging_face_clip_loss():
    img, txt = _embeds(9, seed=3)
    scale = torch.tensor(math.log(1 / 0.07)).exp()
    ref = image_text_contrastive_loss(scale * txt @ img.T)
    torch.testing.assert_close(pair_losses(img, txt, scale).mean(), ref, atol=1e-6, rtol=1e-6)


def test_siglip_mean_is_big_vision_formula():
    # big_vision: logits = img @ txt.T * t + b; loss = -sum(log_sigmoid(labels * logits)) / n.
    img, txt = _embeds(7, seed=5)
    logits = img @ txt.T * 10.0 - 10.0
    labels = 2 * torch.eye(7) - 1
    ref = -F.logsigmoid(labels * logits).sum() / 7
    got = pair_losses(img, txt, 10.0, -10.0, kind="siglip").mean()
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_local_chunks_equal_full_batch(kind):
    img, txt = _embeds(8, seed=1)
    full = pair_losses(img, txt, 5.0, -1.0, kind=kind)
    start = 0
    for size in (3, 5):  # uneven ranks
        part = local_pair_losses(img[start:start + size], txt[start:start + size], img, txt, 5.0,
                                 -1.0, kind=kind, offset=start)
        torch.testing.assert_close(part, full[start:start + size])
        start += size


def test_scale_forms_and_low_precision():
    img, txt = _embeds(5)
    ref = pair_losses(img, txt, torch.tensor(4.0))
    torch.testing.assert_close(pair_losses(img, txt, 4.0), ref)
    torch.testing.assert_close(pair_losses(img, txt, torch.tensor([4.0])), ref)
    for dtype in (torch.float16, torch.bfloat16):
        low = pair_losses(img.to(dtype), txt.to(dtype), torch.tensor(4.0, dtype=dtype))
        assert low.dtype == torch.float32 and torch.isfinite(low).all()
        torch.testing.assert_close(low, ref, atol=3e-2, rtol=3e-2)


def test_gradients_flow_to_embeddings_and_scale():
    img, txt = _embeds(4)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale = torch.tensor(3.0, requires_grad=True)
    bias = torch.tensor(-1.0, requires_grad=True)
    pair_losses(img, txt, scale, bias, kind="siglip").sum().backward()
    for t in (img, txt, scale, bias):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_gather_without_process_group_is_identity():
    img, txt = _embeds(4)
    all_img, all_txt, offset = gather_features(img, txt)
    assert all_img is img and all_txt is txt and offset == 0
    torch.testing.assert_close(pair_losses(img, txt, 2.0, gather_distributed=True),
                               pair_losses(img, txt, 2.0))


def test_bad_inputs():
    img, txt = _embeds(4)
    with pytest.raises(ValueError, match=r"image_embeds must be 2-D \(B, D\), got shape \(8,\)"):
        pair_losses(img.flatten()[:8], txt, 1.0)
    with pytest.raises(ValueError, match=r"same shape.*\(4, 8\) and \(3, 8\)"):
        pair_losses(img, txt[:3], 1.0)
    with pytest.raises(TypeError, match="floating-point"):
        pair_losses(img.long(), txt.long(), 1.0)
    with pytest.raises(TypeError, match="text_embeds must be a torch.Tensor"):
        pair_losses(img, txt.tolist(), 1.0)
    with pytest.raises(ValueError, match="kind must be"):
        pair_losses(img, txt, 1.0, kind="infonce")
    with pytest.raises(ValueError, match=r"logit_scale must hold one number, got shape \(2,\)"):
        pair_losses(img, txt, torch.ones(2))
    with pytest.raises(TypeError, match="logit_bias must be a tensor or a number"):
        pair_losses(img, txt, 1.0, "zero")
    with pytest.raises(ValueError, match="offset 3 does not fit 2 local pairs into 4"):
        local_pair_losses(img[:2], txt[:2], img, txt, 1.0, offset=3)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        local_pair_losses(img[:2, :4], txt[:2, :4], img, txt, 1.0)


# ---------------------------------------------------------------------- 2-process gloo test
SIZES = (3, 5)  # uneven local batches


def _ddp_worker(rank, world_size, img, txt, scale):
    start = sum(SIZES[:rank])
    out = {}
    for kind in ("clip", "siglip"):
        local_img = img[start:start + SIZES[rank]].clone().requires_grad_(True)
        local_txt = txt[start:start + SIZES[rank]].clone().requires_grad_(True)
        s = torch.tensor(scale, requires_grad=True)
        bias = torch.tensor(-2.0) if kind == "siglip" else None
        losses = pair_losses(local_img, local_txt, s, bias, kind=kind, gather_distributed=True)
        losses.mean().backward()
        out[kind] = (losses.detach(), local_img.grad, local_txt.grad, s.grad)
    return out


def test_two_process_gather_equals_single_process():
    img, txt = _embeds(sum(SIZES), seed=7)
    results = run_distributed(_ddp_worker, world_size=2, img=img, txt=txt, scale=6.0)
    bounds = [(0, SIZES[0]), (SIZES[0], sum(SIZES))]
    for kind in ("clip", "siglip"):
        # One process holding the whole batch. Each rank minimises the mean of its own pairs and
        # the gather's backward sums every rank's gradient, so the reference objective is the
        # sum over ranks of the per-rank means.
        full_img = img.clone().requires_grad_(True)
        full_txt = txt.clone().requires_grad_(True)
        s = torch.tensor(6.0, requires_grad=True)
        bias = torch.tensor(-2.0) if kind == "siglip" else None
        full = pair_losses(full_img, full_txt, s, bias, kind=kind)
        sum(full[a:b].mean() for a, b in bounds).backward()
        scale_grad = 0.0
        for rank, (a, b) in enumerate(bounds):
            losses, g_img, g_txt, g_scale = results[rank][kind]
            torch.testing.assert_close(losses, full.detach()[a:b])
            torch.testing.assert_close(g_img, full_img.grad[a:b])
            torch.testing.assert_close(g_txt, full_txt.grad[a:b])
            scale_grad = scale_grad + g_scale
        torch.testing.assert_close(scale_grad, s.grad)  # DDP all-reduces parameter gradients
