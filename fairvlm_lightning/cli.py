"""The ``fairvlm`` command: ``LightningCLI`` over :class:`FairVLMModule` and the FairVLMed data.

``fairvlm fit --config examples/configs/synthetic_robust_fair.yaml`` trains, tests the best
checkpoint and prints a per-attribute fairness table; ``validate``, ``test`` and ``predict`` work
as in any ``LightningCLI``. What the command adds to a plain ``LightningCLI``:

* before anything is built, with ``data.synthetic: true``, the synthetic FairVLMed twin and its
  tiny dual encoder are written under ``data.root`` when missing
  (:func:`fairvlm_lightning.data.ensure_synthetic_assets`), so a config can name
  ``<root>/tiny_model`` as the model on a fresh machine, offline;
* ``data.max_length`` is linked to ``model.prompt_max_length`` (prompts padded like the notes) and
  ``data.model`` defaults to ``model.model`` when that is a name or folder;
* ``config.yaml`` is written with ``overwrite=True`` into the logger's (versioned) run folder, so
  reruns of the same command never collide;
* after ``fit`` (unless ``--test_after_fit false``) the best checkpoint is tested, and after
  ``fit``, ``validate`` and ``test`` a table of AUC, ES-AUC, group AUCs, DPD and DEOdds per
  attribute is printed (and saved as ``<run folder>/<stage>_metrics.json``) together with where
  the logs and the checkpoint went (``--print_table false`` turns this off).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from fairvlm_lightning.data import FairVLMedDataModule, ensure_synthetic_assets
from fairvlm_lightning.module import FairVLMModule

__all__ = [
    "GROUP_NAMES",
    "FairVLMCLI",
    "benchmark",
    "dbpm_summary",
    "format_fairness_table",
    "main",
]

#: Display names of the FairVLMed group codes (``-1`` = unknown is never a group).
GROUP_NAMES: dict[str, tuple[str, ...]] = {
    "race": ("Asian", "Black", "White"),
    "gender": ("Female", "Male"),
    "ethnicity": ("Non-Hispanic", "Hispanic"),
    "language": ("English", "Spanish", "Other"),
}


def _value(metrics: Mapping[str, Any], key: str) -> float:
    value = metrics.get(key, math.nan)
    if isinstance(value, torch.Tensor):
        value = value.item()
    return float(value)


def _fmt(value: float) -> str:
    return "  nan" if math.isnan(value) else f"{value:.3f}"


def format_fairness_table(
    metrics: Mapping[str, Any], attributes: Mapping[str, int], prefix: str = "test"
) -> str:
    """Render logged fairness metrics as a per-attribute text table.

    Args:
        metrics: logged values keyed ``"{prefix}/auc"``, ``"{prefix}/{attr}/es_auc"``,
            ``"{prefix}/{attr}/auc_group_{g}"``, ``"{prefix}/{attr}/dpd"``,
            ``"{prefix}/{attr}/deodds"`` (floats or 0-d tensors); missing ones show as nan.
        attributes: attribute → number of groups.
        prefix: the stage prefix of the keys (``"val"`` or ``"test"``).

    Returns:
        The table as a string (no trailing newline).

    Example:
        >>> m = {"test/auc": 0.8, "test/acc": 0.75, "test/gender/es_auc": 0.7,
        ...      "test/gender/auc_group_0": 0.75, "test/gender/auc_group_1": 0.85,
        ...      "test/gender/dpd": 0.1, "test/gender/deodds": 0.2}
        >>> print(format_fairness_table(m, {"gender": 2}))
        test: AUC 0.800 | Acc 0.750
        attribute  AUC    ES-AUC  DPD    DEOdds  group AUCs
        gender     0.800  0.700   0.100  0.200   Female 0.750, Male 0.850

        With bootstrap intervals (``FairnessMetrics(..., bootstrap=N)``, e.g.
        ``--model.metric_kwargs '{bootstrap: 1000}'``) each value is followed by ``[low, high]``:

        >>> m.update({"test/auc_ci_low": 0.7, "test/auc_ci_high": 0.9,
        ...           "test/gender/es_auc_ci_low": 0.6, "test/gender/es_auc_ci_high": 0.8})
        >>> print(format_fairness_table(m, {"gender": 2}).splitlines()[0])
        test: AUC 0.800 [0.700, 0.900] | Acc 0.750  (bootstrap intervals in brackets)
    """
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a dict, got {type(attributes).__name__}")
    if any(k.startswith(f"{prefix}/") and k.endswith("_ci_low") for k in metrics):
        return _format_fairness_table_ci(metrics, attributes, prefix)
    auc = _value(metrics, f"{prefix}/auc")
    acc = _value(metrics, f"{prefix}/acc")
    width = max([len("attribute"), *(len(a) for a in attributes)])
    lines = [
        f"{prefix}: AUC {_fmt(auc)} | Acc {_fmt(acc)}",
        f"{'attribute':<{width}}  AUC    ES-AUC  DPD    DEOdds  group AUCs",
    ]
    for attr, num_groups in attributes.items():
        names = GROUP_NAMES.get(attr, ())
        groups = ", ".join(
            f"{names[g] if g < len(names) else f'group {g}'} "
            f"{_fmt(_value(metrics, f'{prefix}/{attr}/auc_group_{g}'))}"
            for g in range(int(num_groups))
        )
        lines.append(
            f"{attr:<{width}}  {_fmt(auc)}  {_fmt(_value(metrics, f'{prefix}/{attr}/es_auc'))}   "
            f"{_fmt(_value(metrics, f'{prefix}/{attr}/dpd'))}  "
            f"{_fmt(_value(metrics, f'{prefix}/{attr}/deodds'))}   {groups}"
        )
    return "\n".join(lines)


def _ci_cell(metrics: Mapping[str, Any], key: str) -> str:
    value = _fmt(_value(metrics, key))
    low, high = _value(metrics, f"{key}_ci_low"), _value(metrics, f"{key}_ci_high")
    if math.isnan(low) and math.isnan(high):
        return value
    return f"{value} [{_fmt(low)}, {_fmt(high)}]"


def _format_fairness_table_ci(
    metrics: Mapping[str, Any], attributes: Mapping[str, int], prefix: str
) -> str:
    """The fairness table with the bootstrap intervals ``[low, high]`` next to each value."""
    width = max([len("attribute"), *(len(a) for a in attributes)])
    col = 21
    lines = [
        f"{prefix}: AUC {_ci_cell(metrics, f'{prefix}/auc')} | "
        f"Acc {_ci_cell(metrics, f'{prefix}/acc')}  (bootstrap intervals in brackets)",
        f"{'attribute':<{width}}  {'ES-AUC':<{col}}  {'DPD':<{col}}  {'DEOdds':<{col}}  "
        "group AUCs",
    ]
    for attr, num_groups in attributes.items():
        names = GROUP_NAMES.get(attr, ())
        groups = ", ".join(
            f"{names[g] if g < len(names) else f'group {g}'} "
            f"{_ci_cell(metrics, f'{prefix}/{attr}/auc_group_{g}')}"
            for g in range(int(num_groups))
        )
        cells = [
            _ci_cell(metrics, f"{prefix}/{attr}/{m}") for m in ("es_auc", "dpd", "deodds")
        ]
        lines.append(
            f"{attr:<{width}}  " + "  ".join(f"{c:<{col}}" for c in cells) + f"  {groups}"
        )
    return "\n".join(lines)


def dbpm_summary(metrics: Mapping[str, Any]) -> str:
    """One line on Dynamic Bad Pair Mining's last training epoch, from the logged metrics.

    Uses ``dbpm/num_faulty`` and ``dbpm/num_noisy`` (the callback) and, on data with a ground
    truth ``is_bad_pair`` (the synthetic twin), the epoch sums ``train/dbpm_flagged_pairs``,
    ``train/dbpm_flagged_bad_pairs`` and ``train/bad_pairs`` (the module). Empty without DBPM.

    Example:
        >>> print(dbpm_summary({"dbpm/num_faulty": 12.0, "dbpm/num_noisy": 3.0,
        ...     "train/dbpm_flagged_pairs": 15.0, "train/dbpm_flagged_bad_pairs": 9.0,
        ...     "train/bad_pairs": 200.0}))
        DBPM: 12 faulty + 3 noisy pairs flagged; 9 of the 15 pairs flagged in the last epoch are true bad pairs (precision 0.600, recall 0.045 of 200)
    """  # noqa: E501
    if "dbpm/num_faulty" not in metrics:
        return ""
    line = (
        f"DBPM: {_value(metrics, 'dbpm/num_faulty'):.0f} faulty + "
        f"{_value(metrics, 'dbpm/num_noisy'):.0f} noisy pairs flagged"
    )
    flagged = _value(metrics, "train/dbpm_flagged_pairs")
    hits = _value(metrics, "train/dbpm_flagged_bad_pairs")
    bad = _value(metrics, "train/bad_pairs")
    if not any(math.isnan(v) for v in (flagged, hits, bad)):
        precision = hits / flagged if flagged else math.nan
        recall = hits / bad if bad else math.nan
        line += (
            f"; {hits:.0f} of the {flagged:.0f} pairs flagged in the last epoch are true bad "
            f"pairs (precision {_fmt(precision)}, recall {_fmt(recall)} of {bad:.0f})"
        )
    return line


def _resolve_seeds(cfg: Any) -> dict[str, Any]:
    """Make ``data.seed`` follow ``seed_everything`` unless it was given; return the seeds used.

    ``LightningCLI`` has already called ``seed_everything`` (a ``true`` value is replaced by the
    seed it drew). The training order is seeded by the data module's ``seed``, so without this a
    run with ``--seed_everything 1`` would repeat the run of seed 0.
    """
    seed = cfg.get("seed_everything")
    seed = None if isinstance(seed, bool) else seed
    data = cfg.get("data")
    out: dict[str, Any] = {"seed_everything": seed}
    if data is None or "seed" not in data:
        return out
    if data.get("seed") is None:
        data.seed = int(seed) if seed is not None else 0
        out["data.seed"], out["data.seed_source"] = data.seed, (
            "seed_everything" if seed is not None else "default"
        )
    else:
        out["data.seed"], out["data.seed_source"] = int(data.seed), "explicit"
    return out


@rank_zero_only
def _print_seeds(seeds: Mapping[str, Any]) -> None:
    if "data.seed" not in seeds:
        return
    source = {"explicit": "given", "seed_everything": "from seed_everything"}.get(
        seeds["data.seed_source"], "default, seed_everything off"
    )
    print(
        f"seeds: seed_everything={seeds['seed_everything']}, "
        f"data.seed={seeds['data.seed']} ({source})",
        flush=True,
    )


class FairVLMCLI(LightningCLI):
    """``LightningCLI`` for :class:`FairVLMModule` + :class:`FairVLMedDataModule`.

    Any ``LightningCLI`` argument can be passed; ``save_config_kwargs`` defaults to
    ``{"overwrite": True}`` and ``auto_configure_optimizers`` to ``False`` (the module configures
    its own optimiser and scheduler from ``model.optimizer`` / ``model.scheduler``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", FairVLMModule)
        kwargs.setdefault("datamodule_class", FairVLMedDataModule)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        self.test_results: dict[str, float] = {}
        self.seeds: dict[str, Any] = {}
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link prompt padding to the data and add the reporting switches."""
        parser.link_arguments("data.max_length", "model.prompt_max_length")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit only: test the best checkpoint after training (default true)",
        )
        parser.add_argument(
            "--print_table",
            type=bool,
            default=True,
            help="print the per-attribute fairness table and the output locations (default true)",
        )

    def _cfg(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Create the synthetic data and tiny model when configured and missing."""
        cfg = self._cfg()
        data, model = cfg.get("data"), cfg.get("model")
        if data is None:
            return
        self.seeds = _resolve_seeds(cfg)
        _print_seeds(self.seeds)
        if data.get("synthetic"):
            kwargs = dict(data.get("synthetic_kwargs") or {})
            ensure_synthetic_assets(data.root, **kwargs)
        # The data module's processor source defaults to the module's model (both record it as
        # the hyper-parameter ``model``, which Lightning requires to agree when it logs them).
        if data.get("model") is None and model is not None and isinstance(model.get("model"), str):
            data.model = model.model

    # ----------------------------------------------------------------- reporting

    def _report(
        self, stage: str, metrics: Mapping[str, Any], train: Mapping[str, Any] | None = None
    ) -> None:
        if not self._cfg().get("print_table", True):
            return
        attributes = getattr(self.model, "metric_attributes", {})
        values = {k: _value(metrics, k) for k in metrics if k.startswith(f"{stage}/")}
        self.test_results = values
        self._print_report(stage, values, attributes, train or {})

    @rank_zero_only
    def _print_report(
        self,
        stage: str,
        values: dict[str, float],
        attributes: Mapping[str, int],
        train: Mapping[str, Any],
    ) -> None:
        trainer = self.trainer
        print()
        print(format_fairness_table(values, attributes, prefix=stage))
        dbpm = dbpm_summary(train)
        if dbpm:
            print(dbpm)
        log_dir = trainer.log_dir
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            out = Path(log_dir) / f"{stage}_metrics.json"
            out.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
            print(f"logs:       {log_dir}")
            print(f"metrics:    {out}")
            config = Path(log_dir) / "config.yaml"
            if config.exists():
                print(f"config:     {config}")
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        last = getattr(ckpt, "last_model_path", "") if ckpt is not None else ""
        if best:
            print(f"checkpoint: {best}")
        if last and last != best:
            print(f"last:       {last}")
        for callback in trainer.callbacks:
            export = getattr(callback, "export_dir", None)
            if export:
                print(f"DBPM flags: {export}")

    def after_fit(self) -> None:
        """Test the best checkpoint and print the fairness table."""
        cfg = self._cfg()
        trainer = self.trainer
        if trainer.interrupted:
            return
        train = dict(trainer.callback_metrics)  # the last epoch's logs, before testing
        if cfg.get("test_after_fit", True):
            ckpt = trainer.checkpoint_callback
            best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
            results = trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False
            )
            self._report("test", results[0] if results else {}, train)
        else:
            self._report("val", train, train)

    def after_validate(self) -> None:
        """Print the fairness table of the validation run."""
        self._report("val", dict(self.trainer.callback_metrics))

    def after_test(self) -> None:
        """Print the fairness table of the test run."""
        self._report("test", dict(self.trainer.callback_metrics))


def benchmark(**kwargs: Any) -> dict[str, Any]:
    """Run the benchmark of :mod:`fairvlm_lightning.benchmark` with the ``fairvlm`` CLI.

    The function behind ``fairvlm benchmark``: every run is ``fairvlm fit`` of a config with
    ``--seed_everything <seed>``, through :class:`FairVLMCLI`.

    Args:
        kwargs: keyword arguments of :func:`fairvlm_lightning.benchmark.run_benchmark`
            (``configs``, ``seeds``, ``out_dir``, ``max_epochs``, ``fairness_weights``,
            ``betas``, ...).

    Returns:
        The report written to ``<out_dir>/benchmark.json``.
    """
    from fairvlm_lightning.benchmark import run_benchmark

    return run_benchmark(FairVLMCLI, **kwargs)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``fairvlm`` console script.

    ``fairvlm benchmark ...`` runs :func:`benchmark` (``fairvlm benchmark --help``); every
    other subcommand is :class:`FairVLMCLI`'s.

    Args:
        args: command-line arguments (default ``sys.argv[1:]``), e.g.
            ``["fit", "--config", "examples/configs/synthetic_robust_fair.yaml"]``.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "benchmark":
        from fairvlm_lightning.benchmark import benchmark_main

        benchmark_main(FairVLMCLI, argv[1:])
        return
    FairVLMCLI(args=args)


if __name__ == "__main__":  # pragma: no cover
    main()
