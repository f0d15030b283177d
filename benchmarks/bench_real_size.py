"""Real-size training step of FairVLMModule: ViT-B/16 CLIP (openai/clip-vit-base-patch16
hyper-parameters, random weights, 224 px, 77 tokens) at batch 32, full fine-tuning vs LoRA, with
the tiny synthetic-benchmark model as the side-by-side reference.

Each configuration runs in its own process (clean peak-memory reading): it builds the model from
the preset config, then times ``warmup + steps`` optimiser steps of the full module path
(``training_step`` = encoders + per-pair CLIP loss + Sinkhorn fairness term over the four
attributes, ``backward``, AdamW ``step``) on fixed random batches, and records

* step time: mean ± std over the timed steps (wall clock, ``torch.set_num_threads(--threads)``);
* peak memory: the process's peak resident set (``ru_maxrss``), its growth over the memory
  right after the model was built (= what training adds: gradients, optimiser state,
  activations), and its peak within each phase of the step (build, forward, backward,
  optimizer; sampled every 2 ms). On CUDA the peak allocated GPU memory instead;
* the activations autograd saves in the first forward (unique storages that are not
  parameters, ``torch.autograd.graph.saved_tensors_hooks``): what the step holds independently
  of the allocator.

glibc's malloc keeps freed blocks of up to 32 MiB in its heap once its dynamic mmap threshold has
risen, so the resident set also counts freed temporaries that it has not returned, and the
more temporaries a step makes, the more it counts (LoRA's adapted projections make two or three
extra full-size ones each). The children run with ``MALLOC_MMAP_THRESHOLD_`` fixed
(``--mmap-threshold``, 64 KiB by default; 0 = glibc's default), so that large blocks are mapped
and returned on free and the resident set follows the live tensors (docs/device.md).

Prints a table and writes ``benchmarks/results/real_size.json``.

    python benchmarks/bench_real_size.py [--batch-size 32] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from fairvlm_lightning.atomic import atomic_write_json
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS

RESULTS = Path(__file__).resolve().parent / "results" / "real_size.json"
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj"]}
ATTRS = ATTRIBUTE_GROUPS


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class _PhasePeaks:
    """Samples the resident set every 2 ms and keeps its maximum per named phase."""

    def __init__(self) -> None:
        self.phase = "build"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _current_rss_mib()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            time.sleep(0.002)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v, 1) for k, v in self.peaks.items()}


def run_one(mode: str, batch_size: int, steps: int, warmup: int, threads: int, device: str) -> dict:
    from fairvlm_lightning.app.synthetic.tiny_model import build_tiny_dual_encoder
    from fairvlm_lightning.encoders import EncoderSpec
    from fairvlm_lightning.module import FairVLMModule
    from fairvlm_lightning.sinkhorn import SinkhornFairnessLoss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sampler = _PhasePeaks()
    texts = ["cup to disc ratio 0.7, glaucoma suspect", "normal optic nerve, no glaucoma"] * 8
    with tempfile.TemporaryDirectory() as tmp:
        preset = None if mode == "tiny" else "clip-vit-base-patch16"
        folder = build_tiny_dual_encoder(tmp, texts, preset=preset)
        module = FairVLMModule(
            str(folder),
            encoder=EncoderSpec(peft=LORA if mode == "lora" else None),
            fairness=SinkhornFairnessLoss(),
            fairness_weight=1e-4,
            fairness_attributes=list(ATTRS),
            optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5),
        ).to(device)
    cfg = module.model.config
    size, length = cfg.vision_config.image_size, cfg.text_config.max_position_embeddings
    g = torch.Generator().manual_seed(1)
    batch = {
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=g),
        "input_ids": torch.randint(
            4, cfg.text_config.vocab_size, (batch_size, length), generator=g
        ),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "index": torch.arange(batch_size),
        **{a: torch.randint(0, n, (batch_size,), generator=g) for a, n in ATTRS.items()},
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = module.configure_optimizers()
    module.train()
    sampler.phase = "before_step"
    base_rss = _current_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    times = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        sampler.phase = "forward"
        if i == 0:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = module.training_step(batch, i)["loss"]
        else:
            loss = module.training_step(batch, i)["loss"]
        sampler.phase = "backward"
        loss.backward()
        sampler.phase = "optimizer"
        opt.step()
        opt.zero_grad(set_to_none=True)
        sampler.phase = "idle"
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    out = {
        "mode": mode,
        "batch_size": batch_size,
        "image_size": size,
        "tokens": length,
        "params_total": total,
        "params_trainable": trainable,
        "step_s_mean": statistics.mean(times),
        "step_s_std": statistics.stdev(times) if len(times) > 1 else 0.0,
        "steps_timed": len(times),
        "threads": threads,
        "device": device,
        "peak_rss_mib": _rss_mib(),
        "rss_after_build_mib": base_rss,
        "peak_rss_mib_by_phase": sampler.stop(),
        "saved_activations_mib": sum(saved.values()) / 2**20,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }
    if device == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=["tiny", "full", "lora"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mmap-threshold", type=int, default=65536, help="MALLOC_MMAP_THRESHOLD_")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    if args.one:
        res = run_one(args.one, args.batch_size, args.steps, args.warmup, args.threads, args.device)
        print("RESULT " + json.dumps(res))
        return
    rows = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--one", mode, "--batch-size", str(args.batch_size),
               "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--device", args.device]  # fmt: skip
        env = dict(os.environ)
        if args.mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        rows.append(json.loads(line[len("RESULT ") :]))
    tiny = next((r for r in rows if r["mode"] == "tiny"), None)
    print(
        f"FairVLMModule training step, B={args.batch_size}, {args.device}, "
        f"{args.threads} threads, {args.steps} timed steps after {args.warmup} warm-up"
    )
    print(
        f"{'mode':<6} {'img':>4} {'params (trainable/total)':>26} {'step s (mean±std)':>19} "
        f"{'x tiny':>8} {'peak RSS MiB':>13} {'+training MiB':>14} {'saved act. MiB':>15}"
    )
    for r in rows:
        ratio = r["step_s_mean"] / tiny["step_s_mean"] if tiny else float("nan")
        params = f"{r['params_trainable'] / 1e6:.2f}M/{r['params_total'] / 1e6:.1f}M"
        print(
            f"{r['mode']:<6} {r['image_size']:>4} {params:>26} "
            f"{r['step_s_mean']:>10.2f} ± {r['step_s_std']:<6.2f} {ratio:>8.0f} "
            f"{r['peak_rss_mib']:>13.0f} {r['peak_rss_mib'] - r['rss_after_build_mib']:>14.0f} "
            f"{r['saved_activations_mib']:>15.0f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS, {"args": vars(args), "rows": rows})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
