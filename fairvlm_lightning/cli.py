"""The ``fairvlm`` command: ``LightningCLI`` over :class:`FairVLMModule` and the FairVLMed data.

``fairvlm fit --config fairvlm_lightning/configs/synthetic_robust_fair.yaml`` trains, tests the
best checkpoint and prints a per-attribute fairness table; ``validate``, ``test`` and
``predict`` work as in any ``LightningCLI``. What the command adds to a plain ``LightningCLI``:

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

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from fairvlm_lightning.data import FairVLMedDataModule, ensure_synthetic_assets
from fairvlm_lightning.data.synthetic import expand_cache_path
from fairvlm_lightning.module import FairVLMModule

__all__ = [
    "GROUP_NAMES",
    "FairVLMCLI",
    "dbpm_summary",
    "format_fairness_table",
    "main",
    "parameter_summary",
    "resolve_config",
    "shipped_configs",
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
    """
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a dict, got {type(attributes).__name__}")
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


def parameter_summary(model: torch.nn.Module) -> str:
    """One line with the trainable and total parameter counts (LoRA trains a small share).

    Example:
        >>> layer = torch.nn.Linear(3, 2)
        >>> layer.bias.requires_grad_(False)  # doctest: +ELLIPSIS
        Parameter...
        >>> parameter_summary(layer)
        'parameters: 6 trainable / 8 total (75.00%)'
    """
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    share = 100.0 * trainable / total if total else 0.0
    return f"parameters: {trainable:,} trainable / {total:,} total ({share:.2f}%)"


def _expand_cache_paths(section: Any, keys: tuple[str, ...]) -> None:
    """Put the user cache folder in place of ``${FAIRVLM_CACHE}`` in a config section."""
    if section is None:
        return
    for key in keys:
        value = section.get(key)
        if isinstance(value, str):
            section[key] = expand_cache_path(value)


def _configs_dir() -> Path:
    return Path(str(resources.files("fairvlm_lightning") / "configs"))


def shipped_configs() -> dict[str, Path]:
    """The configs shipped inside the package: bare name → file.

    Example:
        >>> "synthetic_robust_fair" in shipped_configs()
        True
    """
    return {p.stem: p for p in sorted(_configs_dir().glob("*.yaml"))}


def resolve_config(name: str) -> str:
    """A ``--config`` value: an existing file as given, else a shipped config's bare name.

    ``synthetic_robust_fair`` and ``synthetic_robust_fair.yaml`` both name
    ``fairvlm_lightning/configs/synthetic_robust_fair.yaml`` of the installed package; a
    file of that name in the working directory takes precedence.

    Raises:
        FileNotFoundError: neither a file nor a shipped config (the message lists them).

    Example:
        >>> resolve_config("synthetic_clip").endswith("configs/synthetic_clip.yaml")
        True
    """
    if os.path.exists(name) or name.lstrip().startswith(("{", "[")) or "\n" in name:
        return name
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    shipped = shipped_configs()
    if os.sep not in name and "/" not in name and stem in shipped:
        return str(shipped[stem])
    raise FileNotFoundError(
        f"config {name!r} is neither a file nor a shipped config; shipped: {sorted(shipped)} "
        "(`fairvlm configs` lists them)"
    )


def _resolve_config_args(args: list[str]) -> list[str]:
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return out


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def _configs_command(args: list[str]) -> None:
    """``fairvlm configs``: list the shipped configs."""
    parser = argparse.ArgumentParser(prog="fairvlm configs", description=_configs_command.__doc__)
    parser.parse_args(args)
    shipped = shipped_configs()
    width = max(len(n) for n in shipped)
    print(f"shipped configs (in {_configs_dir()}); use them as --config NAME:")
    for name, path in shipped.items():
        print(f"  {name:<{width}}  {_first_comment(path)}")


def _probe_command(args: list[str]) -> dict[str, float]:
    """``fairvlm probe --config X --ckpt_path Y``: linear probe of a checkpoint's features."""
    from fairvlm_lightning.probe import DEFAULT_WEIGHT_DECAYS, probe_datamodule

    parser = argparse.ArgumentParser(
        prog="fairvlm probe",
        description="Linear probe (logistic regression on frozen features, weight decay chosen "
        "on validation) of a checkpoint; prints the test fairness table. Other arguments "
        "(--config, --data.*, --model.*) are those of `fairvlm fit`.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint whose weights to probe")
    parser.add_argument("--features", choices=["image", "image_text"], default="image")
    parser.add_argument("--class_weight", choices=["none", "balanced"], default="none")
    parser.add_argument("--solver", choices=["lbfgs", "adamw"], default="lbfgs")
    parser.add_argument(
        "--weight_decays", type=float, nargs="+", default=list(DEFAULT_WEIGHT_DECAYS)
    )
    parser.add_argument("--cache_dir", default=None, help="optional feature cache folder")
    parser.add_argument("--json", default=None, help="also write the values to this JSON file")
    own, rest = parser.parse_known_args(args)
    ckpt = Path(own.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"no checkpoint at {ckpt}")
    cli = FairVLMCLI(args=_resolve_config_args(rest), run=False)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if "state_dict" not in state:
        raise ValueError(f"{ckpt} is not a Lightning checkpoint (no 'state_dict')")
    cli.model.load_state_dict(state["state_dict"])
    attributes = dict(cli.model.metric_attributes)
    values, _ = probe_datamodule(
        cli.model,
        cli.datamodule,
        attributes,
        features=own.features,
        cache_dir=own.cache_dir,
        weight_decays=own.weight_decays,
        class_weight=None if own.class_weight == "none" else "balanced",
        solver=own.solver,
    )
    out = {f"probe/{k}": float(v) for k, v in values.items()}
    print()
    print(format_fairness_table(out, attributes, prefix="probe"))
    print(
        f"probe: {own.features} features, weight decay {out['probe/weight_decay']:g} chosen on "
        f"validation (val AUC {_fmt(out['probe/val_auc'])}), checkpoint {ckpt}"
    )
    if own.json:
        Path(own.json).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
        print(f"metrics:    {own.json}")
    return out


def _export_command(args: list[str]) -> Path:
    """``fairvlm export --ckpt_path Y --out DIR``: a Hugging Face folder from a checkpoint."""
    from fairvlm_lightning.export import export_checkpoint

    parser = argparse.ArgumentParser(
        prog="fairvlm export",
        description="Write a checkpoint as a Hugging Face folder (LoRA merged, tokenizer, image "
        "processor, model card with the training config and the test fairness table).",
    )
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--out", required=True, help="output folder (empty or absent)")
    parser.add_argument(
        "--metrics", default=None, help="test metrics JSON for the card (default: the run's)"
    )
    parser.add_argument("--overwrite", action="store_true")
    own = parser.parse_args(args)
    out = export_checkpoint(own.ckpt_path, own.out, metrics=own.metrics, overwrite=own.overwrite)
    print(f"exported:   {out}")
    return out


_EXTRA_COMMANDS = {"probe": _probe_command, "export": _export_command, "configs": _configs_command}


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
        _expand_cache_paths(data, ("root", "model"))
        _expand_cache_paths(model, ("model", "tokenizer"))
        if data is None:
            return
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
        if isinstance(self.model, torch.nn.Module):
            print(parameter_summary(self.model))
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


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``fairvlm`` console script.

    Args:
        args: command-line arguments (default ``sys.argv[1:]``), e.g.
            ``["fit", "--config", "synthetic_robust_fair"]`` (a bare name is a shipped config).
            Besides ``LightningCLI``'s subcommands: ``probe --config X --ckpt_path Y`` (linear
            probe of a checkpoint), ``export --ckpt_path Y --out DIR`` (Hugging Face folder) and
            ``configs`` (list the shipped configs).
    """
    args = sys.argv[1:] if args is None else list(args)
    if args and args[0] in _EXTRA_COMMANDS:
        _EXTRA_COMMANDS[args[0]](args[1:])
        return
    FairVLMCLI(args=_resolve_config_args(args))


if __name__ == "__main__":  # pragma: no cover
    main()
