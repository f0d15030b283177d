"""The ``fairvlm`` command: ``LightningCLI`` over :class:`FairVLMModule` and the FairVLMed data.

``fairvlm fit --config fairvlm_lightning/configs/synthetic_robust_fair.yaml`` trains, tests the
best checkpoint and prints a per-attribute fairness table; ``validate``, ``test`` and
``predict`` work as in any ``LightningCLI``. What the command adds to a plain ``LightningCLI``:

* before anything is built, with ``data: {class_path:
  fairvlm_lightning.app.synthetic.SyntheticFairVLMedDataModule, ...}`` (any data class with an
  ``ensure_assets(init_args)`` static method), the synthetic FairVLMed twin and its tiny dual
  encoder are written under ``data.root`` when missing
  (:func:`fairvlm_lightning.app.synthetic.ensure_synthetic_assets`), so a config can name
  ``<root>/tiny_model`` as the model on a fresh machine, offline;
* ``data.max_length`` is linked to ``model.zero_shot.max_length`` (prompts padded like the notes)
  and ``data.model`` defaults to ``model.model`` when that is a name or folder;
* ``config.yaml`` is written with ``overwrite=True`` into the logger's (versioned) run folder, so
  reruns of the same command never collide; the ``version_<n>`` folder of a ``CSVLogger`` or
  ``TensorBoardLogger`` without an explicit ``version`` is claimed atomically (``mkdir``) before
  anything runs, so two runs started at once never share one;
* ``--ckpt_path last`` resumes from the newest ``last*.ckpt`` of the earlier runs of the
  logger's name (``<save_dir>/<name>/version_*/checkpoints/``, or the checkpoint callbacks'
  ``dirpath``), or fails naming where it looked;
* ``validate`` and ``test`` refuse to run without ``--ckpt_path`` (they would report the initial,
  untrained weights as a result) unless ``--initial_weights true`` is given; the metrics JSON
  records ``ckpt_path``, ``initial_weights`` and the checkpoint file's ``ckpt_size`` and
  ``ckpt_sha256`` (``fairvlm export`` puts a record into a model card only for that content);
* a monitored ``ModelCheckpoint(save_last=True)`` draws a warning: Lightning then writes
  ``last.ckpt`` only when a new best is saved, so it holds the best state, not the last. The
  shipped configs add an unmonitored ``ModelCheckpoint(filename="last")`` instead, rewritten
  after every epoch;
* after ``fit`` (unless ``--test_after_fit false``) the best checkpoint is tested, and after
  ``fit``, ``validate`` and ``test`` a table of AUC, ES-AUC, group AUCs, DPD and DEOdds per
  attribute is printed (and saved as ``<run folder>/<stage>_metrics.json``) together with where
  the logs and the checkpoint went (``--print_table false`` turns this off); each line names
  the file it is computed from (``checkpoint:`` the evaluated file, ``last:`` this fit's
  latest state);
* a ``--ckpt_path`` that is missing, empty, truncated or corrupt is refused naming the file
  (:mod:`fairvlm_lightning.checkpoints`), and a run that fails before writing anything removes
  the run folder it claimed;
* a run stopped by SIGTERM exits with status 143 (:data:`EXIT_SIGTERM`), not 0;
* ``fairvlm`` (:func:`main`) runs inside :func:`quiet_terminal`: besides Lightning's progress
  bar, the main command prints the table and the summary only; ``fairvlm --help`` also names
  ``configs``, ``probe``, ``export`` and ``benchmark``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import textwrap
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ArgumentParser, DefaultHelpFormatter, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fairvlm_lightning.app.synthetic import (
    expand_cache_path,
)
from fairvlm_lightning.atomic import atomic_write_text, file_identity
from fairvlm_lightning.checkpoints import CheckpointError, check_checkpoint, load_checkpoint
from fairvlm_lightning.configs import configs_dir, resolve_config, shipped_configs
from fairvlm_lightning.data import FairVLMedDataModule, ImageTextDataModule
from fairvlm_lightning.metrics.groups import reported_group_names
from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.schema import GROUP_NAMES
from fairvlm_lightning.tables import fairness_table, format_value, per_output_table

__all__ = [
    "EXIT_SIGTERM",
    "GROUP_NAMES",
    "FairVLMCLI",
    "benchmark",
    "claim_version",
    "dbpm_summary",
    "find_last_checkpoint",
    "main",
    "parameter_summary",
    "quiet_terminal",
    "resolve_config",
    "shipped_configs",
]

def _value(metrics: Mapping[str, Any], key: str) -> float:
    value = metrics.get(key, math.nan)
    if isinstance(value, torch.Tensor):
        value = value.item()
    return float(value)


def dbpm_summary(
    metrics: Mapping[str, Any], group_names: Mapping[str, Sequence[str]] | None = None
) -> str:
    """One line on Dynamic Bad Pair Mining's last training epoch, from the callback's logs.

    Reads only the ``dbpm/*`` logs of :class:`~fairvlm_lightning.callbacks.DynamicBadPairMining`:
    ``dbpm/num_faulty`` and ``dbpm/num_noisy``, and, when the callback has a ``truth_key`` (the
    synthetic twin's ``is_bad_pair``), ``dbpm/num_flagged_bad``, ``dbpm/num_bad``,
    ``dbpm/precision``, ``dbpm/recall`` and the per-group ``dbpm/race/recall_group_{g}`` and
    ``dbpm/race/precision_group_{g}`` (for each attribute logged). Empty without DBPM.

    Args:
        metrics: the logged values.
        group_names: attribute → display names of its groups (default FairVLMed's); the
            per-group part covers these attributes.

    Example:
        >>> print(dbpm_summary({"dbpm/num_faulty": 12.0, "dbpm/num_noisy": 3.0,
        ...     "dbpm/num_flagged_bad": 9.0, "dbpm/num_bad": 200.0, "dbpm/precision": 0.75,
        ...     "dbpm/recall": 0.045, "dbpm/race/recall_group_0": 0.02,
        ...     "dbpm/race/precision_group_0": 0.5}))
        DBPM: 12 faulty + 3 noisy pairs flagged; 9 of the 12 pairs flagged faulty are true bad pairs (precision 0.750, recall 0.045 of 200); race recall/precision: Asian 0.020/0.500
    """  # noqa: E501
    if "dbpm/num_faulty" not in metrics:
        return ""
    faulty = _value(metrics, "dbpm/num_faulty")
    noisy = _value(metrics, "dbpm/num_noisy")
    line = f"DBPM: {faulty:.0f} faulty + {noisy:.0f} noisy pairs flagged"
    hits = _value(metrics, "dbpm/num_flagged_bad")
    bad = _value(metrics, "dbpm/num_bad")
    if math.isnan(hits) or math.isnan(bad):
        return line
    line += (
        f"; {hits:.0f} of the {faulty:.0f} pairs flagged faulty are true bad pairs (precision "
        f"{format_value(metrics.get('dbpm/precision'))}, recall "
        f"{format_value(metrics.get('dbpm/recall'))} of {bad:.0f})"
    )
    for attr, names in (GROUP_NAMES if group_names is None else group_names).items():
        parts = []
        for g, name in enumerate(names):
            recall = _value(metrics, f"dbpm/{attr}/recall_group_{g}")
            precision = _value(metrics, f"dbpm/{attr}/precision_group_{g}")
            if f"dbpm/{attr}/recall_group_{g}" in metrics:
                parts.append(f"{name} {format_value(recall)}/{format_value(precision)}")
        if parts:
            line += f"; {attr} recall/precision: " + ", ".join(parts)
    return line


_VERSIONED_LOGGERS = ("CSVLogger", "TensorBoardLogger")
_VERSION_DIR = re.compile(r"^version_(\d+)$")


def claim_version(root: str | os.PathLike[str]) -> int:
    """Create the next free ``root/version_<n>`` folder atomically and return ``n``.

    ``mkdir`` either creates the folder or fails, so of several processes racing for the same
    number exactly one wins and the others move on to the next; Lightning's loggers instead list
    the folders and pick the next number, which two runs started at once both pick.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> claim_version(root), claim_version(root), sorted(p.name for p in root.iterdir())
        (0, 1, ['version_0', 'version_1'])
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := _VERSION_DIR.match(p.name))]
    version = max(taken) + 1 if taken else 0
    while True:
        try:
            (root / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def find_last_checkpoint(folders: list[Path]) -> Path | None:
    """The most recently written ``last*.ckpt`` in ``folders`` (``None`` if there is none).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "last.ckpt").write_bytes(b"")
        0
        >>> find_last_checkpoint([root / "missing", root]).name
        'last.ckpt'
    """
    found = [p for d in folders if d.is_dir() for p in d.glob("last*.ckpt") if p.is_file()]
    return max(found, key=lambda p: (p.stat().st_mtime_ns, str(p))) if found else None


def _class_name(entry: Any) -> str:
    class_path = entry.get("class_path", "") if hasattr(entry, "get") else ""
    return str(class_path).rsplit(".", 1)[-1]


def _logger_entries(trainer_cfg: Any) -> list[Any]:
    logger = trainer_cfg.get("logger") if trainer_cfg is not None else None
    entries = logger if isinstance(logger, list) else [logger]
    return [e for e in entries if hasattr(e, "get") and _class_name(e) in _VERSIONED_LOGGERS]


def _logger_root(entry: Any) -> Path | None:
    """``<save_dir>/<name>`` of a versioned logger's config (``None`` for remote folders)."""
    init = entry.get("init_args") or {}
    save_dir = init.get("save_dir") or "."
    if "://" in str(save_dir):
        return None
    name = init.get("name")
    name = "lightning_logs" if name is None else str(name)
    return Path(save_dir) / name if name else Path(save_dir)
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


def _resolve_config_args(args: list[str]) -> list[str]:
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    return out


def _reported_groups(model: Any, datamodule: Any) -> dict[str, tuple[str, ...]]:
    """Display names of the groups of every attribute the test metrics report (intersections last).

    Names come from the data module (``group_names``: its string codes, FairVLMed's names)
    over FairVLMed's defaults; an intersection's cells join their groups' names.
    """
    metrics = getattr(model, "test_metrics", None)
    base = dict(getattr(metrics, "attributes", None) or getattr(model, "metric_attributes", {}))
    intersections = list(getattr(metrics, "intersections", None) or [])
    known: dict[str, Sequence[str]] = dict(GROUP_NAMES)
    known.update(getattr(datamodule, "group_names", None) or {})
    return reported_group_names(base, intersections, known)


def _output_names(
    model: Any, datamodule: Any
) -> tuple[Literal["label", "class"], list[str]] | None:
    """``("label", names)`` for a multi-label task, ``("class", names)`` for multi-class."""
    metrics = getattr(model, "test_metrics", None)
    task = getattr(metrics, "task", "binary")
    if task == "multilabel":
        columns = list(getattr(datamodule, "label_columns", ()) or ())
        count = int(getattr(metrics, "num_labels", 0) or 0)
        return "label", columns if len(columns) == count else [f"label {k}" for k in range(count)]
    if task == "multiclass":
        return "class", [f"class {k}" for k in range(int(getattr(metrics, "num_classes", 0)))]
    return None


def _split_own_args(args: list[str], parser: ArgumentParser) -> tuple[list[str], list[str]]:
    """Split ``args`` into the options ``parser`` defines (with their values) and the rest."""
    own_options = {o for action in parser._actions for o in action.option_strings}
    own: list[str] = []
    rest: list[str] = []
    target = rest
    for arg in args:
        if arg.startswith("-"):
            target = own if arg.split("=", 1)[0] in own_options else rest
        target.append(arg)
    return own, rest


def _description(path: Path) -> str:
    """A config's description: its header comment up to the example command, joined."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if text.startswith("  ") and text.strip():  # the indented example command ends it
            break
        words += text.split()
    return " ".join(words)


def _configs_command(args: list[str]) -> None:
    """``fairvlm configs``: list the shipped configs."""
    parser = ArgumentParser(prog="fairvlm configs", description=_configs_command.__doc__)
    parser.parse_args(args)
    shipped = shipped_configs()
    width = max(len(n) for n in shipped)
    columns = max(60, shutil.get_terminal_size((100, 24)).columns)
    print(f"shipped configs (in {configs_dir()}); use them as --config NAME:")
    for name, path in shipped.items():
        print(
            textwrap.fill(
                _description(path),
                width=columns - 1,
                initial_indent=f"  {name:<{width}}  ",
                subsequent_indent=" " * (width + 4),
                break_on_hyphens=False,
            )
        )


def _probe_command(args: list[str]) -> dict[str, float]:
    """``fairvlm probe --config X --ckpt_path Y``: linear probe of a checkpoint's features."""
    from fairvlm_lightning.probe import DEFAULT_WEIGHT_DECAYS, probe_datamodule

    parser = ArgumentParser(
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
    own_args, rest = _split_own_args(args, parser)
    own = parser.parse_args(own_args)
    ckpt = Path(own.ckpt_path)
    try:
        check_checkpoint(ckpt)
    except (FileNotFoundError, CheckpointError) as err:
        parser.error(f"--ckpt_path: {err}")
    cli = FairVLMCLI(args=_resolve_config_args(rest), run=False)
    state = load_checkpoint(ckpt)
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
    print(fairness_table(out, attributes, prefix="probe"))
    print(
        f"probe: {own.features} features, weight decay {out['probe/weight_decay']:g} chosen on "
        f"validation (val AUC {format_value(out['probe/val_auc'])}), checkpoint {ckpt}"
    )
    if own.json:
        Path(own.json).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
        print(f"metrics:    {own.json}")
    return out


def _export_command(args: list[str]) -> Path:
    """``fairvlm export --ckpt_path Y --out DIR``: a Hugging Face folder from a checkpoint."""
    from fairvlm_lightning.export import export_checkpoint

    parser = ArgumentParser(
        prog="fairvlm export",
        description="Write a checkpoint as a Hugging Face folder (LoRA merged, tokenizer, image "
        "processor, model card with the training config and the test fairness table).",
    )
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--out", required=True, help="output folder (empty or absent)")
    parser.add_argument(
        "--metrics",
        default=None,
        help="test metrics JSON of this checkpoint for the card, as `fairvlm test` writes it "
        "(its ckpt_sha256 must match); default: the run's when it matches, else the "
        "checkpoint is tested on its data module's test split",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DIR whole")
    parser.add_argument(
        "--no_evaluate", action="store_true", help="never test the checkpoint at export"
    )
    own = parser.parse_args(args)
    try:
        check_checkpoint(own.ckpt_path)
    except (FileNotFoundError, CheckpointError) as err:
        parser.error(f"--ckpt_path: {err}")
    out = export_checkpoint(
        own.ckpt_path,
        own.out,
        metrics=own.metrics,
        overwrite=own.overwrite,
        evaluate=not own.no_evaluate,
    )
    print(f"exported:   {out}")
    return out


_DEFAULT_DATA = f"{FairVLMedDataModule.__module__}.{FairVLMedDataModule.__qualname__}"


def _data_init_args(data: Any) -> Any:
    """The data module's arguments of a ``data:`` node (``init_args`` in subclass mode)."""
    return data.get("init_args") if data is not None and "class_path" in data else data


def _data_class(data: Any) -> type | None:
    """The class named by a ``data:`` node's ``class_path`` (``None`` without one)."""
    class_path = data.get("class_path") if data is not None and "class_path" in data else None
    if not class_path:
        return None
    module, _, name = str(class_path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None  # jsonargparse has already refused a class path it cannot import
    return cls if isinstance(cls, type) else None


def _resolve_seeds(cfg: Any) -> dict[str, Any]:
    """Make ``data.seed`` follow ``seed_everything`` unless it was given; return the seeds used.

    ``LightningCLI`` has already called ``seed_everything`` (a ``true`` value is replaced by the
    seed it drew). The training order is seeded by the data module's ``seed``, so without this a
    run with ``--seed_everything 1`` would repeat the run of seed 0.
    """
    seed = cfg.get("seed_everything")
    seed = None if isinstance(seed, bool) else seed
    data = _data_init_args(cfg.get("data"))
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


def _seeds_line(seeds: Mapping[str, Any]) -> str:
    if "data.seed" not in seeds:
        return ""
    source = {"explicit": "given", "seed_everything": "from seed_everything"}.get(
        seeds["data.seed_source"], "default, seed_everything off"
    )
    return (
        f"seeds:      seed_everything={seeds['seed_everything']}, "
        f"data.seed={seeds['data.seed']} ({source})"
    )


#: Exit status of a command stopped by SIGTERM (128 + 15, as shells report it).
EXIT_SIGTERM = 128 + int(signal.SIGTERM)

# What a run folder holds once the trainer is set up, before anything was trained or evaluated.
_SETUP_FILES = frozenset({"config.yaml", "hparams.yaml"})

_MORE_COMMANDS = """other commands (each has --help):
  configs    list the shipped configs (use one as --config NAME)
  probe      linear probe of a checkpoint's features: probe --config X --ckpt_path Y
  export     a checkpoint as a Hugging Face folder: export --ckpt_path Y --out DIR
  benchmark  every config x seed through `fit`, with a results table"""


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the epilog's lines kept as written."""


class FairVLMCLI(LightningCLI):
    """``LightningCLI`` for :class:`FairVLMModule` + :class:`FairVLMedDataModule`.

    Any ``LightningCLI`` argument can be passed; ``save_config_kwargs`` defaults to
    ``{"overwrite": True}``, ``auto_configure_optimizers`` to ``False`` (the module configures
    its own optimiser and scheduler from ``model.optimizer`` / ``model.scheduler``) and the
    trainer's ``enable_model_summary`` to ``False`` (the summary prints a parameter line).
    A shipped config can be named by its bare name (``--config synthetic_clip``).

    Example:
        >>> cli = FairVLMCLI(args=["--config", "synthetic_clip"], run=False)  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", FairVLMModule)
        # `data:` is any ImageTextDataModule (a `class_path:`), FairVLMedDataModule by default
        kwargs.setdefault("datamodule_class", ImageTextDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        trainer_defaults = dict(kwargs.get("trainer_defaults") or {})
        trainer_defaults.setdefault("enable_model_summary", False)
        kwargs["trainer_defaults"] = trainer_defaults
        self.test_results: dict[str, float] = {}
        self.seeds: dict[str, Any] = {}
        self._claimed: list[Path] = []
        self._latest: list[str] = []
        super().__init__(*args, **kwargs)

    def setup_parser(
        self,
        add_subcommands: bool,
        main_kwargs: dict[str, Any],
        subparser_kwargs: dict[str, Any],
    ) -> None:
        """Build the parser as ``LightningCLI`` does; ``--help`` also lists the other commands."""
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            self.parser.formatter_class = _HelpFormatter
            self.parser.description = (
                "Fair and robust CLIP fine-tuning: fit, validate, test, predict (LightningCLI), "
                "plus the commands below."
            )
            self.parser.epilog = _MORE_COMMANDS

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link prompt padding to the data and add the reporting switches."""
        parser.set_defaults({"data": {"class_path": _DEFAULT_DATA}})
        parser.link_arguments("data.init_args.max_length", "model.zero_shot.max_length")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit only: test the best checkpoint after training (default true)",
        )
        parser.add_argument(
            "--initial_weights",
            type=bool,
            default=False,
            help="validate/test only: evaluate the initial weights when no --ckpt_path is given "
            "(refused otherwise; recorded in the metrics JSON)",
        )
        parser.add_argument(
            "--print_table",
            type=bool,
            default=True,
            help="print the per-attribute fairness table and the output locations (default true)",
        )

    def _cfg(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    # ------------------------------------------------------------ run folders / checkpoints

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, resolve ``--ckpt_path last``, check the checkpoint, refuse evaluating nothing.

        ``args`` (default ``sys.argv[1:]``) may name a shipped config by its bare name. Runs
        before Lightning reads the checkpoint's hyper-parameters, so a resolved ``last`` is
        read exactly as a path given by hand, and a truncated or corrupt checkpoint is refused
        naming the file before any run folder is made.
        """
        argv = sys.argv[1:] if args is None else args
        if isinstance(argv, (dict, Namespace)):
            self.config = parser.parse_object(argv)
        else:
            self.config = parser.parse_args(_resolve_config_args(list(argv)))
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        cfg = self.config[subcommand]
        if cfg.get("ckpt_path") == "last":
            cfg.ckpt_path = str(self._resolve_last(cfg, parser, subcommand))
        ckpt = cfg.get("ckpt_path")
        if ckpt is not None and ckpt not in ("best", "hpc") and not _is_remote_or_registry(ckpt):
            try:
                check_checkpoint(ckpt)
            except (FileNotFoundError, CheckpointError) as err:
                parser.error(f"--ckpt_path: {err}")
        if (
            subcommand in ("validate", "test")
            and ckpt is None
            and not cfg.get("initial_weights", False)
        ):
            parser.error(
                f"`fairvlm {subcommand}` without --ckpt_path would evaluate the model's initial "
                "(untrained) weights and report them as a result. Pass --ckpt_path "
                "<file>|last|best, or --initial_weights true to evaluate the initial weights on "
                "purpose (recorded in the metrics JSON)."
            )

    def _resolve_last(self, cfg: Any, parser: LightningArgumentParser, subcommand: str) -> Path:
        trainer_cfg = cfg.get("trainer")
        folders: list[Path] = []
        for callback in (trainer_cfg.get("callbacks") or []) if trainer_cfg is not None else []:
            if _class_name(callback) == "ModelCheckpoint":
                dirpath = (callback.get("init_args") or {}).get("dirpath")
                if dirpath:
                    folders.append(Path(dirpath))
        roots = [r for e in _logger_entries(trainer_cfg) if (r := _logger_root(e)) is not None]
        for root in roots:
            if root.is_dir():
                versions = [p for p in root.iterdir() if _VERSION_DIR.match(p.name)]
                folders += [p / "checkpoints" for p in versions]
        found = find_last_checkpoint(folders)
        if found is None:
            looked = [str(r / "version_*" / "checkpoints") for r in roots]
            looked += [str(f) for f in folders if not any(f.is_relative_to(r) for r in roots)]
            where = ", ".join(looked) or "no versioned logger or ModelCheckpoint dirpath set"
            parser.error(
                f"--ckpt_path last: no last*.ckpt found in the earlier runs ({where}; from the "
                f"working directory {os.getcwd()}); pass the checkpoint file instead"
            )
        # evaluations name the file in their summary (``checkpoint:``); a fit says it resumes
        if subcommand == "fit" and getattr(rank_zero_only, "rank", 0) == 0:
            print(f"resuming:   {found}", flush=True)
        return found

    def instantiate_classes(self) -> None:
        """Claim the run folder atomically, then build the classes as ``LightningCLI`` does.

        The claimed number is handed to the logger as its ``version`` and removed from the
        config again, so the saved ``config.yaml`` reruns into a fresh folder too.
        """
        trainer_cfg = self._cfg().get("trainer")
        claimed = []
        # Only for a run (``run=False`` builds the objects without creating folders); other DDP
        # ranks take rank 0's folder from the strategy (Lightning broadcasts it).
        if self.subcommand is not None and getattr(rank_zero_only, "rank", 0) == 0:
            for entry in _logger_entries(trainer_cfg):
                init = entry.get("init_args")
                root = _logger_root(entry)
                if init is None or root is None or init.get("version") is not None:
                    continue
                init.version = claim_version(root)
                claimed.append(init)
                self._claimed.append(root / f"version_{init.version}")
        try:
            super().instantiate_classes()
        except BaseException:
            self._remove_unused_run_folders()
            raise
        finally:
            for init in claimed:
                init.version = None
        self._warn_last_is_best()
        self._hide_version_number()

    def _warn_last_is_best(self) -> None:
        callbacks = getattr(self.trainer, "checkpoint_callbacks", [])
        if any(cb.monitor is None and cb.save_top_k != 0 for cb in callbacks):
            return  # an unmonitored checkpoint keeps the latest state
        for cb in callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor is not None and cb.save_last:
                rank_zero_warn(
                    f"ModelCheckpoint(monitor={cb.monitor!r}, save_last={cb.save_last!r}) writes "
                    "last.ckpt only when it saves a new best checkpoint, so last.ckpt holds the "
                    "best epoch, not the last one. To resume from the latest state add an "
                    "unmonitored ModelCheckpoint(filename='last'), as the shipped configs do."
                )

    def _hide_version_number(self) -> None:
        """Drop ``v_num`` from the progress bar: the summary names the run folder."""
        bar = getattr(self.trainer, "progress_bar_callback", None)
        if bar is None:
            return
        get_metrics = bar.get_metrics

        def without_version(trainer: Any, pl_module: Any) -> dict[str, Any]:
            metrics = dict(get_metrics(trainer, pl_module))
            metrics.pop("v_num", None)
            return metrics

        setattr(bar, "get_metrics", without_version)  # noqa: B010 (an instance's bound method)

    def _remove_unused_run_folders(self) -> None:
        """Remove the run folders this process claimed if the run wrote nothing but its setup.

        A run that fails before training or evaluating anything (a checkpoint that does not fit
        the model, a bad argument found late) would otherwise leave an empty ``version_<n>``.
        """
        for folder in self._claimed:
            if not folder.is_dir():
                continue
            files = [p for p in folder.rglob("*") if p.is_file()]
            if all(p.parent == folder and p.name in _SETUP_FILES for p in files):
                shutil.rmtree(folder, ignore_errors=True)
        self._claimed = []

    def _run_subcommand(self, subcommand: str) -> None:
        """Run as ``LightningCLI`` does; SIGTERM exits with status 143 and says so.

        Lightning stops a run on SIGTERM with an exception that exits with status 0, which a
        scheduler or shell would read as success. The checkpoints already written stay as they
        are (the signal is handled between steps, never inside a write).
        """
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException as stop:
            print(self._sigterm_message(subcommand), file=sys.stderr, flush=True)
            raise SystemExit(EXIT_SIGTERM) from stop
        except BaseException:
            if getattr(rank_zero_only, "rank", 0) == 0:
                self._remove_unused_run_folders()
            raise

    def _sigterm_message(self, subcommand: str) -> str:
        trainer = self.trainer
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        message = f"fairvlm {subcommand}: stopped by SIGTERM ({where}); exit status {EXIT_SIGTERM}"
        if subcommand == "fit":
            latest = self._latest_state_files()
            if latest:
                message += (
                    f". The latest finished epoch's state is {latest[0]}; continue with "
                    "--ckpt_path last"
                )
            message += ". Not tested."
        return message

    def before_instantiate_classes(self) -> None:
        """Create the synthetic data and tiny model when configured and missing."""
        cfg = self._cfg()
        data, model = _data_init_args(cfg.get("data")), cfg.get("model")
        _expand_cache_paths(data, ("root", "model"))
        _expand_cache_paths(model, ("model",))
        encoder = model.get("encoder") if model is not None else None
        _expand_cache_paths(getattr(encoder, "init_args", encoder), ("tokenizer",))
        if data is None:
            return
        self.seeds = _resolve_seeds(cfg)
        # A data class that generates its data (SyntheticFairVLMedDataModule) writes it, and
        # the model the module loads, through its ``ensure_assets(init_args)`` hook.
        ensure_assets = getattr(_data_class(cfg.get("data")), "ensure_assets", None)
        if callable(ensure_assets):
            ensure_assets(data)
        # The data module's processor source defaults to the module's model (both record it as
        # the hyper-parameter ``model``, which Lightning requires to agree when it logs them).
        if data.get("model") is None and model is not None and isinstance(model.get("model"), str):
            source = model.model  # a local folder is recorded by its absolute path, as the module
            data.model = os.path.abspath(source) if os.path.isdir(source) else source

    # ----------------------------------------------------------------- reporting

    def _latest_state_files(self) -> list[str]:
        """The files holding the latest state: unmonitored checkpoints, then save_last copies."""
        callbacks = [
            cb for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)
        ]
        paths = [cb.best_model_path for cb in callbacks if cb.monitor is None]
        paths += [cb.last_model_path for cb in callbacks]
        return [p for p in paths if p]

    def _report(
        self, stage: str, metrics: Mapping[str, Any], train: Mapping[str, Any] | None = None
    ) -> None:
        if not self._cfg().get("print_table", True):
            return
        names = _reported_groups(self.model, self.datamodule)
        values = {k: _value(metrics, k) for k in metrics if k.startswith(f"{stage}/")}
        self.test_results = values
        # On every rank: ``Trainer.log_dir`` broadcasts rank 0's folder under DDP, so asking for
        # it on rank 0 alone would leave the collective half-joined.
        log_dir = self.trainer.log_dir
        self._print_report(stage, values, names, train or {}, log_dir)

    def _evaluated(self) -> dict[str, Any]:
        """What the metrics are of: ``ckpt_path`` (or ``None``) and ``initial_weights``."""
        path = getattr(self.trainer, "ckpt_path", None)
        initial = path is None and self.subcommand in ("validate", "test")
        return {"ckpt_path": None if path is None else str(path), "initial_weights": initial}

    def _checkpoint_identity(self) -> dict[str, Any]:
        """``ckpt_size`` and ``ckpt_sha256`` of the evaluated checkpoint (export checks them)."""
        path = getattr(self.trainer, "ckpt_path", None)
        if path is None or not Path(path).is_file():
            return {}
        identity = file_identity(path)
        return {"ckpt_size": identity["size"], "ckpt_sha256": identity["sha256"]}

    def _summary_checkpoints(self, stage: str) -> tuple[str, str]:
        """``(checkpoint, last)`` of the summary: the file evaluated, and this fit's latest state.

        ``checkpoint`` is the file the metrics are of (the JSON's ``ckpt_path``); after a fit
        without a test, the best checkpoint of the fit. ``last`` (fit only) is the latest-state
        file as it was at the end of training, before testing reloaded the callbacks' state from
        the tested checkpoint.
        """
        if self.subcommand != "fit":
            return self._evaluated()["ckpt_path"] or "", ""
        if stage == "test":
            checkpoint = self._evaluated()["ckpt_path"] or ""
        else:
            ckpt = self.trainer.checkpoint_callback
            checkpoint = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        last = next((p for p in self._latest if p != checkpoint), "")
        return checkpoint, last

    @rank_zero_only
    def _print_report(
        self,
        stage: str,
        values: dict[str, float],
        names: Mapping[str, Sequence[str]],
        train: Mapping[str, Any],
        log_dir: str | None,
    ) -> None:
        trainer = self.trainer
        attributes = {a: len(groups) for a, groups in names.items()}
        print()
        print(fairness_table(values, attributes, prefix=stage, group_names=names))
        outputs = _output_names(self.model, self.datamodule)
        if outputs is not None:
            print(per_output_table(values, list(attributes), outputs[1], kind=outputs[0],
                                   prefix=stage))
        dbpm = dbpm_summary(train, names)
        if dbpm:
            print(dbpm)
        if isinstance(self.model, torch.nn.Module):
            print(parameter_summary(self.model))
        seeds = _seeds_line(self.seeds)
        if seeds:
            print(seeds)
        if log_dir is not None:
            os.makedirs(log_dir, exist_ok=True)
            out = Path(log_dir) / f"{stage}_metrics.json"
            record = {**values, **self._evaluated(), **self._checkpoint_identity()}
            atomic_write_text(out, json.dumps(record, indent=2, sort_keys=True) + "\n")
            print(f"logs:       {log_dir}")
            print(f"metrics:    {out}")
            config = Path(log_dir) / "config.yaml"
            if config.exists():
                print(f"config:     {config}")
        if self._evaluated()["initial_weights"]:
            print("weights:    initial (no --ckpt_path; --initial_weights true)")
        checkpoint, last = self._summary_checkpoints(stage)
        if checkpoint:
            print(f"checkpoint: {checkpoint}")
        if last:
            print(f"last:       {last}")
        # Lightning sets Trainer.callbacks in its callback connector; its class does not declare it
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            export = getattr(callback, "export_dir", None)
            if export:
                print(f"DBPM flags: {export}")
        sys.stdout.flush()

    def after_fit(self) -> None:
        """Test the best checkpoint and print the fairness table."""
        cfg = self._cfg()
        trainer = self.trainer
        if trainer.interrupted:
            return
        train = dict(trainer.callback_metrics)  # the last epoch's logs, before testing
        self._latest = self._latest_state_files()  # before testing reloads the callbacks' state
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


def _is_remote_or_registry(path: Any) -> bool:
    text = str(path)
    return "://" in text or text == "registry" or text.startswith("registry:")


def benchmark(**kwargs: Any) -> dict[str, Any]:
    """Run the benchmark of :mod:`fairvlm_lightning.app.benchmark` with the ``fairvlm`` CLI.

    The function behind ``fairvlm benchmark``: every run is ``fairvlm fit`` of a config with
    ``--seed_everything <seed>``, through :class:`FairVLMCLI`.

    Args:
        kwargs: keyword arguments of :func:`fairvlm_lightning.app.benchmark.run_benchmark`
            (``configs``, ``seeds``, ``out_dir``, ``max_epochs``, ``fairness_weights``,
            ``betas``, ...).

    Returns:
        The report written to ``<out_dir>/benchmark.json``.
    """
    from fairvlm_lightning.app.benchmark import run_benchmark

    return run_benchmark(FairVLMCLI, **kwargs)


def _benchmark_command(argv: list[str]) -> None:
    from fairvlm_lightning.app.benchmark import benchmark_main

    benchmark_main(FairVLMCLI, argv)


_EXTRA_COMMANDS = {
    "probe": _probe_command,
    "export": _export_command,
    "configs": _configs_command,
    "benchmark": _benchmark_command,
}


@contextlib.contextmanager
def quiet_terminal() -> Iterator[None]:
    """Keep third-party chatter off the ``fairvlm`` terminal; restore everything on exit.

    Inside the block: Lightning's and Lightning Fabric's loggers show warnings and errors only
    (their info lines, such as ``GPU available``, ``Seed set to``, ``Restoring states`` and the
    LitLogger tip, are left out: the command's own summary says where everything went), the
    progress bars of ``transformers`` (loading and writing weights) and ``datasets`` (the data
    module's one-off preprocessing) are off, and one third-party deprecation warning that the
    project cannot avoid is filtered (see the comment at the filter). Warnings otherwise show
    as usual. Lightning's own training and evaluation progress bars are not affected.

    Example:
        >>> import logging
        >>> with quiet_terminal():
        ...     logging.getLogger("lightning.pytorch").getEffectiveLevel() >= logging.WARNING
        True
    """
    import datasets
    import transformers

    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    hf_bars = transformers.utils.logging.is_progress_bar_enabled()
    data_bars = datasets.utils.logging.is_progress_bar_enabled()
    try:
        for lg in loggers:
            if lg.getEffectiveLevel() < logging.WARNING:
                lg.setLevel(logging.WARNING)
        transformers.utils.logging.disable_progress_bar()
        datasets.utils.logging.disable_progress_bar()
        with warnings.catch_warnings():
            # Lightning 2.6's own pytree helper (lightning.pytorch.utilities._pytree) still
            # uses torch's LeafSpec, deprecated in recent torch; it fires on every batch
            # transfer, whatever the caller does. Only this message, category and module.
            warnings.filterwarnings(
                "ignore",
                message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                category=FutureWarning,
                module=r"lightning\.pytorch\.utilities\._pytree",
            )
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if hf_bars:
            transformers.utils.logging.enable_progress_bar()
        if data_bars:
            datasets.utils.logging.enable_progress_bar()


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``fairvlm`` console script.

    ``fairvlm benchmark ...`` runs :func:`benchmark` (``fairvlm benchmark --help``); every
    other subcommand is :class:`FairVLMCLI`'s. Runs inside :func:`quiet_terminal`.

    Args:
        args: command-line arguments (default ``sys.argv[1:]``), e.g.
            ``["fit", "--config", "synthetic_robust_fair"]`` (a bare name is a shipped config).
            Besides ``LightningCLI``'s subcommands: ``probe --config X --ckpt_path Y`` (linear
            probe of a checkpoint), ``export --ckpt_path Y --out DIR`` (Hugging Face folder) and
            ``configs`` (list the shipped configs).

    Raises:
        SystemExit: status 2 for a bad argument (a missing, truncated or corrupt
            ``--ckpt_path`` included), 143 when the run was stopped by SIGTERM.
    """
    argv = sys.argv[1:] if args is None else list(args)
    with quiet_terminal():
        if argv and argv[0] in _EXTRA_COMMANDS:
            _EXTRA_COMMANDS[argv[0]](argv[1:])
            return
        FairVLMCLI(args=argv)


if __name__ == "__main__":  # pragma: no cover
    main()
