"""One training step of FairVLMModule per method, side by side, at the tiny and at the real size.

Methods: plain CLIP; + DBPM; + Sinkhorn term (fused backend); + Sinkhorn term (exact1d);
the full method (DBPM + Sinkhorn, with each backend); and the reference-code style of FairCLIP
(no DBPM; for every attribute and every group one extra no-grad forward pass of a batch drawn
from that group, and one GeomLoss ``SamplesLoss(blur=1e-4)`` between the batch's matched-pair
similarities and the group batch's, as the paper's code does).

Tiny size (the synthetic benchmark's CLIP: 64-px images, 32-px patches, 32 tokens, width 64, two
layers) at B = 16 and 64 (and 32, whose DBPM callback part B reuses): Lightning fits on the same
in-memory batches, each training batch timed from ``on_train_batch_start`` to
``on_train_batch_end`` (optimiser and callbacks included), median over the batches after three
warm-up ones. DBPM runs two epochs with a warm-up of one; only the second epoch (weights active)
is timed.

Real size: the architecture of ``openai/clip-vit-base-patch16`` (ViT-B/16 at 224 px, 12-layer
512-wide text tower, 77 tokens; 150 M parameters) built from a ``CLIPConfig`` with its real
hyper-parameters and random weights (no download), B = 32, on CPU. One step takes minutes here,
so the plain CLIP step (``training_step`` + backward + AdamW, median of the timed steps) is
measured, and each method's extra work is measured in the same run on that model's own per-pair
losses and added: the fairness term's forward+backward (its gradient enters the encoder's
backward through the per-pair losses the contrastive loss already backpropagates, so it adds no
encoder work), DBPM's per-step work (``pair_weights`` and the recording hook, on the callback
fitted in the tiny B=32 run), and for the reference style ten no-grad forwards of the real model
plus ten ``SamplesLoss`` calls.

Also printed: the aten operation count (torch profiler, all events) of one forward+backward of
the fairness term of each method. Results go to ``benchmarks/results/bench_step.json``.

    python benchmarks/bench_step.py            # tiny B=16/32/64 + real size, 2 timed real steps
    python benchmarks/bench_step.py --quick    # fewer tiny steps, 1 timed real step
    python benchmarks/bench_step.py --no-real  # tiny size only (about 2 min)
    python benchmarks/bench_step.py --tiny-batch-sizes  # real size only (plus one tiny DBPM fit)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import torch
from geomloss import SamplesLoss
from torch.profiler import ProfilerActivity, profile
from transformers import CLIPConfig

from fairvlm_lightning.callbacks import DynamicBadPairMining
from fairvlm_lightning.losses import pair_losses
from fairvlm_lightning.mining import EmaLoss, GaussianMixtureRule, MinerSpec, Scope, ThresholdRule
from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS
from fairvlm_lightning.sinkhorn import SinkhornFairnessLoss

RESULTS = Path(__file__).resolve().parent / "results" / "bench_step.json"
ATTRIBUTES = ATTRIBUTE_GROUPS  # FairVLMed coding
VARIANTS = [
    "clip",
    "dbpm",
    "dbpm_ema_zero",
    "dbpm_mixture_race",
    "sinkhorn_fused",
    "sinkhorn_exact1d",
    "full_fused",
    "full_exact1d",
    "reference_style",
]
FAIRNESS_WEIGHT = 0.1
#: the issue-18 candidate rules (benchmarks/configs/rf_ema_zero.yaml, rf_gmm_zero_race.yaml)
DBPM_RULES = {
    "dbpm_ema_zero": MinerSpec(
        warmup_epochs=1, statistic=EmaLoss(0.5),
        rule=ThresholdRule(beta_noisy=math.inf, beta_faulty=1.5, weighting="zero"),
    ),
    "dbpm_mixture_race": MinerSpec(
        warmup_epochs=1, statistic=EmaLoss(0.5), scope=Scope(["race"], min_cell_size=50),
        rule=GaussianMixtureRule(threshold=0.5, weighting="zero"),
    ),
}
REFERENCE_BLUR = 1e-4  # FairCLIP's code: SamplesLoss("sinkhorn", p=2, blur=1e-4)


def tiny_clip() -> CLIPConfig:
    tower = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return CLIPConfig(
        text_config=dict(vocab_size=1024, max_position_embeddings=32, eos_token_id=3, **tower),
        vision_config=dict(image_size=64, patch_size=32, **tower),
        projection_dim=64,
    )


def clip_vit_b16() -> CLIPConfig:
    """openai/clip-vit-base-patch16's hyper-parameters (its config.json), random weights."""
    return CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=16,
            hidden_act="quick_gelu",
        ),
        projection_dim=512,
        logit_scale_init_value=2.6592,
    )


def make_batches(
    n_batches: int, batch_size: int, image: int, tokens: int, vocab: int, eos: int, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n_batches):
        ids = torch.randint(4, vocab - 2, (batch_size, tokens), generator=g)
        ids[:, -1] = eos
        batch = {
            "pixel_values": torch.randn(batch_size, 3, image, image, generator=g),
            "input_ids": ids,
            "attention_mask": torch.ones(batch_size, tokens, dtype=torch.long),
            "index": torch.arange(b * batch_size, (b + 1) * batch_size),
        }
        for name, k in ATTRIBUTES.items():
            batch[name] = torch.randint(
                -1 if name != "gender" else 0, k, (batch_size,), generator=g
            )
        out.append(batch)
    return out


def group_pools(
    batches: list[dict[str, torch.Tensor]],
) -> dict[tuple[str, int], dict[str, torch.Tensor]]:
    """Every sample of the data, split by (attribute, group): where reference-style draws from."""
    keys = ("pixel_values", "input_ids", "attention_mask")
    data = {k: torch.cat([b[k] for b in batches]) for k in keys + tuple(ATTRIBUTES)}
    return {
        (name, gid): {k: data[k][data[name] == gid] for k in keys}
        for name, k in ATTRIBUTES.items()
        for gid in range(k)
    }


class ReferenceStyleModule(FairVLMModule):
    """FairCLIP's training step: one extra no-grad forward pass per attribute group."""

    def __init__(
        self, config: CLIPConfig, pools: dict[tuple[str, int], dict[str, torch.Tensor]]
    ) -> None:
        super().__init__(config, fairness_weight=0.0)
        self.pools = pools
        self.sinkhorn = SamplesLoss("sinkhorn", p=2, blur=REFERENCE_BLUR)
        self._draw = torch.Generator().manual_seed(1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        out = self.encoder(batch["pixel_values"], batch["input_ids"], batch.get("attention_mask"))
        losses = pair_losses(out.image_embeds, out.text_embeds, out.logit_scale, None).float()
        total = losses.mean()
        similarity = (out.image_embeds * out.text_embeds).sum(dim=-1).float()
        b = similarity.shape[0]
        for pool in self.pools.values():
            pick = torch.randint(0, pool["input_ids"].shape[0], (b,), generator=self._draw)
            with torch.no_grad():
                dist = self.encoder(
                    pool["pixel_values"][pick],
                    pool["input_ids"][pick],
                    pool["attention_mask"][pick],
                )
                group_sim = (dist.image_embeds * dist.text_embeds).sum(dim=-1).float()
            total = total + FAIRNESS_WEIGHT * self.sinkhorn(
                similarity.unsqueeze(-1), group_sim.unsqueeze(-1)
            )
        return {"loss": total, "pair_losses": losses.detach(), "index": batch["index"]}


class StepTimer(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch, self.times, self._t = epoch, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx >= 3:  # skip warm-up steps
            self.times.append(time.perf_counter() - self._t)


def build_module(variant: str, config: CLIPConfig, pools=None) -> FairVLMModule:
    if variant == "reference_style":
        return ReferenceStyleModule(config, pools)
    fair = 0.0 if variant == "clip" or variant.startswith("dbpm") else FAIRNESS_WEIGHT
    backend = "exact1d" if variant.endswith("exact1d") else "fused"
    term = SinkhornFairnessLoss(backend=backend) if fair > 0 else None
    return FairVLMModule(config, fairness=term, fairness_weight=fair)


def run_tiny(
    variant: str, batch_size: int, steps: int
) -> tuple[float, DynamicBadPairMining | None]:
    torch.manual_seed(0)
    data = make_batches(steps, batch_size, image=64, tokens=32, vocab=1024, eos=3)
    module = build_module(variant, tiny_clip(), group_pools(data))
    dbpm_cb = None
    uses_dbpm = variant.startswith("dbpm") or variant.startswith("full")
    timer = StepTimer(epoch=1 if uses_dbpm else 0)
    callbacks: list[pl.Callback] = [timer]
    if uses_dbpm:
        dbpm_cb = DynamicBadPairMining(DBPM_RULES.get(variant), num_pairs=steps * batch_size,
                                       **({} if variant in DBPM_RULES else {"beta_faulty": 1.0}))
        callbacks.insert(0, dbpm_cb)
    trainer = pl.Trainer(
        max_epochs=2 if uses_dbpm else 1,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None))
    return statistics.median(timer.times), dbpm_cb


def fairness_term(variant: str) -> Callable[[torch.Tensor, dict[str, torch.Tensor]], Any] | None:
    """The fairness term of a method as a function of (B,) statistic and groups, or None."""
    if variant == "clip" or variant.startswith("dbpm"):
        return None
    if variant == "reference_style":
        loss = SamplesLoss("sinkhorn", p=2, blur=REFERENCE_BLUR)

        def reference(values: torch.Tensor, groups: dict[str, torch.Tensor]) -> torch.Tensor:
            # The group batches come from extra forward passes; here: same-size stand-ins.
            total = values.sum() * 0.0
            for k in ATTRIBUTES.values():
                for _ in range(k):
                    other = values.detach().flip(0).unsqueeze(-1)
                    total = total + loss(values.unsqueeze(-1), other)
            return total

        return reference
    backend = "exact1d" if variant.endswith("exact1d") else "fused"
    return SinkhornFairnessLoss(backend=backend)


def count_ops(fn, values: torch.Tensor, groups: dict[str, torch.Tensor]) -> int:
    v = values.clone().requires_grad_(True)
    fn(v, groups).backward()
    v = values.clone().requires_grad_(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(v, groups).backward()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def time_call(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def term_inputs(batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(batch_size)
    values = torch.randn(batch_size, generator=g).abs() * 0.8 + torch.rand(batch_size, generator=g)
    groups = {
        name: torch.randint(-1 if name != "gender" else 0, k, (batch_size,), generator=g)
        for name, k in ATTRIBUTES.items()
    }
    return values, groups


def part_tiny(batch_sizes: list[int], steps: int) -> tuple[list[dict], DynamicBadPairMining | None]:
    rows, kept_dbpm = [], None
    for bs in batch_sizes:
        values, groups = term_inputs(bs)
        base = None
        for variant in VARIANTS:
            t, dbpm_cb = run_tiny(variant, bs, steps)
            if bs == 32 and variant == "dbpm":
                kept_dbpm = dbpm_cb
            base = base or t
            fn = fairness_term(variant)
            ops = count_ops(fn, values, groups) if fn is not None else 0
            rows.append(
                {
                    "size": "tiny",
                    "batch_size": bs,
                    "variant": variant,
                    "step_s": t,
                    "ratio": t / base,
                    "fairness_aten_ops": ops,
                }
            )
            print(
                f"tiny  B={bs:<3} {variant:<18} {t * 1e3:>9.1f} ms  {t / base:>6.2f}x  "
                f"{ops:>6} ops",
                flush=True,
            )
    return rows, kept_dbpm


def part_real(steps: int, dbpm_cb: DynamicBadPairMining | None) -> list[dict]:
    torch.manual_seed(0)
    bs = 32
    config = clip_vit_b16()
    data = make_batches(steps + 1, bs, image=224, tokens=77, vocab=49408, eos=49407)
    module = FairVLMModule(config, fairness_weight=0.0)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    times, last = [], None
    for i, batch in enumerate(data):
        start = time.perf_counter()
        out = module.training_step(batch, i)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i > 0:  # the first step allocates everything
            times.append(time.perf_counter() - start)
        last = (batch, out)
        print(f"real  plain CLIP step {i}: {time.perf_counter() - start:.1f} s", flush=True)
    t_clip = statistics.median(times)
    assert last is not None
    batch, out = last
    losses = out["pair_losses"].float()
    groups = {name: batch[name] for name in ATTRIBUTES}

    def term_time(fn) -> float:
        def call() -> None:
            v = losses.clone().requires_grad_(True)
            fn(v, groups).backward()

        return time_call(call, reps=20)

    extra: dict[str, float] = {"clip": 0.0}
    extra["sinkhorn_fused"] = term_time(SinkhornFairnessLoss(backend="fused"))
    extra["sinkhorn_exact1d"] = term_time(SinkhornFairnessLoss(backend="exact1d"))
    if dbpm_cb is not None and dbpm_cb.miner is not None:
        index = torch.arange(bs)
        fake_trainer = SimpleNamespace(current_epoch=1)
        tiny_batch = {"index": index, **groups}

        def dbpm_step() -> None:
            dbpm_cb.pair_weights(index, losses)
            dbpm_cb.on_train_batch_end(fake_trainer, module, out, tiny_batch, 0)  # type: ignore[arg-type]

        extra["dbpm"] = time_call(dbpm_step, reps=20)
    else:
        extra["dbpm"] = float("nan")
    extra["full_fused"] = extra["dbpm"] + extra["sinkhorn_fused"]
    extra["full_exact1d"] = extra["dbpm"] + extra["sinkhorn_exact1d"]
    with torch.no_grad():
        forward = time_call(
            lambda: module.encoder(
                batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
            ),
            reps=1 if steps <= 1 else 2,
        )
    n_groups = sum(ATTRIBUTES.values())
    reference_fn = fairness_term("reference_style")
    extra["reference_style"] = n_groups * forward + term_time(reference_fn)
    rows = []
    for variant in VARIANTS:
        fn = fairness_term(variant)
        ops = count_ops(fn, losses, groups) if fn is not None else 0
        t = t_clip + extra[variant]
        rows.append(
            {
                "size": "real (clip-vit-base-patch16 architecture, random weights)",
                "batch_size": bs,
                "variant": variant,
                "step_s": t,
                "ratio": t / t_clip,
                "extra_s": extra[variant],
                "fairness_aten_ops": ops,
                "composed": variant != "clip",
            }
        )
        print(
            f"real  B={bs:<3} {variant:<18} {t:>9.2f} s   {t / t_clip:>8.4f}x  "
            f"(+{extra[variant] * 1e3:.1f} ms)  {ops:>6} ops",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--no-real", action="store_true", help="skip the real-size model")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--tiny-batch-sizes", type=int, nargs="*", default=[16, 32, 64], help="tiny-size batches"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = 12 if args.quick else 30
    tiny, dbpm_cb = part_tiny(args.tiny_batch_sizes, steps)
    if dbpm_cb is None and not args.no_real:  # part B reuses a fitted DBPM callback at B=32
        dbpm_cb = run_tiny("dbpm", 32, steps)[1]
    real = [] if args.no_real else part_real(1 if args.quick else 2, dbpm_cb)
    print(
        f"\n{'size':<5} {'batch':>5}  {'method':<18} {'step':>10}  {'vs CLIP':>8} {'term ops':>8}"
    )
    for r in tiny + real:
        size = "tiny" if r["size"] == "tiny" else "real"
        step = f"{r['step_s'] * 1e3:.1f} ms" if size == "tiny" else f"{r['step_s']:.2f} s"
        print(
            f"{size:<5} {r['batch_size']:>5}  {r['variant']:<18} {step:>10}  {r['ratio']:>7.3f}x "
            f"{r['fairness_aten_ops']:>8}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tiny_steps": steps,
        "machine": platform.platform(),
        "fairness_weight": FAIRNESS_WEIGHT,
        "real_size": "plain CLIP steps measured; other methods = plain + their measured extra work",
    }
    if RESULTS.exists() and (not tiny or not real):  # keep the skipped part of an earlier run
        earlier = json.loads(RESULTS.read_text()).get("results", [])
        tiny = tiny or [r for r in earlier if r["size"] == "tiny"]
        real = real or [r for r in earlier if r["size"] != "tiny"]
    RESULTS.write_text(json.dumps({"meta": meta, "results": tiny + real}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
