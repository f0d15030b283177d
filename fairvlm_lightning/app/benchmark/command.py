"""``fairvlm benchmark``: its arguments and the command."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from fairvlm_lightning.app.benchmark.report import format_summary
from fairvlm_lightning.app.benchmark.runner import run_benchmark
from fairvlm_lightning.app.benchmark.variants import DATA_VARIANTS, DEFAULT_CONFIGS

__all__ = [
    "benchmark_main",
    "benchmark_parser",
]


# command line
# ------------------------------------------------------------------------------------------------
def benchmark_parser() -> ArgumentParser:
    """The ``fairvlm benchmark`` argument parser."""
    p = ArgumentParser(
        prog="fairvlm benchmark",
        description="Run configs x seeds as `fairvlm fit` would (select on validation, report "
        "test) and write benchmark.json, benchmark.md and plots into one folder. Finished runs "
        "are reused.",
    )
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                   help="config names (shipped) or YAML paths; default the five synthetic ones")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seed_everything values (default 0 1 2 3 4; --quick: 0 1)")
    p.add_argument("--out", default="benchmarks/results/benchmark", help="output folder")
    p.add_argument("--baseline", default=None, help="variant to compare against")
    p.add_argument("--max_epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--quick", action="store_true",
                   help="2 seeds and 4 epochs (a few minutes; for CI)")
    p.add_argument("--fairness_weights", nargs="*", type=float, default=[],
                   help="λ sweep points for the configs with the fairness term")
    p.add_argument("--betas", nargs="*", type=float, default=[],
                   help="β sweep points (beta_noisy = beta_faulty) for the configs with DBPM")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="per-run bootstrap replicates of the test metrics (0: off)")
    p.add_argument("--ci", type=float, default=0.95, help="interval coverage")
    p.add_argument("--no_plots", action="store_true", help="skip the PNGs")
    p.add_argument("--results_page", default=None,
                   help="also write this Markdown page (e.g. docs/results.md)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--data_variant", default="default", choices=sorted(DATA_VARIANTS),
                   help="generator setting of the synthetic twin: default, or shifted (another "
                   "seed, 15%% bad pairs, 60%% of them in the minority race groups)")
    p.add_argument("--no_oracle", action="store_true",
                   help="skip the clean-data oracle (baseline trained without the bad pairs)")
    p.add_argument("--fit_args", default="",
                   help="extra `fairvlm fit` arguments for every run, as one quoted string "
                   "(e.g. \"--data.root /data/synth --trainer.accelerator gpu\")")
    return p


def benchmark_main(cli_class: Callable[..., Any], argv: Sequence[str]) -> dict[str, Any]:
    """Parse ``fairvlm benchmark`` arguments, run, print the overall table and the verdicts."""
    ns = benchmark_parser().parse_args(list(argv))
    seeds = ns.seeds if ns.seeds is not None else ([0, 1] if ns.quick else [0, 1, 2, 3, 4])
    max_epochs = ns.max_epochs if ns.max_epochs is not None else (4 if ns.quick else None)
    report = run_benchmark(
        cli_class,
        configs=ns.configs,
        seeds=seeds,
        out_dir=ns.out,
        baseline=ns.baseline,
        max_epochs=max_epochs,
        fairness_weights=ns.fairness_weights,
        betas=ns.betas,
        bootstrap=ns.bootstrap,
        ci=ns.ci,
        plots=not ns.no_plots,
        results_page=ns.results_page,
        command="fairvlm benchmark " + " ".join(argv),
        progress=not ns.no_progress,
        extra_args=shlex.split(ns.fit_args),
        data_variant=ns.data_variant,
        oracle=not ns.no_oracle,
    )
    print(format_summary(report))
    print(f"report: {Path(ns.out) / 'benchmark.md'}")
    return report
