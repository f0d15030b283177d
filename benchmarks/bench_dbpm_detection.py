"""How well does Dynamic Bad Pair Mining find the planted bad pairs? Overall and per group.

Trains the synthetic FairVLMed twin (the shipped ``synthetic_dbpm`` config recipe: the
tiny dual encoder, AdamW lr 3e-4, batch 16, 32 tokens, 8 epochs, DBPM warm-up 2, no fairness
term) with a ``DynamicBadPairMining`` callback that drives the weights, and, on the very same
loss stream, a set of *shadow* ``BadPairMiner`` s (one per candidate rule; they flag but do not
weight). After every epoch it compares each rule's *faulty* flags and its statistic with the
data's ``is_bad_pair``: precision, recall, the rate at which clean pairs are flagged, and the
AUROC of the thresholded statistic, overall and per group of race, gender, ethnicity, language.

Protocol (fixed before any result was looked at):

* data grid: bad-pair rate 5 / 10 / 20 %, share of the bad pairs placed in the minority race
  groups (Asian, Black: 23 % of the data) 0 / 0.5 / 0.8, data seeds 0, 1, 2 (the generator's
  defaults otherwise: 2,000 training pairs, 128 x 128 images, group effect 1);
* selection: the candidate rules are ranked on separate data seeds (100, 101 at the default cell
  10 % / 0.5, seed 100 at 5 % / 0 and 20 % / 0.8), trained with the paper's rule driving the
  weights. Criterion: mean F1 of the final faulty flags, among the rules whose clean pairs are
  flagged in no race group at more than twice the majority group's rate (all rules if none);
* report: every grid cell is trained with the selected rule driving the weights (all candidates
  as shadows); the default cell is also trained with the paper's rule driving, so that today's
  closed-loop behaviour is measured on the report seeds too.

Prints the tables, writes ``benchmarks/results/dbpm_detection.json`` and
``benchmarks/results/dbpm_detection.png`` (per race group: histogram of the selected rule's
statistic for clean and bad pairs with its thresholds and the paper's). ``--quick``: a tiny smoke
run (200 pairs, 3 epochs, one cell, 2 candidate rules).

    python benchmarks/bench_dbpm_detection.py [--quick] [--workers 2] [--results_page PATH]

``--results_page docs/results/detection.md`` also writes the tables as a Markdown page of the
documentation site (command line, date, settings; the plot next to it as ``detection.png``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fairvlm_lightning.schema import ATTRIBUTES, GROUP_NAMES

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).resolve().parent.parent / ".fairvlm_cache" / "bench_dbpm"
ATTRS = ATTRIBUTES
MINORITY = (0, 1)  # race: Asian, Black
MAJORITY = 2  # race: White

RATES = (0.05, 0.10, 0.20)
CONCENTRATIONS = (0.0, 0.5, 0.8)
REPORT_SEEDS = (0, 1, 2)
SELECTION_RUNS = ((0.10, 0.5, 100), (0.10, 0.5, 101), (0.05, 0.0, 100), (0.20, 0.8, 100))
DEFAULT_CELL = (0.10, 0.5)
EPOCHS, WARMUP = 8, 2

PAPER = {"statistic": "mean", "scope": (), "location": "mean", "beta_faulty": 3.0}


def candidates(quick: bool) -> dict[str, dict[str, Any]]:
    """Candidate rules (name -> BadPairMiner keyword arguments); ``paper`` is the paper's."""
    out = {"paper": dict(PAPER)}
    if quick:
        out["race_median_2"] = {
            "statistic": "mean",
            "scope": ("race",),
            "location": "median",
            "beta_faulty": 2.0,
        }
        return out
    for stat, scope, loc, beta in itertools.product(
        ("mean", "ema"), ((), ("race",)), ("mean", "median"), (1.5, 2.0, 2.5, 3.0)
    ):
        name = f"{stat}_{'race' if scope else 'global'}_{loc}_{beta:g}"
        cfg = {"statistic": stat, "scope": scope, "location": loc, "beta_faulty": beta}
        if cfg != PAPER:
            out[name] = cfg
    return out


# ---------------------------------------------------------------------------- metrics
def detection_metrics(
    flags: np.ndarray, stat: np.ndarray, bad: np.ndarray, groups: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Precision/recall/clean-flag rate/AUROC overall and per group (pairs with history)."""
    from sklearn.metrics import roc_auc_score

    def block(sel: np.ndarray) -> dict[str, float]:
        f, b, s = flags[sel], bad[sel], stat[sel]
        tp = int((f & b).sum())
        out = {
            "n": int(sel.sum()),
            "n_bad": int(b.sum()),
            "flagged": int(f.sum()),
            "precision": tp / int(f.sum()) if f.any() else math.nan,
            "recall": tp / int(b.sum()) if b.any() else math.nan,
            "clean_flag_rate": int((f & ~b).sum()) / int((~b).sum()) if (~b).any() else math.nan,
            "auroc": float(roc_auc_score(b, s)) if 0 < b.sum() < len(b) else math.nan,
        }
        return out

    has = np.isfinite(stat)
    res: dict[str, Any] = {"overall": block(has)}
    for attr, g in groups.items():
        res[attr] = {str(int(v)): block(has & (g == v)) for v in np.unique(g)}
    return res


def f1(m: dict[str, float]) -> float:
    p, r = m["precision"], m["recall"]
    if not (p + r > 0):
        return 0.0
    return 2 * p * r / (p + r)


def targets(res: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets on one run's final metrics."""
    race = res["race"]
    rec = [race[str(g)]["recall"] for g in MINORITY if str(g) in race]
    maj = race[str(MAJORITY)]["clean_flag_rate"]
    others = [v["clean_flag_rate"] for k, v in race.items() if k != str(MAJORITY) and k != "-1"]
    ratio = max(others) / maj if maj > 0 else (math.inf if max(others) > 0 else 1.0)
    o = res["overall"]
    return {
        "precision": o["precision"],
        "recall": o["recall"],
        "min_minority_recall": min(rec),
        "clean_flag_ratio": ratio,
        "met_precision": bool(o["precision"] >= 0.8),
        "met_recall": bool(o["recall"] >= 0.5),
        # None: no bad pair in a minority group (concentration 0), nothing to recall there
        "met_minority_recall": None if any(math.isnan(r) for r in rec) else bool(min(rec) >= 0.4),
        "met_clean_ratio": bool(ratio <= 2.0),
    }


# ---------------------------------------------------------------------------- one training run
def cache_path(job: dict[str, Any], quick: bool) -> Path:
    """Where a finished run is cached (keyed by everything that determines it)."""
    import hashlib

    key = json.dumps(
        [
            job["rate"],
            job["concentration"],
            job["seed"],
            job["driver"],
            quick,
            sorted(candidates(quick)),
            EPOCHS,
            WARMUP,
            bool(job.get("keep_stats")),
        ]
    )
    return CACHE / "runs" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def run_one(job: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Train one cell with one driving rule; returns per-epoch metrics of every rule.

    Finished runs are cached as JSON under ``.fairvlm_cache/bench_dbpm/runs`` (keyed by the cell,
    the seed, the driving rule and the candidate set), so an interrupted benchmark resumes.
    """
    import warnings

    cached = cache_path(job, quick)
    if cached.is_file():
        return json.loads(cached.read_text())

    import lightning.pytorch as pl
    import torch

    from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
    from fairvlm_lightning.callbacks import DynamicBadPairMining
    from fairvlm_lightning.mining import BadPairMiner
    from fairvlm_lightning.module import FairVLMModule

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    rate, conc, seed = job["rate"], job["concentration"], job["seed"]
    train = 200 if quick else 2000
    root = CACHE / f"{'quick_' if quick else ''}r{rate:g}_c{conc:g}_s{seed}"
    t0 = time.perf_counter()
    dm = SyntheticFairVLMedDataModule(
        root,
        # val/test are drawn after the training split and its bad pairs from the same
        # generator, and the tiny model depends only on the training split: their sizes do
        # not change what is trained here, so they are kept tiny.
        synthetic_kwargs={
            "seed": seed,
            "bad_pair_rate": rate,
            "bad_pair_concentration": conc,
            "sizes": {"train": train, "val": 16, "test": 16},
        },
        batch_size=16,
        max_length=32,
        seed=seed,
    )
    dm.prepare_data()
    dm.setup("fit")
    t_data = time.perf_counter() - t0
    ds = dm.train_dataloader().dataset
    n = len(ds)
    rules = candidates(quick)
    driver = rules[job["driver"]]

    class Shadows(pl.Callback):
        def __init__(self) -> None:
            self.miners = {
                name: BadPairMiner(
                    n,
                    warmup_epochs=WARMUP,
                    statistic=cfg["statistic"],
                    scope=cfg["scope"],
                    location=cfg["location"],
                    beta_faulty=cfg["beta_faulty"],
                )
                for name, cfg in rules.items()
            }
            self.groups = {a: torch.full((n,), -1, dtype=torch.long) for a in ATTRS}
            self.bad = torch.zeros(n, dtype=torch.bool)
            self.epochs: list[dict[str, Any]] = []
            self.stats: dict[str, np.ndarray] = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            idx = batch["index"]
            for m in self.miners.values():
                m.record(idx, outputs["pair_losses"])
            for a in ATTRS:
                self.groups[a][idx] = batch[a]
            self.bad[idx] = batch["is_bad_pair"].bool()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            groups = {a: v.numpy() for a, v in self.groups.items()}
            bad = self.bad.numpy()
            row: dict[str, Any] = {}
            for name, m in self.miners.items():
                m.end_epoch(groups={"race": self.groups["race"]})
                stat = m.history_mean.numpy().astype(np.float64)
                row[name] = detection_metrics(m.faulty_mask.numpy(), stat, bad, groups)
                if trainer.current_epoch == trainer.max_epochs - 1:
                    self.stats[name] = stat
                    row[name]["thresholds"] = {
                        "global": m.threshold_faulty,
                        **{str(r["group"][0]): r["threshold_faulty"] for r in m.group_table},
                    }
            # the driving callback's own flags (closed loop)
            miner = dbpm.miner
            assert miner is not None
            row["driver"] = detection_metrics(
                miner.faulty_mask.numpy(),
                miner.history_mean.numpy().astype(np.float64),
                bad,
                groups,
            )
            row["driver_logs"] = {k: float(v) for k, v in dbpm.last_metrics.items()}
            self.epochs.append(row)

    dbpm = DynamicBadPairMining(
        warmup_epochs=WARMUP,
        statistic=driver["statistic"],
        scope=driver["scope"],
        location=driver["location"],
        beta_faulty=driver["beta_faulty"],
        truth_key="is_bad_pair",
        group_keys=ATTRS,
    )
    shadows = Shadows()
    pl.seed_everything(seed, verbose=False)
    module = FairVLMModule(
        str(root / "tiny_model"),
        fairness_weight=0.0,
        optimizer=partial(torch.optim.AdamW, lr=3e-4, weight_decay=0.01),
    )
    trainer = pl.Trainer(
        max_epochs=3 if quick else EPOCHS,
        accelerator="cpu",
        devices=1,
        callbacks=[dbpm, shadows],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    t1 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    t_train = time.perf_counter() - t1
    out = {
        **job,
        "n_pairs": n,
        "seconds_data": t_data,
        "seconds_train": t_train,
        "epochs": shadows.epochs,
    }
    if job.get("keep_stats"):
        out["final_stats"] = {k: v.tolist() for k, v in shadows.stats.items()}
        out["race"] = shadows.groups["race"].tolist()
        out["is_bad_pair"] = shadows.bad.tolist()
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(out, default=float))
    print(
        f"  done rate={rate:g} conc={conc:g} seed={seed} driver={job['driver']} "
        f"data {t_data:.0f}s train {t_train:.0f}s",
        flush=True,
    )
    return out


# ---------------------------------------------------------------------------- aggregation
def final(run: dict[str, Any], rule: str) -> dict[str, Any]:
    return run["epochs"][-1][rule]


def select(runs: list[dict[str, Any]], rules: list[str]) -> tuple[str, list[dict[str, Any]]]:
    rows = []
    for name in rules:
        t = [targets(final(r, name)) for r in runs]
        f = [f1(final(r, name)["overall"]) for r in runs]
        rows.append(
            {
                "rule": name,
                "f1": float(np.mean(f)),
                "precision": float(np.nanmean([x["precision"] for x in t])),
                "recall": float(np.nanmean([x["recall"] for x in t])),
                "min_minority_recall": float(np.nanmean([x["min_minority_recall"] for x in t])),
                "clean_flag_ratio": float(np.mean([x["clean_flag_ratio"] for x in t])),
            }
        )
    fair = [r for r in rows if r["clean_flag_ratio"] <= 2.0] or rows
    best = max(fair, key=lambda r: r["f1"])
    rows.sort(key=lambda r: -r["f1"])
    return best["rule"], rows


def mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if np.all(np.isnan(v)):
        return "   nan      "
    return f"{np.nanmean(v):.3f}±{np.nanstd(v):.3f}"


def summarise(runs: list[dict[str, Any]], rule: str, epoch: int = -1) -> dict[str, Any]:
    t = [targets(r["epochs"][epoch][rule]) for r in runs]
    o = [r["epochs"][epoch][rule]["overall"] for r in runs]
    race = [r["epochs"][epoch][rule]["race"] for r in runs]
    out = {
        "precision": [x["precision"] for x in t],
        "recall": [x["recall"] for x in t],
        "min_minority_recall": [x["min_minority_recall"] for x in t],
        "clean_flag_ratio": [x["clean_flag_ratio"] for x in t],
        "auroc": [x["auroc"] for x in o],
        "flagged": [x["flagged"] for x in o],
    }
    for g in ("0", "1", "2"):
        out[f"recall_race{g}"] = [x[g]["recall"] for x in race]
        out[f"auroc_race{g}"] = [x[g]["auroc"] for x in race]
    out["targets_met_all_seeds"] = {
        k: None if any(x[k] is None for x in t) else all(x[k] for x in t)
        for k in ("met_precision", "met_recall", "met_minority_recall", "met_clean_ratio")
    }
    return out


HEADER = (
    f"{'rate':>5} {'conc':>4} {'n':>2} {'rule':<24} {'precision':>11} {'recall':>11} "
    f"{'rec Asian':>11} {'rec Black':>11} {'rec White':>11} {'clean ratio':>11} "
    f"{'AUROC':>11} {'AUROC minor':>11}  targets P/R/minR/ratio"
)


def table_row(rate: float, conc: float, label: str, s: dict[str, Any]) -> str:
    met = s["targets_met_all_seeds"]
    flags = "".join(
        "-" if met[k] is None else "y" if met[k] else "n"
        for k in ("met_precision", "met_recall", "met_minority_recall", "met_clean_ratio")
    )
    minor = [min(a, b) for a, b in zip(s["auroc_race0"], s["auroc_race1"], strict=True)]
    return (
        f"{rate:>5.2f} {conc:>4.1f} {len(s['precision']):>2} {label:<24} "
        f"{mean_std(s['precision']):>11} "
        f"{mean_std(s['recall']):>11} {mean_std(s['recall_race0']):>11} "
        f"{mean_std(s['recall_race1']):>11} {mean_std(s['recall_race2']):>11} "
        f"{mean_std(s['clean_flag_ratio']):>11} {mean_std(s['auroc']):>11} "
        f"{mean_std(minor):>11}  {flags}"
    )


def plot(run: dict[str, Any], rule: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    race = np.asarray(run["race"])
    bad = np.asarray(run["is_bad_pair"], dtype=bool)
    names = dict(enumerate(GROUP_NAMES["race"]))
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True)
    for row, name in enumerate(("paper", rule)):
        stat = np.asarray(run["final_stats"][name])
        thr = run["epochs"][-1][name]["thresholds"]
        bins = np.linspace(np.nanmin(stat), np.nanmax(stat), 40)
        for col, g in enumerate((0, 1, 2)):
            ax = axes[row, col]
            sel = race == g
            ax.hist(stat[sel & ~bad], bins=bins, alpha=0.6, label="clean", density=True)
            ax.hist(stat[sel & bad], bins=bins, alpha=0.6, label="bad", density=True)
            ax.axvline(thr["global"], color="k", ls="--", label="global threshold")
            if str(g) in thr and name != "paper":
                ax.axvline(thr[str(g)], color="r", label="group threshold")
            ax.set_title(
                f"{name}: race {names[g]} (n={int(sel.sum())}, bad={int((sel & bad).sum())})",
                fontsize=8,
            )
            if row == 1:
                ax.set_xlabel("DBPM statistic after the last epoch")
        axes[row, 0].legend(fontsize=7)
    fig.suptitle(
        f"rate {run['rate']:g}, concentration {run['concentration']:g}, seed {run['seed']}, "
        f"driver {run['driver']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pool_map(jobs: list[dict[str, Any]], quick: bool, workers: int) -> list[dict[str, Any]]:
    if workers <= 1:
        return [run_one(j, quick) for j in jobs]
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, maxtasksperchild=1) as pool:
        return pool.map(partial(run_one, quick=quick), jobs, chunksize=1)


def _md_stat(values: list[float]) -> str:
    if len(values) == 1:  # one seed: no spread to show
        return "nan" if math.isnan(float(values[0])) else f"{float(values[0]):.3f}"
    return mean_std(values).strip().replace("±", " ± ")


def render_results_page(payload: dict[str, Any], command: str, image: str | None) -> str:
    """The results as a Markdown page: command line, date, settings, the printed tables."""
    meta = payload["meta"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = payload["selection_runs"] + payload["report_runs"]
    run_seconds = sum(r.get("seconds_data", 0.0) + r.get("seconds_train", 0.0) for r in runs)
    lines = [
        "# Benchmark: does DBPM find the planted bad pairs?",
        "",
        f"Generated by `{command}` on {when} "
        f"({len(runs)} training runs of {run_seconds:.0f} s in all, when they ran; this "
        f"invocation {meta['wall_seconds']:.0f} s wall time with {meta['workers']} workers "
        "(finished runs are cached), "
        f"{meta['torch_threads_per_worker']} torch thread each, on a shared machine: load "
        f"{meta['load_average_at_end'][0]:.1f} at the end; torch {meta['torch']}). "
        "Rerun the command to regenerate this page.",
        "",
    ]
    if meta["quick"]:
        lines += [
            '!!! warning "Small setting"',
            "    This page was produced with `--quick`: 200 training pairs, 3 epochs, one data "
            "cell, one data seed and 2 candidate rules, so that it runs in minutes on a loaded "
            "machine. It shows the format and a smoke-level result, not the protocol's numbers; "
            "the full protocol (3 × 3 cells × 3 seeds, 32 rules, 8 epochs) is "
            "`python benchmarks/bench_dbpm_detection.py --results_page docs/results/detection.md`"
            " and its results are discussed on [Dynamic Bad Pair Mining](../mining.md"
            "#does-it-find-the-bad-pairs-benchmarksbench_dbpm_detectionpy).",
            "",
        ]
    lines += [
        f"Epochs {meta['epochs']}, DBPM warm-up {meta['warmup_epochs']}; selected rule: "
        f"`{payload['selected']}` (by {payload['selected_by']}). Faulty flags are compared with "
        "the data's `is_bad_pair`; *clean ratio* is the highest clean-flag rate of a minority "
        "race group divided by the majority's; *targets* P/R/minR/ratio: whether every seed met "
        "the precision, recall, minority-recall and clean-ratio targets (y/n, - = undefined). "
        "A precision of nan means the rule flagged no pair.",
        "",
    ]
    if payload["selection_ranking"]:
        n_sel = len(payload["selection_runs"])
        lines += [
            f"## Selection ranking (mean over {n_sel} selection runs, final flags)",
            "",
            "| rule | F1 | precision | recall | min minority recall | clean ratio |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in payload["selection_ranking"][:12]:
            lines.append(
                f"| `{r['rule']}` | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                f"{r['min_minority_recall']:.3f} | {r['clean_flag_ratio']:.2f} |"
            )
        lines.append("")
    lines += [
        "## Detection after the last epoch (mean ± std over data seeds; one seed: the value)",
        "",
        "| rate | concentration | seeds | rule | precision | recall | recall Asian | "
        "recall Black | recall White | clean ratio | AUROC | targets P/R/minR/ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cell, rows in payload["summary"].items():
        rate, conc = (float(part.split("=")[1]) for part in cell.split(","))
        for label, st in rows.items():
            met = st["targets_met_all_seeds"]
            flags = "".join(
                "-" if met[k] is None else "y" if met[k] else "n"
                for k in ("met_precision", "met_recall", "met_minority_recall", "met_clean_ratio")
            )
            lines.append(
                f"| {rate:g} | {conc:g} | {len(st['precision'])} | {label} | "
                + " | ".join(
                    _md_stat(st[k])
                    for k in (
                        "precision",
                        "recall",
                        "recall_race0",
                        "recall_race1",
                        "recall_race2",
                        "clean_flag_ratio",
                        "auroc",
                    )
                )
                + f" | {flags} |"
            )
    lines += [
        "",
        "## Per epoch at the default cell (mean over seeds)",
        "",
        "| rule | epoch | precision | recall | AUROC | min minority recall |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, curve in payload["per_epoch_default_cell"].items():
        for e, c in enumerate(curve, 1):
            lines.append(
                f"| {label} | {e} | {c['precision']:.3f} | {c['recall']:.3f} | "
                f"{c['auroc']:.3f} | {c['min_minority_recall']:.3f} |"
            )
    if image is not None:
        lines += [
            "",
            "## Statistic per race group (default cell, first seed)",
            "",
            f"![Histogram of the selected rule's statistic, clean vs bad pairs]({image})",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--out", type=Path, default=RESULTS / "dbpm_detection.json")
    parser.add_argument(
        "--selected",
        help="skip the selection phase and report this rule (chosen by an earlier run's "
        "selection; its ranking is in that run's log/JSON)",
    )
    parser.add_argument(
        "--other-cell-seeds",
        type=int,
        default=len(REPORT_SEEDS),
        help="report seeds for the cells other than the default one (fewer = faster; the "
        "protocol is 3)",
    )
    parser.add_argument(
        "--paper-driver-seeds",
        type=int,
        default=len(REPORT_SEEDS),
        help="report seeds on which the default cell is also trained with the paper's rule "
        "driving the weights (the protocol is 3)",
    )
    parser.add_argument(
        "--results_page",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write a Markdown page with the tables, the command line and the date, and the "
        "plot next to it (PATH with .png), e.g. docs/results/detection.md for the site",
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="report only the runs already finished (cached) by an earlier invocation",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    rules = candidates(args.quick)

    if args.quick:
        sel_jobs = [{"rate": 0.2, "concentration": 0.5, "seed": 100, "driver": "paper"}]
    else:
        sel_jobs = [
            {"rate": r, "concentration": c, "seed": s, "driver": "paper"}
            for r, c, s in SELECTION_RUNS
        ]
    if args.selected is not None:
        if args.selected not in rules:
            raise SystemExit(f"--selected {args.selected!r} is not a candidate: {sorted(rules)}")
        sel_jobs = []
    print(f"selection: {len(sel_jobs)} runs, {len(rules)} candidate rules", flush=True)
    sel_runs = pool_map(sel_jobs, args.quick, args.workers)
    if args.selected is not None:
        chosen, ranking = args.selected, []
    else:
        chosen, ranking = select(sel_runs, list(rules))
    print(f"\nselection ranking (mean over {len(sel_runs)} selection runs, final flags):")
    print(f"{'rule':<26} {'F1':>6} {'prec':>6} {'recall':>6} {'minR':>6} {'ratio':>6}")
    for r in ranking[:12]:
        print(
            f"{r['rule']:<26} {r['f1']:6.3f} {r['precision']:6.3f} {r['recall']:6.3f} "
            f"{r['min_minority_recall']:6.3f} {r['clean_flag_ratio']:6.2f}"
        )
    paper_rank = next((i for i, r in enumerate(ranking) if r["rule"] == "paper"), -1)
    print(f"... paper at rank {paper_rank + 1} of {len(ranking)}; selected: {chosen}\n", flush=True)

    if args.quick:
        cells = [(0.2, 0.5)]
        seeds: tuple[int, ...] = (0,)
    else:
        cells = list(itertools.product(RATES, CONCENTRATIONS))
        seeds = REPORT_SEEDS
    default = cells[0] if args.quick else DEFAULT_CELL
    # the default cell first, then the paper-driven runs, then the other cells
    rep_jobs = [
        {"rate": default[0], "concentration": default[1], "seed": s, "driver": chosen}
        for s in seeds
    ]
    if chosen != "paper":
        rep_jobs += [
            {"rate": default[0], "concentration": default[1], "seed": s, "driver": "paper"}
            for s in seeds[: args.paper_driver_seeds]
        ]
    rep_jobs += [
        {"rate": r, "concentration": c, "seed": s, "driver": chosen}
        for (r, c), s in itertools.product(cells, seeds[: args.other_cell_seeds])
        if (r, c) != default
    ]
    for j in rep_jobs:
        j["keep_stats"] = (j["rate"], j["concentration"]) == default and j["seed"] == seeds[0]
    if args.cached_only:
        missing = [j for j in rep_jobs if not cache_path(j, args.quick).is_file()]
        rep_jobs = [j for j in rep_jobs if j not in missing]
        print(f"--cached-only: left out {len(missing)} runs not finished yet: {missing}")
    print(f"report: {len(rep_jobs)} runs", flush=True)
    rep_runs = pool_map(rep_jobs, args.quick, args.workers)

    def runs_of(cell: tuple[float, float], driver: str) -> list[dict[str, Any]]:
        return [
            r for r in rep_runs if (r["rate"], r["concentration"]) == cell and r["driver"] == driver
        ]

    summary: dict[str, Any] = {}
    print(
        "\nDetection after the last epoch, mean±std over data seeds "
        f"{list(seeds)} (faulty flags vs is_bad_pair; 'clean ratio' = highest clean-flag "
        "rate of a minority race group / the majority's):"
    )
    print(HEADER)
    for cell in cells:
        runs = runs_of(cell, chosen)
        if not runs:
            continue
        lines = {
            f"{chosen} (drives)": summarise(runs, "driver"),
            "paper (shadow)": summarise(runs, "paper"),
        }
        if chosen != "paper" and cell == default and runs_of(cell, "paper"):
            lines["paper (drives)"] = summarise(runs_of(cell, "paper"), "driver")
            lines[f"{chosen} (shadow of paper)"] = summarise(runs_of(cell, "paper"), chosen)
        summary[f"rate={cell[0]:g},conc={cell[1]:g}"] = lines
        for label, s in lines.items():
            print(table_row(cell[0], cell[1], label, s))

    # per-epoch curve at the default cell
    print(f"\nPer epoch at rate {default[0]:g}, concentration {default[1]:g} (mean over seeds):")
    print(
        f"{'epoch':>5} {'rule':<24} {'precision':>9} {'recall':>7} {'AUROC':>6} "
        f"{'min minority rec':>16}"
    )
    per_epoch = {}
    for label, runs, rule in (
        (f"{chosen} (drives)", runs_of(default, chosen), "driver"),
        ("paper (shadow)", runs_of(default, chosen), "paper"),
        (
            "paper (drives)",
            runs_of(default, "paper") or runs_of(default, chosen),
            "driver" if chosen != "paper" else "paper",
        ),
    ):
        curve = []
        for e in range(len(runs[0]["epochs"])):
            s = summarise(runs, rule, e)
            curve.append({k: float(np.nanmean(v)) for k, v in s.items() if isinstance(v, list)})
            print(
                f"{e + 1:>5} {label:<24} {curve[-1]['precision']:>9.3f} "
                f"{curve[-1]['recall']:>7.3f} "
                f"{curve[-1]['auroc']:>6.3f} {curve[-1]['min_minority_recall']:>16.3f}"
            )
        per_epoch[label] = curve

    elapsed = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    keep = [r for r in rep_runs if r.get("keep_stats")]
    png = args.out.with_suffix(".png")
    if keep:
        plot(next((r for r in keep if r["driver"] == chosen), keep[0]), chosen, png)
    for r in sel_runs + rep_runs:
        r.pop("final_stats", None)
        r.pop("race", None)
        r.pop("is_bad_pair", None)
    import torch

    meta = {
        "quick": args.quick,
        "workers": args.workers,
        "torch_threads_per_worker": 1,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "wall_seconds": elapsed,
        "torch": torch.__version__,
        "epochs": 3 if args.quick else EPOCHS,
        "warmup_epochs": WARMUP,
    }
    payload = {
        "meta": meta,
        "candidates": {k: {**v, "scope": list(v["scope"])} for k, v in rules.items()},
        "selection_ranking": ranking,
        "selected": chosen,
        "selected_by": "--selected" if args.selected else "selection runs",
        "other_cell_seeds": args.other_cell_seeds,
        "paper_driver_seeds": args.paper_driver_seeds,
        "cached_only": args.cached_only,
        "summary": summary,
        "per_epoch_default_cell": per_epoch,
        "selection_runs": sel_runs,
        "report_runs": rep_runs,
    }
    args.out.write_text(json.dumps(payload, indent=1, default=float))
    if args.results_page is not None:
        page_png = args.results_page.with_suffix(".png")
        if keep:
            page_png.parent.mkdir(parents=True, exist_ok=True)
            page_png.write_bytes(png.read_bytes())
        args.results_page.parent.mkdir(parents=True, exist_ok=True)
        args.results_page.write_text(
            render_results_page(
                payload,
                command="python benchmarks/bench_dbpm_detection.py " + " ".join(sys.argv[1:]),
                image=page_png.name if keep else None,
            )
        )
        print(f"wrote {args.results_page}" + (f" and {page_png}" if keep else ""))
    print(
        f"\nwall time {elapsed:.0f} s with {args.workers} workers (machine shared; load "
        f"{os.getloadavg()[0]:.1f}); wrote {args.out} and {png}"
    )


if __name__ == "__main__":
    main()
