"""`fairvlm fit --config synthetic_cxr` at a tiny size: a multi-label task with an intersection
runs through the data module, the module, DBPM, the Sinkhorn term, the metrics and the table.

The values themselves are checked against scikit-learn in
tests/metrics/test_metrics_multitask.py; here the wiring: the printed per-finding rows are the
metrics JSON's values, the intersection has the data's 8 named cells.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from fairvlm_lightning.app.cli import main
from fairvlm_lightning.app.synthetic.cxr import FINDINGS


def test_synthetic_cxr_trains_and_prints_tables_per_finding_and_intersection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["fairvlm"])
    monkeypatch.chdir(tmp_path)
    main([
        "fit", "--config", "synthetic_cxr",
        "--data.init_args.root", str(tmp_path / "cxr"),
        "--data.init_args.synthetic_kwargs",
        '{"sizes": {"train": 96, "validation": 64, "test": 64}, "warm_start_steps": 5}',
        "--model.model", str(tmp_path / "cxr" / "tiny_model"),
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1",
    ])
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "runs/synthetic_cxr/version_0/test_metrics.json").read_text())
    for k, finding in enumerate(FINDINGS):
        row = next(line for line in out.splitlines() if line.startswith(finding + " "))
        assert row.split()[1] == f"{metrics[f'test/auc_label_{k}']:.3f}"
    cells = next(line for line in out.splitlines() if line.startswith("race*sex "))
    assert "Black female" in cells and "Hispanic male" in cells
    assert len([k for k in metrics if re.fullmatch(r"test/race\*sex/auc_group_\d", k)]) == 8
    assert "test/race*sex/es_auc_label_4" in metrics
