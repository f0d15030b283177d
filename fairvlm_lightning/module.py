"""``FairVLMModule``: robust and fair CLIP-style fine-tuning of any Hugging Face dual encoder.

The module puts the package's parts together into one ``LightningModule``:

* training: per-pair contrastive losses (:func:`~fairvlm_lightning.losses.pair_losses`, CLIP
  softmax or SigLIP sigmoid) → per-pair weights from a
  :class:`~fairvlm_lightning.callbacks.DynamicBadPairMining` callback on the trainer (all ones
  without one) → weighted mean + ``fairness_weight`` ×
  :class:`~fairvlm_lightning.sinkhorn.SinkhornFairnessLoss` over the protected groups of the batch,
  computed in float32 with autocast off;
* validation / test: zero-shot classification with class prompts encoded once per evaluation epoch
  and :class:`~fairvlm_lightning.metrics.FairnessMetrics` logged as ``val/...`` and ``test/...``;
* predict: class probabilities and embeddings.

The Hugging Face model is built in ``__init__`` (from a Hub name or folder, a config, or taken as
an instance), so the module is complete as soon as it exists and ``load_from_checkpoint`` needs
nothing special. Local folders must therefore exist before the module is created: for the
synthetic benchmark call :func:`fairvlm_lightning.data.ensure_synthetic_assets` first (the
``fairvlm`` command does this for you before it instantiates anything).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fairvlm_lightning.atomic import check_export_folder
from fairvlm_lightning.callbacks import find_bad_pair_mining
from fairvlm_lightning.encoders import DualEncoder, DualEncoderOutput, LossKind
from fairvlm_lightning.losses import pair_losses
from fairvlm_lightning.metrics import FairnessMetrics
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS, ATTRIBUTES, CLASS_PROMPTS
from fairvlm_lightning.sinkhorn import DEFAULT_BLUR, DEFAULT_SCALING, SinkhornFairnessLoss

__all__ = [
    "DEFAULT_FAIRNESS_ATTRIBUTES",
    "DEFAULT_METRIC_ATTRIBUTES",
    "DEFAULT_PROMPTS",
    "FairVLMModule",
]

#: Zero-shot class prompts of the paper (label 0 = no glaucoma, 1 = glaucoma).
DEFAULT_PROMPTS: dict[int, str | list[str]] = dict(enumerate(CLASS_PROMPTS))
#: Protected attributes of Harvard-FairVLMed, used by the fairness term by default.
DEFAULT_FAIRNESS_ATTRIBUTES: tuple[str, ...] = ATTRIBUTES
#: Attribute → number of groups (FairVLMed coding), used by the metrics by default.
DEFAULT_METRIC_ATTRIBUTES: dict[str, int] = dict(ATTRIBUTE_GROUPS)

_PRIMITIVES = (str, int, float, bool, type(None))


def _is_primitive(value: Any) -> bool:
    """Whether ``value`` is a tree of plain Python values (safe for ``weights_only`` loading)."""
    if isinstance(value, _PRIMITIVES):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_primitive(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, _PRIMITIVES) and _is_primitive(v) for k, v in value.items())
    return False


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW, learning rate 1e-5 (a fine-tuning rate for pretrained CLIP)."""
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)


def _config_from_dict(config: Mapping[str, Any]) -> PretrainedConfig:
    if "model_type" not in config:
        raise ValueError(
            "a model config given as a dict needs a 'model_type' key (e.g. 'clip', 'siglip'), "
            f"got keys {sorted(config)}"
        )
    kwargs = dict(config)
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def _load_model(
    model: str | PreTrainedModel | PretrainedConfig | Mapping[str, Any], kwargs: Mapping[str, Any]
) -> PreTrainedModel:
    if isinstance(model, torch.nn.Module):  # a PreTrainedModel or any look-alike
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
                "fairvlm_lightning.data.ensure_synthetic_assets(root) (the `fairvlm` command runs "
                "it before building the module)."
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


def _peft_config(peft: Any) -> tuple[Any, dict[str, Any]]:
    """Build a ``peft`` config from a dict / ``class_path`` dict / config instance.

    Returns the config and a plain dict (its non-default fields and ``peft_type``) that rebuilds
    it, for the checkpoint's hyper-parameters.
    """
    import importlib
    from dataclasses import fields

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
    default = type(peft)()
    record = {"peft_type": str(_plain(peft.peft_type))}
    for f in fields(peft):
        if f.name in ("peft_type", "base_model_name_or_path", "revision"):
            continue
        value = _plain(getattr(peft, f.name))
        if value != _plain(getattr(default, f.name)):
            record[f.name] = value
    if not _is_primitive(record):
        raise TypeError(f"peft config fields must be plain values, got {record}")
    return peft, record


def _wrap_peft(model: PreTrainedModel, peft: Any) -> tuple[Any, dict[str, Any]]:
    """Wrap ``model`` with ``peft.get_peft_model`` (only adapter weights stay trainable)."""
    from peft import get_peft_model

    config, record = _peft_config(peft)
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(f"could not apply peft={record} to {type(model).__name__}: {err}") from err
    return wrapped, record


def _check_prompts(prompts: Mapping[Any, Any]) -> dict[int, list[str]]:
    if not isinstance(prompts, Mapping):
        raise TypeError(f"prompts must be a dict {{class: text}}, got {type(prompts).__name__}")
    out: dict[int, list[str]] = {}
    for key, value in prompts.items():
        try:
            cls = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"prompt keys must be class ids 0 and 1, got {key!r}") from None
        texts = [value] if isinstance(value, str) else list(value)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(
                f"prompts[{key!r}] must be a non-empty string or list of non-empty strings, "
                f"got {value!r}"
            )
        out[cls] = texts
    if sorted(out) != [0, 1]:
        raise ValueError(
            "prompts must have exactly the binary classes 0 and 1 as keys (the diagnosis "
            f"label), got {sorted(out)}"
        )
    return out


def _check_init_args(
    *,
    nonfinite_loss: str,
    loss: str,
    fairness_statistic: str,
    fairness_weight: Any,
    fairness_attributes: Any,
    scheduler_interval: str,
    prompt_max_length: Any,
) -> None:
    """The plain-value checks of :class:`FairVLMModule`'s arguments (clear errors, early)."""
    if nonfinite_loss not in ("raise", "skip"):
        raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
    if loss not in ("auto", "clip", "siglip"):
        raise ValueError(f"loss must be 'auto', 'clip' or 'siglip', got {loss!r}")
    if fairness_statistic not in ("loss", "similarity"):
        raise ValueError(
            f"fairness_statistic must be 'loss' or 'similarity', got {fairness_statistic!r}"
        )
    if not (isinstance(fairness_weight, (int, float)) and math.isfinite(fairness_weight)):
        raise ValueError(f"fairness_weight must be a finite number, got {fairness_weight!r}")
    if fairness_weight < 0:
        raise ValueError(f"fairness_weight must be >= 0, got {fairness_weight}")
    if isinstance(fairness_attributes, str):
        raise TypeError(
            "fairness_attributes must be a sequence of attribute names, got the string "
            f"{fairness_attributes!r} (write [{fairness_attributes!r}])"
        )
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(
            f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}"
        )
    if not (isinstance(prompt_max_length, int) and prompt_max_length > 0):
        raise ValueError(f"prompt_max_length must be a positive int, got {prompt_max_length!r}")


def _check_metric_attributes(metric_attributes: Any) -> dict[str, int]:
    """The metric attributes (FairVLMed's by default) after a type check."""
    if metric_attributes is None:
        return dict(DEFAULT_METRIC_ATTRIBUTES)
    if not isinstance(metric_attributes, Mapping):
        raise TypeError(
            "metric_attributes must be a dict {attribute: number of groups}, got "
            f"{type(metric_attributes).__name__}"
        )
    return dict(metric_attributes)


def _unsaved_hparams(**values: Any) -> list[str]:
    """Names of the arguments that are not plain values (kept out of the checkpoint)."""
    return [name for name, value in values.items() if not _is_primitive(value)]


def _rebuild_hparams(hf_model: Any, tokenizer: Any, ignore: Sequence[str]) -> dict[str, Any]:
    """Plain stand-ins for an unsaved model instance (its config dict) and tokenizer (its name).

    ``load_from_checkpoint`` rebuilds an instance from its config (weights come from the
    checkpoint); a model without a Hugging Face config must be passed again there.
    """
    extra: dict[str, Any] = {}
    if "model" in ignore:
        config = getattr(hf_model, "config", None)
        extra["model"] = config.to_diff_dict() if isinstance(config, PretrainedConfig) else None
    if "tokenizer" in ignore:
        name = getattr(tokenizer, "name_or_path", None)
        extra["tokenizer"] = name if isinstance(name, str) and name else None
    return extra


def _load_tokenizer(
    model: Any, tokenizer: Any, from_pretrained_kwargs: Mapping[str, Any]
) -> PreTrainedTokenizerBase | None:
    """The given tokenizer, loaded by name; else the model's when the model is a name."""
    if isinstance(tokenizer, str):
        return AutoTokenizer.from_pretrained(tokenizer)
    if tokenizer is None and isinstance(model, str):
        return AutoTokenizer.from_pretrained(model, **from_pretrained_kwargs)
    return tokenizer


class FairVLMModule(pl.LightningModule):
    r"""Robust (DBPM) and fair (Sinkhorn) contrastive fine-tuning of a Hugging Face dual encoder.

    Training loss, for a batch of ``B`` image–text pairs with per-pair contrastive losses
    :math:`\ell_i` and DBPM weights :math:`w_i` (1 without a
    :class:`~fairvlm_lightning.callbacks.DynamicBadPairMining` callback):

    .. math:: L = \tfrac1B \sum_i w_i \ell_i + \lambda \sum_a \sum_g
        S_\varepsilon(D_{a,g}, D_{\text{all}})

    where :math:`D` are the empirical distributions of the fairness statistic (the raw per-pair
    loss, or the matched-pair cosine similarity as FairCLIP) over group :math:`g` of attribute
    :math:`a` and over the whole batch. The step returns ``{"loss", "pair_losses", "index"}`` so
    the DBPM callback can record the raw, unweighted losses.

    Validation and test classify each image zero-shot against ``prompts`` (P(y=1) = softmax over
    the scaled cosine similarities) and log
    :class:`~fairvlm_lightning.metrics.FairnessMetrics` under ``val/`` and ``test/`` with the
    metric's own names (``val/auc``, ``val/race/es_auc``, ``test/gender/dpd``, ...), plus the
    contrastive loss of the batch's own pairs as ``val/loss``.

    Args:
        model: a Hub name or local folder (``AutoModel.from_pretrained``), a ``PreTrainedModel``
            instance, a ``PretrainedConfig`` or a config dict with ``model_type`` (random
            weights, ``AutoModel.from_config``). Any dual encoder
            :class:`~fairvlm_lightning.encoders.DualEncoder` accepts (CLIP, SigLIP, ...). An
            instance is recorded in the hyper-parameters as its config dict, so
            ``load_from_checkpoint`` rebuilds it (pass ``model=`` there for a model without a
            Hugging Face config).
        tokenizer: tokenizer for the zero-shot prompts: a Hub name / folder, an instance, or
            ``None`` to load it from ``model`` when that is a name or folder. Only evaluation and
            prediction need it.
        loss: ``"clip"``, ``"siglip"`` or ``"auto"`` (SigLIP when the model has a
            ``logit_bias``, else CLIP).
        gather_distributed: under DDP, score each rank's pairs against the negatives of all
            ranks (gathered with gradient); a no-op on one process.
        max_logit_scale: optional cap on the exponentiated logit scale (OpenAI CLIP: 100).
        fairness_weight: :math:`\lambda` ≥ 0; 0 switches the Sinkhorn term off.
        fairness_attributes: batch keys of the protected attributes the term spans (values are
            group ids, ``-1`` = unknown and left out); for an attribute in ``metric_attributes``
            an id outside ``0..n-1`` stops the training step with an error naming it.
        fairness_statistic: ``"loss"`` (per-pair contrastive loss, the paper) or
            ``"similarity"`` (matched-pair cosine similarity, as FairCLIP).
        sinkhorn_blur: GeomLoss blur of the Sinkhorn divergence (default 1e-2, see
            :class:`~fairvlm_lightning.sinkhorn.SinkhornFairnessLoss`).
        sinkhorn_scaling: GeomLoss ε-scaling ratio in (0, 1) (default 0.95).
        sinkhorn_backend: ``"auto"`` (per device), ``"fused"``, ``"geomloss"`` or ``"exact1d"``.
        min_group_size: groups with fewer members in the batch are skipped by the term.
        prompts: class id → prompt or list of prompts (embeddings averaged) for zero-shot
            evaluation; default ``{0: "A photo of non-glaucoma", 1: "A photo of glaucoma"}``.
        prompt_max_length: prompts are padded / truncated to this many tokens; keep it equal
            to the data module's ``max_length`` (models such as SigLIP pool the last token, so
            prompts must be padded like the training texts). The ``fairvlm`` command links it.
        metric_attributes: attribute → number of groups for the fairness metrics; default the
            four FairVLMed attributes ``{"race": 3, "gender": 2, "ethnicity": 2, "language": 3}``.
        metric_kwargs: extra keyword arguments for ``FairnessMetrics`` (``threshold``,
            ``alpha``, ...).
        optimizer: a callable ``params -> Optimizer`` (in YAML, a ``class_path``/``init_args``
            block); default AdamW, lr 1e-5, weight decay 0.01.
        scheduler: optional callable ``optimizer -> LRScheduler``.
        scheduler_interval: ``"epoch"`` or ``"step"``: when the scheduler steps.
        scheduler_monitor: metric a ``ReduceLROnPlateau`` scheduler watches.
        from_pretrained_kwargs: extra keyword arguments for ``from_pretrained`` (``revision``,
            ``dtype``, ...).
        nonfinite_loss: what a training step with a non-finite (NaN or infinite) per-pair loss
            does: ``"raise"`` (default) stops with a ``FloatingPointError`` naming the batch's
            dataset indices (and those whose pixels or embeddings are non-finite);
            ``"skip"`` warns the same and skips the step (no backward, no optimiser step, the
            pairs are not recorded by DBPM). Under DDP all ranks stop or skip together. A relative
            ``model`` or ``tokenizer`` folder is recorded as its absolute path, so the
            checkpoint loads from any working directory.
        peft: parameter-efficient fine-tuning with the ``peft`` library: a dict of ``LoraConfig``
            options (``{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}``; a
            ``peft_type`` key picks another method), a ``class_path``/``init_args`` dict (YAML) or
            a ``PeftConfig`` instance. The model is wrapped with ``peft.get_peft_model``, so only
            the adapter weights are trainable (``self.model`` is then the ``PeftModel``; a model
            instance is modified in place). The config is recorded as a plain dict, so
            checkpoints stay ``weights_only``-loadable and ``load_from_checkpoint`` rebuilds it.

    Raises:
        ValueError: bad ``loss``, ``fairness_statistic``, negative ``fairness_weight``, bad
            prompts or metric attributes.
        TypeError: ``model`` of an unsupported type, or a model that is not a dual encoder.
        OSError: a name or folder that ``from_pretrained`` cannot load, or a ``fairvlm export``
            folder without its completion marker (``IncompleteFolderError``).

    Example:
        >>> import torch
        >>> from transformers import CLIPConfig
        >>> tiny = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
        ...             num_attention_heads=2)
        >>> config = CLIPConfig(
        ...     text_config=dict(vocab_size=99, max_position_embeddings=16, eos_token_id=2, **tiny),
        ...     vision_config=dict(image_size=16, patch_size=8, **tiny), projection_dim=8)
        >>> _ = torch.manual_seed(0)
        >>> module = FairVLMModule(config, fairness_weight=0.5, fairness_attributes=("race",))
        >>> g = torch.Generator().manual_seed(0)
        >>> batch = {"pixel_values": torch.randn(6, 3, 16, 16, generator=g),
        ...          "input_ids": torch.randint(3, 99, (6, 5), generator=g),
        ...          "index": torch.arange(6), "race": torch.tensor([0, 0, 0, 1, 1, 1])}
        >>> out = module.training_step(batch, 0)
        >>> sorted(out), out["pair_losses"].shape, bool(out["loss"] > out["pair_losses"].mean())
        (['index', 'loss', 'pair_losses'], torch.Size([6]), True)
    """

    def __init__(
        self,
        model: str | PreTrainedModel | PretrainedConfig | dict[str, Any],
        *,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        loss: Literal["auto", "clip", "siglip"] = "auto",
        gather_distributed: bool = True,
        max_logit_scale: float | None = None,
        fairness_weight: float = 0.0,
        fairness_attributes: Sequence[str] = DEFAULT_FAIRNESS_ATTRIBUTES,
        fairness_statistic: Literal["loss", "similarity"] = "loss",
        sinkhorn_blur: float = DEFAULT_BLUR,
        sinkhorn_scaling: float = DEFAULT_SCALING,
        sinkhorn_backend: Literal["auto", "fused", "geomloss", "exact1d"] = "auto",
        min_group_size: int = 2,
        prompts: dict[int, str | list[str]] | None = None,
        prompt_max_length: int = 64,
        metric_attributes: dict[str, int] | None = None,
        metric_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/loss",
        from_pretrained_kwargs: dict[str, Any] | None = None,
        nonfinite_loss: Literal["raise", "skip"] = "raise",
        peft: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        _check_init_args(
            nonfinite_loss=nonfinite_loss,
            loss=loss,
            fairness_statistic=fairness_statistic,
            fairness_weight=fairness_weight,
            fairness_attributes=fairness_attributes,
            scheduler_interval=scheduler_interval,
            prompt_max_length=prompt_max_length,
        )
        # The resolved / defaulted values are what save_hyperparameters records (it reads this
        # frame's locals), so they are bound here.
        model, tokenizer = _resolve_folder(model), _resolve_folder(tokenizer)
        prompts = DEFAULT_PROMPTS if prompts is None else prompts
        self._prompts = _check_prompts(prompts)
        metric_attributes = _check_metric_attributes(metric_attributes)

        # Hyper-parameters: only plain values go into checkpoints (they load with
        # ``weights_only=True``); a model instance or config is recorded as its config dict.
        ignore = _unsaved_hparams(
            model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler, peft=peft
        )
        self.save_hyperparameters(ignore=ignore)
        hf_model = _load_model(model, from_pretrained_kwargs or {})
        extra = _rebuild_hparams(hf_model, tokenizer, ignore)
        if peft is not None:  # LoRA & co.: only the adapter weights train
            hf_model, extra["peft"] = _wrap_peft(hf_model, peft)
        if extra:
            self.save_hyperparameters(extra)

        self.encoder = DualEncoder(
            hf_model, loss_kind=None if loss == "auto" else loss, max_logit_scale=max_logit_scale
        )
        self.tokenizer = _load_tokenizer(model, tokenizer, from_pretrained_kwargs or {})
        self.nonfinite_loss = nonfinite_loss
        self.fairness_weight = float(fairness_weight)
        self.fairness_attributes = tuple(fairness_attributes)
        self.fairness_statistic = fairness_statistic
        self.gather_distributed = gather_distributed
        self.prompt_max_length = prompt_max_length
        self.fairness_loss = SinkhornFairnessLoss(
            blur=sinkhorn_blur,
            scaling=sinkhorn_scaling,
            min_group_size=min_group_size,
            backend=sinkhorn_backend,
        )
        self.metric_attributes = dict(metric_attributes)
        self.val_metrics = FairnessMetrics(self.metric_attributes, **(metric_kwargs or {}))
        self.test_metrics = FairnessMetrics(self.metric_attributes, **(metric_kwargs or {}))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self._prompt_embeds: Tensor | None = None

    # ------------------------------------------------------------------ properties

    @property
    def model(self) -> PreTrainedModel:
        """The wrapped Hugging Face model (``save_pretrained`` it to export the fine-tune)."""
        return self.encoder.model

    @property
    def loss_kind(self) -> LossKind:
        """``"clip"`` or ``"siglip"``: the contrastive loss in use."""
        return self.encoder.loss_kind

    @property
    def prompts(self) -> dict[int, list[str]]:
        """Class id → list of prompts used for zero-shot evaluation."""
        return {k: list(v) for k, v in self._prompts.items()}

    # ------------------------------------------------------------------ helpers

    def _require(self, batch: Mapping[str, Any], keys: Sequence[str], stage: str) -> None:
        if not isinstance(batch, Mapping):
            raise TypeError(f"{stage} batch must be a dict of tensors, got {type(batch).__name__}")
        missing = [k for k in keys if k not in batch]
        if missing:
            raise ValueError(
                f"{stage} batch lacks key(s) {missing}; it has {sorted(batch)} (see the batch "
                "contract in docs/data.md)"
            )

    def _groups(self, batch: Mapping[str, Any], names: Sequence[str], stage: str) -> dict:
        self._require(batch, names, stage)
        return {name: batch[name] for name in names}

    def _pair_weights(self, index: Tensor, losses: Tensor) -> Tensor:
        """DBPM weights of the batch's pairs (ones without the callback)."""
        trainer = self._trainer
        dbpm = find_bad_pair_mining(trainer) if trainer is not None else None
        if dbpm is None:
            return torch.ones_like(losses)
        return dbpm.pair_weights(index, losses.detach()).to(losses)

    @torch.no_grad()
    def encode_prompts(self) -> Tensor:
        """Encode the class prompts: ``(C, D)`` L2-normalised, prompt lists averaged.

        Raises:
            RuntimeError: no tokenizer (give ``tokenizer=`` when ``model`` is an instance or a
                config).
        """
        if self.tokenizer is None:
            raise RuntimeError(
                "zero-shot evaluation needs a tokenizer for the prompts: pass tokenizer= (a name, "
                "folder or instance) when model is not a name or folder"
            )
        texts = [t for c in sorted(self._prompts) for t in self._prompts[c]]
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.prompt_max_length,
            return_tensors="pt",
        )
        mask = tokens.get("attention_mask")
        embeds = self.encoder.encode_text(
            tokens["input_ids"].to(self.device), None if mask is None else mask.to(self.device)
        ).float()
        out, start = [], 0
        for c in sorted(self._prompts):
            n = len(self._prompts[c])
            out.append(torch.nn.functional.normalize(embeds[start : start + n].mean(0), dim=-1))
            start += n
        return torch.stack(out)

    def zero_shot_logits(self, image_embeds: Tensor) -> Tensor:
        """Scaled similarities ``(B, C)`` of L2-normalised image embeddings to the prompts."""
        if self._prompt_embeds is None or self._prompt_embeds.device != image_embeds.device:
            self._prompt_embeds = self.encode_prompts()
        scale, bias = self.encoder.logit_params()
        logits = scale.float() * image_embeds.float() @ self._prompt_embeds.T
        return logits if bias is None else logits + bias.float()

    # ------------------------------------------------------------------ training

    def _skip_nonfinite_step(self, losses: Tensor, batch: Mapping[str, Any], out: Any) -> bool:
        """Whether to skip this step: raise (or warn) on a non-finite per-pair loss.

        One NaN image poisons every pair's softmax, so all pairs of the batch are named; the
        message also names the pairs whose pixels or embeddings are non-finite (the cause).
        Under DDP the decision is taken on every rank when any rank has a non-finite loss.
        """
        bad = ~torch.isfinite(losses.detach())
        local_bad = bool(bad.any())
        trainer = self._trainer
        # Decided together under DDP: a rank that stopped (or skipped) alone would leave the
        # others waiting in the gradient all-reduce.
        any_bad = (
            bool(trainer.strategy.reduce_boolean_decision(local_bad, all=False))
            if trainer is not None
            else local_bad
        )
        if not any_bad:
            return False
        index = batch["index"]

        def named(mask: Tensor) -> list[int]:
            return index[mask.to(index.device)].tolist()

        parts = (
            [f"non-finite per-pair loss at dataset indices {named(bad)}"]
            if local_bad
            else ["a non-finite per-pair loss in another process's batch"]
        )
        pixels = batch.get("pixel_values")
        if isinstance(pixels, Tensor) and pixels.is_floating_point():
            rows = ~torch.isfinite(pixels.detach()).flatten(1).all(dim=1)
            if bool(rows.any()):
                parts.append(f"non-finite pixel_values at dataset indices {named(rows)}")
        for name in ("image_embeds", "text_embeds"):
            embeds = getattr(out, name, None)
            if isinstance(embeds, Tensor):
                rows = ~torch.isfinite(embeds.detach()).all(dim=1)
                if bool(rows.any()):
                    parts.append(f"non-finite {name} at dataset indices {named(rows)}")
        scale = getattr(out, "logit_scale", None)
        if isinstance(scale, Tensor) and not bool(torch.isfinite(scale.detach()).all()):
            parts.append(f"logit_scale is {scale.detach().float().flatten()[0].item()}")
        where = f"training step {self.global_step}" if trainer is not None else "training step"
        detail = "; ".join(parts)
        if self.nonfinite_loss == "skip":
            warnings.warn(
                f"FairVLMModule skipped the training step ({where}): {detail}",
                UserWarning,
                stacklevel=2,
            )
            return True
        raise FloatingPointError(
            f"{where}: {detail}. The weights were not updated with it. Check those samples "
            "(and the learning rate); pass nonfinite_loss='skip' to skip such steps instead."
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor] | None:
        """Weighted contrastive loss + fairness term; returns what the DBPM callback records."""
        needed = ["pixel_values", "input_ids", "index"]
        if self.fairness_weight > 0:
            needed += list(self.fairness_attributes)
        self._require(batch, needed, "training")
        if self.fairness_weight > 0:
            self._check_group_ids(batch)
        out = self.encoder(batch["pixel_values"], batch["input_ids"], batch.get("attention_mask"))
        losses = self._pair_losses(out)
        if self._skip_nonfinite_step(losses, batch, out):
            return None
        contrastive, logs = self._contrastive_part(out, losses, batch["index"])
        total = contrastive
        if self.fairness_weight > 0:
            fair, fair_logs = self._fairness_part(out, losses, batch)
            total = total + self.fairness_weight * fair
            logs.update(fair_logs)
        self._log_training(logs, total, batch_size=losses.shape[0])
        return {"loss": total, "pair_losses": losses.detach(), "index": batch["index"]}

    def _check_group_ids(self, batch: Mapping[str, Any]) -> None:
        """Refuse fairness-attribute group ids outside ``0..n-1`` (``-1`` = unknown).

        ``n`` is the attribute's group count in ``metric_attributes``; without this an id of 7
        for a 3-group attribute would silently become an extra Sinkhorn group in training and
        only the evaluation would reject it. One host sync for all attributes.
        """
        declared = [
            (a, int(self.metric_attributes[a]))
            for a in self.fairness_attributes
            if a in self.metric_attributes
        ]
        if not declared:
            return
        ids = torch.stack([torch.as_tensor(batch[a]).reshape(-1).long() for a, _ in declared])
        limits = torch.tensor([n for _, n in declared], device=ids.device).unsqueeze(1)
        bad = (ids >= limits) | (ids < -1)
        if not bool(bad.any()):
            return
        k = int(bad.any(dim=1).nonzero()[0, 0])  # the first attribute with a bad id
        (attr, n), row = declared[k], bad[k]
        values = sorted({int(v) for v in ids[k][row].tolist()})
        index = batch.get("index")
        where = (
            f" at dataset indices {index[row.to(index.device)].tolist()}"
            if isinstance(index, Tensor)
            else ""
        )
        raise ValueError(
            f"training batch: attribute {attr!r} has group id(s) {values}{where}, outside its "
            f"range 0..{n - 1} (metric_attributes declares {n} groups for {attr!r}; -1 = "
            "unknown). Fix the data's group coding, or declare the right count in "
            "metric_attributes."
        )

    def _pair_losses(self, out: DualEncoderOutput) -> Tensor:
        """``(B,)`` float32 per-pair contrastive losses of the encoder output."""
        return pair_losses(
            out.image_embeds,
            out.text_embeds,
            out.logit_scale,
            out.logit_bias,
            kind=self.loss_kind,
            gather_distributed=self.gather_distributed,
        ).float()

    def _contrastive_part(
        self, out: DualEncoderOutput, losses: Tensor, index: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The DBPM-weighted mean contrastive loss and its logs."""
        weights = self._pair_weights(index, losses)
        contrastive = (weights * losses).mean()
        logs = {
            "train/contrastive_loss": contrastive.detach(),
            "train/raw_loss": losses.detach().mean(),
            "train/downweighted_fraction": (weights != 1).float().mean(),
            "train/logit_scale": out.logit_scale.detach().float(),
        }
        return contrastive, logs

    def _fairness_part(
        self, out: DualEncoderOutput, losses: Tensor, batch: Mapping[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The Sinkhorn fairness term (unweighted) and its logs, total and per attribute."""
        if self.fairness_statistic == "loss":
            statistic = losses
        else:
            statistic = (out.image_embeds * out.text_embeds).sum(dim=-1)
        groups = {name: batch[name] for name in self.fairness_attributes}
        with torch.autocast(device_type=statistic.device.type, enabled=False):
            fair, terms = self.fairness_loss(statistic.float(), groups, return_terms=True)
        logs = {"train/fairness_loss": fair.detach()}
        for name in self.fairness_attributes:
            parts = [v for k, v in terms.items() if k.split("/")[0] == name]
            if parts:
                logs[f"train/fairness/{name}"] = torch.stack(parts).sum().detach()
        return fair, logs

    def _log_training(self, logs: dict[str, Tensor], total: Tensor, batch_size: int) -> None:
        if self._trainer is None:  # also usable as a plain function (tests, doctests)
            return
        # sync_dist: the epoch values are means over every process's pairs under DDP
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=batch_size, sync_dist=True)
        self.log(
            "train/loss",
            total.detach(),
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )

    # ------------------------------------------------------------------ evaluation

    def _reset_prompts(self) -> None:
        self._prompt_embeds = None

    def _cache_prompts(self) -> None:
        """Encode the prompts once for this evaluation or prediction epoch."""
        self._prompt_embeds = self.encode_prompts()

    on_validation_epoch_start = on_test_epoch_start = on_predict_epoch_start = _cache_prompts

    def on_train_epoch_start(self) -> None:
        """Forget the prompt embeddings: the weights are about to change."""
        self._reset_prompts()

    def _eval_step(self, batch: dict[str, Any], stage: str, metrics: FairnessMetrics) -> None:
        self._require(batch, ["pixel_values", "label"], stage)
        groups = self._groups(batch, list(self.metric_attributes), stage)
        image_embeds = self.encoder.encode_image(batch["pixel_values"])
        probs = self.zero_shot_logits(image_embeds).softmax(dim=-1)
        metrics.update(probs[:, 1], batch["label"], groups)
        batch_size = image_embeds.shape[0]
        if "input_ids" in batch:
            text_embeds = self.encoder.encode_text(batch["input_ids"], batch.get("attention_mask"))
            scale, bias = self.encoder.logit_params()
            losses = pair_losses(image_embeds, text_embeds, scale, bias, kind=self.loss_kind)
            self.log(f"{stage}/loss", losses.mean(), sync_dist=True, batch_size=batch_size)

    def _log_metrics(self, stage: str, metrics: FairnessMetrics) -> dict[str, Tensor]:
        values = {f"{stage}/{k}": v.float() for k, v in metrics.compute().items()}
        metrics.reset()
        # Already global: the metric states are gathered from every process before compute, so
        # the values are the same on each; the max of equal values returns them bit for bit.
        self.log_dict(values, sync_dist=True, reduce_fx="max")
        return values

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Zero-shot scores → ``val_metrics``; contrastive loss → ``val/loss``."""
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        """Log the fairness metrics as ``val/<name>``."""
        self._log_metrics("val", self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Zero-shot scores → ``test_metrics``; contrastive loss → ``test/loss``."""
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        """Log the fairness metrics as ``test/<name>``."""
        self._log_metrics("test", self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Zero-shot probabilities and embeddings.

        Returns:
            ``probs`` ``(B, C)`` class probabilities, ``score`` ``(B,)`` = P(y=1),
            ``image_embeds`` ``(B, D)``, ``text_embeds`` when the batch has ``input_ids``, and
            ``index``, ``label`` and the metric attributes passed through when present.
        """
        self._require(batch, ["pixel_values"], "predict")
        image_embeds = self.encoder.encode_image(batch["pixel_values"])
        probs = self.zero_shot_logits(image_embeds).softmax(dim=-1)
        out = {"probs": probs, "score": probs[:, 1], "image_embeds": image_embeds.float()}
        if "input_ids" in batch:
            out["text_embeds"] = self.encoder.encode_text(
                batch["input_ids"], batch.get("attention_mask")
            ).float()
        for key in ("index", "label", *self.metric_attributes):
            if key in batch:
                out[key] = batch[key]
        return out

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> Any:
        """The configured optimiser (and scheduler) over the trainable parameters."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
