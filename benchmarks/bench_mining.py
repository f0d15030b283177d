"""Dynamic Bad Pair Mining cost: per-step overhead next to a tiny CLIP step, epoch-end time, memory.

Measured side by side in one run on the same machine:

* one training step of a tiny Hugging Face ``CLIPModel`` (built from a config, random weights)
  at batch 256: forward, per-pair CLIP loss, backward, AdamW step;
* the DBPM work added to that step: ``weights`` (before reducing) + ``record`` (after), with the
  pair table at 10**6 pairs and flags active;
* ``end_epoch`` (fold + mu/sigma + flags) at 10**6 and 10**7 pairs, and at 10**7 pairs for each
  option (recency-weighted statistic, median/MAD, per-group thresholds over 3 or 3 x 2 groups);
* bytes per pair: the state's tensors, and the resident-memory growth measured by the OS.

Usage::

    python benchmarks/bench_mining.py [--device cpu|cuda] [--quick] [--threads N]

On a CPU shared with other jobs, ``--threads 1`` avoids OpenMP threads waiting for each other
(which inflates every small op to a scheduler time slice).

Prints a table and writes ``benchmarks/results/bench_mining.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from fairvlm_lightning.mining import BadPairMiner, GaussianMixtureRule

BATCH = 256


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _fill_epoch(miner: BadPairMiner, gen: torch.Generator, chunk: int = 1 << 20) -> None:
    n = miner.num_pairs
    for s in range(0, n, chunk):
        index = torch.arange(s, min(s + chunk, n), device=miner.device)
        losses = 1.0 + 0.1 * torch.randn(index.numel(), generator=gen).to(miner.device)
        losses[:3] = 5.0  # a few faulty pairs per chunk
        miner.record(index, losses)


#: end_epoch variants timed at 10**7 pairs (the paper's rule first)
VARIANTS: dict[str, dict] = {
    "paper": {},
    "statistic=ema": {"statistic": "ema"},
    "location=median": {"location": "median"},
    "scope=race": {"scope": ("race",)},
    "scope=race,location=median": {"scope": ("race",), "location": "median"},
    "scope=race+gender": {"scope": ("race", "gender")},
    "rule=mixture(zero)": {"rule": GaussianMixtureRule()},
    "rule=mixture(posterior),scope=race": {
        "rule": GaussianMixtureRule(weighting="posterior"),
        "scope": ("race",),
    },
    "statistic=ema,rule=mixture(zero),scope=race+gender": {
        "statistic": "ema",
        "rule": GaussianMixtureRule(),
        "scope": ("race", "gender"),
    },
}


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    return value if isinstance(value, (str, int, float)) else repr(value)


def memory_and_end_epoch(
    num_pairs: int, device: torch.device, repeats: int, options: dict | None = None
) -> dict:
    options = options or {}
    gen = torch.Generator().manual_seed(0)
    # one int8 per pair and scope attribute, kept by the caller (the callback's group_values)
    groups = {
        "race": torch.randint(-1, 3, (num_pairs,), generator=gen, dtype=torch.int8).to(device),
        "gender": torch.randint(0, 2, (num_pairs,), generator=gen, dtype=torch.int8).to(device),
    }
    rss0, peak0 = _rss_bytes(), _max_rss_bytes()
    miner = BadPairMiner(num_pairs, device=device, **options)
    _fill_epoch(miner, gen)
    miner.end_epoch(groups=groups)
    rss1 = _rss_bytes()
    times, cpu_times = [], []
    for _ in range(repeats):
        _fill_epoch(miner, gen)
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        miner.end_epoch(groups=groups)
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak1 = _max_rss_bytes()
    return {
        "num_pairs": num_pairs,
        "options": {
            k: list(v)
            if isinstance(v, tuple)
            else v
            if isinstance(v, (str, int, float))
            else repr(v)
            for k, v in options.items()
        },
        "state_bytes_per_pair": miner.bytes_per_pair,
        "group_bytes_per_pair": len(miner.scope.attributes),
        "rss_growth_bytes_per_pair": (rss1 - rss0) / num_pairs if device.type == "cpu" else None,
        "peak_rss_growth_bytes_per_pair": (
            max(peak1 - peak0, 0) / num_pairs if device.type == "cpu" else None
        ),
        "end_epoch_s": statistics.median(times),
        "end_epoch_cpu_s": statistics.median(cpu_times),
        "num_faulty": miner.num_faulty,
    }


def tiny_clip(device: torch.device) -> CLIPModel:
    tiny = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(vocab_size=1000, max_position_embeddings=32, **tiny),
        vision_config=dict(image_size=32, patch_size=8, **tiny),
        projection_dim=64,
    )
    torch.manual_seed(0)
    return CLIPModel(config).to(device)


def per_pair_clip_losses(model: CLIPModel, pixel_values, input_ids) -> torch.Tensor:
    out = model(pixel_values=pixel_values, input_ids=input_ids)
    logits = out.logits_per_image  # (B, B), already scaled
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (
        F.cross_entropy(logits, target, reduction="none")
        + F.cross_entropy(logits.t(), target, reduction="none")
    )


def step_costs(device: torch.device, repeats: int) -> dict:
    model = tiny_clip(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(BATCH, 3, 32, 32, generator=g).to(device)
    input_ids = torch.randint(0, 1000, (BATCH, 16), generator=g).to(device)
    num_pairs = 10**6
    miner = BadPairMiner(num_pairs, device=device)
    _fill_epoch(miner, g)
    miner.end_epoch()
    _fill_epoch(miner, g)
    miner.end_epoch()  # flags active
    index = torch.randperm(num_pairs, generator=g)[:BATCH].to(device)
    index[:8] = torch.arange(8, device=device)  # some flagged pairs in the batch

    def clip_step():
        losses = per_pair_clip_losses(model, pixel_values, input_ids)
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def clip_step_with_dbpm():
        losses = per_pair_clip_losses(model, pixel_values, input_ids)
        loss = (miner.weights(index, losses) * losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        miner.record(index, losses.detach())

    losses = per_pair_clip_losses(model, pixel_values, input_ids).detach()

    def dbpm_only():
        miner.weights(index, losses)
        miner.record(index, losses)

    # the two full steps are timed alternately so that machine load affects both alike
    clip, clip_dbpm = [], []
    for _ in range(repeats):
        clip.append(_time(clip_step, device, 1, warmup=1))
        clip_dbpm.append(_time(clip_step_with_dbpm, device, 1, warmup=1))
    return {
        "clip_step_s": statistics.median(clip),
        "clip_step_with_dbpm_s": statistics.median(clip_dbpm),
        "dbpm_record_plus_weights_s": _time(dbpm_only, device, repeats * 20),
        "num_flagged": miner.num_faulty + miner.num_noisy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 10**6 pairs only")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=None,
        help="only time end_epoch at 10**7 pairs for these VARIANTS names (no step costs)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = 3 if args.quick else 10
    if args.variants is not None:
        print(f"end_epoch at 10,000,000 pairs (threads {torch.get_num_threads()}; median of 3)")
        print(f"{'variant':<52}{'wall ms':>9}{'CPU ms':>9}{'B/pair':>7}{'faulty':>10}")
        for name in ["paper", *args.variants]:
            m = memory_and_end_epoch(10**7, device, repeats=3, options=VARIANTS[name])
            print(
                f"{name:<52}{m['end_epoch_s'] * 1e3:>9.1f}{m['end_epoch_cpu_s'] * 1e3:>9.1f}"
                f"{m['state_bytes_per_pair']:>7.0f}{m['num_faulty']:>10}"
            )
        return

    # memory first, while the process is small (peak RSS growth is then attributable)
    sizes = [10**6] if args.quick else [10**6, 10**7]
    mem = [memory_and_end_epoch(n, device, repeats=3) for n in sizes]
    big = sizes[-1]
    variants = {
        name: memory_and_end_epoch(big, device, repeats=3, options=opts)
        for name, opts in VARIANTS.items()
    }
    steps = step_costs(device, repeats)

    print(
        f"device: {device} ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print()
    print(f"per training step at batch {BATCH} (median)")
    print(f"{'what':<38}{'ms':>10}{'ratio to CLIP step':>22}")
    base = steps["clip_step_s"]
    for name, key in [
        ("tiny CLIP step (fwd+bwd+AdamW)", "clip_step_s"),
        ("tiny CLIP step + DBPM weights+record", "clip_step_with_dbpm_s"),
        ("DBPM weights + record alone", "dbpm_record_plus_weights_s"),
    ]:
        print(f"{name:<38}{steps[key] * 1e3:>10.3f}{steps[key] / base:>22.5f}")
    print()
    print("end_epoch and memory")
    header = f"{'pairs':>12}{'end_epoch ms':>14}{'state B/pair':>14}{'RSS B/pair':>12}"
    print(header + f"{'peak RSS B/pair':>17}")
    for m in mem:
        rss = m["rss_growth_bytes_per_pair"]
        peak = m["peak_rss_growth_bytes_per_pair"]
        print(
            f"{m['num_pairs']:>12,}{m['end_epoch_s'] * 1e3:>14.1f}"
            f"{m['state_bytes_per_pair']:>14.1f}"
            f"{(f'{rss:.1f}' if rss is not None else '-'):>12}"
            f"{(f'{peak:.1f}' if peak is not None else '-'):>17}"
        )

    print()
    print(f"end_epoch at {big:,} pairs by option (ratio to the paper's rule, same run)")
    print(f"{'variant':<52}{'end_epoch ms':>14}{'ratio':>8}{'B/pair (state+groups)':>24}")
    for name, m in variants.items():
        ratio = m["end_epoch_s"] / variants["paper"]["end_epoch_s"]
        total = m["state_bytes_per_pair"] + m["group_bytes_per_pair"]
        print(f"{name:<52}{m['end_epoch_s'] * 1e3:>14.1f}{ratio:>8.2f}{total:>24.1f}")

    out = Path(__file__).parent / "results" / "bench_mining.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": BATCH,
        "steps": steps,
        "ratios": {
            "clip_step_with_dbpm_over_clip_step": steps["clip_step_with_dbpm_s"] / base,
            "dbpm_over_clip_step": steps["dbpm_record_plus_weights_s"] / base,
        },
        "end_epoch_and_memory": mem,
        "end_epoch_by_option": variants,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
