"""Every metric class through the harness of ``metric_harness``: batches, dtypes, 2 processes."""

from __future__ import annotations

import pytest
import torch
from metric_harness import CASES, DTYPES, check_batches, check_distributed

import fairvlm_lightning.metrics as metrics


def test_every_exported_metric_class_has_a_case():
    exported = {
        name
        for name in metrics.__all__
        if isinstance(getattr(metrics, name), type)
        and issubclass(getattr(metrics, name), torch.nn.Module)
    }
    assert exported == {name.split("[")[0] for name in CASES}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(CASES))
def test_batches_functional_reference(name: str, dtype: torch.dtype) -> None:
    check_batches(name, dtype)


def test_two_processes_equal_one_process() -> None:
    check_distributed(sorted(CASES))
