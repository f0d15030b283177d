"""What a new user sees from `fairvlm` (issue 19 items 10 and 11).

The README's main command, run for real in a fresh folder (the synthetic data and the tiny model
are built by the command itself), may print the fairness table, the DBPM line, the summary of
files and Lightning's progress bar, and nothing else: no Hugging Face or Lightning chatter, no
model summary, no deprecation warnings, no "args and command line" warning. ``--help`` names
every command and ``configs`` prints whole descriptions.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelSummary
from synthetic_args import synthetic_overrides

from fairvlm_lightning.app.cli import FairVLMCLI, main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "fairvlm_lightning" / "configs"

# The summary block and the table: the only lines besides the progress bar.
ALLOWED = [
    r"test: AUC \d\.\d{3} \| Acc \d\.\d{3}",
    r"attribute  AUC    ES-AUC  DPD    DEOdds  group AUCs",
    r"(race|gender|ethnicity|language) +\d\.\d{3}  .*",
    r"DBPM: .*",  # its content belongs to the DBPM callback: matched by its prefix only
    r"parameters: [\d,]+ trainable / [\d,]+ total \(.*\)",
    r"seeds:      seed_everything=0, data\.seed=0 \(from seed_everything\)",
    r"logs:       runs/synthetic_robust_fair/version_0",
    r"metrics:    runs/synthetic_robust_fair/version_0/test_metrics\.json",
    r"config:     runs/synthetic_robust_fair/version_0/config\.yaml",
    r"checkpoint: runs/synthetic_robust_fair/version_0/checkpoints/epoch=0-step=10\.ckpt",
    r"last:       runs/synthetic_robust_fair/version_0/checkpoints/last\.ckpt",
]


def _is_progress_bar(line: str) -> bool:
    """Lightning's (Rich) progress bar: the bar itself, or its right-hand metrics column."""
    if "━" in line:
        return True
    return bool(re.fullmatch(r" {30,}(train/[\w/]+:|-?\d+(\.\d+)?(e[-+]\d+)?)\s*", line))


@pytest.fixture(autouse=True)
def _argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fairvlm"])  # as from the console script


def test_readme_main_command_prints_the_table_and_the_summary_only(tmp_path: Path) -> None:
    root = tmp_path / "fresh"  # not built yet: the command builds it, quietly
    # 160 pairs per split: 10 training batches (>= log_every_n_steps, no "few batches"
    # warning), and every group of every attribute present in validation and test (with a
    # full-size eval batch the sanity check sees them all), as with the default sizes.
    kwargs = {"seed": 0, "sizes": {"train": 160, "val": 160, "test": 160}, "warm_start_steps": 5}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARNINGS")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "fairvlm_lightning.app.cli",
        "fit",
        "--config",
        "synthetic_robust_fair",
        *synthetic_overrides(root, kwargs, eval_batch_size=160),
        "--trainer.max_epochs",
        "1",
    ]
    proc = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = [
        line.rstrip()
        for text in (proc.stdout, proc.stderr)
        for line in re.split(r"[\r\n]", text)
        if line.strip() and not _is_progress_bar(line)
    ]
    unexpected = [line for line in printed if not any(re.fullmatch(p, line) for p in ALLOWED)]
    assert unexpected == [], "\n".join(["printed besides the summary:", *unexpected])
    for pattern in ALLOWED:  # and everything of the summary is there, once
        assert sum(bool(re.fullmatch(pattern, line)) for line in printed) == (
            4 if pattern.startswith("(race") else 1
        ), pattern
    assert proc.stdout.count("━") > 0  # the progress bar was on


def test_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    every = ("fit", "validate", "test", "predict", "configs", "probe", "export", "benchmark")
    for command in every:
        assert re.search(rf"\b{command}\b", out), command
    for command in ("configs", "probe", "export", "benchmark"):  # and each one's help works
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert f"fairvlm {command}" in capsys.readouterr().out


def test_configs_prints_whole_descriptions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    main(["configs"])
    out = capsys.readouterr().out
    entries = re.split(r"\n  (?=\S)", out.split(":\n", 1)[1])
    described = {e.split()[0]: " ".join(e.split()[1:]) for e in entries}
    assert sorted(described) == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    for name, text in described.items():
        # the header comment's text up to the example command (read here without the CLI)
        header = []
        for line in (CONFIGS / f"{name}.yaml").read_text().splitlines():
            if not line.startswith("#") or "fairvlm fit" in line:
                break
            header.append(line.lstrip("#").strip())
        assert text == " ".join(header), name
        assert text.endswith((".", ")")), name
    assert "(Adam, lr 1e-5, betas (0.1, 0.1), eps 1e-6, weight decay 6e-5)" in (
        described["fairvlmed_clip_vitb16"]
    )
    assert all(len(line) <= 100 for line in out.splitlines() if "shipped configs" not in line)


def test_no_args_warning_no_model_summary_no_version_number(
    synthetic_root: Path, synthetic_kwargs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [
        "fit",
        "--config",
        "synthetic_clip",
        *synthetic_overrides(synthetic_root, synthetic_kwargs),
    ]
    monkeypatch.setattr(sys, "argv", ["fairvlm", *args])  # both argv and args, as main() has
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    with warnings.catch_warnings(record=True) as record, pytest.raises(SystemExit) as exc:
        warnings.simplefilter("always")
        main([*args, "--print_config"])
    assert exc.value.code == 0
    assert [str(w.message) for w in record if "not recommended" in str(w.message)] == []
    assert logger.level == level  # main() restores what it quietened
    cli = FairVLMCLI(args=args[1:], run=False)
    assert not any(isinstance(c, ModelSummary) for c in cli.trainer.callbacks)
    bar = cli.trainer.progress_bar_callback
    assert bar is not None and "v_num" not in bar.get_metrics(cli.trainer, cli.model)
