"""Running a benchmark: ``fairvlm fit`` of every (variant, seed), resumable, one writer per folder.

A run is done when its ``result.json`` (written atomically, last) exists and records the same
settings; a crashed run leaves none and is redone. A benchmark holds ``<out>/.benchmark.lock``
while it runs, so a second one on the same folder fails at once naming the holder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

from fairvlm_lightning.app.benchmark.report import make_plots, render_markdown, sweep_table
from fairvlm_lightning.app.benchmark.stats import detection_scores, headroom, summarise, with_means
from fairvlm_lightning.app.benchmark.variants import (
    BASELINE,
    DATA_VARIANTS,
    DEFAULT_CONFIGS,
    DETAIL_ATTRIBUTE,
    ORACLE_SUFFIX,
    Variant,
    config_settings,
    data_variant_args,
    make_variants,
    materialise_config,
)
from fairvlm_lightning.atomic import (
    FileLock,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from fairvlm_lightning.callbacks import find_bad_pair_mining
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS, BAD_PAIR_FIELD

__all__ = [
    "run_benchmark",
]


# ------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------
def _run_key(config_text: str, args: Sequence[str]) -> str:
    body = json.dumps([_RESULT_VERSION, config_text, list(args)])
    return hashlib.sha256(body.encode()).hexdigest()[:16]

_RESULT = "result.json"
_LOCK = ".benchmark.lock"
_RESULT_VERSION = 1


def _write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_json(path, data)  # a unique temp name: never shared between processes


def _strip(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if k.startswith(prefix + "/"):
            out[k[len(prefix) + 1 :]] = float(v.item() if isinstance(v, torch.Tensor) else v)
    return out


def _dbpm_record(cli: Any, folder: Path) -> dict[str, Any] | None:
    """The miner's final per-pair statistic and flags, scored against the planted bad pairs."""
    trainer = cli.trainer
    dbpm = find_bad_pair_mining(trainer)
    if dbpm is None or dbpm.miner is None:
        return None
    miner = dbpm.miner
    stat = miner.history_mean.detach().cpu().double().numpy()
    flagged = miner.flagged_mask.detach().cpu().numpy().astype(bool)
    summary = {k: float(v) for k, v in miner.summary().items()}
    record: dict[str, Any] = {
        "threshold_noisy": summary.get("threshold_noisy", math.nan),
        "threshold_faulty": summary.get("threshold_faulty", math.nan),
        "mu": summary.get("mu", math.nan),
        "sigma": summary.get("sigma", math.nan),
        "num_flagged": float(flagged.sum()),
        "beta_noisy": float(getattr(dbpm, "beta_noisy", math.nan)),
        "beta_faulty": float(getattr(dbpm, "beta_faulty", math.nan)),
    }
    arrays: dict[str, np.ndarray] = {"statistic": stat, "flagged": flagged}
    train = getattr(cli.datamodule, "datasets", {}).get("train")
    if train is not None:
        index = np.asarray(train["index"], dtype=np.int64)
        order = np.argsort(index)
        detail = DETAIL_ATTRIBUTE
        if detail in train.column_names:
            codes = np.full(len(stat), -1, dtype=np.int64)
            codes[index[order]] = np.asarray(train[detail])[order]
            arrays[detail] = codes
        if BAD_PAIR_FIELD in train.column_names:
            bad = np.zeros(len(stat), dtype=bool)
            bad[index[order]] = np.asarray(train[BAD_PAIR_FIELD], dtype=bool)[order]
            arrays[BAD_PAIR_FIELD] = bad
            hits = float((flagged & bad).sum())
            record["num_bad"] = float(bad.sum())
            flagged_total = record["num_flagged"]
            record["precision"] = hits / flagged_total if flagged_total else math.nan
            record["recall"] = hits / record["num_bad"] if record["num_bad"] else math.nan
            if detail in arrays:
                per_group = {}
                for g in range(ATTRIBUTE_GROUPS[detail]):
                    m = arrays[detail] == g
                    f, b = flagged & m, bad & m
                    per_group[str(g)] = {
                        "flagged": float(f.sum()),
                        "bad": float(b.sum()),
                        "precision": float((f & bad).sum() / f.sum()) if f.sum() else math.nan,
                        "recall": float((f & b).sum() / b.sum()) if b.sum() else math.nan,
                    }
                record[detail] = per_group
    np.savez_compressed(folder / "dbpm.npz", **arrays)  # type: ignore[arg-type]
    return record


def _predictions(cli: Any, folder: Path) -> None:
    """Test predictions of the selected model (for the ROC plots), saved as ``predictions.npz``."""
    outputs = cli.trainer.predict(cli.model, datamodule=cli.datamodule, return_predictions=True)
    if not outputs:
        return
    keys = ["score", "label", *[k for k in ATTRIBUTE_GROUPS if k in outputs[0]]]
    arrays = {k: torch.cat([o[k].detach().cpu() for o in outputs]).numpy() for k in keys}
    np.savez_compressed(folder / "predictions.npz", **arrays)  # type: ignore[arg-type]


def _run_one(
    cli_class: Callable[..., Any],
    variant: Variant,
    config: Path,
    seed: int,
    folder: Path,
    extra: Sequence[str],
    key: str,
) -> dict[str, Any]:
    """``fairvlm fit`` one (variant, seed) into ``folder``; return (and save) its record."""
    work = folder / "work"
    if work.exists():  # a crashed earlier attempt (the out_dir lock rules out a live one)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    args = [
        "fit",
        "--config",
        str(config),
        "--seed_everything",
        str(seed),
        *variant.overrides,
        "--trainer.logger.init_args.save_dir",
        str(work),
        "--trainer.logger.init_args.name",
        "logs",
        "--trainer.logger.init_args.version",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]
    start = time.perf_counter()
    log_path = folder / "log.txt"
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    try:
        for lg in loggers:  # Lightning's handlers hold the real stderr: route them to the log
            lg.handlers, lg.propagate = [handler], False
        with open(log_path, "a", encoding="utf-8") as log:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cli = cli_class(args=args)
                    if cli.trainer.interrupted:
                        raise RuntimeError(f"run {variant.name} seed {seed} was interrupted")
                    test = _strip(cli.test_results, "test")
                    val_out = cli.trainer.validate(
                        cli.model, datamodule=cli.datamodule, verbose=False
                    )
                    val = _strip(val_out[0] if val_out else {}, "val")
                    _predictions(cli, folder)
                    dbpm = _dbpm_record(cli, folder)
    except (Exception, SystemExit) as err:
        handler.close()
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise RuntimeError(
            f"benchmark run {variant.name} seed {seed} failed ({type(err).__name__}: {err}); "
            f"its log {log_path} ends with:\n{tail}"
        ) from err
    finally:
        handler.close()
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
    ckpt = cli.trainer.checkpoint_callback
    record = {
        "version": _RESULT_VERSION,
        "key": key,
        "variant": variant.name,
        "base": variant.base,
        "sweep": variant.sweep,
        "config": str(variant.config),
        "seed": seed,
        "seeds": getattr(cli, "seeds", {}),
        "args": args,
        "test": test,
        "val": val,
        "dbpm": dbpm,
        "best_checkpoint": str(getattr(ckpt, "best_model_path", "")),
        "best_val_auc": float(getattr(ckpt, "best_model_score", math.nan) or math.nan),
        "epochs": int(cli.trainer.current_epoch),
        "seconds": time.perf_counter() - start,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for path in (work / "logs" / "version_0" / "checkpoints").glob("*.ckpt"):
        path.unlink()  # checkpoints are large and not needed once the run is scored
    _write_json_atomic(folder / _RESULT, record)  # last: its presence marks the run done
    return record


def _load_done(folder: Path, key: str) -> dict[str, Any] | None:
    path = folder / _RESULT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("key") == key else None


# ------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _holding_out_dir_lock(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` holding the lock of its ``out_dir`` argument (created when missing)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out = Path(bound.arguments["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        with FileLock(out / _LOCK, what=f"benchmark output folder {out}"):
            return fn(*args, **kwargs)

    return locked


@_holding_out_dir_lock
def run_benchmark(
    cli_class: Callable[..., Any],
    *,
    configs: Sequence[str | os.PathLike[str]] = DEFAULT_CONFIGS,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    out_dir: str | os.PathLike[str] = "benchmarks/results/benchmark",
    baseline: str | None = None,
    max_epochs: int | None = None,
    fairness_weights: Sequence[float] = (),
    betas: Sequence[float] = (),
    bootstrap: int = 1000,
    ci: float = 0.95,
    plots: bool = True,
    results_page: str | os.PathLike[str] | None = None,
    command: str | None = None,
    progress: bool = True,
    extra_args: Sequence[str] = (),
    data_variant: str = "default",
    oracle: bool = True,
) -> dict[str, Any]:
    """Run configs × seeds as ``fairvlm fit`` would, then write the report into ``out_dir``.

    Writes ``benchmark.json`` (every run and the summary), ``benchmark.md`` (tables, verdicts,
    plots) and the PNGs (with matplotlib, the ``plot`` extra) into ``out_dir``; runs live in
    ``out_dir/runs/<variant>/seed_<s>/`` and are not redone once finished.

    Args:
        cli_class: the ``LightningCLI`` subclass of ``fairvlm`` (:class:`~fairvlm_lightning.app.cli.
            FairVLMCLI`); :func:`fairvlm_lightning.app.cli.benchmark` passes it for you.
        configs: config names (shipped) or paths; default the five synthetic configs.
        seeds: values of ``--seed_everything`` (the data order follows, see ``fairvlm fit``).
        out_dir: output folder.
        baseline: variant the others are compared to (default ``synthetic_clip`` when present,
            else the first config).
        max_epochs: override ``trainer.max_epochs`` of every config (``--quick`` uses fewer).
        fairness_weights: λ sweep points (configs with the fairness term).
        betas: β sweep points (configs with DBPM; ``beta_noisy = beta_faulty``).
        bootstrap: replicates of the per-run percentile bootstrap of the test metrics (0: off).
        ci: coverage of every interval.
        plots: write the PNGs (needs matplotlib; skipped with a warning when missing).
        results_page: also write this Markdown page (e.g. ``docs/results.md``), plots copied
            next to it into ``<stem>/``.
        command: the command line to record in the report.
        progress: show a progress bar on stderr.
        extra_args: more ``fairvlm fit`` arguments for every run.
        data_variant: generator setting of the synthetic twin (:data:`DATA_VARIANTS`).
        oracle: also train the baseline without the planted bad pairs (``<baseline>_oracle``)
            and report each method's capture of that headroom (:func:`headroom`); needs data
            with an ``is_bad_pair`` field (the synthetic twin).

    Returns:
        The content of ``benchmark.json``.

    Raises:
        fairvlm_lightning.atomic.InUseError: another benchmark is writing ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    variants = make_variants(configs, fairness_weights, betas)
    names = [v.name for v in variants]
    if baseline is None:
        baseline = BASELINE if BASELINE in names else names[0]
    if baseline not in names:
        raise ValueError(f"baseline {baseline!r} is not among the variants {names}")
    oracle_name = baseline + ORACLE_SUFFIX if oracle else None
    if oracle_name is not None:
        if oracle_name in names:
            raise ValueError(f"a config is named like the oracle variant {oracle_name!r}")
        base_variant = variants[names.index(baseline)]
        variants.insert(
            names.index(baseline) + 1,
            Variant(
                oracle_name,
                base_variant.config,
                [*base_variant.overrides, "--data.drop_bad_pairs", "true"],
                base=base_variant.base,
                oracle=True,
            ),
        )
    extra = [*data_variant_args(data_variant), *extra_args]
    if max_epochs is not None:
        extra += ["--trainer.max_epochs", str(int(max_epochs))]
    if bootstrap:
        extra += ["--model.metrics", json.dumps({"bootstrap": int(bootstrap), "ci": ci})]
    materialised = {v.name: materialise_config(v, out / "configs") for v in variants}
    jobs = []
    for s in seeds:  # seed by seed: a partial benchmark still compares every method
        for v in variants:
            config = materialised[v.name]
            text = config.read_text(encoding="utf-8")
            folder = out / "runs" / v.name / f"seed_{s}"
            args = [*v.overrides, *extra, f"seed={s}"]
            jobs.append((v, config, s, folder, _run_key(text, args)))

    results: list[dict[str, Any]] = []
    todo = []
    for job in jobs:
        done = _load_done(job[3], job[4])
        if done is not None:
            results.append(done)
        else:
            todo.append(job)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(jobs),
            initial=len(jobs) - len(todo),
            desc="benchmark runs",
            unit="run",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    start = time.perf_counter()
    try:
        for i, (v, config, s, folder, key) in enumerate(todo):
            if bar is not None:
                bar.set_postfix_str(f"{v.name} seed {s}")
            folder.mkdir(parents=True, exist_ok=True)
            record = _run_one(cli_class, v, config, s, folder, extra, key)
            results.append(record)
            elapsed = time.perf_counter() - start
            left = elapsed / (i + 1) * (len(todo) - i - 1)
            if bar is not None:
                bar.update(1)
                bar.write(
                    f"{v.name} seed {s}: {record['seconds']:.0f} s, test AUC "
                    f"{record['test'].get('auc', math.nan):.3f}, mean ES-AUC "
                    f"{with_means(record['test'], ATTRIBUTE_GROUPS)['mean/es_auc']:.3f}; "
                    f"{len(todo) - i - 1} runs left, about {left / 60:.1f} min",
                    file=sys.stderr,
                )
    finally:
        if bar is not None:
            bar.close()
    for r in results:  # score the final flags from the saved per-pair state
        state = out / "runs" / str(r["variant"]) / f"seed_{r['seed']}" / "dbpm.npz"
        if r.get("dbpm") and state.is_file():
            with np.load(state) as z:
                if BAD_PAIR_FIELD in z:
                    groups = z[DETAIL_ATTRIBUTE] if DETAIL_ATTRIBUTE in z else None
                    r["detection"] = detection_scores(
                        z["statistic"], z["flagged"], z[BAD_PAIR_FIELD], groups
                    )
    rank = {v.name: i for i, v in enumerate(variants)}
    results.sort(key=lambda r: (rank.get(r["variant"], 0), int(r["seed"])))
    summary = summarise(results, baseline=baseline, ci=ci)
    sweeps = sweep_table(variants, summary)
    report = {
        "command": command,
        "data_variant": data_variant,
        "data_settings": DATA_VARIANTS[data_variant],
        "headroom": headroom(summary, oracle_name) if oracle_name else {},
        "settings": {
            v.name: {
                "config": v.config.name,
                **config_settings(v.config),
                "overrides": list(v.overrides),
            }
            for v in variants
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seeds": seeds,
        "variants": [
            {"name": v.name, "config": str(v.config), "overrides": v.overrides, "sweep": v.sweep,
             "base": v.base, "oracle": v.oracle}
            for v in variants
        ],
        "max_epochs": max_epochs,
        "bootstrap": bootstrap,
        "summary": summary,
        "sweeps": sweeps,
        "runs": results,
        "total_run_seconds": float(sum(r.get("seconds", 0.0) for r in results)),
    }
    images: dict[str, str] = {}
    if plots:
        try:
            images = make_plots(out, variants, results, summary, baseline)
        except ImportError as err:
            warnings.warn(f"plots skipped: {err}", stacklevel=2)
    report["plots"] = images
    _write_json_atomic(out / "benchmark.json", report)
    markdown = render_markdown(report, images)
    atomic_write_text(out / "benchmark.md", markdown)
    if results_page is not None:
        page = Path(results_page)
        page.parent.mkdir(parents=True, exist_ok=True)
        assets = page.parent / page.stem
        assets.mkdir(parents=True, exist_ok=True)
        moved = {}
        for name, file in images.items():
            atomic_write_bytes(assets / file, (out / file).read_bytes())
            moved[name] = f"{page.stem}/{file}"
        atomic_write_text(page, render_markdown(report, moved))
    return report
