"""Bad-input and fault matrix of the `fairvlm` command (issue 11, items 1-3, 5 and 6).

Checkpoints, run folders and resuming, through the real command on tiny sizes: ``last.ckpt`` is
the final epoch's state in every shipped config, ``test`` without a checkpoint is refused, two
runs never share a version folder, ``--ckpt_path last`` finds the earlier run, and a run killed
with SIGKILL in the middle of an epoch resumes to exactly the state of an uninterrupted one. The
data cases are in ``test_bad_inputs_data.py``, the training ones in
``test_bad_inputs_training.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from synthetic_args import synthetic_overrides

from fairvlm_lightning.app.cli import FairVLMCLI, claim_version, main

CONFIGS = Path(__file__).resolve().parents[2] / "fairvlm_lightning" / "configs"
# The FairVLMed-twin configs (synthetic_cxr: tests/app/test_cli_multilabel.py).
SYNTHETIC = sorted(p.name for p in CONFIGS.glob("synthetic_*.yaml") if p.stem != "synthetic_cxr")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fairvlm"])  # as from the console script


def _args(name: str, root: Path, kwargs: dict[str, Any], *extra: str) -> list[str]:
    return [
        "--config",
        str(CONFIGS / name),
        *synthetic_overrides(root, kwargs, eval_batch_size=48),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.num_sanity_val_steps",
        "0",
        *extra,
    ]


def _ckpt(path: str | Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True, map_location="cpu")


# --------------------------------------------------------------------------- 1: last.ckpt


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_keeps_the_latest_state_apart_from_the_best(name: str) -> None:
    callbacks = yaml.safe_load((CONFIGS / name).read_text())["trainer"]["callbacks"]
    checkpoints = [c["init_args"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert not any(c.get("save_last") and c.get("monitor") for c in checkpoints)
    assert [c for c in checkpoints if c.get("monitor") is None] == [{"filename": "last"}]


@pytest.mark.parametrize("name", SYNTHETIC)
def test_last_ckpt_holds_the_final_epoch(
    name: str,
    synthetic_root: Path,
    synthetic_kwargs: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    # lr 0: every epoch validates the same, so the best epoch stays epoch 0 and a last.ckpt
    # copied from the best checkpoint (Lightning's save_last with a monitor) would be epoch 0.
    max_epochs = 2
    main(
        [
            "fit",
            *_args(name, synthetic_root, synthetic_kwargs),
            "--model.optimizer.init_args.lr",
            "0.0",
            "--trainer.max_epochs",
            str(max_epochs),
            "--trainer.limit_train_batches",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--data.eval_batch_size",
            "16",
            "--test_after_fit",
            "false",
        ]
    )
    out = capsys.readouterr().out
    folder = tmp_path / "runs" / name.removesuffix(".yaml") / "version_0" / "checkpoints"
    last = folder / "last.ckpt"
    assert f"last:       {last.relative_to(tmp_path)}" in out
    assert _ckpt(last)["epoch"] == max_epochs - 1
    assert _ckpt(last)["global_step"] == max_epochs
    (best,) = [p for p in folder.glob("epoch=*.ckpt")]
    assert _ckpt(best)["epoch"] == 0 and best.name.startswith("epoch=0-")


def test_monitored_save_last_draws_a_warning(
    synthetic_root: Path, synthetic_kwargs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = _args("synthetic_clip.yaml", synthetic_root, synthetic_kwargs)
    callbacks = json.dumps(
        [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"monitor": "val/auc", "mode": "max", "save_last": True},
            }
        ]
    )
    with pytest.warns(UserWarning, match="holds the best epoch, not the last one"):
        FairVLMCLI(args=[*args, "--trainer.callbacks", callbacks], run=False)


# --------------------------------------------------------------------------- 2: test w/o ckpt


def test_test_without_ckpt_path_is_refused_unless_asked(
    synthetic_root: Path,
    synthetic_kwargs: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    args = _args("synthetic_robust_fair.yaml", synthetic_root, synthetic_kwargs)
    for subcommand in ("test", "validate"):
        with pytest.raises(SystemExit) as exc:
            main([subcommand, *args])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "initial (untrained) weights" in err and "--initial_weights true" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written

    main(["test", *args, "--initial_weights", "true"])
    out = capsys.readouterr().out
    assert "weights:    initial" in out
    run = tmp_path / "runs" / "synthetic_robust_fair" / "version_0"
    record = json.loads((run / "test_metrics.json").read_text())
    assert record["initial_weights"] is True and record["ckpt_path"] is None
    assert 0.0 <= record["test/auc"] <= 1.0


# --------------------------------------------------------------------------- 3: run folders


def test_concurrent_claims_get_distinct_versions(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    threads, claims = 8, 40
    start = threading.Barrier(threads)

    def claim(_: int) -> list[int]:
        start.wait()  # all threads race for the same numbers
        return [claim_version(root) for _ in range(claims)]

    with ThreadPoolExecutor(threads) as pool:
        got = sorted(v for vs in pool.map(claim, range(threads)) for v in vs)
    assert got == list(range(threads * claims))  # no number handed out twice
    assert len(list(root.iterdir())) == threads * claims


def test_two_runs_built_at_once_get_their_own_folder(
    synthetic_root: Path, synthetic_kwargs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # Two `fairvlm fit` built before either has written a file (fit itself is stubbed out):
    # Lightning's own numbering gives both version_0.
    monkeypatch.setattr(Trainer, "fit", lambda *args, **kwargs: None)
    args = [
        "fit",
        *_args("synthetic_clip.yaml", synthetic_root, synthetic_kwargs),
        "--test_after_fit",
        "false",
        "--print_table",
        "false",
    ]
    first, second = (FairVLMCLI(args=args) for _ in range(2))
    assert Path(first.trainer.log_dir).name == "version_0"
    assert Path(second.trainer.log_dir).name == "version_1"
    # the saved config keeps version null, so rerunning it claims a new folder as well
    assert first.config.fit.trainer.logger.init_args.version is None
    # building without running (run=False) creates no folder
    FairVLMCLI(args=args[1:], run=False)
    assert sorted(p.name for p in (tmp_path / "runs" / "synthetic_clip").iterdir()) == [
        "version_0",
        "version_1",
    ]


# --------------------------------------------------------------------------- 6: --ckpt_path last


def test_ckpt_path_last_resumes_the_latest_earlier_run_or_fails(
    synthetic_root: Path,
    synthetic_kwargs: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    base = _args(
        "synthetic_clip.yaml",
        synthetic_root,
        synthetic_kwargs,
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--test_after_fit",
        "false",
        "--print_table",
        "false",
    )
    with pytest.raises(SystemExit) as exc:
        main(["fit", *base, "--ckpt_path", "last"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--ckpt_path last: no last*.ckpt found" in err
    assert str(Path("runs") / "synthetic_clip" / "version_*" / "checkpoints") in err
    assert not (tmp_path / "runs").exists()

    main(["fit", *base, "--trainer.max_epochs", "2"])
    cli = FairVLMCLI(args=["fit", *base, "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    found = Path("runs") / "synthetic_clip" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"resuming:   {found}" in capsys.readouterr().out
    assert cli.trainer.ckpt_path == str(found)
    assert Path(cli.trainer.log_dir).name == "version_1"
    resumed = _ckpt(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] == 2 and resumed["global_step"] == 3  # 2 steps before, 1 after


# --------------------------------------------------------------------------- 5: SIGKILL mid-epoch

SIGNALLER = '''
import os
import signal

from lightning.pytorch import Callback


class SignalAt(Callback):
    """Send this process ``signal.<name>`` when the training loop is about to take ``step``."""

    def __init__(self, step: int, name: str) -> None:
        self.step, self.name = step, name

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.name))
'''

def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(
    synthetic_root: Path, synthetic_kwargs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """96 pairs, 6 steps per epoch; killed at step 10, resumed from the step-8 checkpoint.

    Step 8 is the 2nd of 6 batches of epoch 1: the resumed epoch must skip exactly those 32 pairs
    (a restarted order would see 32 pairs twice and miss 32), so every pair's DBPM history holds
    one loss per epoch and the memory equals that of a run that was never interrupted.
    """
    monkeypatch.chdir(tmp_path)
    (tmp_path / "signaller.py").write_text(SIGNALLER)
    mid = json.dumps(
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": 8, "filename": "mid", "save_top_k": 1},
        }
    )
    args = _args(
        "synthetic_dbpm.yaml",
        synthetic_root,
        synthetic_kwargs,
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--test_after_fit",
        "false",
        "--print_table",
        "false",
        "--trainer.callbacks+",
        mid,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fairvlm_lightning.app.cli",
            "fit",
            *args,
            "--trainer.callbacks+",
            json.dumps({"class_path": "signaller.SignalAt",
                        "init_args": {"step": 10, "name": "SIGKILL"}}),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    killed = tmp_path / "runs" / "synthetic_dbpm" / "version_0" / "checkpoints"
    state = _ckpt(killed / "mid.ckpt")
    assert state["global_step"] == 8 and state["epoch"] == 1
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 2, "num_batches": 6}
    ]

    main(["fit", *args, "--ckpt_path", str(killed / "mid.ckpt")])  # resumed: version_1
    main(["fit", *args])  # never interrupted: version_2
    runs = tmp_path / "runs" / "synthetic_dbpm"
    resumed = _ckpt(runs / "version_1" / "checkpoints" / "last.ckpt")
    reference = _ckpt(runs / "version_2" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == reference["global_step"] == 12

    def miner(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
        (key,) = [k for k in ckpt["callbacks"] if "DynamicBadPairMining" in k]
        return ckpt["callbacks"][key]["miner"]

    a, b = miner(resumed), miner(reference)
    assert torch.equal(a["history_count"], torch.full((96,), 2, dtype=a["history_count"].dtype))
    assert torch.equal(a["history_count"], b["history_count"])
    torch.testing.assert_close(a["history_sum"], b["history_sum"], rtol=1e-5, atol=1e-6)
    assert torch.equal(a["flags"], b["flags"])
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- issue 19


def _fit_once(root: Path, kwargs: dict, *extra: str) -> Path:
    """``fairvlm fit`` of synthetic_clip, 1 step per epoch; returns the run's last.ckpt."""
    main(
        [
            "fit",
            *_args("synthetic_clip.yaml", root, kwargs),
            "--trainer.limit_train_batches",
            "1",
            "--trainer.limit_val_batches",
            "1",
            "--test_after_fit",
            "false",
            "--print_table",
            "false",
            *extra,
        ]
    )
    runs = sorted((Path("runs") / "synthetic_clip").iterdir(), key=lambda p: p.stat().st_mtime)
    return runs[-1] / "checkpoints" / "last.ckpt"


def test_truncated_or_empty_checkpoint_is_named_by_every_command(
    synthetic_root: Path,
    synthetic_kwargs: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Item 9: ``OSError: [Errno 22]`` / a bare ``EOFError`` before; now the file is named, for
    test, fit (resume), probe and export, and no run folder is left behind."""
    monkeypatch.chdir(tmp_path)
    good = _fit_once(synthetic_root, synthetic_kwargs, "--trainer.max_epochs", "1")
    data = good.read_bytes()
    truncated, empty = tmp_path / "truncated.ckpt", tmp_path / "empty.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    args = _args("synthetic_clip.yaml", synthetic_root, synthetic_kwargs)
    for bad, what in ((truncated, "is truncated or corrupt"), (empty, "is empty")):
        commands = [
            ["test", *args, "--ckpt_path", str(bad)],
            ["fit", *args, "--ckpt_path", str(bad)],
            ["probe", *args, "--ckpt_path", str(bad)],
            ["export", "--ckpt_path", str(bad), "--out", str(tmp_path / "exported")],
        ]
        for command in commands:
            with pytest.raises(SystemExit) as exc:
                main(command)
            assert exc.value.code == 2, command[0]
            err = capsys.readouterr().err
            assert f"checkpoint {bad} (" in err and what in err, (command[0], err[-800:])
    assert [p.name for p in (tmp_path / "runs" / "synthetic_clip").iterdir()] == ["version_0"]
    assert not (tmp_path / "exported").exists()


def test_failed_resume_leaves_no_empty_run_folder(
    synthetic_root: Path, synthetic_kwargs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume that fails once the run folder is claimed (a readable file that is no Lightning
    checkpoint) leaves no empty ``version_N`` behind."""
    monkeypatch.chdir(tmp_path)
    not_lightning = tmp_path / "weights.ckpt"
    torch.save({"weights": torch.ones(2)}, not_lightning)
    args = _args("synthetic_clip.yaml", synthetic_root, synthetic_kwargs)
    with pytest.raises(Exception) as exc:  # noqa: PT011 (Lightning's own error)
        main(["fit", *args, "--ckpt_path", str(not_lightning)])
    assert not isinstance(exc.value, SystemExit)
    root = tmp_path / "runs" / "synthetic_clip"
    assert not root.exists() or list(root.iterdir()) == []


def test_summary_lines_name_the_checkpoints_they_are_computed_from(
    synthetic_root: Path,
    synthetic_kwargs: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Item 8: after a resume ``last:`` named the previous run's file, and ``test --ckpt_path
    last`` printed the best epoch as ``checkpoint:`` (and "resuming:") while the JSON named
    last.ckpt."""
    monkeypatch.chdir(tmp_path)
    base = [
        *_args("synthetic_clip.yaml", synthetic_root, synthetic_kwargs),
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
    ]
    main(["fit", *base, "--trainer.max_epochs", "2"])
    capsys.readouterr()
    main(["fit", *base, "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    out = capsys.readouterr().out

    def line(text: str, key: str) -> str:
        return next(x for x in text.splitlines() if x.startswith(f"{key}:")).split(":", 1)[1]

    runs = Path("runs") / "synthetic_clip"
    assert f"resuming:   {runs / 'version_0' / 'checkpoints' / 'last.ckpt'}" in out
    last = Path(line(out, "last").strip())
    assert last == runs / "version_1" / "checkpoints" / "last.ckpt"
    assert _ckpt(last)["epoch"] == 2  # the resumed run's final epoch, read from the file named
    tested = line(out, "checkpoint").strip()
    record = json.loads((runs / "version_1" / "test_metrics.json").read_text())
    assert record["ckpt_path"] == tested  # the file tested, as the JSON records it
    epoch = re.search(r"epoch=(\d+)", tested)
    assert epoch and _ckpt(tested)["epoch"] == int(epoch.group(1))

    main(["test", *base, "--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert "resuming" not in out
    record = json.loads((runs / "version_2" / "test_metrics.json").read_text())
    assert record["ckpt_path"] == str(last)
    assert line(out, "checkpoint").strip() == str(last)
    assert "last:" not in out  # an evaluation names the one file it evaluated



def test_sigterm_mid_epoch_exits_143_and_keeps_the_last_epoch(
    synthetic_root: Path, synthetic_kwargs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 7: Lightning stops on SIGTERM with exit status 0, read as success by schedulers."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "signaller.py").write_text(SIGNALLER)
    args = _args(
        "synthetic_clip.yaml",
        synthetic_root,
        synthetic_kwargs,
        "--trainer.max_epochs",
        "3",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.callbacks+",
        json.dumps({"class_path": "signaller.SignalAt",
                    "init_args": {"step": 4, "name": "SIGTERM"}}),
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, "-m", "fairvlm_lightning.app.cli", "fit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 128 + signal.SIGTERM == 143, proc.stderr[-3000:]
    # signalled as step 5 (index 4) starts: Lightning finishes that step, then stops
    assert "stopped by SIGTERM (epoch 1, step 5)" in proc.stderr
    assert "exit status 143" in proc.stderr
    run = tmp_path / "runs" / "synthetic_clip" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert str(last.relative_to(tmp_path)) in proc.stderr
    state = _ckpt(last)  # intact: loads, and holds the last finished epoch
    assert state["epoch"] == 0 and state["global_step"] == 3
    assert not (run / "test_metrics.json").exists()  # not tested, nothing reported as a result
