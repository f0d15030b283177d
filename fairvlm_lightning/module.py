"""``FairVLMModule``: robust and fair CLIP-style fine-tuning of any Hugging Face dual encoder.

The module puts the package's components together into one ``LightningModule``:

* the encoder: an :class:`~fairvlm_lightning.encoders.EncoderSpec` (or just a model name or
  folder) builds the :class:`~fairvlm_lightning.encoders.DualEncoder` and the tokenizer;
* training: per-pair contrastive losses (:func:`~fairvlm_lightning.losses.pair_losses`, CLIP
  softmax or SigLIP sigmoid) → per-pair weights from a registered weight provider (the
  :class:`~fairvlm_lightning.callbacks.DynamicBadPairMining` callback registers one at fit start;
  all ones without one) → weighted mean + ``fairness_weight`` × the ``fairness`` term (a
  :class:`~fairvlm_lightning.sinkhorn.SinkhornFairnessLoss`) over the protected groups of the
  batch, computed in float32 with autocast off;
* validation / test: zero-shot classification with a
  :class:`~fairvlm_lightning.zeroshot.ZeroShotPrompts` (class prompts encoded once per evaluation
  epoch) and :class:`~fairvlm_lightning.metrics.FairnessMetrics` logged as ``val/...`` and
  ``test/...``;
* predict: class probabilities and embeddings.

The Hugging Face model is built in ``__init__``, so the module is complete as soon as it exists
and ``load_from_checkpoint`` needs nothing special. Local folders must therefore exist before the
module is created: for the synthetic benchmark call
:func:`fairvlm_lightning.app.synthetic.ensure_synthetic_assets` first (the ``fairvlm`` command
does this for you before it instantiates anything).
"""

from __future__ import annotations

import importlib
import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel

from fairvlm_lightning.encoders import DualEncoderOutput, EncoderSpec, is_plain, model_record
from fairvlm_lightning.losses import LossKind, pair_losses
from fairvlm_lightning.metrics import FairnessMetrics
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS, ATTRIBUTES
from fairvlm_lightning.sinkhorn import SinkhornFairnessLoss
from fairvlm_lightning.zeroshot import DEFAULT_PROMPTS, ZeroShotPrompts

__all__ = [
    "DEFAULT_FAIRNESS_ATTRIBUTES",
    "DEFAULT_METRIC_ATTRIBUTES",
    "DEFAULT_PROMPTS",
    "FairVLMModule",
    "PairWeightProvider",
]

#: Protected attributes of Harvard-FairVLMed, used by the fairness term by default.
DEFAULT_FAIRNESS_ATTRIBUTES: tuple[str, ...] = ATTRIBUTES
#: Attribute → number of groups (FairVLMed coding), used by the metrics by default.
DEFAULT_METRIC_ATTRIBUTES: dict[str, int] = dict(ATTRIBUTE_GROUPS)

#: ``(index, raw per-pair losses) -> (B,) weights``: what a pair-weight provider computes.
PairWeightProvider = Callable[[Tensor, Tensor], Tensor]

_SCHEDULER_KEYS = ("interval", "frequency", "monitor", "name", "strict")


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW, learning rate 1e-5 (a fine-tuning rate for pretrained CLIP)."""
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)


def _fairness_term(fairness: Any) -> SinkhornFairnessLoss | None:
    """The fairness term: ``None``, an instance, or built from a ``class_path`` record."""
    if fairness is None or isinstance(fairness, SinkhornFairnessLoss):
        return fairness
    if isinstance(fairness, Mapping) and "class_path" in fairness:
        module_name, _, cls_name = str(fairness["class_path"]).rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name, None) if module_name else None
        if not (isinstance(cls, type) and issubclass(cls, SinkhornFairnessLoss)):
            raise ValueError(
                "fairness class_path must name SinkhornFairnessLoss or a subclass, got "
                f"{fairness['class_path']!r}"
            )
        return cls(**dict(fairness.get("init_args") or {}))
    raise TypeError(
        "fairness must be a SinkhornFairnessLoss, a {class_path, init_args} dict or None, got "
        f"{type(fairness).__name__}"
    )


def _fairness_record(term: SinkhornFairnessLoss | None) -> dict[str, Any] | None:
    """``{class_path, init_args}`` of the term: its constructor arguments read back by name."""
    if term is None:
        return None
    cls = type(term)
    init_args = {}
    for name in list(inspect.signature(cls.__init__).parameters)[1:]:
        value = getattr(term, name, None)
        if value is not None and is_plain(value):
            init_args[name] = value
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def _fairness_weight(weight: Any, term: SinkhornFairnessLoss | None) -> float:
    """λ: 1 with a term and no weight given, 0 without a term; checked."""
    if weight is None:
        return 0.0 if term is None else 1.0
    if not (isinstance(weight, (int, float)) and math.isfinite(weight)):
        raise ValueError(f"fairness_weight must be a finite number, got {weight!r}")
    if weight < 0:
        raise ValueError(f"fairness_weight must be >= 0, got {weight}")
    if weight > 0 and term is None:
        raise ValueError(
            f"fairness_weight={weight} needs a fairness term: pass fairness="
            "SinkhornFairnessLoss(...) (YAML: fairness: {class_path: "
            "fairvlm_lightning.sinkhorn.SinkhornFairnessLoss})"
        )
    return float(weight)


def _check_init_args(
    *,
    nonfinite_loss: str,
    fairness_statistic: str,
    fairness_attributes: Any,
    scheduler_config: Any,
) -> dict[str, Any]:
    """The plain-value checks of :class:`FairVLMModule`'s arguments; the scheduler config."""
    if nonfinite_loss not in ("raise", "skip"):
        raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
    if fairness_statistic not in ("loss", "similarity"):
        raise ValueError(
            f"fairness_statistic must be 'loss' or 'similarity', got {fairness_statistic!r}"
        )
    if isinstance(fairness_attributes, str):
        raise TypeError(
            "fairness_attributes must be a sequence of attribute names, got the string "
            f"{fairness_attributes!r} (write [{fairness_attributes!r}])"
        )
    config = dict(scheduler_config or {})
    unknown = sorted(set(config) - set(_SCHEDULER_KEYS))
    if unknown:
        raise ValueError(
            f"scheduler_config has unknown key(s) {unknown}; expected some of "
            f"{list(_SCHEDULER_KEYS)}"
        )
    config.setdefault("interval", "epoch")
    config.setdefault("monitor", "val/loss")
    if config["interval"] not in ("epoch", "step"):
        raise ValueError(
            f"scheduler_config['interval'] must be 'epoch' or 'step', got {config['interval']!r}"
        )
    return config


def _check_metrics(metrics: Any) -> dict[str, Any]:
    """``FairnessMetrics`` keyword arguments, ``attributes`` defaulted to FairVLMed's."""
    if metrics is None:
        metrics = {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            "metrics must be a dict of FairnessMetrics arguments ({'attributes': {attribute: "
            f"number of groups}}, 'threshold', ...), got {type(metrics).__name__}"
        )
    out = dict(metrics)
    attributes = out.setdefault("attributes", dict(DEFAULT_METRIC_ATTRIBUTES))
    if not isinstance(attributes, Mapping):
        raise TypeError(
            "metrics['attributes'] must be a dict {attribute: number of groups}, got "
            f"{type(attributes).__name__}"
        )
    out["attributes"] = dict(attributes)
    return out


def _with_task(metrics: dict[str, Any], zero_shot: ZeroShotPrompts) -> dict[str, Any]:
    """The metrics' arguments with the zero-shot task's ``task`` and class or label count."""
    task = zero_shot.metric_task()
    for key, value in task.items():
        if key in metrics and metrics[key] != value:
            raise ValueError(
                f"metrics[{key!r}] = {metrics[key]!r} disagrees with the zero-shot prompts "
                f"({key} {value!r}); leave it out, the prompts set it"
            )
    return metrics if zero_shot.task == "binary" else {**metrics, **task}


class FairVLMModule(pl.LightningModule):
    r"""Robust (DBPM) and fair (Sinkhorn) contrastive fine-tuning of a Hugging Face dual encoder.

    Training loss, for a batch of ``B`` image–text pairs with per-pair contrastive losses
    :math:`\ell_i` and pair weights :math:`w_i` (from the registered
    :meth:`pair weight provider <set_pair_weight_provider>`, 1 without one):

    .. math:: L = \tfrac1B \sum_i w_i \ell_i + \lambda \sum_a \sum_g
        S_\varepsilon(D_{a,g}, D_{\text{all}})

    where :math:`D` are the empirical distributions of the fairness statistic (the raw per-pair
    loss, or the matched-pair cosine similarity as FairCLIP) over group :math:`g` of attribute
    :math:`a` and over the whole batch, and :math:`S_\varepsilon` is the ``fairness`` term. The
    step returns ``{"loss", "pair_losses", "index"}`` so the DBPM callback can record the raw,
    unweighted losses. A :class:`~fairvlm_lightning.callbacks.DynamicBadPairMining` callback
    registers its weights at fit start and removes them at fit end.

    Validation and test classify each image zero-shot against the ``zero_shot`` prompts (P(y=1)
    = softmax over the scaled cosine similarities) and log
    :class:`~fairvlm_lightning.metrics.FairnessMetrics` under ``val/`` and ``test/`` with the
    metric's own names (``val/auc``, ``val/race/es_auc``, ``test/gender/dpd``, ...), plus the
    contrastive loss of the batch's own pairs as ``val/loss``.

    Args:
        model: a Hub name or local folder (``AutoModel.from_pretrained``), a ``PreTrainedModel``
            instance, a ``PretrainedConfig`` or a config dict with ``model_type`` (random
            weights, ``AutoModel.from_config``). Any dual encoder
            :class:`~fairvlm_lightning.encoders.DualEncoder` accepts (CLIP, SigLIP, ...). An
            instance is recorded in the hyper-parameters as its config dict, a relative folder as
            its absolute path, so ``load_from_checkpoint`` rebuilds it (pass ``model=`` there for
            a model without a Hugging Face config).
        encoder: how the dual encoder is built from ``model``, an
            :class:`~fairvlm_lightning.encoders.EncoderSpec` (tokenizer, loss kind ``"auto"`` /
            ``"clip"`` / ``"siglip"``, logit-scale cap, negatives gathered under DDP, PEFT
            adapters, ``from_pretrained`` options) or a dict of its arguments; default
            ``EncoderSpec()``. Recorded as plain values, so ``load_from_checkpoint`` rebuilds
            the PEFT wrapping.
        fairness: the fairness term, a
            :class:`~fairvlm_lightning.sinkhorn.SinkhornFairnessLoss` (YAML: a ``class_path``
            block), or ``None`` (default) for none.
        fairness_weight: :math:`\lambda` ≥ 0 beside the term; default 1 with a term (0
            switches it off). A positive weight without a term is an error.
        fairness_attributes: batch keys of the protected attributes the term spans (values are
            group ids, ``-1`` = unknown and left out); for an attribute of the metrics'
            ``attributes`` an id outside ``0..n-1`` stops the training step with an error naming it.
        fairness_statistic: ``"loss"`` (per-pair contrastive loss, the paper) or
            ``"similarity"`` (matched-pair cosine similarity, as FairCLIP).
        zero_shot: the class prompts and their token length
            (:class:`~fairvlm_lightning.zeroshot.ZeroShotPrompts`); default the paper's two
            prompts, padded to 64 tokens. The ``fairvlm`` command links its ``max_length`` to the
            data module's.
        metrics: keyword arguments of :class:`~fairvlm_lightning.metrics.FairnessMetrics` for
            validation and test: ``attributes`` (attribute → number of groups; default the four
            FairVLMed attributes ``{"race": 3, "gender": 2, "ethnicity": 2, "language": 3}``),
            ``threshold``, ``alpha``, ``bootstrap``, ``ci``, ...
        optimizer: a callable ``params -> Optimizer`` (in YAML, a ``class_path``/``init_args``
            block); default AdamW, lr 1e-5, weight decay 0.01.
        scheduler: optional callable ``optimizer -> LRScheduler``.
        scheduler_config: Lightning's scheduler settings: ``interval`` (``"epoch"``, default,
            or ``"step"``), ``frequency``, ``monitor`` (the metric a ``ReduceLROnPlateau``
            watches, default ``"val/loss"``), ``name``, ``strict``.
        nonfinite_loss: what a training step with a non-finite (NaN or infinite) per-pair loss
            does: ``"raise"`` (default) stops with a ``FloatingPointError`` naming the batch's
            dataset indices (and those whose pixels or embeddings are non-finite);
            ``"skip"`` warns the same and skips the step (no backward, no optimiser step, the
            pairs are not recorded by DBPM). Under DDP all ranks stop or skip together.

    Raises:
        ValueError: bad ``fairness_statistic``, ``fairness_weight``, ``scheduler_config``,
            encoder options, prompts or metrics.
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
        >>> module = FairVLMModule(config, fairness=SinkhornFairnessLoss(), fairness_weight=0.5,
        ...                        fairness_attributes=("race",))
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
        encoder: EncoderSpec | dict[str, Any] | None = None,
        fairness: SinkhornFairnessLoss | dict[str, Any] | None = None,
        fairness_weight: float | None = None,
        fairness_attributes: Sequence[str] = DEFAULT_FAIRNESS_ATTRIBUTES,
        fairness_statistic: Literal["loss", "similarity"] = "loss",
        zero_shot: ZeroShotPrompts = ZeroShotPrompts(),  # noqa: B008 - frozen, shared safely
        metrics: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_config: dict[str, Any] | None = None,
        nonfinite_loss: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        scheduler_config = _check_init_args(
            nonfinite_loss=nonfinite_loss,
            fairness_statistic=fairness_statistic,
            fairness_attributes=fairness_attributes,
            scheduler_config=scheduler_config,
        )
        spec = EncoderSpec.from_value(encoder)
        fairness = _fairness_term(fairness)
        fairness_weight = _fairness_weight(fairness_weight, fairness)
        zero_shot = ZeroShotPrompts.from_value(zero_shot)
        metrics = _with_task(_check_metrics(metrics), zero_shot)
        built = spec.build(model)
        # Hyper-parameters: plain values only (checkpoints load with ``weights_only=True``);
        # each component is recorded as the plain values that rebuild it.
        self.save_hyperparameters(
            {
                "model": model_record(model, built.encoder.model),
                "encoder": built.record,
                "fairness": _fairness_record(fairness),
                "fairness_weight": fairness_weight,
                "fairness_attributes": list(fairness_attributes),
                "fairness_statistic": fairness_statistic,
                "zero_shot": zero_shot.to_dict(),
                "metrics": metrics,
                "scheduler_config": scheduler_config,
                "nonfinite_loss": nonfinite_loss,
            }
        )
        self.encoder = built.encoder
        self.tokenizer = built.tokenizer
        self.encoder_spec = spec
        self.peft_config = built.peft
        self.gather_distributed = spec.gather_distributed
        self.nonfinite_loss = nonfinite_loss
        self.fairness = fairness
        self.fairness_weight = fairness_weight
        self.fairness_attributes = tuple(fairness_attributes)
        self.fairness_statistic = fairness_statistic
        self.zero_shot = zero_shot
        self.metric_attributes: dict[str, int] = dict(metrics["attributes"])
        self.val_metrics = FairnessMetrics(**metrics)
        self.test_metrics = FairnessMetrics(**metrics)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_config = scheduler_config
        self._prompt_embeds: Tensor | None = None
        self._pair_weight_provider: PairWeightProvider | None = None

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
        return {c: list(t) for c, t in enumerate(self.zero_shot.class_prompts)}

    @property
    def prompt_max_length(self) -> int:
        """Token length the prompts are padded to (``zero_shot.max_length``)."""
        return self.zero_shot.max_length

    @property
    def fairness_active(self) -> bool:
        """Whether training adds the fairness term (a term and a weight > 0)."""
        return self.fairness is not None and self.fairness_weight > 0

    # ------------------------------------------------------------------ pair weights

    @property
    def pair_weight_provider(self) -> PairWeightProvider | None:
        """The registered ``(index, losses) -> weights`` function, or ``None``."""
        return self._pair_weight_provider

    def set_pair_weight_provider(self, provider: PairWeightProvider | None) -> None:
        """Register (or with ``None`` remove) the function that weights each pair's loss.

        :class:`~fairvlm_lightning.callbacks.DynamicBadPairMining` registers its
        ``pair_weights`` at ``on_train_start`` and removes it at the end of fit; any callback
        or user code can do the same. The provider gets the batch's dataset indices and the
        detached raw per-pair losses and returns ``(B,)`` weights.

        """
        if provider is not None and not callable(provider):
            raise TypeError(f"provider must be callable or None, got {type(provider).__name__}")
        self._pair_weight_provider = provider

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
        """Weights of the batch's pairs from the registered provider (ones without one)."""
        provider = self._pair_weight_provider
        if provider is None:
            return torch.ones_like(losses)
        return provider(index, losses.detach()).to(losses)

    @torch.no_grad()
    def encode_prompts(self) -> Tensor:
        """Encode the class prompts: ``(C, D)`` L2-normalised, prompt lists averaged.

        Raises:
            RuntimeError: no tokenizer (give ``EncoderSpec(tokenizer=...)`` when the model is
                an instance or a config).
        """
        if self.tokenizer is None:
            raise RuntimeError(
                "zero-shot evaluation needs a tokenizer for the prompts: pass "
                "EncoderSpec(model, tokenizer=...) (a name, folder or instance) when the model "
                "is not a name or folder"
            )
        return self.zero_shot.encode(self.encoder, self.tokenizer, self.device)

    def zero_shot_logits(self, image_embeds: Tensor) -> Tensor:
        """Scaled similarities ``(B, C)`` of L2-normalised image embeddings to the prompts."""
        if self._prompt_embeds is None or self._prompt_embeds.device != image_embeds.device:
            self._prompt_embeds = self.encode_prompts()
        return self.zero_shot.logits(self.encoder, image_embeds, self._prompt_embeds)

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
        if self.fairness_active:
            needed += list(self.fairness_attributes)
        self._require(batch, needed, "training")
        if self.fairness_active:
            self._check_group_ids(batch)
        out = self.encoder(batch["pixel_values"], batch["input_ids"], batch.get("attention_mask"))
        losses = self._pair_losses(out)
        if self._skip_nonfinite_step(losses, batch, out):
            return None
        contrastive, logs = self._contrastive_part(out, losses, batch["index"])
        total = contrastive
        if self.fairness_active:
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
            f"range 0..{n - 1} (metrics['attributes'] declares {n} groups for {attr!r}; -1 = "
            "unknown). Fix the data's group coding, or declare the right count in "
            "metrics['attributes']."
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
        assert self.fairness is not None  # fairness_active
        with torch.autocast(device_type=statistic.device.type, enabled=False):
            fair, terms = self.fairness(statistic.float(), groups, return_terms=True)
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
        preds = self.zero_shot.predict(self.zero_shot_logits(image_embeds))
        metrics.update(preds, batch["label"], groups)
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
            ``probs``: ``(B, C)`` class probabilities (binary and multiclass) or ``(B, L)``
            P(positive) per label (multilabel); ``score`` ``(B,)`` = P(y=1) (binary only);
            ``image_embeds`` ``(B, D)``, ``text_embeds`` when the batch has ``input_ids``, and
            ``index``, ``label`` and the metric attributes passed through when present.
        """
        self._require(batch, ["pixel_values"], "predict")
        image_embeds = self.encoder.encode_image(batch["pixel_values"])
        logits = self.zero_shot_logits(image_embeds)
        out = {"image_embeds": image_embeds.float()}
        if self.zero_shot.task == "binary":
            probs = logits.softmax(dim=-1)
            out.update(probs=probs, score=probs[:, 1])
        else:
            out["probs"] = self.zero_shot.predict(logits)
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
        config: dict[str, Any] = {"scheduler": scheduler, **self.scheduler_config}
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config.pop("monitor", None)
        return {"optimizer": optimizer, "lr_scheduler": config}
