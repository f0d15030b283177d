"""Shared fixtures: a small synthetic FairVLMed folder and its tiny model, made once a session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# Under pytest-xdist (the README's test command runs 2 workers on 2 cores) each worker, and the
# processes it starts, uses one thread: two workers with 2 threads each would oversubscribe.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The keyword arguments the session's synthetic folder was written with. To build a data module
# on it, pass them back: SyntheticFairVLMedDataModule(root, synthetic_kwargs=...) (other settings
# would be refused: the folder is complete with these), or use
# FairVLMedDataModule(root, model=root/"tiny_model").
SYNTHETIC_TEST_KWARGS: dict[str, Any] = {
    "seed": 0,
    "sizes": {"train": 96, "val": 48, "test": 48},
    "warm_start_steps": 10,
}


@pytest.fixture(scope="session")
def synthetic_kwargs() -> dict[str, Any]:
    """The ``ensure_synthetic_assets`` settings of :func:`synthetic_root` (a fresh copy)."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in SYNTHETIC_TEST_KWARGS.items()}


@pytest.fixture(scope="session")
def synthetic_root(
    tmp_path_factory: pytest.TempPathFactory, synthetic_kwargs: dict[str, Any]
) -> Path:
    """A synthetic FairVLMed folder (96 train / 48 val / 48 test, 128x128) and ``tiny_model/``."""
    from fairvlm_lightning.app.synthetic import ensure_synthetic_assets

    root = tmp_path_factory.mktemp("synthetic_fairvlmed")
    return ensure_synthetic_assets(root, **synthetic_kwargs)

# A helper module, not a test module: not collected (for doctests) on its own, only imported by
# the metric tests. Collecting it made the CLI runs of app/test_bad_inputs_cli.py ignore
# --trainer.limit_train_batches in a full run.
collect_ignore = ["metric_harness.py"]
