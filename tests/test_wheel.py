"""Installed from pip, not cloned: build the wheel, install it into a throwaway venv (reusing this
venv's site-packages for the dependencies, so nothing is downloaded), and from an unrelated
folder list the shipped configs and run the main job by bare config name. The synthetic data and
tiny model must land in the user cache folder ($FAIRVLM_CACHE), not the working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# Subprocesses see neither the source tree (PYTHONPATH) nor this venv as the active one.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", CLEAN_ENV)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


def test_wheel_runs_main_job_by_config_name(tmp_path: Path) -> None:
    # Build from a clean copy of the sources: an in-tree build/ folder left by an earlier build
    # would otherwise leak stale files into the wheel.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "runs", ".fairvlm_cache", "__pycache__",
        "results", "lightning_logs",
    ))  # fmt: skip
    wheels = tmp_path / "wheels"
    build = _run([
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(wheels), str(src),
    ])  # fmt: skip
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr[-800:]}")
    (wheel,) = wheels.glob("fairvlm_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("fairvlm_lightning/configs/"))
    assert "fairvlm_lightning/configs/synthetic_robust_fair.yaml" in shipped
    assert "fairvlm_lightning/configs/fairvlmed_clip_vitb16.yaml" in shipped
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    inst = _run([
        sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
        "-q", str(wheel),
    ])  # fmt: skip
    assert inst.returncode == 0, inst.stderr[-2000:]
    # Only then (so pip never sees this venv's editable install) the dependencies from this
    # venv, as a plain path entry: its editable-install hooks stay inactive.
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site.stdout.strip(), "zz_shared_deps.pth").write_text("\n".join(sorted(shared)) + "\n")

    work, cache = tmp_path / "project", tmp_path / "cache"
    work.mkdir()
    env = dict(CLEAN_ENV)
    env.update(FAIRVLM_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")  # fmt: skip
    where = _run([str(py), "-c", "import fairvlm_lightning as f; print(f.__file__)"], env=env,
                 cwd=work)  # fmt: skip
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr

    fairvlm = str(venv / "bin" / "fairvlm")
    listed = _run([fairvlm, "configs"], env=env, cwd=work)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "synthetic_robust_fair " in listed.stdout and str(venv) in listed.stdout

    fit = _run([
        fairvlm, "fit", "--config", "synthetic_robust_fair",
        "--data.synthetic_kwargs",
        '{"sizes": {"train": 32, "val": 16, "test": 16}, "warm_start_steps": 0}',
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.enable_progress_bar", "false",
    ], env=env, cwd=work)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert "attribute  AUC    ES-AUC  DPD    DEOdds  group AUCs" in fit.stdout
    assert (cache / "synthetic" / "tiny_model" / "config.json").is_file()
    assert not (work / ".fairvlm_cache").exists()
    assert sorted(p.name for p in work.iterdir()) == ["runs"]  # only the logs go to the cwd
