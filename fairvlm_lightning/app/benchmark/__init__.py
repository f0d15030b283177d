"""``fairvlm benchmark``: the method against its ablations, over seeds, with paired intervals.

Every run is a ``fairvlm fit`` of a config with ``--seed_everything <seed>`` (the epoch is chosen
on validation, the best checkpoint is tested). :mod:`.variants` says what runs,
:mod:`.runner` runs it, :mod:`.stats` aggregates over seeds, :mod:`.report` writes the page and
:mod:`.command` is the command line.

Example:
    >>> from fairvlm_lightning.app.benchmark import paired_t_interval
    >>> [round(x, 4) for x in paired_t_interval([0.01, 0.02, 0.03])]
    [0.02, -0.0048, 0.0448]
"""

from fairvlm_lightning.app.benchmark.command import benchmark_main, benchmark_parser
from fairvlm_lightning.app.benchmark.report import format_summary, render_markdown
from fairvlm_lightning.app.benchmark.runner import run_benchmark
from fairvlm_lightning.app.benchmark.stats import (
    HEADROOM_KEYS,
    detection_scores,
    headroom,
    paired_t_interval,
    summarise,
    verdict,
)
from fairvlm_lightning.app.benchmark.variants import (
    BASELINE,
    DATA_VARIANTS,
    DEFAULT_CONFIGS,
    Variant,
    config_settings,
    config_value,
    data_variant_args,
    make_variants,
)

__all__ = [
    "BASELINE",
    "DATA_VARIANTS",
    "DEFAULT_CONFIGS",
    "HEADROOM_KEYS",
    "Variant",
    "benchmark_main",
    "benchmark_parser",
    "config_settings",
    "config_value",
    "data_variant_args",
    "detection_scores",
    "format_summary",
    "headroom",
    "make_variants",
    "paired_t_interval",
    "render_markdown",
    "run_benchmark",
    "summarise",
    "verdict",
]
