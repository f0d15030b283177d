"""The Sinkhorn term's backends side by side (geomloss, fused, exact1d), and the defaults.

Part 0 -- the fairness term as training uses it: the four FairVLMed attributes (race 3 groups,
gender 2, ethnicity 2, language 3, with unknowns), forward+backward at B = 16, 32, 64, for
``backend="exact1d"``, ``backend="fused"`` and ``backend="geomloss"`` (one batched
``geomloss.SamplesLoss`` call; default blur/scaling) in the same run, with denormals flushed
(the best case) and not (torch's default, so what ``fairvlm fit`` runs). Next to each time: the
speed-up over ``geomloss``, the relative error of the value and the cosine of the gradient
against exact1d (worst over seeds), and the number of aten operations (torch profiler, all
events) of one call. This table is what ``backend="auto"`` rests on for CPU.

Part 1 -- speed: forward+backward time of ``SinkhornFairnessLoss`` with ``backend="fused"``
(default blur/scaling) and ``backend="exact1d"`` for one group of half the batch against the
batch, n = 64 ... 16384, with the ratio and the relative difference of the values.

Part 2 -- defaults: for a grid of (blur, scaling), the relative error of the Sinkhorn value
against the exact blur -> 0 limit, the cosine between the two gradients, and the time, on
loss-like batches with three groups of one attribute (one of them shifted) and two of another.

CPU timings of the old GeomLoss path swing 5-30x with float denormals (its potentials
underflow at small blur), so parts 1 and 2 run with ``torch.set_flush_denormal(True)``. It
also runs torch on one intra-op thread by default: on a shared 2-core machine GeomLoss's many
small ops run 10x slower and erratically with two threads. Results go to
``benchmarks/results/bench_sinkhorn.json``.

    python benchmarks/bench_sinkhorn.py                 # n <= 4096: about 4 min on one core
    python benchmarks/bench_sinkhorn.py --max-n 16384   # the full table; GeomLoss at n = 16384
                                                        # alone takes 10-15 min on one core
    python benchmarks/bench_sinkhorn.py --quick         # n <= 1024 and a smaller grid
    python benchmarks/bench_sinkhorn.py --part term     # part 0 only (about 1 min)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from fairvlm_lightning.sinkhorn import DEFAULT_BLUR, DEFAULT_SCALING, SinkhornFairnessLoss

RESULTS = Path(__file__).resolve().parent / "results" / "bench_sinkhorn.json"
CLOCK: Callable[[], float] = time.thread_time  # --clock wall: time.perf_counter


def loss_like(n: int, seed: int) -> torch.Tensor:
    """Positive, skewed values shaped like per-pair contrastive losses (a few nats)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g).abs() * 0.8 + torch.rand(n, generator=g) * 2.0


def time_fwd_bwd(
    fn: Callable[..., torch.Tensor],
    values: torch.Tensor,
    groups: dict[str, torch.Tensor],
    budget_s: float = 1.0,
) -> tuple[float, float, torch.Tensor]:
    """Best-of-k seconds of forward+backward, the value and the gradient.

    The first call doubles as warm-up; when it alone exceeds ``budget_s`` it is the measurement.
    The minimum over repeats is reported because other processes only ever add time. The clock
    is ``CLOCK``: the calling thread's CPU time by default (with one intra-op thread torch runs
    every op in it, and on a shared machine the wall clock mostly measures the other jobs).
    """
    v = values.clone().requires_grad_(True)
    start = CLOCK()
    out = fn(v, groups)
    out.backward()
    first = CLOCK() - start
    value, grad = float(out.detach()), v.grad.clone()
    if first > budget_s:
        return first, value, grad
    reps = max(3, min(50, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(reps):
        v = values.clone().requires_grad_(True)
        start = CLOCK()
        fn(v, groups).backward()
        times.append(CLOCK() - start)
    return min(times), value, grad


def fairvlmed_batch(b: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss-like values and the four FairVLMed attributes (with unknowns), one group worse off."""
    values = loss_like(b, seed)
    g = torch.Generator().manual_seed(2000 + seed)
    groups = {
        "race": torch.randint(-1, 3, (b,), generator=g),
        "gender": torch.randint(0, 2, (b,), generator=g),
        "ethnicity": torch.randint(-1, 2, (b,), generator=g),
        "language": torch.randint(-1, 3, (b,), generator=g),
    }
    return values + 0.3 * (groups["race"] == 2), groups


def count_ops(fn, values: torch.Tensor, groups: dict[str, torch.Tensor]) -> int:
    """aten operations (all profiler events, nested ones included) of one forward+backward."""
    v = values.clone().requires_grad_(True)
    fn(v, groups).backward()  # warm-up
    v = values.clone().requires_grad_(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(v, groups).backward()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def part_term(batch_sizes: list[int], seeds: int) -> list[dict]:
    exact = SinkhornFairnessLoss(backend="exact1d")
    methods = [
        ("exact1d", exact, False),
        ("fused", SinkhornFairnessLoss(backend="fused"), False),
        ("fused", SinkhornFairnessLoss(backend="fused"), True),
        ("geomloss", SinkhornFairnessLoss(backend="geomloss"), False),
        ("geomloss", SinkhornFairnessLoss(backend="geomloss"), True),
    ]
    rows = []
    print(
        f"\n## fairness term, 4 FairVLMed attributes, forward+backward, "
        f"{torch.get_num_threads()} thread(s); error / cosine: worst of {seeds} seeds vs exact1d"
    )
    print(
        f"{'B':>4} {'method':<22} {'flush':>5} {'ms':>8} {'vs geoml.':>9} {'rel err':>8} "
        f"{'grad cos':>8} {'aten ops':>8}"
    )
    for b in batch_sizes:
        batch_rows = []
        for name, fn, flush in methods:
            torch.set_flush_denormal(flush)
            times, errs, coss = [], [], []
            for seed in range(seeds):
                values, groups = fairvlmed_batch(b, seed)
                # Timed on the first seed; values and gradients of every seed from one call.
                t, value, grad = time_fwd_bwd(fn, values, groups, budget_s=1.0 if seed == 0 else 0)
                _, v_exact, g_exact = time_fwd_bwd(exact, values, groups, budget_s=0.0)
                if seed == 0:
                    times.append(t)
                errs.append(abs(value - v_exact) / v_exact)
                coss.append(float(torch.nn.functional.cosine_similarity(grad, g_exact, dim=0)))
            ops = count_ops(fn, *fairvlmed_batch(b, 0))
            batch_rows.append(
                {
                    "batch": b,
                    "method": name,
                    "flush_denormal": flush,
                    "best_s": times[0],
                    "max_rel_err": max(errs),
                    "min_grad_cos": min(coss),
                    "aten_ops": ops,
                }
            )
        for row in batch_rows:  # ratio to GeomLoss under the same denormal setting
            base = next(
                r
                for r in batch_rows
                if r["method"] == "geomloss" and r["flush_denormal"] == row["flush_denormal"]
            )
            row["speedup_vs_geomloss"] = base["best_s"] / row["best_s"]
            row["ops_ratio_vs_geomloss"] = row["aten_ops"] / base["aten_ops"]
            print(
                f"{b:>4} {row['method']:<22} {'on' if row['flush_denormal'] else 'off':>5} "
                f"{row['best_s'] * 1e3:>8.2f} {row['speedup_vs_geomloss']:>8.1f}x "
                f"{row['max_rel_err']:>8.4f} {row['min_grad_cos']:>8.4f} {row['aten_ops']:>8}",
                flush=True,
            )
        rows.extend(batch_rows)
    torch.set_flush_denormal(True)
    return rows


def part_speed(sizes: list[int]) -> list[dict]:
    geom = SinkhornFairnessLoss(backend="fused")
    exact = SinkhornFairnessLoss(backend="exact1d")
    rows = []
    print(
        f"\n## forward+backward, one group of n/2 vs the batch "
        f"(fused blur={DEFAULT_BLUR}, scaling={DEFAULT_SCALING})"
    )
    print(f"{'n':>6} {'fused ms':>12} {'exact1d ms':>11} {'ratio':>8} {'rel diff':>9}")
    for n in sizes:
        values = loss_like(n, seed=n)
        g = torch.Generator().manual_seed(n + 1)
        member = torch.randperm(n, generator=g)[: n // 2]
        ids = torch.full((n,), -1, dtype=torch.long)
        ids[member] = 0
        values[member] += 0.3  # the group is somewhat worse off than the batch
        groups = {"attr": ids}
        t_geom, v_geom, _ = time_fwd_bwd(geom, values, groups)
        t_exact, v_exact, _ = time_fwd_bwd(exact, values, groups)
        row = {
            "n": n,
            "fused_s": t_geom,
            "exact1d_s": t_exact,
            "ratio": t_geom / t_exact,
            "fused_value": v_geom,
            "exact1d_value": v_exact,
            "rel_diff": (v_geom - v_exact) / v_exact,
        }
        rows.append(row)
        print(
            f"{n:>6} {t_geom * 1e3:>12.2f} {t_exact * 1e3:>11.3f} {row['ratio']:>7.0f}x "
            f"{row['rel_diff']:>+9.4f}",
            flush=True,
        )
    return rows


def part_defaults(batch_sizes: list[int], grid: list[tuple[float, float]], seeds: int) -> list:
    exact = SinkhornFairnessLoss(backend="exact1d")
    rows = []
    print("\n## choice of defaults: GeomLoss vs exact (worst over seeds), time per fwd+bwd")
    print(
        f"{'B':>5} {'blur':>7} {'scaling':>7} {'max |rel err|':>13} {'min grad cos':>12} {'ms':>8}"
    )
    for b in batch_sizes:
        for blur, scaling in grid:
            geom = SinkhornFairnessLoss(blur=blur, scaling=scaling)
            errs, coss, times = [], [], []
            for seed in range(seeds):
                values = loss_like(b, seed)
                g = torch.Generator().manual_seed(1000 + seed)
                groups = {
                    "race": torch.randint(0, 3, (b,), generator=g),
                    "gender": torch.randint(0, 2, (b,), generator=g),
                }
                values = values + 0.3 * (groups["race"] == 2)
                t, v_geom, g_geom = time_fwd_bwd(geom, values, groups, budget_s=0.2)
                _, v_exact, g_exact = time_fwd_bwd(exact, values, groups, budget_s=0.0)
                errs.append(abs(v_geom - v_exact) / v_exact)
                coss.append(float(torch.nn.functional.cosine_similarity(g_geom, g_exact, dim=0)))
                times.append(t)
            row = {
                "batch": b,
                "blur": blur,
                "scaling": scaling,
                "max_rel_err": max(errs),
                "min_grad_cos": min(coss),
                "median_s": statistics.median(times),  # median over seeds of best-of-k
            }
            rows.append(row)
            print(
                f"{b:>5} {blur:>7g} {scaling:>7g} {row['max_rel_err']:>13.4f} "
                f"{row['min_grad_cos']:>12.4f} {row['median_s'] * 1e3:>8.1f}",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and grid")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)"
    )
    parser.add_argument(
        "--max-n", type=int, default=4096, help="largest batch in part 1 (16384 for the full table)"
    )
    parser.add_argument("--part", choices=["all", "term", "speed", "defaults"], default="all")
    parser.add_argument(
        "--clock", choices=["cpu", "wall"], default="cpu", help="thread CPU time or wall time"
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [64, 256, 1024] if args.quick else [64, 256, 1024, 4096, 16384]
    sizes = [n for n in sizes if n <= args.max_n]
    grid = [
        (1e-4, 0.5),  # the reference FairCLIP code
        (1e-2, 0.5),
        (1e-2, 0.8),
        (1e-2, 0.9),
        (1e-3, 0.9),
        (5e-2, 0.9),
        (1e-2, 0.95),
    ]
    if args.quick:
        grid = grid[:4]
    run_term = args.part in ("all", "term")
    term = part_term([16, 32, 64], seeds=3 if args.quick else 5) if run_term else []
    speed = part_speed(sizes) if args.part in ("all", "speed") else []
    defaults = (
        part_defaults([32, 128] if args.quick else [32, 128, 512], grid, seeds=3)
        if args.part in ("all", "defaults")
        else []
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if args.part != "all" and RESULTS.exists():  # keep the other part of an earlier run
        earlier = json.loads(RESULTS.read_text())
        term = term or earlier.get("term", [])
        speed = speed or earlier.get("speed", [])
        defaults = defaults or earlier.get("defaults", [])
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "timing": "best of k (first call when it exceeds the budget)",
        "clock": "thread CPU time" if CLOCK is time.thread_time else "wall",
        "machine": platform.platform(),
        "flush_denormal": "part 0: both, as marked; parts 1-2: on",
        "default_blur": DEFAULT_BLUR,
        "default_scaling": DEFAULT_SCALING,
    }
    out = {"meta": meta, "term": term, "speed": speed, "defaults": defaults}
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
