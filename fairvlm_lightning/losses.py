"""Per-pair contrastive losses (CLIP softmax, SigLIP sigmoid), optionally with global negatives.

Every function here returns one loss per image-text pair, shape ``(B,)``, whose mean is the
usual reduced loss. Dynamic Bad Pair Mining needs the unreduced values and the Sinkhorn fairness
term compares their distributions across groups.

Layout follows open_clip's ``loss.py``: the distributed collective (:func:`gather_features`) is
a separate small function, and the loss itself (:func:`local_pair_losses`) takes the gathered
embeddings plus the offset of this rank's pairs, so it can be tested without processes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossKind", "gather_features", "local_pair_losses", "pair_losses"]

#: The two contrastive losses: ``"clip"`` (softmax) and ``"siglip"`` (sigmoid).
LossKind = Literal["clip", "siglip"]


def _check_embeds(image_embeds: Tensor, text_embeds: Tensor, what: str = "") -> None:
    for name, t in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise ValueError(f"{what}{name} must be 2-D (B, D), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{what}{name} must be a floating-point tensor, got {t.dtype}")
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"{what}image_embeds and text_embeds must have the same shape (B, D), got "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )


def _as_scalar(value: Tensor | float | None, name: str, like: Tensor) -> Tensor | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold one number, got shape {tuple(value.shape)}")
        out = value.reshape(()).to(device=like.device)
    elif isinstance(value, (int, float)):
        out = torch.tensor(float(value), device=like.device)
    else:
        raise TypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")
    # An infinite scale turns every logit into +-inf and the losses into NaN (or silently inf):
    # refuse it here, where the cause is still visible (one device sync per call).
    if not bool(torch.isfinite(out.detach())):
        raise ValueError(f"{name} must be finite, got {out.item()}")
    return out


def local_pair_losses(
    image_embeds: Tensor,
    text_embeds: Tensor,
    all_image_embeds: Tensor,
    all_text_embeds: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float | None = None,
    *,
    kind: LossKind = "clip",
    offset: int = 0,
) -> Tensor:
    r"""Per-pair losses of this rank's pairs against the embeddings of the whole (global) batch.

    Pair ``i`` of ``image_embeds``/``text_embeds`` is row ``offset + i`` of the gathered
    ``all_*_embeds``; all other rows are its negatives. With ``s = logit_scale``,
    ``b = logit_bias`` and cosine similarities ``c_ij = <x_i, t_j>`` (inputs L2-normalised):

    * ``kind="clip"``: :math:`\ell_i = \tfrac12[\mathrm{CE}_j(s\,c_{ij}, i) +
      \mathrm{CE}_j(s\,c_{ji}, i)]`, image-to-text plus text-to-image cross entropy;
      the mean over a batch is Hugging Face's ``clip_loss``.
    * ``kind="siglip"``: :math:`\ell_i = -\sum_j \log\sigma(z_{ij}(s\,c_{ij} + b))` with
      :math:`z_{ij} = 1` if ``j`` is ``i``'s text, else ``-1`` -- row ``i`` (image ``i`` against
      every text) of the sigmoid loss; ``b = None`` means 0. Hugging Face's ``SiglipModel`` loss
      sums each row and averages over rows, so the mean over a batch equals it exactly.

    Args:
        image_embeds: ``(b, D)`` this rank's normalised image embeddings.
        text_embeds: ``(b, D)`` this rank's normalised text embeddings.
        all_image_embeds: ``(N, D)`` image embeddings of the whole batch (this rank's included).
        all_text_embeds: ``(N, D)`` text embeddings of the whole batch.
        logit_scale: exponentiated scale (a 0-d/1-element tensor or a number).
        logit_bias: additive bias (SigLIP), or ``None``.
        kind: ``"clip"`` or ``"siglip"``.
        offset: index of this rank's first pair in the gathered rows.

    Returns:
        ``(b,)`` float32 per-pair losses, differentiable.

    Example:
        >>> import torch
        >>> x = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator()
        ...     .manual_seed(0)), dim=-1)
        >>> full = pair_losses(x, x, 10.0)
        >>> part = local_pair_losses(x[2:], x[2:], x, x, 10.0, offset=2)
        >>> torch.allclose(part, full[2:])
        True
    """
    _check_embeds(image_embeds, text_embeds)
    _check_embeds(all_image_embeds, all_text_embeds, "all_")
    b, n = image_embeds.shape[0], all_image_embeds.shape[0]
    if image_embeds.shape[1] != all_image_embeds.shape[1]:
        raise ValueError(
            f"embedding sizes differ: local {tuple(image_embeds.shape)} vs gathered "
            f"{tuple(all_image_embeds.shape)}"
        )
    if not 0 <= offset <= n - b:
        raise ValueError(f"offset {offset} does not fit {b} local pairs into {n} gathered rows")
    if kind not in ("clip", "siglip"):
        raise ValueError(f"kind must be 'clip' or 'siglip', got {kind!r}")
    scale = _as_scalar(logit_scale, "logit_scale", image_embeds)
    bias = _as_scalar(logit_bias, "logit_bias", image_embeds)
    assert scale is not None
    labels = torch.arange(offset, offset + b, device=image_embeds.device)

    # (b, N): local images against every text; local texts against every image.
    logits_image = (scale * (image_embeds @ all_text_embeds.to(image_embeds.dtype).T)).float()
    if bias is not None:
        logits_image = logits_image + bias.float()
    if kind == "clip":
        logits_text = (scale * (text_embeds @ all_image_embeds.to(text_embeds.dtype).T)).float()
        if bias is not None:
            logits_text = logits_text + bias.float()
        loss_i = F.cross_entropy(logits_image, labels, reduction="none")
        loss_t = F.cross_entropy(logits_text, labels, reduction="none")
        return (loss_i + loss_t) / 2
    sign = torch.full_like(logits_image, -1.0)
    sign[torch.arange(b, device=sign.device), labels] = 1.0
    return -F.logsigmoid(sign * logits_image).sum(dim=1)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows of unequal counts; backward sums every rank's gradient (all-reduce)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, sizes: list[int], group: Any) -> Tensor:
        rank = dist.get_rank(group)
        width = max(sizes)
        padded = tensor.new_zeros((width, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        out = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(out, padded, group=group)
        ctx.group, ctx.start, ctx.count = group, sum(sizes[:rank]), sizes[rank]
        return torch.cat([chunk[:size] for chunk, size in zip(out, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.start + ctx.count], None, None


def gather_features(
    image_embeds: Tensor, text_embeds: Tensor, group: Any = None
) -> tuple[Tensor, Tensor, int]:
    """All-gather image and text embeddings from every rank, keeping the gradient path.

    Ranks may hold different numbers of pairs. In backward, each rank receives the sum over
    ranks of the gradients with respect to its rows, so when every rank minimises the mean of its
    local per-pair losses and DDP averages gradients, parameters get exactly the gradient of the
    global mean loss (open_clip's ``local_loss=True, gather_with_grad=True``). Every rank must
    call backward.

    Args:
        image_embeds: ``(b, D)`` this rank's image embeddings.
        text_embeds: ``(b, D)`` this rank's text embeddings.
        group: process group (default: the world).

    Returns:
        ``(all_image_embeds, all_text_embeds, offset)``: ``(N, D)`` tensors in rank order and the
        row of this rank's first pair. Without an initialised process group, the inputs and 0.
    """
    _check_embeds(image_embeds, text_embeds)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return image_embeds, text_embeds, 0
    world = dist.get_world_size(group)
    size = torch.tensor([image_embeds.shape[0]], device=image_embeds.device)
    sizes_t = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size, group=group)
    sizes = [int(s.item()) for s in sizes_t]
    dim = image_embeds.shape[1]
    both = torch.cat([image_embeds, text_embeds.to(image_embeds.dtype)], dim=1)
    gathered = _GatherWithGrad.apply(both, sizes, group)
    offset = sum(sizes[: dist.get_rank(group)])
    return gathered[:, :dim], gathered[:, dim:].to(text_embeds.dtype), offset


def pair_losses(
    image_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float | None = None,
    *,
    kind: LossKind = "clip",
    gather_distributed: bool = False,
) -> Tensor:
    """Per-pair contrastive losses ``(B,)`` whose mean is the usual reduced loss.

    ``kind="clip"`` gives ``0.5 * (CE(image i -> texts) + CE(text i -> images))``; its mean equals
    ``CLIPModel(..., return_loss=True).loss``. ``kind="siglip"`` gives row ``i`` of the sigmoid
    loss (image ``i`` against every text, see :func:`local_pair_losses`); its mean equals
    ``SiglipModel(..., return_loss=True).loss``.

    Args:
        image_embeds: ``(B, D)`` L2-normalised image embeddings.
        text_embeds: ``(B, D)`` L2-normalised text embeddings.
        logit_scale: exponentiated scale, e.g. ``model.logit_scale.exp()``.
        logit_bias: additive bias (SigLIP), or ``None``.
        kind: ``"clip"`` or ``"siglip"``.
        gather_distributed: under an initialised ``torch.distributed`` group, gather embeddings
            from all ranks (with gradient) so this rank's pairs are scored against every rank's
            negatives; returns only this rank's ``B`` losses. A no-op on a single process.

    Returns:
        ``(B,)`` float32 tensor, differentiable.

    Raises:
        ValueError: shapes that are not matching ``(B, D)``, bad ``kind``, a scale or bias that
            is not one finite number.
        TypeError: non-tensor or integer embeddings.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> img = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1)
        >>> txt = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1)
        >>> losses = pair_losses(img, txt, logit_scale=torch.tensor(10.0))
        >>> losses.shape
        torch.Size([3])
        >>> logits = 10.0 * img @ txt.T
        >>> arange = torch.arange(3)
        >>> reference = (torch.nn.functional.cross_entropy(logits, arange)
        ...              + torch.nn.functional.cross_entropy(logits.T, arange)) / 2
        >>> torch.allclose(losses.mean(), reference)
        True
    """
    _check_embeds(image_embeds, text_embeds)
    if gather_distributed:
        all_image, all_text, offset = gather_features(image_embeds, text_embeds)
    else:
        all_image, all_text, offset = image_embeds, text_embeds, 0
    return local_pair_losses(
        image_embeds,
        text_embeds,
        all_image,
        all_text,
        logit_scale,
        logit_bias,
        kind=kind,
        offset=offset,
    )
