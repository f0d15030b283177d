"""Lightning callback for Dynamic Bad Pair Mining, usable with any ``LightningModule``.

The contract with the module is small. Its ``training_step`` computes one raw loss per pair,
asks the callback for weights before reducing, and returns the raw losses and the dataset
indices; the callback records them in ``on_train_batch_end`` and folds the epoch in
``on_train_epoch_end``:

    >>> import lightning as L
    >>> import torch
    >>> from fairvlm_lightning.callbacks import DynamicBadPairMining, find_bad_pair_mining
    >>> class Regressor(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Linear(4, 1)
    ...
    ...     def training_step(self, batch, batch_idx):
    ...         losses = (self.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2  # (B,) raw
    ...         dbpm = find_bad_pair_mining(self.trainer)
    ...         weights = dbpm.pair_weights(batch["index"], losses) if dbpm else 1.0
    ...         loss = (weights * losses).mean()
    ...         return {"loss": loss, "pair_losses": losses.detach(), "index": batch["index"]}
    ...
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.05)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(64, 4, generator=g)
    >>> y = x.sum(1) + 0.1 * torch.randn(64, generator=g)
    >>> y[:2] += 30.0  # two mismatched pairs
    >>> data = [{"x": x[i], "y": y[i], "index": i} for i in range(64)]
    >>> dbpm = DynamicBadPairMining(warmup_epochs=1)  # num_pairs = len(dataset)
    >>> trainer = L.Trainer(max_epochs=2, callbacks=[dbpm], logger=False,
    ...                     enable_checkpointing=False, enable_progress_bar=False,
    ...                     enable_model_summary=False)
    >>> trainer.fit(Regressor(), torch.utils.data.DataLoader(data, batch_size=16))
    >>> dbpm.miner.faulty_mask.nonzero().flatten().tolist()
    [0, 1]

Resuming is exact when the training loader's order is a function of ``(seed, epoch)``: a sampler
with ``set_epoch`` (``fairvlm_lightning.data.EpochShuffleSampler``, or ``DistributedSampler``
under DDP). A loader with ``shuffle=True`` draws its order from the global RNG, which Lightning
does not checkpoint, so after a resume pairs are seen in another order than in an uninterrupted
run (history and flags still mean the same, but the run is no longer bit-identical).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import Strategy
from torch import Tensor

from fairvlm_lightning.mining import BadPairMiner, MinerSpec
from fairvlm_lightning.mining.miner import check_num_pairs
from fairvlm_lightning.mining.scoring import export_flagged, group_flag_metrics, truth_metrics
from fairvlm_lightning.validation import check_integer_ids

__all__ = ["DynamicBadPairMining", "find_bad_pair_mining"]

_STATE_VERSION = 2
_OWN_ARGS = (
    "num_pairs",
    "truth_key",
    "group_keys",
    "export_dir",
    "prefix",
    "reset_on_mismatch",
)


class DynamicBadPairMining(Callback):
    """Dynamic Bad Pair Mining for any ``Trainer``: records per-pair losses, flags bad pairs.

    The module's ``training_step`` must (1) call :meth:`pair_weights` and multiply its (B,) raw
    per-pair losses by the weights before reducing (the module can find the callback with
    :func:`find_bad_pair_mining`, or define ``set_pair_weight_provider(fn)`` and
    ``pair_weight_provider``: the callback then registers :meth:`pair_weights` there at
    ``on_train_start`` and removes it at the end of fit), and (2) return ``{"loss": ...,
    "pair_losses": <(B,) raw losses, detached>, "index": batch["index"]}`` (``index`` may be
    omitted when the batch is a mapping with an ``"index"`` entry). Returning ``None`` skips the
    batch, as in Lightning. See the module docstring for a complete 15-line example.

    The rule is a :class:`~fairvlm_lightning.mining.MinerSpec` (statistic, rule, scope,
    warm-up; the paper's by default); the miner is built from it at fit start with
    ``num_pairs`` = the training set's size. In a LightningCLI YAML::

        - class_path: fairvlm_lightning.callbacks.DynamicBadPairMining
          init_args:
            miner:
              class_path: fairvlm_lightning.mining.MinerSpec
              init_args:
                warmup_epochs: 2
                statistic: {class_path: fairvlm_lightning.mining.EmaLoss}
                rule:
                  class_path: fairvlm_lightning.mining.GaussianMixtureRule
                  init_args: {weighting: posterior}
                scope: {class_path: fairvlm_lightning.mining.Scope, init_args: {attributes: [race]}}
            group_keys: [race]

    Each epoch the callback logs (``prefix`` ``"dbpm"``): ``dbpm/mu``, ``dbpm/sigma``,
    ``dbpm/threshold_noisy``, ``dbpm/threshold_faulty``, ``dbpm/num_noisy``,
    ``dbpm/num_faulty``, ``dbpm/num_with_history``, ``dbpm/num_nonfinite``, and for each key
    ``a`` in ``group_keys`` and each group ``g`` among the pairs with history
    ``dbpm/{a}/flagged_count_group_{g}`` and ``dbpm/{a}/flagged_rate_group_{g}`` (flagged
    pairs of the group / pairs of the group with history; ``g`` is ``unknown`` for -1). These
    are the flags for the *next* epoch. To know each pair's group the callback stores, per key
    of ``group_keys`` and of the scope, the last value seen in a batch: one int8 per pair
    (values must lie in [-1, 127]). With a scope of one attribute ``a`` it also logs, per
    group, ``dbpm/{a}/threshold_faulty_group_{g}`` (threshold rule: the group's own threshold,
    or the global one it falls back to) or ``dbpm/{a}/weight_bad_group_{g}`` (mixture rule:
    the weight of the bad component of the group's fit).

    With ``truth_key`` (e.g. ``"is_bad_pair"`` on the synthetic twin: a (B,) bool/0-1 batch
    entry that says which pairs are truly bad) it also stores one int8 per pair and logs
    (:func:`~fairvlm_lightning.mining.scoring.truth_metrics`), for the *faulty* flags:
    ``dbpm/num_bad``, ``dbpm/num_flagged_bad``, ``dbpm/precision``, ``dbpm/recall``,
    ``dbpm/clean_flag_rate``, ``dbpm/auroc`` (the statistic separating truly bad from clean
    pairs), and per group of each key in ``group_keys``: ``dbpm/{a}/precision_group_{g}``,
    ``dbpm/{a}/recall_group_{g}``, ``dbpm/{a}/clean_flag_rate_group_{g}`` and
    ``dbpm/{a}/auroc_group_{g}``. Only pairs with history count; NaN where a ratio has no
    denominator or a class is missing.

    With ``export_dir``, rank 0 writes ``dbpm_flagged_epoch_{e:04d}.csv`` after epoch ``e``:
    one row per flagged pair with ``index``, ``history_mean``, ``num_epochs``, ``flag``
    (``noisy``/``faulty``) and one column per group key.

    Resume safety: at fit start the callback asks the datamodule for ``train_fingerprint()``
    (any datamodule with that method; :class:`~fairvlm_lightning.data.FairVLMedDataModule` has
    one: a hash of which sample each training index means) and keeps it in its checkpoint
    state. Resuming onto a training set whose fingerprint differs (files renamed, added,
    reordered) raises, since each pair's history would be attached to another pair; pass
    ``reset_on_mismatch=True`` to start the memory afresh instead (with a warning).

    Distributed: the current-epoch sums of all ranks are added before the flags are computed and
    before the state is checkpointed, so every rank uses the same flags (only rank 0 writes).
    Gradient accumulation needs nothing special (every batch is recorded); with
    ``limit_train_batches`` the pairs never seen keep no history and are never flagged.

    Args:
        miner: the configured rule (:class:`~fairvlm_lightning.mining.MinerSpec`); ``None``:
            the paper's, or the one the flat ``options`` describe.
        num_pairs: size of the training set; default ``len(trainer.train_dataloader.dataset)``.
        truth_key: batch entry with the ground truth of bad pairs (synthetic data), for the
            precision/recall/AUROC logs; ``None``: none.
        group_keys: batch entries (e.g. ``("race", "gender")``) whose flagged count and rate
            per group are logged and exported.
        export_dir: folder for the per-epoch CSV of flagged pairs (``None``: no export).
        prefix: prefix of the logged metric names.
        reset_on_mismatch: on resume onto a training set with another fingerprint, start the
            memory afresh instead of raising.
        **options: the flat miner options (``warmup_epochs``, ``beta_noisy``,
            ``beta_faulty``, ``weighting``, ``statistic``, ``location``, ``scope``,
            ``min_cell_size``, ``ema_decay``, ``max_weight``), a shorthand for
            ``miner=MinerSpec(**options)``.

    Example:
        >>> from fairvlm_lightning.mining import EmaLoss, MinerSpec, ThresholdRule
        >>> rule = ThresholdRule(beta_noisy=float("inf"), beta_faulty=1.5, weighting="zero")
        >>> cb = DynamicBadPairMining(MinerSpec(statistic=EmaLoss(), rule=rule))
        >>> cb.spec.rule.beta_faulty, cb.miner is None  # built at fit start
        (1.5, True)
    """

    def __init__(
        self,
        miner: MinerSpec | None = None,
        *,
        num_pairs: int | None = None,
        truth_key: str | None = None,
        group_keys: Sequence[str] = (),
        export_dir: str | os.PathLike[str] | None = None,
        prefix: str = "dbpm",
        reset_on_mismatch: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        if miner is not None and options:
            raise ValueError(
                f"DynamicBadPairMining: give either miner=MinerSpec(...) or the flat options "
                f"{sorted(options)}, not both"
            )
        if miner is None:
            miner = MinerSpec.from_options(options)
        elif not isinstance(miner, MinerSpec):
            raise TypeError(
                f"DynamicBadPairMining: miner must be a MinerSpec, got {type(miner).__name__}"
            )
        if num_pairs is not None:
            num_pairs = check_num_pairs(num_pairs)
        if truth_key is not None and not isinstance(truth_key, str):
            raise TypeError(f"truth_key must be a string or None, got {truth_key!r}")
        if isinstance(group_keys, str):
            group_keys = (group_keys,)
        group_keys = tuple(group_keys)
        for key in group_keys:
            if not isinstance(key, str):
                raise TypeError(f"group_keys must be strings, got {key!r}")
        if len(set(group_keys)) != len(group_keys):
            raise ValueError(f"group_keys has duplicates: {group_keys}")
        self.spec: MinerSpec = miner
        self.num_pairs = num_pairs
        self.truth_key = truth_key
        self.group_keys = group_keys
        self.truth: Tensor | None = None
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self.prefix = prefix
        self.reset_on_mismatch = bool(reset_on_mismatch)
        self.miner: BadPairMiner | None = None
        self.group_values: dict[str, Tensor] = {}
        self.last_metrics: dict[str, float] = {}
        #: the datamodule's ``train_fingerprint()`` this memory belongs to (``None``: unknown)
        self.data_fingerprint: str | None = None
        self._loaded_fingerprint: str | None = None
        self._pending_state: dict[str, Any] | None = None
        self._last_folded_epoch = -1
        self._recorded_epoch = -1
        self._strategy: Strategy | None = None  # the running trainer's, for cross-rank sums

    @classmethod
    def paper(cls, **kwargs: Any) -> DynamicBadPairMining:
        """The paper's rule exactly (:data:`~fairvlm_lightning.mining.PAPER_SETTINGS`).

        Global mean/std thresholds on the history mean, beta = 3/3, ``"gaussian_pdf"`` weights
        without a cap, warm-up 1; ``kwargs`` add logging (``group_keys``, ``truth_key``, ...) or
        override a flat miner option explicitly.

        Example:
            >>> cb = DynamicBadPairMining.paper(group_keys=["race"])
            >>> cb.spec.scope.attributes, cb.spec.statistic, cb.spec.rule.beta_faulty
            ((), MeanLoss(), 3.0)
        """
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in _OWN_ARGS}
        return cls(MinerSpec.paper(**kwargs), **own)

    @property
    def scope(self) -> tuple[str, ...]:
        """The attributes of the miner's scope (``()``: global)."""
        return self.spec.scope.attributes

    def _stored_keys(self) -> tuple[str, ...]:
        return self.group_keys + tuple(k for k in self.scope if k not in self.group_keys)

    # ------------------------------------------------------------------ miner construction
    def _build(self, num_pairs: int, device: torch.device | str = "cpu") -> None:
        self.miner = self.spec.build(num_pairs, device=device)
        self.group_values = {
            key: torch.full((num_pairs,), -1, dtype=torch.int8, device=device)
            for key in self._stored_keys()
        }
        self.truth = None
        if self.truth_key is not None:
            self.truth = torch.full((num_pairs,), -1, dtype=torch.int8, device=device)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._apply_state(state)

    def _infer_num_pairs(self, trainer: pl.Trainer) -> int:
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        try:
            return len(dataset)  # type: ignore[arg-type]
        except TypeError:
            if self._pending_state is not None:
                return int(self._pending_state["miner"]["num_pairs"])
            raise ValueError(
                "DynamicBadPairMining could not infer num_pairs: the training loader "
                f"({type(loader).__name__}) has no dataset with a length; pass "
                "DynamicBadPairMining(num_pairs=<size of the training set>)"
            ) from None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build the miner when ``num_pairs`` is given (so a checkpoint can be applied at once)."""
        self._strategy = getattr(trainer, "strategy", None)
        if stage == "fit" and self.miner is None and self.num_pairs is not None:
            self._build(self.num_pairs)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the miner (from the dataset length if needed), check the data fingerprint.

        Then move the state to the module's device and, when the module has
        ``set_pair_weight_provider`` (:class:`~fairvlm_lightning.FairVLMModule` does), register
        :meth:`pair_weights` there; it is removed again at the end of fit.
        """
        self._strategy = getattr(trainer, "strategy", None)
        if self.miner is None:
            self._build(self._infer_num_pairs(trainer))
        assert self.miner is not None
        resuming = getattr(trainer, "ckpt_path", None) is not None
        if not resuming and self._last_folded_epoch >= trainer.current_epoch:
            # the callback is reused by a new fit that did not resume: its epochs count anew
            self._last_folded_epoch = trainer.current_epoch - 1
            self._recorded_epoch = min(self._recorded_epoch, self._last_folded_epoch)
        self._check_fingerprint(trainer)
        device = pl_module.device
        self.miner.to(device)
        self.group_values = {k: v.to(device) for k, v in self.group_values.items()}
        if self.truth is not None:
            self.truth = self.truth.to(device)
        find_bad_pair_mining(trainer)  # raises when the trainer has two such callbacks
        register = getattr(pl_module, "set_pair_weight_provider", None)
        if callable(register):
            register(self.pair_weights)

    def _unregister(self, pl_module: pl.LightningModule) -> None:
        """Remove this callback's weights from the module (if they are still registered)."""
        register = getattr(pl_module, "set_pair_weight_provider", None)
        if callable(register) and getattr(pl_module, "pair_weight_provider", None) == (
            self.pair_weights
        ):
            register(None)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the weights registered at ``on_train_start``."""
        self._unregister(pl_module)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Remove the registered weights when fit stops with an exception."""
        self._unregister(pl_module)

    @staticmethod
    def _train_fingerprint(trainer: pl.Trainer) -> str | None:
        """The datamodule's ``train_fingerprint()``, or ``None`` if it has none."""
        datamodule = getattr(trainer, "datamodule", None)
        method = getattr(datamodule, "train_fingerprint", None)
        if not callable(method):
            return None
        value = method()
        return None if value is None else str(value)

    def _check_fingerprint(self, trainer: pl.Trainer) -> None:
        """Refuse (or, with ``reset_on_mismatch``, drop) a memory saved for other data."""
        assert self.miner is not None
        current = self._train_fingerprint(trainer)
        saved, self._loaded_fingerprint = self._loaded_fingerprint, None
        if saved is not None and current is not None and saved != current:
            message = (
                "DynamicBadPairMining: the checkpoint's DBPM memory was recorded on another "
                f"training set (train_fingerprint {saved[:12]}... in the checkpoint, "
                f"{current[:12]}... now: the training files were renamed, added, removed or "
                "reordered), so each pair's loss history would be applied to another pair."
            )
            if not self.reset_on_mismatch:
                raise ValueError(
                    message + " Resume onto the same files, or start the memory afresh with "
                    "DynamicBadPairMining(reset_on_mismatch=True) (YAML: "
                    "init_args.reset_on_mismatch: true)."
                )
            warnings.warn(
                message + " Starting the memory afresh (reset_on_mismatch=True).",
                RuntimeWarning,
                stacklevel=2,
            )
            self._pending_state = None
            self._build(self.miner.num_pairs)
            self._last_folded_epoch = self._recorded_epoch = trainer.current_epoch - 1
        if current is not None:
            self.data_fingerprint = current

    # ------------------------------------------------------------------ module-facing API
    def pair_weights(self, index: Tensor, losses: Tensor) -> Tensor:
        """(B,) detached weights for this step's raw per-pair ``losses`` (1 for unflagged).

        Before the miner exists (nothing recorded yet) every weight is 1.
        """
        if self.miner is None:
            if not isinstance(losses, Tensor) or not losses.is_floating_point():
                raise TypeError("pair_weights: losses must be a floating-point torch.Tensor")
            return torch.ones_like(losses.detach())
        return self.miner.weights(index, losses)

    # ------------------------------------------------------------------ recording
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Record the step's raw per-pair losses (and group values) by dataset index."""
        if outputs is None:
            return
        if not isinstance(outputs, Mapping):
            raise ValueError(
                "DynamicBadPairMining: training_step must return a dict with 'loss', "
                "'pair_losses' (the (B,) raw per-pair losses, detached) and 'index'; got "
                f"{type(outputs).__name__}"
            )
        losses = outputs.get("pair_losses")
        if losses is None:
            if outputs.get("loss") is None:  # the step was skipped
                return
            raise ValueError(
                "DynamicBadPairMining: training_step output lacks 'pair_losses' (the (B,) raw "
                f"per-pair losses, detached); got keys {sorted(outputs)}"
            )
        index = outputs.get("index")
        if index is None:
            if isinstance(batch, Mapping) and "index" in batch:
                index = batch["index"]
            else:
                raise ValueError(
                    "DynamicBadPairMining: neither the training_step output nor the batch has "
                    "an 'index' entry (the (B,) dataset index of each pair)"
                )
        if not isinstance(index, Tensor):
            raise TypeError(
                f"DynamicBadPairMining: 'index' must be a (B,) integer tensor, got "
                f"{type(index).__name__}"
            )
        assert self.miner is not None, "on_train_start builds the miner"
        groups = {key: _check_group(key, index, batch) for key in self._stored_keys()}
        truth = _check_truth(self.truth_key, index, batch) if self.truth_key is not None else None
        self.miner.record(index, losses)  # validates index and losses before writing
        for key, values in groups.items():
            target = self.group_values[key]
            target[index.to(target.device, torch.long)] = values.to(target.device, torch.int8)
        if truth is not None and self.truth is not None:
            self.truth[index.to(self.truth.device, torch.long)] = truth.to(
                self.truth.device, torch.int8
            )
        self._recorded_epoch = trainer.current_epoch

    # ------------------------------------------------------------------ epoch boundaries
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fold a recorded epoch whose end was checkpointed before it was folded (resume)."""
        if (
            self.miner is not None
            and self._last_folded_epoch < self._recorded_epoch < trainer.current_epoch
        ):
            self._fold(trainer, pl_module, self._recorded_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Sum the epoch over ranks, update history, flags and logs, export flagged pairs."""
        if self.miner is not None and self._last_folded_epoch < trainer.current_epoch:
            self._fold(trainer, pl_module, trainer.current_epoch)

    def _fold(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        assert self.miner is not None
        self._sync_groups()
        self.miner.end_epoch(groups={k: self.group_values[k] for k in self.scope} or None)
        self._last_folded_epoch = epoch
        self.last_metrics = self.epoch_metrics()
        pl_module.log_dict(
            self.last_metrics, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max"
        )
        if self.export_dir is not None and trainer.is_global_zero:
            self.export_flagged(self.export_dir / f"dbpm_flagged_epoch_{epoch:04d}.csv")

    def _sync_groups(self) -> None:
        """Each rank wrote the ids of the pairs it saw (-1 elsewhere): take the max over ranks.

        Through the trainer's strategy, as Lightning's own callbacks reduce across processes
        (nothing to do on one process).
        """
        strategy = self._strategy
        if strategy is None or getattr(strategy, "world_size", 1) <= 1:
            return
        for key, values in self.group_values.items():
            self.group_values[key] = strategy.reduce(values, reduce_op="max")
        if self.truth is not None:
            self.truth = strategy.reduce(self.truth, reduce_op="max")

    def epoch_metrics(self) -> dict[str, float]:
        """The numbers logged after an epoch (see the class docstring for the names)."""
        if self.miner is None:
            return {}
        return _epoch_metrics(
            self.miner, self.scope, self.group_values, self.truth, self.group_keys, self.prefix
        )

    def export_flagged(self, path: str | os.PathLike[str]) -> Path:
        """Write the currently flagged pairs to a CSV file at ``path`` and return the path.

        Columns: ``index``, ``history_mean``, ``num_epochs``, ``flag`` (``noisy``/``faulty``)
        and one column per group key (-1 = unknown); written atomically
        (:func:`~fairvlm_lightning.mining.scoring.export_flagged`).
        """
        if self.miner is None:
            raise RuntimeError("DynamicBadPairMining.export_flagged: the miner is not built yet")
        return export_flagged(
            path,
            self.miner.flags,
            self.miner.history_mean,
            self.miner.history_count,
            self.group_values,
        )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Tensors and Python numbers only (``torch.load(..., weights_only=True)`` works).

        Under DDP this all-reduces the current-epoch sums first, so it must run on every rank
        (Lightning's ``Trainer.save_checkpoint`` does that; only rank 0 writes the file).
        """
        if self.miner is None:
            return dict(self._pending_state) if self._pending_state is not None else {}
        self.miner.sync()
        self._sync_groups()
        return {
            "version": _STATE_VERSION,
            "miner": self.miner.state_dict(),
            "group_values": {
                k: v.detach().to("cpu", copy=True) for k, v in self.group_values.items()
            },
            **({} if self.truth is None else {"truth": self.truth.detach().to("cpu", copy=True)}),
            "last_folded_epoch": self._last_folded_epoch,
            "recorded_epoch": self._recorded_epoch,
            **(
                {}
                if self.data_fingerprint is None
                else {"data_fingerprint": _encode(self.data_fingerprint)}
            ),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, now or, if the miner is not built yet, when it is."""
        if not state_dict:
            return
        if not isinstance(state_dict, Mapping) or "miner" not in state_dict:
            raise ValueError(
                "DynamicBadPairMining state must be a mapping with a 'miner' entry, got "
                f"{sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict)}"
            )
        if self.miner is None:
            self._pending_state = dict(state_dict)
        else:
            self._apply_state(state_dict)

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        assert self.miner is not None
        self.miner.load_state_dict(state["miner"])
        for key, values in state.get("group_values", {}).items():
            if key not in self.group_values:
                continue
            target = self.group_values[key]
            if not isinstance(values, Tensor) or values.shape != target.shape:
                raise ValueError(
                    f"DynamicBadPairMining state: group_values[{key!r}] must have shape "
                    f"{tuple(target.shape)}"
                )
            target.copy_(values)
        truth = state.get("truth")
        if self.truth is not None and isinstance(truth, Tensor):
            if truth.shape != self.truth.shape:
                raise ValueError(
                    f"DynamicBadPairMining state: truth must have shape {tuple(self.truth.shape)}"
                )
            self.truth.copy_(truth)
        self._last_folded_epoch = int(state.get("last_folded_epoch", -1))
        self._recorded_epoch = int(state.get("recorded_epoch", -1))
        fingerprint = _decode(state.get("data_fingerprint"))
        self._loaded_fingerprint = fingerprint
        if fingerprint is not None:
            self.data_fingerprint = fingerprint


def _check_group(key: str, index: Tensor, batch: Any) -> Tensor:
    """``batch[key]``: group ids shaped like ``index``, in [-1, 127]."""
    if not isinstance(batch, Mapping) or key not in batch:
        raise ValueError(f"DynamicBadPairMining: group key {key!r} is not in the batch")
    values = batch[key]
    shape = tuple(index.shape)
    if not isinstance(values, Tensor) or tuple(values.shape) != shape:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"DynamicBadPairMining: batch[{key!r}] must be a tensor of shape {shape} like "
            f"index, got {got}"
        )
    check_integer_ids(values, f"batch[{key!r}]", error=ValueError)
    if values.numel():
        lo, hi = (int(v) for v in torch.aminmax(values))
        if lo < -1 or hi > 127:
            raise ValueError(
                f"DynamicBadPairMining: batch[{key!r}] values must lie in [-1, 127] "
                f"(-1 = unknown), got [{lo}, {hi}]"
            )
    return values


def _check_truth(key: str, index: Tensor, batch: Any) -> Tensor:
    """``batch[key]``: the truly-bad flags (bool or 0/1) shaped like ``index``."""
    if not isinstance(batch, Mapping) or key not in batch:
        raise ValueError(f"DynamicBadPairMining: truth_key {key!r} is not in the batch")
    values = batch[key]
    if not isinstance(values, Tensor) or tuple(values.shape) != tuple(index.shape):
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"DynamicBadPairMining: batch[{key!r}] must be a tensor of shape "
            f"{tuple(index.shape)} like index, got {got}"
        )
    if values.is_floating_point() or values.is_complex():
        raise ValueError(f"batch[{key!r}] must be bool or 0/1 integers, got {values.dtype}")
    if values.numel() and values.dtype != torch.bool:
        lo, hi = (int(v) for v in torch.aminmax(values))
        if lo < 0 or hi > 1:
            raise ValueError(f"batch[{key!r}] must hold 0/1, got values in [{lo}, {hi}]")
    return values


def _epoch_metrics(
    miner: BadPairMiner,
    scope: tuple[str, ...],
    group_values: Mapping[str, Tensor],
    truth: Tensor | None,
    group_keys: Sequence[str],
    p: str,
) -> dict[str, float]:
    """What :meth:`DynamicBadPairMining.epoch_metrics` logs, from the miner's state."""
    s = miner.summary()
    out = {
        f"{p}/{name}": float(s[name])
        for name in (
            "mu",
            "sigma",
            "threshold_noisy",
            "threshold_faulty",
            "num_noisy",
            "num_faulty",
            "num_with_history",
            "num_nonfinite",
        )
    }
    has = miner.has_history
    out.update(group_flag_metrics(miner.flagged_mask, has, group_values, p))
    if len(scope) == 1:
        for row in miner.group_table:
            g = row["group"][0]
            for column in ("threshold_faulty", "weight_bad"):
                if column in row:
                    out[f"{p}/{scope[0]}/{column}_group_{g}"] = row[column]
    if truth is not None:
        out.update(
            truth_metrics(
                miner.faulty_mask, has, truth, miner.history_mean, group_values, group_keys, p
            )
        )
    return out


def _encode(text: str) -> Tensor:
    """A string as a uint8 tensor (checkpoint states hold tensors and numbers only)."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def _decode(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return bytes(value.to("cpu", torch.uint8).tolist()).decode("utf-8")
    return str(value)


def find_bad_pair_mining(
    trainer: pl.Trainer | pl.LightningModule | None,
) -> DynamicBadPairMining | None:
    """The :class:`DynamicBadPairMining` callback of ``trainer``, or ``None`` if it has none.

    ``trainer`` may also be a ``LightningModule`` (its trainer is looked up without raising when
    it is not attached, so ``training_step`` also runs outside ``Trainer.fit``) or ``None``.

    Raises:
        ValueError: if the trainer has more than one such callback.

    Example:
        >>> import lightning as L
        >>> cb = DynamicBadPairMining(num_pairs=100)
        >>> find_bad_pair_mining(L.Trainer(callbacks=[cb], logger=False)) is cb
        True
        >>> find_bad_pair_mining(L.LightningModule()) is None  # not attached to a trainer
        True
    """
    if isinstance(trainer, pl.LightningModule):
        trainer = trainer._trainer
    if trainer is None:
        return None
    found = [cb for cb in getattr(trainer, "callbacks", ()) if isinstance(cb, DynamicBadPairMining)]
    if len(found) > 1:
        raise ValueError(f"the trainer has {len(found)} DynamicBadPairMining callbacks; use one")
    return found[0] if found else None
