"""benchmarks/device_check.py --smoke runs on the CPU, so that the GPU check cannot rot."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_subset_writes_json_and_table(device_check, tmp_path, capsys):
    # A subset of --smoke (one batch size, the methods that exercise every code path: plain,
    # DBPM + the fused term, the reference style, LoRA); the full --smoke runs all methods.
    out = tmp_path / "dc.json"
    methods = ["clip", "full_fused", "reference_style", "clip_lora"]
    result = device_check.main(
        ["--smoke", "--out", str(out), "--batch-sizes", "8", "--methods", *methods]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["meta"]["device"] == "cpu" and result["meta"]["smoke"] is True
    steps = {r["method"]: r for r in result["steps"]}
    assert list(steps) == methods
    for row in steps.values():
        assert "error" not in row, row
        assert row["batch_size"] == 8 and row["step_ms"] > 0 and row["peak_mib"] > 0
        assert row["kernels_per_step"] > 100
    # The term adds operations to the step; LoRA trains a small fraction of the parameters.
    assert steps["full_fused"]["kernels_per_step"] > steps["clip"]["kernels_per_step"] + 1000
    assert steps["clip_lora"]["trainable_params"] < steps["clip"]["trainable_params"] / 5
    terms = {r["variant"]: r for r in result["term"]}
    assert set(terms) == {"eager", "compile aot_eager"}
    for row in terms.values():
        assert "error" not in row, row
        assert row["ms"] > 0 and row["kernels"] > 100
    (metrics,) = result["metrics"]  # the device is the CPU: measured once
    assert metrics["device"] == "cpu" and metrics["n"] == 10**4 and math.isfinite(metrics["ms"])
    table = capsys.readouterr().out
    for method in methods:
        assert method in table
    assert "compile aot_eager" in table and f"wrote {out}" in table
