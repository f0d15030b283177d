"""Training-step cost of FairVLMModule: the full method vs a plain CLIP step, side by side.

Runs Lightning fits of the same tiny CLIP (the synthetic benchmark's size: 64-px images, 32-px
patches, 32 tokens, width 64, 2 layers) on the same in-memory batches and times each training
batch (``on_train_batch_start`` → ``on_train_batch_end``, so optimiser and callback work are in),
for: plain CLIP; + Sinkhorn term (GeomLoss, and the exact 1-D path); + DBPM; DBPM + Sinkhorn.
DBPM runs two epochs with a warm-up of one, and only the second epoch (weights active) is timed.
Prints a table of median step times and ratios to plain CLIP, and writes
``benchmarks/results/module_step.json``.

    python benchmarks/bench_module_step.py [--batch-sizes 16 64] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from transformers import CLIPConfig

from fairvlm_lightning.callbacks import DynamicBadPairMining
from fairvlm_lightning.module import FairVLMModule


def tiny_clip() -> CLIPConfig:
    tower = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return CLIPConfig(
        text_config=dict(vocab_size=1024, max_position_embeddings=32, eos_token_id=3, **tower),
        vision_config=dict(image_size=64, patch_size=32, **tower),
        projection_dim=64,
    )


def batches(n_batches: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for b in range(n_batches):
        ids = torch.randint(4, 1024, (batch_size, 32), generator=g)
        ids[:, -1] = 3
        out.append(
            {
                "pixel_values": torch.randn(batch_size, 3, 64, 64, generator=g),
                "input_ids": ids,
                "attention_mask": torch.ones(batch_size, 32, dtype=torch.long),
                "index": torch.arange(b * batch_size, (b + 1) * batch_size),
                "race": torch.randint(-1, 3, (batch_size,), generator=g),
                "gender": torch.randint(0, 2, (batch_size,), generator=g),
                "ethnicity": torch.randint(-1, 2, (batch_size,), generator=g),
                "language": torch.randint(-1, 3, (batch_size,), generator=g),
            }
        )
    return out


class StepTimer(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch, self.times, self._t = epoch, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx >= 3:  # skip warm-up steps
            self.times.append(time.perf_counter() - self._t)


def run(variant: str, batch_size: int, steps: int) -> float:
    torch.manual_seed(0)
    fair = {"clip": 0.0, "dbpm": 0.0}.get(variant, 0.1)
    backend = "exact1d" if variant.endswith("exact1d") else "geomloss"
    module = FairVLMModule(tiny_clip(), fairness_weight=fair, sinkhorn_backend=backend)
    data = batches(steps, batch_size)
    dbpm = "dbpm" in variant or "robust" in variant
    timer = StepTimer(epoch=1 if dbpm else 0)
    callbacks: list[pl.Callback] = [timer]
    if dbpm:
        callbacks.insert(0, DynamicBadPairMining(num_pairs=steps * batch_size, beta_faulty=1.0))
    trainer = pl.Trainer(
        max_epochs=2 if dbpm else 1,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    return statistics.median(timer.times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    variants = ["clip", "fairclip", "fairclip_exact1d", "dbpm", "robust_fair", "robust_exact1d"]
    results = []
    for bs in args.batch_sizes:
        base = None
        for v in variants:
            t = run(v, bs, args.steps)
            base = base or t
            results.append({"batch_size": bs, "variant": v, "median_step_s": t, "ratio": t / base})
    print(f"{'batch':>5}  {'variant':<17} {'step (ms)':>9}  {'vs CLIP':>7}")
    for r in results:
        print(
            f"{r['batch_size']:>5}  {r['variant']:<17} {1e3 * r['median_step_s']:>9.1f}  "
            f"{r['ratio']:>7.2f}"
        )
    out = Path(__file__).parent / "results" / "module_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch_threads": torch.get_num_threads(), "steps": args.steps}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
