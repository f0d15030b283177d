"""`fairvlm benchmark`: a tiny version of the real code path, resume, statistics vs SciPy."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score
from synthetic_args import synthetic_overrides

from fairvlm_lightning.app.benchmark import paired_t_interval, summarise, verdict
from fairvlm_lightning.app.cli import FairVLMCLI, main

CONFIGS = Path(__file__).resolve().parents[2] / "fairvlm_lightning" / "configs"


@pytest.fixture(autouse=True)
def _argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["fairvlm"])


def test_paired_interval_and_verdicts() -> None:
    d = [0.012, 0.02, -0.004, 0.03, 0.015]
    mean, low, high = paired_t_interval(d, 0.95)
    half = scipy.stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d))
    assert (low, high) == pytest.approx((np.mean(d) - half, np.mean(d) + half), rel=1e-9)
    assert mean == pytest.approx(np.mean(d))
    assert paired_t_interval([0.01, 0.01, 0.01]) == (0.01, 0.01, 0.01)
    assert verdict("race/es_auc", low, high) == "no detectable difference"
    assert verdict("race/es_auc", 0.01, 0.02) == "better"
    assert verdict("race/deodds", 0.01, 0.02) == "worse"
    assert verdict("mean/dpd", -0.02, -0.01) == "better"
    assert math.isnan(paired_t_interval([0.1])[1])


def test_summarise_against_numpy() -> None:
    rng = np.random.default_rng(0)
    runs = []
    for v in ("base", "new"):
        for s in range(4):
            test = {"auc": float(rng.uniform(0.7, 0.9))}
            test.update({f"{a}/es_auc": float(rng.uniform(0.6, 0.8)) for a in ("x", "y")})
            runs.append({"variant": v, "seed": s, "test": test, "val": test})
    out = summarise(runs, baseline="base", attributes={"x": 2, "y": 2})
    base = [r["test"] for r in runs if r["variant"] == "base"]
    new = [r["test"] for r in runs if r["variant"] == "new"]
    t = out["methods"]["new"]["test"]
    assert t["auc"]["mean"] == pytest.approx(np.mean([r["auc"] for r in new]))
    assert t["auc"]["std"] == pytest.approx(np.std([r["auc"] for r in new], ddof=1))
    mean_es = [np.mean([r["x/es_auc"], r["y/es_auc"]]) for r in new]
    assert t["mean/es_auc"]["mean"] == pytest.approx(np.mean(mean_es))
    diff = [n["x/es_auc"] - b["x/es_auc"] for n, b in zip(new, base, strict=True)]
    ref = scipy.stats.ttest_1samp(diff, 0.0).confidence_interval(0.95)
    c = out["comparisons"]["new"]["x/es_auc"]
    assert (c["low"], c["high"]) == pytest.approx((ref.low, ref.high))


def test_sweep_variants(tmp_path: Path) -> None:
    from fairvlm_lightning.app.benchmark.variants import (
        make_variants,
        materialise_config,
        read_yaml,
    )

    variants = make_variants(
        ["synthetic_clip", "synthetic_fairclip", "synthetic_robust_fair"],
        fairness_weights=[0.01, 1.0], betas=[2.0],
    )
    names = [v.name for v in variants]
    assert names == [
        "synthetic_clip", "synthetic_fairclip", "synthetic_fairclip_lambda0.01",
        "synthetic_fairclip_lambda1", "synthetic_robust_fair", "synthetic_robust_fair_lambda0.01",
        "synthetic_robust_fair_lambda1", "synthetic_robust_fair_beta2",
    ]
    lam = variants[2]
    assert lam.overrides == ["--model.fairness_weight", "0.01"] and lam.base == "synthetic_fairclip"
    beta = variants[-1]
    cfg = read_yaml(materialise_config(beta, tmp_path))
    init = cfg["trainer"]["callbacks"][0]["init_args"]["miner"]["init_args"]["rule"]["init_args"]
    assert init["beta_noisy"] == init["beta_faulty"] == 2.0
    assert cfg["model"] == read_yaml(CONFIGS / "synthetic_robust_fair.yaml")["model"]
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped config"):
        make_variants(["no_such_config"])


def test_sweep_table_includes_the_shipped_default_and_chooses_on_val() -> None:
    from fairvlm_lightning.app.benchmark.report import render_markdown, sweep_table
    from fairvlm_lightning.app.benchmark.variants import make_variants, read_yaml

    variants = make_variants(["synthetic_clip", "synthetic_fairclip"], fairness_weights=[0.01, 5.0])
    default = read_yaml(CONFIGS / "synthetic_fairclip.yaml")["model"]["fairness_weight"]
    assert 0.01 < default < 5.0
    # val ES-AUC is highest for the config's own lambda; test ES-AUC for lambda=5, which
    # must not drive the choice
    val = {"synthetic_clip": 0.70, "synthetic_fairclip": 0.80,
           "synthetic_fairclip_lambda0.01": 0.75, "synthetic_fairclip_lambda5": 0.78}
    test = {"synthetic_clip": 0.70, "synthetic_fairclip": 0.72,
            "synthetic_fairclip_lambda0.01": 0.71, "synthetic_fairclip_lambda5": 0.90}
    def row(value: float, step: float, s: int, auc: float) -> dict[str, float]:
        return {"auc": auc, **{f"{a}/es_auc": value + step * s for a in ATTRS}}

    runs = [{"variant": v, "seed": s, "val": row(val[v], 0.01, s, 0.8),
             "test": row(test[v], 0.02 * (v != "synthetic_clip"), s, 0.8 + 0.001 * s)}
            for v in val for s in (0, 1, 2)]
    summary = summarise(runs, baseline="synthetic_clip")
    (sweep,) = sweep_table(variants, summary)
    assert sweep["config"] == "synthetic_fairclip" and sweep["default"] == default
    assert [r["lambda"] for r in sweep["points"]] == [0.01, default, 5.0]
    assert [r["default"] for r in sweep["points"]] == [False, True, False]
    assert sweep["chosen_on_val"] == default
    top = sweep["points"][2]
    assert top["test_es_auc"] == pytest.approx(0.92)  # 0.90 + mean(0, 0.02, 0.04)
    # the paired difference against CLIP: per seed 0.20 + 0.02 s, a t interval around 0.22
    assert top["paired_es_auc"]["mean"] == pytest.approx(0.22)
    assert top["paired_es_auc"]["verdict"] == "better"
    md = render_markdown({"summary": summary, "seeds": [0, 1, 2], "date": "d",
                          "variants": [{"name": v.name, "sweep": v.sweep} for v in variants],
                          "sweeps": [sweep], "runs": runs, "total_run_seconds": 0.0}, {})
    assert f"lambda = {default:g} (the shipped default)" in md
    assert f"| {default:g} (default) **(chosen)** |" in md


ATTRS = ("race", "gender", "ethnicity", "language")


def test_headroom_capture_closed_form() -> None:
    from fairvlm_lightning.app.benchmark import headroom

    # per seed: baseline b, oracle b + 0.10 + e, method b + 0.04 + e/2 (e: seed noise)
    noise = [0.0, 0.01, -0.01, 0.02]
    runs = []
    for s, e in enumerate(noise):
        b = 0.6 + 0.03 * s
        for v, value in (("base", b), ("oracle", b + 0.10 + e), ("new", b + 0.04 + e / 2),
                         ("flat", b)):
            runs.append({"variant": v, "seed": s, "val": {}, "test": {"race/es_auc": value}})
    summary = summarise(runs, baseline="base", attributes={"race": 3})
    h = headroom(summary, "oracle", keys=("race/es_auc",))
    oracle_gain = 0.10 + np.mean(noise)
    new_gain = 0.04 + np.mean(noise) / 2
    assert h["oracle_gain"]["race/es_auc"]["mean"] == pytest.approx(oracle_gain)
    row = h["methods"]["new"]["race/es_auc"]
    assert row["capture"] == pytest.approx(new_gain / oracle_gain)
    ref = scipy.stats.ttest_1samp([0.04 + e / 2 for e in noise], 0.0).confidence_interval(0.95)
    assert (row["low"], row["high"]) == pytest.approx((ref.low, ref.high))
    assert h["methods"]["flat"]["race/es_auc"]["capture"] == pytest.approx(0.0, abs=1e-12)
    assert "oracle" not in h["methods"]
    # no headroom: capture is undefined, not infinite
    flat = headroom(summary, "flat", keys=("race/es_auc",))
    assert math.isnan(flat["methods"]["new"]["race/es_auc"]["capture"])


def test_data_variants_point_at_their_own_generated_data() -> None:
    import inspect

    from fairvlm_lightning.app.benchmark import DATA_VARIANTS, data_variant_args
    from fairvlm_lightning.app.synthetic import write_synthetic_fairvlmed

    assert data_variant_args("default") == []
    args = data_variant_args("shifted")
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert flags["--data.root"] == "${FAIRVLM_CACHE}/synthetic_shifted"
    assert flags["--model.model"] == flags["--data.root"] + "/tiny_model"
    settings = json.loads(flags["--data.synthetic_kwargs"])
    assert settings == DATA_VARIANTS["shifted"] and settings["seed"] != 0
    assert settings["bad_pair_rate"] > 0.1 and settings["bad_pair_concentration"] > 0.5
    params = inspect.signature(write_synthetic_fairvlmed).parameters
    assert set(settings) <= set(params)
    with pytest.raises(ValueError, match="unknown data variant 'nope'"):
        data_variant_args("nope")


def test_tiny_benchmark_end_to_end_and_resume(
    synthetic_root: Path, synthetic_kwargs: dict, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "bench"
    page = tmp_path / "docs" / "results.md"
    fit_args = synthetic_overrides(synthetic_root, synthetic_kwargs)
    main([
        "benchmark", "--quick", "--max_epochs", "3",
        "--configs", "synthetic_clip", "synthetic_dbpm",
        "--seeds", "0", "1", "--bootstrap", "20",
        "--out", str(out), "--results_page", str(page), "--no_progress",
        "--fit_args", shlex.join(fit_args),
    ])
    printed = capsys.readouterr().out
    assert "paired vs synthetic_clip" in printed and "synthetic_dbpm:" in printed
    report = json.loads((out / "benchmark.json").read_text())
    md = (out / "benchmark.md").read_text()
    assert "## Paired differences against `synthetic_clip`" in md
    for png in ("es_auc.png", "pareto.png", "roc_race.png", "dbpm_hist_synthetic_dbpm.png"):
        assert (out / png).stat().st_size > 1000
        assert (page.parent / "results" / png).is_file()
    assert "(results/pareto.png)" in page.read_text()
    runs = report["runs"]
    assert len(runs) == 6  # (2 configs + the clean-data oracle) x 2 seeds
    oracle_runs = [r for r in runs if r["variant"] == "synthetic_clip_oracle"]
    assert len(oracle_runs) == 2
    assert all("--data.drop_bad_pairs" in r["args"] for r in oracle_runs)
    assert "synthetic_clip_oracle" in printed and "capture" in printed
    assert "## Headroom" in md
    # capture = (method - baseline) / (oracle - baseline), from the runs' own test numbers
    test = {(r["variant"], r["seed"]): r["test"] for r in runs}
    for key in ("race/es_auc", "auc"):
        gain = {v: np.mean([test[(v, s)][key] - test[("synthetic_clip", s)][key] for s in (0, 1)])
                for v in ("synthetic_dbpm", "synthetic_clip_oracle")}
        got = report["headroom"]["methods"]["synthetic_dbpm"][key]
        assert got["mean"] == pytest.approx(gain["synthetic_dbpm"])
        ratio = gain["synthetic_dbpm"] / gain["synthetic_clip_oracle"]
        assert got["capture"] == pytest.approx(ratio)
    # every run is a real fit: its test AUC is the AUC of its saved predictions (scikit-learn)
    for r in runs:
        folder = out / "runs" / r["variant"] / f"seed_{r['seed']}"
        p = np.load(folder / "predictions.npz")
        assert r["test"]["auc"] == pytest.approx(roc_auc_score(p["label"], p["score"]), abs=1e-6)
        assert r["test"]["auc_ci_low"] <= r["test"]["auc"] <= r["test"]["auc_ci_high"]
        assert r["seeds"]["data.seed"] == r["seed"]
    # seeds change the run
    by = {(r["variant"], r["seed"]): r for r in runs}
    assert by[("synthetic_clip", 0)]["test"] != by[("synthetic_clip", 1)]["test"]
    # DBPM precision/recall against the planted truth, recomputed from the saved state
    d = by[("synthetic_dbpm", 0)]["dbpm"]
    state = np.load(out / "runs" / "synthetic_dbpm" / "seed_0" / "dbpm.npz")
    flagged, bad = state["flagged"], state["is_bad_pair"]
    assert d["num_bad"] == bad.sum() > 0
    assert d["num_flagged"] == flagged.sum()
    if flagged.sum():
        assert d["precision"] == pytest.approx((flagged & bad).sum() / flagged.sum())
    # summary numbers are the runs' numbers
    es = [np.mean([r["test"][f"{a}/es_auc"] for a in ("race", "gender", "ethnicity", "language")])
          for r in runs if r["variant"] == "synthetic_dbpm"]
    got = report["summary"]["methods"]["synthetic_dbpm"]["test"]["mean/es_auc"]
    assert got["mean"] == pytest.approx(np.mean(es)) and got["std"] == pytest.approx(
        np.std(es, ddof=1))

    # resume: nothing is redone; a run without result.json (a crash) is redone alone
    calls: list[list[str]] = []

    class Counting(FairVLMCLI):
        def __init__(self, *a, **k):
            calls.append(k.get("args"))
            super().__init__(*a, **k)

    (out / "runs" / "synthetic_clip" / "seed_1" / "result.json").unlink()
    from fairvlm_lightning.app.benchmark import run_benchmark

    second = run_benchmark(
        Counting, configs=["synthetic_clip", "synthetic_dbpm"], seeds=[0, 1], out_dir=out,
        max_epochs=3, bootstrap=20, progress=False, extra_args=fit_args,
        plots=False,
    )
    assert len(calls) == 1 and "1" == calls[0][calls[0].index("--seed_everything") + 1]
    redone = {(r["variant"], r["seed"]): r for r in second["runs"]}[("synthetic_clip", 1)]
    # the same seed reproduces the run bit for bit
    first = by[("synthetic_clip", 1)]["test"]
    assert redone["test"].keys() == first.keys()
    for key, value in first.items():  # NaN (a group without both classes) equals NaN here
        assert redone["test"][key] == value or (math.isnan(value) and math.isnan(
            redone["test"][key])), key


def test_detection_scores_against_sklearn() -> None:
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    from fairvlm_lightning.app.benchmark import detection_scores

    rng = np.random.default_rng(3)
    n = 400
    groups = rng.integers(-1, 3, n)
    bad = rng.random(n) < 0.2
    stat = rng.normal(size=n) + 1.2 * bad + 0.5 * (groups == 0)
    stat[:7] = np.nan  # pairs without history do not count
    flagged = np.nan_to_num(stat, nan=-9) > 1.0
    d = detection_scores(stat, flagged, bad, groups)
    has = ~np.isnan(stat)
    assert d["precision"] == pytest.approx(precision_score(bad[has], flagged[has]))
    assert d["recall"] == pytest.approx(recall_score(bad[has], flagged[has]))
    assert d["auroc"] == pytest.approx(roc_auc_score(bad[has], stat[has]))
    assert set(d["groups"]) == {"0", "1", "2"}  # -1 (unknown) gets no row
    for g in (0, 1, 2):
        m = has & (groups == g)
        row = d["groups"][str(g)]
        assert row["auroc"] == pytest.approx(roc_auc_score(bad[m], stat[m]))
        assert row["recall"] == pytest.approx(recall_score(bad[m], flagged[m]))
        assert row["clean_flag_rate"] == pytest.approx(flagged[m & ~bad].mean())
    none = detection_scores(stat, np.zeros(n, bool), np.zeros(n, bool))
    assert math.isnan(none["precision"]) and math.isnan(none["recall"])
    assert math.isnan(none["auroc"])


_STALLING_BENCHMARK = """
import sys, time
from pathlib import Path
from fairvlm_lightning.app.benchmark import run_benchmark

out, ready = sys.argv[1:3]

class Stalling:  # a run that is in progress: its work folder holds its files
    def __init__(self, *a, args, **k):
        work = Path(args[args.index("--trainer.logger.init_args.save_dir") + 1])
        (work / "in_progress.txt").write_text("mine")
        Path(ready).touch()
        time.sleep(120)

run_benchmark(Stalling, configs=["synthetic_clip"], seeds=[0], out_dir=out, progress=False,
              plots=False, bootstrap=0)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_second_benchmark_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    """Issue 19.6: two `fairvlm benchmark --out SAME` at once. The second one fails at once,
    naming the first one's pid, and leaves the first one's work alone."""
    import os
    import signal
    import subprocess
    import time

    from fairvlm_lightning.app.benchmark import run_benchmark
    from fairvlm_lightning.atomic import InUseError

    out, ready = tmp_path / "bench", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CONFIGS.parents[1]), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _STALLING_BENCHMARK, str(out), str(ready)], env=env
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, f"the first benchmark exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the first benchmark never started its run"
            time.sleep(0.05)
        work = out / "runs" / "synthetic_clip" / "seed_0" / "work"
        with pytest.raises(InUseError, match=rf"bench is in use by pid {proc.pid} \(lock file"):
            main(["benchmark", "--configs", "synthetic_clip", "--seeds", "0", "--out", str(out),
                  "--no_plots", "--no_progress", "--bootstrap", "0"])
        assert (work / "in_progress.txt").read_text() == "mine"  # not deleted by the second
        assert proc.poll() is None  # and the first one still runs
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    class Failing:
        def __init__(self, *a: object, **k: object) -> None:
            raise ValueError("boom")

    # the killed holder's lock is gone with it: the next benchmark runs (and redoes its run)
    with pytest.raises(RuntimeError, match="benchmark run synthetic_clip seed 0 failed"):
        run_benchmark(Failing, configs=["synthetic_clip"], seeds=[0], out_dir=out,
                      progress=False, plots=False, bootstrap=0)
    assert not (work / "in_progress.txt").exists()
