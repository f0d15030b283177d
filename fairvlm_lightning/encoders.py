"""Adapter from any Hugging Face vision-text dual encoder to normalised embeddings.

:class:`DualEncoder` wraps a ``transformers`` model that exposes ``get_image_features`` and
``get_text_features`` plus a learnable ``logit_scale`` (``CLIPModel``, ``SiglipModel``,
``Siglip2Model``, ``VisionTextDualEncoderModel``, ``AltCLIPModel``, ``ChineseCLIPModel`` and any
look-alike) and returns ``(image_embeds, text_embeds, logit_scale, logit_bias)`` with L2-normalised
embeddings, exactly the quantities the model's own forward pass uses to build its logits.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DualEncoder", "DualEncoderOutput"]

LossKind = Literal["clip", "siglip"]

# Field names under which released ``transformers`` versions have returned projected features:
# a bare tensor (<= 4.x), ``pooler_output`` (5.x, projection applied in place), or the
# ``*_embeds`` fields of the ``*WithProjection`` output classes.
_IMAGE_FIELDS = ("image_embeds", "pooler_output")
_TEXT_FIELDS = ("text_embeds", "pooler_output")


class DualEncoderOutput(NamedTuple):
    """What :meth:`DualEncoder.forward` returns.

    Attributes:
        image_embeds: ``(B, D)`` L2-normalised image embeddings.
        text_embeds: ``(B, D)`` L2-normalised text embeddings.
        logit_scale: 0-d tensor, the multiplier applied to cosine similarities, already
            exponentiated (``model.logit_scale.exp()``).
        logit_bias: 0-d tensor added to the scaled similarities (SigLIP), or ``None``.
    """

    image_embeds: Tensor
    text_embeds: Tensor
    logit_scale: Tensor
    logit_bias: Tensor | None


def _features(output: Any, fields: tuple[str, ...], what: str, model_name: str) -> Tensor:
    """Pull the projected feature tensor out of whatever ``get_*_features`` returned."""
    if isinstance(output, Tensor):
        return output
    for field in fields:
        value = getattr(output, field, None)
        if value is None and isinstance(output, dict):
            value = output.get(field)
        if isinstance(value, Tensor):
            return value
    raise TypeError(
        f"{model_name}.get_{what}_features returned {type(output).__name__}, which is neither a "
        f"tensor nor an output object with one of the fields {list(fields)}"
    )


def _accepted_kwargs(fn: Any) -> frozenset[str]:
    """Names of the explicit keyword arguments ``fn`` accepts (``**kwargs`` not counted)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - callables without a signature
        return frozenset()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in params if p.kind in kinds)


class DualEncoder(nn.Module):
    """Uniform view of a Hugging Face vision-text dual encoder.

    The wrapped model must provide ``get_image_features(pixel_values, ...)``,
    ``get_text_features(input_ids, attention_mask, ...)`` and a ``logit_scale`` parameter
    (log-space, as in every Hugging Face dual encoder); a ``logit_bias`` parameter (SigLIP)
    is used when present. Whether ``get_*_features`` returns a tensor (``transformers`` 4.x) or
    an output object whose ``pooler_output`` holds the projected features (5.x) does not matter.

    Args:
        model: the Hugging Face model (any ``nn.Module`` with the methods above).
        loss_kind: ``"clip"`` (softmax contrastive loss) or ``"siglip"`` (sigmoid loss).
            Default: ``"siglip"`` when the model has a ``logit_bias``, else ``"clip"``.
        max_logit_scale: optional cap on the exponentiated scale (OpenAI CLIP trains with 100);
            ``None`` (default) leaves it as the model has it, as Hugging Face's own loss does.

    Raises:
        TypeError: ``model`` lacks ``get_image_features``, ``get_text_features`` or
            ``logit_scale`` (the message names what is missing).
        ValueError: bad ``loss_kind`` or ``max_logit_scale``.

    Example:
        >>> import torch
        >>> from transformers import CLIPConfig, CLIPModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> tiny = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
        ...             num_attention_heads=2)
        >>> config = CLIPConfig(
        ...     text_config=dict(vocab_size=99, max_position_embeddings=16, eos_token_id=2, **tiny),
        ...     vision_config=dict(image_size=16, patch_size=8, **tiny), projection_dim=8)
        >>> encoder = DualEncoder(CLIPModel(config))
        >>> out = encoder(torch.randn(3, 3, 16, 16), torch.tensor([[5, 6, 2]] * 3))
        >>> out.image_embeds.shape, encoder.loss_kind, out.logit_bias
        (torch.Size([3, 8]), 'clip', None)
        >>> torch.allclose(out.text_embeds.norm(dim=-1), torch.ones(3))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_kind: LossKind | None = None,
        max_logit_scale: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        name = type(model).__name__
        missing = [
            attr
            for attr in ("get_image_features", "get_text_features")
            if not callable(getattr(model, attr, None))
        ]
        if not isinstance(getattr(model, "logit_scale", None), Tensor):
            missing.append("logit_scale")
        if missing:
            raise TypeError(
                f"{name} cannot serve as a dual encoder: it has no {', '.join(missing)} "
                "(need get_image_features, get_text_features and a logit_scale parameter)"
            )
        has_bias = isinstance(getattr(model, "logit_bias", None), Tensor)
        if loss_kind is None:
            loss_kind = "siglip" if has_bias else "clip"
        if loss_kind not in ("clip", "siglip"):
            raise ValueError(f"loss_kind must be 'clip' or 'siglip', got {loss_kind!r}")
        if max_logit_scale is not None and not max_logit_scale > 0:
            raise ValueError(f"max_logit_scale must be positive or None, got {max_logit_scale}")
        # Any Hugging Face dual encoder: duck-typed (get_*_features, logit_scale checked above).
        self.model: Any = model
        self._loss_kind: LossKind = loss_kind
        self.max_logit_scale = max_logit_scale
        self._image_kwargs = _accepted_kwargs(model.get_image_features)
        self._text_kwargs = _accepted_kwargs(model.get_text_features)

    @property
    def loss_kind(self) -> LossKind:
        """``"clip"`` or ``"siglip"``: which contrastive loss this model is trained with."""
        return self._loss_kind

    def encode_image(self, pixel_values: Tensor, **kwargs: Any) -> Tensor:
        """L2-normalised image embeddings ``(B, D)``.

        Args:
            pixel_values: image tensor as the model's image processor makes it.
            **kwargs: extra image-tower inputs (e.g. ``pixel_attention_mask`` and
                ``spatial_shapes`` for ``Siglip2Model``).
        """
        output = self.model.get_image_features(pixel_values=pixel_values, **kwargs)
        feats = _features(output, _IMAGE_FIELDS, "image", type(self.model).__name__)
        return F.normalize(feats, p=2, dim=-1)

    def encode_text(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """L2-normalised text embeddings ``(B, D)``.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: optional ``(B, L)`` mask.
            **kwargs: extra text-tower inputs (e.g. ``token_type_ids``).
        """
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        output = self.model.get_text_features(input_ids=input_ids, **kwargs)
        feats = _features(output, _TEXT_FIELDS, "text", type(self.model).__name__)
        return F.normalize(feats, p=2, dim=-1)

    def logit_params(self) -> tuple[Tensor, Tensor | None]:
        """``(logit_scale, logit_bias)``: the exponentiated scale and the bias (or ``None``)."""
        scale = self.model.logit_scale.exp().reshape(())
        if self.max_logit_scale is not None:
            scale = scale.clamp(max=self.max_logit_scale)
        bias = getattr(self.model, "logit_bias", None)
        if self._loss_kind == "siglip" and isinstance(bias, Tensor):
            return scale, bias.reshape(())
        return scale, None

    def _split_kwargs(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        image: dict[str, Any] = {}
        text: dict[str, Any] = {}
        for key, value in kwargs.items():
            in_image, in_text = key in self._image_kwargs, key in self._text_kwargs
            if in_image and in_text:
                raise TypeError(
                    f"keyword {key!r} is accepted by both get_image_features and "
                    "get_text_features; call encode_image/encode_text directly"
                )
            if not (in_image or in_text):
                raise TypeError(
                    f"keyword {key!r} is accepted by neither get_image_features nor "
                    f"get_text_features of {type(self.model).__name__}"
                )
            (image if in_image else text)[key] = value
        return image, text

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> DualEncoderOutput:
        """Encode a batch of image-text pairs.

        Args:
            pixel_values: images as the model's image processor makes them.
            input_ids: ``(B, L)`` token ids.
            attention_mask: optional ``(B, L)`` text mask.
            **kwargs: extra inputs, routed to the image or the text tower by the names their
                ``get_*_features`` accept (e.g. ``spatial_shapes``, ``token_type_ids``).

        Returns:
            :class:`DualEncoderOutput` ``(image_embeds, text_embeds, logit_scale, logit_bias)``.
        """
        image_kwargs, text_kwargs = self._split_kwargs(kwargs)
        image_embeds = self.encode_image(pixel_values, **image_kwargs)
        text_embeds = self.encode_text(input_ids, attention_mask, **text_kwargs)
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(
                f"got {image_embeds.shape[0]} images but {text_embeds.shape[0]} texts; "
                "a dual-encoder batch holds matched pairs"
            )
        scale, bias = self.logit_params()
        return DualEncoderOutput(image_embeds, text_embeds, scale, bias)
