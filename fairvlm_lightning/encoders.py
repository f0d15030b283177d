"""Adapter from any Hugging Face vision-text dual encoder to normalised embeddings.

:class:`DualEncoder` wraps a ``transformers`` model that exposes ``get_image_features`` and
``get_text_features`` plus a learnable ``logit_scale`` (``CLIPModel``, ``SiglipModel``,
``Siglip2Model``, ``VisionTextDualEncoderModel``, ``AltCLIPModel``, ``ChineseCLIPModel`` and any
look-alike) and returns ``(image_embeds, text_embeds, logit_scale, logit_bias)`` with L2-normalised
embeddings, exactly the quantities the model's own forward pass uses to build its logits.

:class:`EncoderSpec` says how to build one from a Hugging Face model (a Hub name or folder, a
config or an instance): its tokenizer, contrastive loss, logit-scale cap, PEFT adapters and
``from_pretrained`` options. :meth:`EncoderSpec.build` returns the :class:`DualEncoder` and the
tokenizer; :meth:`EncoderSpec.record` gives the plain values that rebuild the spec from a
checkpoint's hyper-parameters.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Mapping
from dataclasses import fields
from enum import Enum
from typing import Any, Literal, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fairvlm_lightning.atomic import check_export_folder
from fairvlm_lightning.losses import LossKind

__all__ = [
    "BuiltEncoder",
    "DualEncoder",
    "DualEncoderOutput",
    "EncoderSpec",
    "LossKind",
    "is_plain",
    "model_record",
]

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


# ---------------------------------------------------------------------- building from a spec
_PRIMITIVES = (str, int, float, bool, type(None))


def is_plain(value: Any) -> bool:
    """Whether ``value`` is a tree of plain Python values (safe for ``weights_only`` loading).

    Example:
        >>> is_plain({"a": [1, 2.0, None]}), is_plain({"a": object()})
        (True, False)
    """
    if isinstance(value, _PRIMITIVES):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, _PRIMITIVES) and is_plain(v) for k, v in value.items())
    return False


def _config_from_dict(config: Mapping[str, Any]) -> PretrainedConfig:
    if "model_type" not in config:
        raise ValueError(
            "a model config given as a dict needs a 'model_type' key (e.g. 'clip', 'siglip'), "
            f"got keys {sorted(config)}"
        )
    kwargs = dict(config)
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def _where_not_found(name: str) -> str:
    """Say which folder was looked for, from which working directory (empty for a Hub id)."""
    if os.path.isdir(name):
        return ""
    looks_local = os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") != 1
    if not looks_local:
        return ""
    return (
        f"No folder {name!r} exists: looked for {os.path.abspath(os.path.expanduser(name))} "
        f"from the working directory {os.getcwd()} (a relative folder is resolved against the "
        "working directory; pass an absolute path, or model= to load_from_checkpoint).\n"
    )


def _load_model(model: Any, kwargs: Mapping[str, Any]) -> nn.Module:
    if isinstance(model, nn.Module):  # a PreTrainedModel or any look-alike
        return model
    if isinstance(model, Mapping):
        model = _config_from_dict(model)
    if isinstance(model, PretrainedConfig):
        return AutoModel.from_config(model)
    if isinstance(model, str):
        check_export_folder(model)  # a `fairvlm export` folder must be complete
        try:
            # from_pretrained returns the model in eval mode; Lightning keeps modes as it finds
            # them, so put it in training mode like a freshly built module.
            return AutoModel.from_pretrained(model, **kwargs).train()
        except (OSError, ValueError) as err:  # HFValidationError (a ValueError): not a repo id
            raise OSError(
                f"could not load a model from {model!r}: {err}\n{_where_not_found(model)}For the "
                "synthetic benchmark the tiny model is created by "
                "fairvlm_lightning.app.synthetic.ensure_synthetic_assets(root) (the `fairvlm` "
                "command runs it before building the module)."
            ) from err
    raise TypeError(
        "model must be a Hub name or folder (str), a transformers PreTrainedModel (or another "
        "nn.Module dual encoder), a "
        f"PretrainedConfig or a config dict, got {type(model).__name__}"
    )


def _resolve_folder(name: Any) -> Any:
    """An existing local folder given as a relative path -> its absolute path; else unchanged.

    Checkpoints record the model as a hyper-parameter; a relative folder would only resolve
    from the working directory of the run that saved it.
    """
    if isinstance(name, str) and not os.path.isabs(name) and os.path.isdir(name):
        return os.path.abspath(name)
    return name


def _plain(value: Any) -> Any:
    """A peft config field as a plain value (sets → sorted lists, enums → their value)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _peft_instance(peft: Any) -> Any:
    """A ``peft`` config from a dict / ``class_path`` dict / config instance."""
    from peft import PeftConfig
    from peft.utils import PeftType

    mapping: Any = importlib.import_module("peft.mapping").PEFT_TYPE_TO_CONFIG_MAPPING
    if isinstance(peft, Mapping) and "class_path" in peft:  # a YAML ``class_path`` block
        module_name, _, cls_name = str(peft["class_path"]).rpartition(".")
        cls = getattr(importlib.import_module(module_name or "peft"), cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, PeftConfig)):
            raise ValueError(
                f"peft class_path must name a peft config class, got {peft['class_path']!r}"
            )
        peft = cls(**dict(peft.get("init_args") or {}))
    elif isinstance(peft, Mapping):
        kwargs = dict(peft)
        peft_type = str(_plain(kwargs.pop("peft_type", PeftType.LORA))).upper()
        if peft_type not in mapping:
            raise ValueError(f"unknown peft_type {peft_type!r}; expected one of {sorted(mapping)}")
        cls = mapping[peft_type]
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} option(s) {unknown} in peft=")
        peft = cls(**kwargs)
    if not isinstance(peft, PeftConfig):
        raise TypeError(
            "peft must be a dict of LoraConfig options, a class_path/init_args dict or a peft "
            f"PeftConfig, got {type(peft).__name__}"
        )
    return peft


def _peft_config(peft: Any) -> tuple[Any, dict[str, Any]]:
    """The ``peft`` config and a plain dict (non-default fields + ``peft_type``) rebuilding it."""
    peft = _peft_instance(peft)
    default = type(peft)()
    record = {"peft_type": str(_plain(peft.peft_type))}
    for f in fields(peft):
        if f.name in ("peft_type", "base_model_name_or_path", "revision"):
            continue
        value = _plain(getattr(peft, f.name))
        if value != _plain(getattr(default, f.name)):
            record[f.name] = value
    if not is_plain(record):
        raise TypeError(f"peft config fields must be plain values, got {record}")
    return peft, record


def _wrap_peft(model: nn.Module, peft: Any) -> tuple[Any, dict[str, Any]]:
    """Wrap ``model`` with ``peft.get_peft_model`` (only adapter weights stay trainable)."""
    from peft import get_peft_model

    config, record = _peft_config(peft)
    try:
        wrapped = get_peft_model(model, config)  # type: ignore[arg-type]
    except ValueError as err:
        raise ValueError(f"could not apply peft={record} to {type(model).__name__}: {err}") from err
    return wrapped, record


def model_record(source: Any, built: nn.Module) -> Any:
    """A plain stand-in for a model source: a name or config dict as is, an instance as its config.

    ``None`` for an instance without a Hugging Face config (pass ``model=`` again to
    ``load_from_checkpoint``).

    Example:
        >>> model_record("openai/clip-vit-base-patch16", nn.Identity())
        'openai/clip-vit-base-patch16'
    """
    source = _resolve_folder(source)
    if isinstance(source, str) or is_plain(source):
        return source
    config = getattr(built, "config", None)
    return config.to_diff_dict() if isinstance(config, PretrainedConfig) else None


class BuiltEncoder(NamedTuple):
    """What :meth:`EncoderSpec.build` returns.

    Attributes:
        encoder: the :class:`DualEncoder` around the (possibly PEFT-wrapped) model.
        tokenizer: the tokenizer, or ``None`` when none was given and the model is not a name.
        record: plain values that rebuild the spec (:meth:`EncoderSpec.from_value` reads them),
            with the PEFT config as its plain dict; ``None`` when every option is the default.
        peft: the plain PEFT config (non-default fields + ``peft_type``), or ``None``.
    """

    encoder: DualEncoder
    tokenizer: PreTrainedTokenizerBase | None
    record: dict[str, Any] | None
    peft: dict[str, Any] | None


_SPEC_KEYS = (
    "tokenizer",
    "loss",
    "max_logit_scale",
    "gather_distributed",
    "peft",
    "from_pretrained_kwargs",
)


class EncoderSpec:
    """How to build a dual encoder from a Hugging Face model: the module's encoder component.

    The model itself (a Hub name or folder, a ``PreTrainedModel``, a ``PretrainedConfig`` or a
    config dict with ``model_type``) is given to :meth:`build`; the spec holds everything else.

    Args:
        tokenizer: tokenizer for the zero-shot prompts: a Hub name / folder, an instance, or
            ``None`` to load it from the model when that is a name or folder.
        loss: ``"clip"``, ``"siglip"`` or ``"auto"`` (SigLIP when the model has a
            ``logit_bias``, else CLIP).
        max_logit_scale: optional cap on the exponentiated logit scale (OpenAI CLIP: 100).
        gather_distributed: under DDP, score each rank's pairs against the negatives of all
            ranks (gathered with gradient); a no-op on one process.
        peft: parameter-efficient fine-tuning with the ``peft`` library: a dict of
            ``LoraConfig`` options (``{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj",
            "v_proj"]}``; a ``peft_type`` key picks another method), a ``class_path`` /
            ``init_args`` dict or a ``PeftConfig``. The model is wrapped with
            ``peft.get_peft_model`` (only the adapter weights train; an instance is modified in
            place).
        from_pretrained_kwargs: extra keyword arguments for ``from_pretrained`` (``revision``,
            ``dtype``, ...).

    In a ``FairVLMModule`` YAML::

        model:
          model: openai/clip-vit-base-patch16
          encoder:
            peft: {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}

    Raises:
        ValueError: a bad ``loss``, ``max_logit_scale`` or ``peft`` option.

    Example:
        >>> import torch
        >>> from transformers import CLIPConfig
        >>> tiny = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
        ...             num_attention_heads=2)
        >>> config = CLIPConfig(
        ...     text_config=dict(vocab_size=99, max_position_embeddings=16, eos_token_id=2, **tiny),
        ...     vision_config=dict(image_size=16, patch_size=8, **tiny), projection_dim=8)
        >>> spec = EncoderSpec(loss="siglip", max_logit_scale=100.0)
        >>> built = spec.build(config)
        >>> built.encoder.loss_kind, built.record
        ('siglip', {'loss': 'siglip', 'max_logit_scale': 100.0})
        >>> EncoderSpec.from_value(built.record).max_logit_scale
        100.0
    """

    def __init__(
        self,
        *,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        loss: Literal["auto", "clip", "siglip"] = "auto",
        max_logit_scale: float | None = None,
        gather_distributed: bool = True,
        peft: dict[str, Any] | None = None,
        from_pretrained_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if loss not in ("auto", "clip", "siglip"):
            raise ValueError(f"loss must be 'auto', 'clip' or 'siglip', got {loss!r}")
        if max_logit_scale is not None and not max_logit_scale > 0:
            raise ValueError(f"max_logit_scale must be positive or None, got {max_logit_scale}")
        self.tokenizer = _resolve_folder(tokenizer)
        self.loss = loss
        self.max_logit_scale = max_logit_scale
        self.gather_distributed = bool(gather_distributed)
        self.peft = peft
        self.from_pretrained_kwargs = dict(from_pretrained_kwargs or {})

    def __repr__(self) -> str:
        return f"EncoderSpec(**{self.record()!r})"

    @classmethod
    def from_value(cls, value: EncoderSpec | Mapping[str, Any] | None) -> EncoderSpec:
        """``value`` itself, the default spec (``None``), or one rebuilt from :meth:`record`."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(_SPEC_KEYS))
            if unknown:
                raise ValueError(
                    f"encoder has unknown key(s) {unknown}; expected some of {list(_SPEC_KEYS)}"
                )
            return cls(**dict(value))
        raise TypeError(f"encoder must be an EncoderSpec or a dict, got {type(value).__name__}")

    def record(self) -> dict[str, Any] | None:
        """The options that differ from the defaults, as plain values (``None``: all default)."""
        tokenizer = self.tokenizer
        if tokenizer is not None and not isinstance(tokenizer, str):
            name = getattr(tokenizer, "name_or_path", None)
            tokenizer = name if isinstance(name, str) and name else None
        peft = self.peft
        if peft is not None:
            peft = _peft_config(peft)[1]
        out = {
            "tokenizer": tokenizer,
            "loss": None if self.loss == "auto" else self.loss,
            "max_logit_scale": self.max_logit_scale,
            "gather_distributed": None if self.gather_distributed else False,
            "peft": peft,
            "from_pretrained_kwargs": self.from_pretrained_kwargs or None,
        }
        out = {k: v for k, v in out.items() if v is not None}
        return out or None

    def build(
        self, model: str | PreTrainedModel | PretrainedConfig | Mapping[str, Any]
    ) -> BuiltEncoder:
        """Load (or take) ``model``, wrap it with PEFT, wrap it as a :class:`DualEncoder`.

        Args:
            model: a Hub name or local folder (``AutoModel.from_pretrained``), a
                ``PreTrainedModel`` instance, a ``PretrainedConfig`` or a config dict with
                ``model_type`` (random weights, ``AutoModel.from_config``).

        Raises:
            TypeError: ``model`` of an unsupported type, or a model that is not a dual encoder.
            OSError: a name or folder that ``from_pretrained`` cannot load, or a
                ``fairvlm export`` folder without its completion marker.
        """
        model = _resolve_folder(model)
        hf_model = _load_model(model, self.from_pretrained_kwargs)
        peft_record = None
        if self.peft is not None:  # LoRA & co.: only the adapter weights train
            hf_model, peft_record = _wrap_peft(hf_model, self.peft)
        encoder = DualEncoder(
            hf_model,
            loss_kind=None if self.loss == "auto" else self.loss,
            max_logit_scale=self.max_logit_scale,
        )
        return BuiltEncoder(encoder, self.load_tokenizer(model), self.record(), peft_record)

    def load_tokenizer(self, model: Any) -> PreTrainedTokenizerBase | None:
        """The given tokenizer, loaded by name; else ``model``'s when that is a name or folder."""
        if isinstance(self.tokenizer, str):
            return AutoTokenizer.from_pretrained(self.tokenizer)
        if self.tokenizer is None and isinstance(model, str):
            return AutoTokenizer.from_pretrained(model, **self.from_pretrained_kwargs)
        return self.tokenizer
