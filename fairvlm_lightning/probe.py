"""Linear probing of frozen dual-encoder features, with the fairness report of the probe.

FairCLIP, FairMedFM and the paper report fairness not only zero-shot but also for a logistic
regression trained on frozen features ("linear probing"). This module does that in torch:

* :func:`extract_features` encodes a data loader once (no gradient, eval mode, batched; the
  encoder's train/eval mode is restored after), optionally caching the result on disk keyed by a
  fingerprint of the encoder's weights;
* :func:`fit_logistic_regression` minimises the mean (optionally class-weighted) cross-entropy +
  ``weight_decay / 2 * ||w||²`` (bias not penalised) by full-batch L-BFGS in float64, the
  objective of scikit-learn's ``LogisticRegression(C=1 / (n * weight_decay))``, or by AdamW;
* :func:`linear_probe` standardises features with the training split's statistics, picks the
  weight decay with the best validation AUC, refits and returns
  :class:`~fairvlm_lightning.metrics.FairnessMetrics` of the test split;
* :class:`LinearProbeEvaluation` is a Lightning callback that runs the probe on the trainer's
  datamodule after ``fit`` or every ``every_n_epochs`` epochs and logs ``probe/...``.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(200, 5, generator=g)
    >>> y = (x[:, 0] + 0.3 * torch.randn(200, generator=g) > 0).long()
    >>> head = fit_logistic_regression(x, y, weight_decay=1e-3)
    >>> acc = ((head.predict_proba(x) > 0.5).long() == y).float().mean()
    >>> bool(acc > 0.9)
    True
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from fairvlm_lightning.metrics import FairnessMetrics
from fairvlm_lightning.metrics.functional import binary_auroc

__all__ = [
    "DEFAULT_WEIGHT_DECAYS",
    "LinearProbeEvaluation",
    "LogisticHead",
    "ProbeFeatures",
    "extract_features",
    "fit_logistic_regression",
    "linear_probe",
    "probe_datamodule",
]

#: Weight-decay grid searched on the validation split (mean-loss scale; sklearn C = 1/(n·wd)).
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

FeatureKind = Literal["image", "image_text"]


@dataclass
class ProbeFeatures:
    """Frozen features of one split with what the probe and the fairness report need.

    Attributes:
        features: ``(N, D)`` float32 features (L2-normalised embeddings; for ``"image_text"`` the
            image and the sample's own text embedding concatenated, ``D = 2 * dim``).
        labels: ``(N,)`` long binary labels.
        groups: attribute → ``(N,)`` long group ids (``-1`` = unknown).
        index: ``(N,)`` long sample positions in their dataset (``arange`` when batches have
            no ``index``).
    """

    features: Tensor
    labels: Tensor
    groups: dict[str, Tensor]
    index: Tensor

    def as_dict(self) -> dict[str, Any]:
        """Plain tensors (what the cache file holds; loadable with ``weights_only=True``)."""
        return {
            "features": self.features,
            "labels": self.labels,
            "groups": dict(self.groups),
            "index": self.index,
        }


def _encoder(model: Any) -> Any:
    """The object with ``encode_image`` / ``encode_text``: a DualEncoder or a module holding one."""
    for candidate in (model, getattr(model, "encoder", None)):
        if candidate is not None and callable(getattr(candidate, "encode_image", None)):
            return candidate
    raise TypeError(
        "linear probing needs a dual encoder with encode_image/encode_text (a "
        "fairvlm_lightning.DualEncoder or a FairVLMModule), got "
        f"{type(model).__name__}"
    )


def _fingerprint(module: torch.nn.Module) -> str:
    """Cheap content hash of a module's weights (names, shapes, sum and abs-sum per tensor)."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not isinstance(t, Tensor) or not t.is_floating_point():
                continue
            d = t.detach().double()
            h.update(
                f"{name}{tuple(t.shape)}{d.sum().item():.12e}{d.abs().sum().item():.12e}".encode()
            )
    return h.hexdigest()[:16]


def _load_cached(path: Path, key: str) -> ProbeFeatures | None:
    """The features stored at ``path`` when they were written under ``key``, else ``None``."""
    if not path.is_file():
        return None
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if stored.get("key") != key:
        return None
    groups = dict(stored["groups"])
    return ProbeFeatures(stored["features"], stored["labels"], groups, stored["index"])


def _device(encoder: Any) -> torch.device:
    """The device of the encoder's first parameter (CPU when it has none)."""
    try:
        return next(encoder.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _embed(encoder: Any, batch: Mapping[str, Any], features: str, device: torch.device) -> Tensor:
    """One batch's image embedding, with its text embedding appended for ``"image_text"``."""
    emb = encoder.encode_image(batch["pixel_values"].to(device)).float()
    if features == "image_text":
        mask = batch.get("attention_mask")
        txt = encoder.encode_text(
            batch["input_ids"].to(device), None if mask is None else mask.to(device)
        ).float()
        emb = torch.cat([emb, txt], dim=-1)
    return emb


@torch.no_grad()
def extract_features(
    model: Any,
    batches: Iterable[Mapping[str, Any]],
    *,
    attributes: Sequence[str] = (),
    features: FeatureKind = "image",
    cache_path: str | os.PathLike[str] | None = None,
    deduplicate: bool = True,
) -> ProbeFeatures:
    """Encode every batch once, without gradient and in eval mode (the mode is restored after).

    Args:
        model: a :class:`~fairvlm_lightning.DualEncoder` or an object with an ``encoder`` one
            (e.g. :class:`~fairvlm_lightning.FairVLMModule`).
        batches: an iterable of batch dicts (``pixel_values``, ``label``, the attributes, and for
            ``"image_text"`` ``input_ids`` / ``attention_mask``; ``index`` when present).
        attributes: batch keys of the protected attributes to keep.
        features: ``"image"`` (image embeddings) or ``"image_text"`` (image and the sample's own
            text embedding concatenated, as the reference code's multimodal probe).
        cache_path: optional ``.pt`` file. When it exists and was written for the same encoder
            weights, feature kind and attributes, it is loaded instead of encoding; otherwise the
            features are computed and written there.
        deduplicate: drop repeated ``index`` values (a sampler drawing with replacement), keeping
            the first.

    Returns:
        :class:`ProbeFeatures` on the CPU.

    Raises:
        ValueError: an unknown ``features`` kind, a batch lacking a needed key, or no samples.
        TypeError: ``model`` is not a dual encoder.
    """
    if features not in ("image", "image_text"):
        raise ValueError(f"features must be 'image' or 'image_text', got {features!r}")
    encoder = _encoder(model)
    attributes = list(attributes)
    key = None
    if cache_path is not None:
        key = f"{_fingerprint(encoder)}|{features}|{','.join(attributes)}"
        cached = _load_cached(Path(cache_path), key)
        if cached is not None:
            return cached
    device = _device(encoder)
    was_training = bool(getattr(encoder, "training", False))
    if hasattr(encoder, "eval"):
        encoder.eval()
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    index: list[Tensor] = []
    groups: dict[str, list[Tensor]] = {a: [] for a in attributes}
    needed = ["pixel_values", "label", *attributes]
    if features == "image_text":
        needed.append("input_ids")
    seen = 0
    try:
        for batch in batches:
            missing = [k for k in needed if k not in batch]
            if missing:
                raise ValueError(f"probe batch lacks key(s) {missing}; it has {sorted(batch)}")
            emb = _embed(encoder, batch, features, device)
            n = emb.shape[0]
            feats.append(emb.cpu())
            labels.append(torch.as_tensor(batch["label"]).long().cpu())
            idx = batch.get("index")
            index.append(
                torch.arange(seen, seen + n) if idx is None else torch.as_tensor(idx).long().cpu()
            )
            seen += n
            for a in attributes:
                groups[a].append(torch.as_tensor(batch[a]).long().cpu())
    finally:
        if hasattr(encoder, "train"):
            encoder.train(was_training)
    if not feats:
        raise ValueError("no batches to extract probe features from")
    out = ProbeFeatures(
        torch.cat(feats),
        torch.cat(labels),
        {a: torch.cat(v) for a, v in groups.items()},
        torch.cat(index),
    )
    if deduplicate:
        order = torch.argsort(out.index, stable=True)
        sorted_idx = out.index[order]
        first = torch.ones_like(sorted_idx, dtype=torch.bool)
        first[1:] = sorted_idx[1:] != sorted_idx[:-1]
        if not bool(first.all()):
            keep = torch.sort(order[first]).values
            out = ProbeFeatures(
                out.features[keep],
                out.labels[keep],
                {a: v[keep] for a, v in out.groups.items()},
                out.index[keep],
            )
    if cache_path is not None:
        path = Path(cache_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"key": key, **out.as_dict()}, tmp)
        os.replace(tmp, path)
    return out


@dataclass
class LogisticHead:
    """A fitted binary logistic regression ``P(y=1|x) = sigmoid(x @ weight + bias)``.

    Attributes:
        weight: ``(D,)`` float64 coefficients.
        bias: 0-d float64 intercept.
        weight_decay: the L2 strength it was fitted with.
    """

    weight: Tensor
    bias: Tensor
    weight_decay: float

    def decision_function(self, x: Tensor) -> Tensor:
        """Logits ``(N,)`` of ``x`` ``(N, D)``."""
        return x.to(self.weight) @ self.weight + self.bias

    def predict_proba(self, x: Tensor) -> Tensor:
        """``P(y=1|x)`` ``(N,)``."""
        return torch.sigmoid(self.decision_function(x))


def _sample_weights(y: Tensor, class_weight: Literal["balanced"] | None) -> Tensor:
    if class_weight is None:
        return torch.ones_like(y, dtype=torch.float64)
    if class_weight != "balanced":
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    counts = torch.bincount(y, minlength=2).double()
    # scikit-learn's "balanced": n / (n_classes * count[c])
    return (y.numel() / (2.0 * counts))[y]


def fit_logistic_regression(
    x: Tensor,
    y: Tensor,
    *,
    weight_decay: float,
    class_weight: Literal["balanced"] | None = None,
    solver: Literal["lbfgs", "adamw"] = "lbfgs",
    max_iter: int = 500,
    tol: float = 1e-10,
    lr: float = 1e-2,
) -> LogisticHead:
    r"""Fit a binary logistic regression on fixed features.

    Minimises :math:`\frac{\sum_i s_i\,\mathrm{CE}_i}{n} + \frac{\lambda}{2}\lVert w\rVert^2`
    (bias not penalised; :math:`s_i` = 1 or scikit-learn's ``"balanced"`` class weights), the
    objective of ``sklearn.linear_model.LogisticRegression(C=1 / (n * weight_decay))``.

    Args:
        x: ``(N, D)`` features.
        y: ``(N,)`` labels in {0, 1}.
        weight_decay: :math:`\lambda` > 0.
        class_weight: ``None`` or ``"balanced"``.
        solver: ``"lbfgs"`` (full batch, float64, strong-Wolfe line search) or ``"adamw"`` (full
            batch AdamW with decoupled weight decay ``weight_decay``, ``max_iter`` steps, ``lr``).
        max_iter: iteration budget.
        tol: L-BFGS gradient / change tolerance.
        lr: AdamW learning rate.

    Returns:
        The fitted :class:`LogisticHead`.

    Raises:
        ValueError: mismatched shapes, non-binary labels, a single class, a bad weight decay or
            solver.
    """
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x must be (N, D) and y (N,) with the same N, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    y = y.long()
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels must be 0 or 1")
    if y.unique().numel() < 2:
        raise ValueError("logistic regression needs both classes in the training labels")
    if not (isinstance(weight_decay, (int, float)) and weight_decay > 0):
        raise ValueError(f"weight_decay must be > 0, got {weight_decay!r}")
    if solver not in ("lbfgs", "adamw"):
        raise ValueError(f"solver must be 'lbfgs' or 'adamw', got {solver!r}")
    xd = x.detach().double().cpu()
    yd = y.double().cpu()
    s = _sample_weights(y.cpu(), class_weight)
    n = xd.shape[0]
    w = torch.zeros(xd.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)

    def data_loss() -> Tensor:
        logits = xd @ w + b
        ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, yd, reduction="none")
        return (s * ce).sum() / n

    with torch.enable_grad():
        if solver == "lbfgs":
            opt = torch.optim.LBFGS(
                [w, b],
                lr=1.0,
                max_iter=max_iter,
                tolerance_grad=tol,
                tolerance_change=tol * 1e-2,
                history_size=20,
                line_search_fn="strong_wolfe",
            )

            def closure() -> Tensor:
                opt.zero_grad()
                loss = data_loss() + 0.5 * weight_decay * (w * w).sum()
                loss.backward()
                return loss

            opt.step(closure)
        else:
            adam = torch.optim.AdamW([w, b], lr=lr, weight_decay=0.0)
            for _ in range(max_iter):
                adam.zero_grad()
                loss = data_loss() + 0.5 * weight_decay * (w * w).sum()
                loss.backward()
                adam.step()
    return LogisticHead(w.detach(), b.detach(), float(weight_decay))


def linear_probe(
    train: ProbeFeatures,
    val: ProbeFeatures,
    test: ProbeFeatures,
    attributes: Mapping[str, int],
    *,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    class_weight: Literal["balanced"] | None = None,
    solver: Literal["lbfgs", "adamw"] = "lbfgs",
    standardize: bool = True,
    metric_kwargs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Tensor], LogisticHead]:
    """Train the probe on ``train``, choose the weight decay on ``val``, report on ``test``.

    Every weight decay of ``weight_decays`` is fitted on the training features; the one with the
    highest validation AUC wins (ties: the larger, more regularised one); its head scores the
    test split, and :class:`~fairvlm_lightning.metrics.FairnessMetrics` of those scores is
    returned together with ``val_auc`` and ``weight_decay``.

    Args:
        train: training features.
        val: validation features (model selection only).
        test: test features (reported).
        attributes: attribute → number of groups for the fairness report.
        weight_decays: the grid (each > 0).
        class_weight: ``None`` or ``"balanced"``.
        solver: ``"lbfgs"`` or ``"adamw"`` (see :func:`fit_logistic_regression`).
        standardize: z-score features with the training mean/std first.
        metric_kwargs: extra ``FairnessMetrics`` keyword arguments.

    Returns:
        ``(metrics, head)``: the flat metric dict (``auc``, ``race/es_auc``, ...,
        ``val_auc``, ``weight_decay``) and the chosen head (on the standardised features).

    Raises:
        ValueError: an empty weight-decay grid or a split lacking an attribute.
    """
    if not weight_decays:
        raise ValueError("weight_decays must hold at least one value")
    for name, split in (("train", train), ("val", val), ("test", test)):
        missing = [a for a in attributes if a not in split.groups]
        if missing:
            raise ValueError(f"{name} probe features lack attribute(s) {missing}")
    if standardize:
        mean = train.features.double().mean(0)
        std = train.features.double().std(0, unbiased=False).clamp_min(1e-12)
    else:
        mean = torch.zeros(train.features.shape[1], dtype=torch.float64)
        std = torch.ones_like(mean)

    def z(f: ProbeFeatures) -> Tensor:
        return (f.features.double() - mean) / std

    xtr, xva, xte = z(train), z(val), z(test)
    best: tuple[float, float, LogisticHead] | None = None
    for wd in sorted(float(v) for v in weight_decays):
        head = fit_logistic_regression(
            xtr, train.labels, weight_decay=wd, class_weight=class_weight, solver=solver
        )
        auc = float(binary_auroc(head.predict_proba(xva), val.labels))
        score = -math.inf if math.isnan(auc) else auc
        if best is None or score >= best[0]:
            best = (score, wd, head)
    assert best is not None
    val_auc, wd, head = best
    metric = FairnessMetrics(dict(attributes), **(metric_kwargs or {}))
    metric.update(
        head.predict_proba(xte).float(), test.labels, {a: test.groups[a] for a in attributes}
    )
    values = dict(metric.compute())
    values["val_auc"] = torch.tensor(val_auc, dtype=torch.float64)
    values["weight_decay"] = torch.tensor(wd, dtype=torch.float64)
    return values, head


def _loader(datamodule: Any, split: str) -> Any:
    fn = getattr(datamodule, f"{split}_dataloader", None)
    if fn is None:
        raise ValueError(f"the datamodule has no {split}_dataloader() for linear probing")
    return fn()


def probe_datamodule(
    model: Any,
    datamodule: Any,
    attributes: Mapping[str, int],
    *,
    features: FeatureKind = "image",
    cache_dir: str | os.PathLike[str] | None = None,
    **probe_kwargs: Any,
) -> tuple[dict[str, Tensor], LogisticHead]:
    """Extract features of a datamodule's train/val/test loaders and run :func:`linear_probe`.

    The training features come from one pass of ``train_dataloader()`` (order does not matter to
    a full-batch fit; samples drawn twice by a sampler with replacement are kept once, by
    ``index``); the datamodule is set up for ``fit`` and ``test`` first when it has ``setup``.

    Args:
        model: a dual encoder or a module with one (``FairVLMModule``).
        datamodule: e.g. :class:`~fairvlm_lightning.FairVLMedDataModule`.
        attributes: attribute → number of groups.
        features: ``"image"`` or ``"image_text"``.
        cache_dir: optional folder for ``{split}_{features}.pt`` feature caches.
        **probe_kwargs: forwarded to :func:`linear_probe`.

    Returns:
        What :func:`linear_probe` returns.
    """
    setup = getattr(datamodule, "setup", None)
    if callable(setup):
        setup("fit")
        setup("test")
    splits = {}
    for split in ("train", "val", "test"):
        cache = None if cache_dir is None else Path(cache_dir) / f"{split}_{features}.pt"
        splits[split] = extract_features(
            model,
            _loader(datamodule, split),
            attributes=list(attributes),
            features=features,
            cache_path=cache,
        )
    return linear_probe(splits["train"], splits["val"], splits["test"], attributes, **probe_kwargs)


class LinearProbeEvaluation(Callback):
    """Run a linear probe of the frozen features on the trainer's datamodule; log ``probe/...``.

    After ``fit`` (``after_fit=True``) and/or every ``every_n_epochs`` training epochs, the
    module's encoder (``pl_module.encoder`` or the module itself, anything with
    ``encode_image``) encodes the datamodule's train, validation and test loaders once, a
    logistic regression is fitted on the training features with the weight decay chosen on
    validation (:func:`linear_probe`), and the test split's
    :class:`~fairvlm_lightning.metrics.FairnessMetrics` are logged as ``probe/auc``,
    ``probe/race/es_auc``, ... (plus ``probe/val_auc`` and ``probe/weight_decay``). The encoder's
    weights are not changed. Each process probes the full splits, so all ranks agree.

    Args:
        every_n_epochs: probe at the end of every n-th training epoch (``None``: never).
        after_fit: probe once when ``fit`` ends.
        features: ``"image"`` or ``"image_text"``.
        attributes: attribute → number of groups; default the module's ``metric_attributes``.
        weight_decays: the validation grid.
        class_weight: ``None`` or ``"balanced"``.
        solver: ``"lbfgs"`` or ``"adamw"``.
        cache_dir: optional feature cache folder (keyed by the encoder's weights, so a cache
            from older weights is recomputed).

    Example:
        >>> cb = LinearProbeEvaluation(every_n_epochs=2, features="image_text")
        >>> cb.every_n_epochs, cb.after_fit, cb.results
        (2, True, {})
    """

    def __init__(
        self,
        every_n_epochs: int | None = None,
        after_fit: bool = True,
        features: FeatureKind = "image",
        attributes: dict[str, int] | None = None,
        weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
        class_weight: Literal["balanced"] | None = None,
        solver: Literal["lbfgs", "adamw"] = "lbfgs",
        cache_dir: str | None = None,
    ) -> None:
        if every_n_epochs is not None and (
            not isinstance(every_n_epochs, int) or every_n_epochs < 1
        ):
            raise ValueError(
                f"every_n_epochs must be a positive int or None, got {every_n_epochs!r}"
            )
        if features not in ("image", "image_text"):
            raise ValueError(f"features must be 'image' or 'image_text', got {features!r}")
        self.every_n_epochs = every_n_epochs
        self.after_fit = after_fit
        self.features: FeatureKind = features
        self.attributes = None if attributes is None else dict(attributes)
        self.weight_decays = tuple(weight_decays)
        self.class_weight = class_weight
        self.solver = solver
        self.cache_dir = cache_dir
        #: the last probe's values, keyed ``probe/...`` (floats).
        self.results: dict[str, float] = {}

    def _attributes(self, pl_module: Any) -> dict[str, int]:
        if self.attributes is not None:
            return self.attributes
        found = getattr(pl_module, "metric_attributes", None)
        if not isinstance(found, Mapping):
            raise ValueError(
                "LinearProbeEvaluation needs attributes= when the module has no metric_attributes"
            )
        return dict(found)

    def run(self, trainer: pl.Trainer, pl_module: Any) -> dict[str, Tensor]:
        """Probe now on ``trainer.datamodule``; returns the values keyed ``probe/...``."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError(
                "LinearProbeEvaluation needs a datamodule on the trainer (trainer.fit(model, "
                "datamodule=...))"
            )
        values, _ = probe_datamodule(
            pl_module,
            datamodule,
            self._attributes(pl_module),
            features=self.features,
            cache_dir=self.cache_dir,
            weight_decays=self.weight_decays,
            class_weight=self.class_weight,
            solver=self.solver,
        )
        out = {f"probe/{k}": v.float() for k, v in values.items()}
        self.results = {k: float(v) for k, v in out.items()}
        return out

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Probe every ``every_n_epochs`` epochs and log through the module."""
        if self.every_n_epochs is None or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if trainer.sanity_checking:
            return
        pl_module.log_dict(self.run(trainer, pl_module), on_step=False, on_epoch=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Probe once after training; values go to the loggers and ``trainer.callback_metrics``."""
        if not self.after_fit or trainer.interrupted:
            return
        out = self.run(trainer, pl_module)
        trainer.callback_metrics.update(out)
        for logger in trainer.loggers:
            logger.log_metrics({k: float(v) for k, v in out.items()}, step=trainer.global_step)
            logger.save()

    def state_dict(self) -> dict[str, Any]:
        """The last results (plain floats)."""
        return {"results": dict(self.results)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the last results."""
        self.results = dict(state_dict.get("results", {}))
