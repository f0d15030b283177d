"""One prepared device check: the real-size training step, the fairness term, the metrics.

On whatever device it finds (CUDA if available, else CPU), it measures:

* training steps of ViT-B/16 CLIP (openai/clip-vit-base-patch16 hyper-parameters, random
  weights, 224 px, 77 tokens) at B = 32 and 128 in ``bf16-mixed``, through the public API
  (``FairVLMModule`` + ``DynamicBadPairMining`` in a Lightning ``Trainer``): plain CLIP, + DBPM,
  + the Sinkhorn term with each backend (fused, geomloss, exact1d), the full method (DBPM + the
  term, fused and exact1d), the reference-code style of FairCLIP (one extra no-grad forward per
  attribute group and one GeomLoss call each) and plain CLIP with LoRA. Per method: median step
  time (synchronised), its ratio to plain CLIP, device kernels of one step (torch profiler;
  aten operations on CPU) and peak memory (``max_memory_allocated`` on CUDA, sampled peak
  resident set on CPU);
* the fairness term alone (4 attributes, 10 groups, fixed layout and diameter,
  :func:`~fairvlm_lightning.sinkhorn.sinkhorn_divergences`): eager, compiled with
  ``torch.compile(mode="reduce-overhead", fullgraph=True)`` and captured in a CUDA graph
  (``torch.cuda.make_graphed_callables``), time and kernels per forward+backward;
* ``FairnessMetrics`` (four attributes) on 10^6 scores on the device and on the CPU.

It writes one JSON (``--out``, default ``benchmarks/results/device_check.json``) and prints one
table. A section that fails records its error in the JSON and the run goes on.

``--smoke`` runs the same code at tiny sizes (a two-layer 64-px CLIP, B = 8, 10^4
scores, one timed step, the term with an 8-step epsilon schedule) on the CPU; there
``bf16-mixed`` runs as CPU autocast (same code path, meaningless speed), the compiled term uses
the ``aot_eager`` backend (graph capture checked, no C++ compilation), CUDA graphs are skipped,
kernels are aten operations and peak memory is the process's resident-set high-water mark so
far (it never falls between methods: see ``bench_real_size.py`` for CPU memory per mode).

    python benchmarks/device_check.py                # on a GPU: about 5 minutes
    python benchmarks/device_check.py --smoke --out /tmp/device_check.json
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from geomloss import SamplesLoss
from torch.profiler import ProfilerActivity, profile
from transformers import CLIPConfig

from fairvlm_lightning.atomic import atomic_write_json
from fairvlm_lightning.callbacks import DynamicBadPairMining
from fairvlm_lightning.encoders import EncoderSpec
from fairvlm_lightning.losses import pair_losses
from fairvlm_lightning.metrics import FairnessMetrics
from fairvlm_lightning.module import FairVLMModule
from fairvlm_lightning.schema import ATTRIBUTE_GROUPS
from fairvlm_lightning.sinkhorn import (
    DEFAULT_BLUR,
    DEFAULT_SCALING,
    SinkhornFairnessLoss,
    group_weights,
    sinkhorn_divergences,
)

RESULTS = Path(__file__).resolve().parent / "results" / "device_check.json"
FAIRNESS_WEIGHT = 0.1
REFERENCE_BLUR = 1e-4  # the FairCLIP reference code's SamplesLoss blur
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj"]}
#: method -> (Sinkhorn backend or None, DBPM on, LoRA on)
METHODS: dict[str, tuple[str | None, bool, bool]] = {
    "clip": (None, False, False),
    "dbpm": (None, True, False),
    "sinkhorn_fused": ("fused", False, False),
    "sinkhorn_geomloss": ("geomloss", False, False),
    "sinkhorn_exact1d": ("exact1d", False, False),
    "full_fused": ("fused", True, False),
    "full_exact1d": ("exact1d", True, False),
    "reference_style": (None, False, False),
    "clip_lora": (None, False, True),
}
SIZES = {
    "real": {"batch_sizes": [32, 128], "steps": 5, "warmup": 2, "metric_n": 10**6},
    "smoke": {"batch_sizes": [8], "steps": 1, "warmup": 1, "metric_n": 10**4},
}


def clip_config(smoke: bool) -> CLIPConfig:
    """ViT-B/16 CLIP's hyper-parameters (random weights), or a two-layer 64-px CLIP for --smoke."""
    if smoke:
        tower = dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        )
        return CLIPConfig(
            text_config=dict(vocab_size=1024, max_position_embeddings=16, eos_token_id=3, **tower),
            vision_config=dict(image_size=64, patch_size=32, **tower),
            projection_dim=64,
        )
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


def make_batches(n: int, batch_size: int, config: CLIPConfig, seed: int = 0) -> list[dict]:
    """Random images, token ids ending in EOS, and the four attributes (with unknowns)."""
    g = torch.Generator().manual_seed(seed)
    size = config.vision_config.image_size
    tokens, vocab = config.text_config.max_position_embeddings, config.text_config.vocab_size
    out = []
    for i in range(n):
        ids = torch.randint(4, vocab - 2, (batch_size, tokens), generator=g)
        ids[:, -1] = config.text_config.eos_token_id
        batch = {
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=g),
            "input_ids": ids,
            "attention_mask": torch.ones(batch_size, tokens, dtype=torch.long),
            "index": torch.arange(i * batch_size, (i + 1) * batch_size),
        }
        for name, k in ATTRIBUTE_GROUPS.items():
            low = 0 if name == "gender" else -1
            batch[name] = torch.randint(low, k, (batch_size,), generator=g)
        out.append(batch)
    return out


class ReferenceStyleModule(FairVLMModule):
    """FairCLIP's training step: per attribute group one extra no-grad forward of a batch drawn
    from that group, and one ``SamplesLoss`` between the matched-pair similarities."""

    def __init__(self, config: CLIPConfig, batches: list[dict]) -> None:
        super().__init__(config, fairness_weight=0.0)
        keys = ("pixel_values", "input_ids", "attention_mask")
        data = {k: torch.cat([b[k] for b in batches]) for k in keys + tuple(ATTRIBUTE_GROUPS)}
        self.pools = [
            {k: data[k][data[name] == gid] for k in keys}
            for name, n in ATTRIBUTE_GROUPS.items()
            for gid in range(n)
        ]
        self.sinkhorn = SamplesLoss("sinkhorn", p=2, blur=REFERENCE_BLUR)
        self.draw = torch.Generator().manual_seed(1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        out = self.encoder(batch["pixel_values"], batch["input_ids"], batch.get("attention_mask"))
        losses = pair_losses(out.image_embeds, out.text_embeds, out.logit_scale, None).float()
        total = losses.mean()
        similarity = (out.image_embeds * out.text_embeds).sum(dim=-1).float()
        b = similarity.shape[0]
        for pool in self.pools:
            pick = torch.randint(0, pool["input_ids"].shape[0], (b,), generator=self.draw)
            group = {k: v[pick].to(similarity.device) for k, v in pool.items()}
            with torch.no_grad():
                dist = self.encoder(
                    group["pixel_values"], group["input_ids"], group["attention_mask"]
                )
                group_sim = (dist.image_embeds * dist.text_embeds).sum(dim=-1).float()
            with torch.autocast(device_type=similarity.device.type, enabled=False):
                term = self.sinkhorn(similarity.unsqueeze(-1), group_sim.unsqueeze(-1))
            total = total + FAIRNESS_WEIGHT * term
        return {"loss": total, "pair_losses": losses.detach(), "index": batch["index"]}


def build_module(method: str, config: CLIPConfig, batches: list[dict]) -> FairVLMModule:
    """The one place that constructs the module of a method (adapt here when the API moves)."""
    if method == "reference_style":
        return ReferenceStyleModule(config, batches)
    backend, _, lora = METHODS[method]
    return FairVLMModule(
        config,
        encoder=EncoderSpec(peft=LORA if lora else None),
        fairness=SinkhornFairnessLoss(backend=backend) if backend else None,
        fairness_weight=FAIRNESS_WEIGHT if backend else 0.0,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _count_kernels(prof: Any, device: torch.device) -> int:
    """Device kernels (CUDA) or aten operations, nested ones included (CPU) of a profile."""
    if device.type == "cuda":
        kinds = (torch.autograd.DeviceType.CUDA,)
        return sum(1 for e in prof.events() if e.device_type in kinds)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


class StepProbe(pl.Callback):
    """Times every step of the last epoch (after ``warmup`` of its steps), profiles one of
    them, and samples the peak memory."""

    def __init__(self, epoch: int, warmup: int, device: torch.device) -> None:
        self.epoch, self.warmup, self.device = epoch, warmup, device
        self.times: list[float] = []
        self.kernels: int | None = None
        self.peak_rss = 0.0
        self._t = 0.0
        self._prof: Any = None
        self._stop = threading.Event()
        if device.type == "cpu":
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, _rss_mib())
            time.sleep(0.005)

    def _profiled(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        return trainer.current_epoch == self.epoch and batch_idx == self.warmup

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        if self._profiled(trainer, batch_idx):
            acts = [ProfilerActivity.CPU] + (
                [ProfilerActivity.CUDA] if self.device.type == "cuda" else []
            )
            self._prof = profile(activities=acts)
            self._prof.__enter__()
        _sync(self.device)
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        _sync(self.device)
        elapsed = time.perf_counter() - self._t
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self.kernels = _count_kernels(self._prof, self.device)
            self._prof = None
        elif trainer.current_epoch == self.epoch and batch_idx > self.warmup:
            self.times.append(elapsed)

    def peak_mib(self) -> float:
        self._stop.set()
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self.peak_rss


def run_method(
    method: str,
    batch_size: int,
    size: dict,
    config: CLIPConfig,
    device: torch.device,
    precision: str,
) -> dict:
    """Fit one method for a few steps; the timed steps are those of its last epoch."""
    torch.manual_seed(0)
    n_steps = size["warmup"] + 1 + size["steps"]  # warm-up, profiled, timed
    batches = make_batches(n_steps, batch_size, config)
    module = build_module(method, config, batches)
    _, dbpm, _ = METHODS[method]
    epochs = 2 if dbpm else 1  # DBPM weighs pairs from its second epoch on
    probe = StepProbe(epoch=epochs - 1, warmup=size["warmup"], device=device)
    callbacks: list[pl.Callback] = [probe]
    if dbpm:
        callbacks.insert(
            0,
            DynamicBadPairMining(num_pairs=n_steps * batch_size, warmup_epochs=1, beta_faulty=1.0),
        )
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return {
        "method": method,
        "batch_size": batch_size,
        "step_ms": statistics.median(probe.times) * 1e3,
        "kernels_per_step": probe.kernels,
        "peak_mib": probe.peak_mib(),
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
    }


def _time(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / reps * 1e3


def _profile_kernels(fn: Callable[[], Any], device: torch.device) -> int:
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        _sync(device)
    return _count_kernels(prof, device)


def term_check(batch_size: int, device: torch.device, smoke: bool) -> list[dict]:
    """The fairness term alone (fixed layout and diameter): eager, compiled, CUDA graph."""
    g = torch.Generator().manual_seed(0)
    values = (torch.rand(batch_size, generator=g) * 3).to(device)
    groups = {a: (torch.arange(batch_size) % n).to(device) for a, n in ATTRIBUTE_GROUPS.items()}
    _, weights = group_weights(groups)
    v = values.clone().requires_grad_(True)

    # --smoke: a short epsilon schedule (8 temperatures instead of 92), so that tracing is quick.
    blur, scaling = (0.05, 0.5) if smoke else (DEFAULT_BLUR, DEFAULT_SCALING)

    def term(x: torch.Tensor) -> torch.Tensor:
        return sinkhorn_divergences(x, weights, blur, 2, scaling, diameter=3.0).sum()

    def step_with(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            v.grad = None
            fn(v).backward()

        return step

    variants: list[tuple[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]]] = [
        ("eager", lambda: term),
    ]
    if device.type == "cuda":
        variants.append(
            (
                "compile reduce-overhead",
                lambda: torch.compile(term, mode="reduce-overhead", fullgraph=True),
            )
        )
        variants.append(
            (
                "cuda graph",
                lambda: torch.cuda.make_graphed_callables(
                    term, (values.clone().requires_grad_(True),)
                ),
            )
        )
    else:  # CPU: capture only (no C++ compilation); CUDA graphs do not exist
        variants.append(
            ("compile aot_eager", lambda: torch.compile(term, backend="aot_eager", fullgraph=True))
        )
    rows = []
    reps = 3 if smoke else 20
    for name, make in variants:
        row: dict[str, Any] = {"batch_size": batch_size, "variant": name, "groups": 10}
        try:
            t0 = time.perf_counter()
            fn = make()
            step = step_with(fn)
            step()  # compile / capture / warm-up
            step()
            row["setup_s"] = time.perf_counter() - t0
            row["ms"] = _time(step, device, reps)
            row["kernels"] = _profile_kernels(step, device)
        except Exception as err:  # recorded, the check goes on
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        rows.append(row)
    torch._dynamo.reset()
    return rows


def metrics_check(n: int, device: torch.device) -> list[dict]:
    """FairnessMetrics (four attributes) update + compute on n scores, on the device and CPU."""
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (n,), generator=g)
    preds = (torch.rand(n, generator=g) + 0.3 * target).clamp(max=1.0)
    groups = {a: torch.randint(0, k, (n,), generator=g) for a, k in ATTRIBUTE_GROUPS.items()}
    rows = []
    for where in dict.fromkeys([device, torch.device("cpu")]):
        args = (preds.to(where), target.to(where), {a: x.to(where) for a, x in groups.items()})

        def run(where: torch.device = where, args: tuple = args) -> None:
            metric = FairnessMetrics(dict(ATTRIBUTE_GROUPS)).to(where)
            metric.update(*args)
            metric.compute()

        rows.append({"device": where.type, "n": n, "ms": _time(run, where, reps=2)})
    return rows


def print_table(result: dict) -> None:
    meta = result["meta"]
    print(f"\n# device check on {meta['device_name']} ({meta['precision']}, smoke={meta['smoke']})")
    print(f"{'method':<20} {'B':>4} {'step ms':>9} {'x clip':>7} {'kernels':>8} {'peak MiB':>9}")
    clip = {r["batch_size"]: r.get("step_ms") for r in result["steps"] if r["method"] == "clip"}
    for r in result["steps"]:
        if "error" in r:
            print(f"{r['method']:<20} {r['batch_size']:>4} error: {r['error'][:60]}")
            continue
        ratio = r["step_ms"] / clip[r["batch_size"]] if clip.get(r["batch_size"]) else math.nan
        print(
            f"{r['method']:<20} {r['batch_size']:>4} {r['step_ms']:>9.1f} {ratio:>7.2f} "
            f"{r['kernels_per_step'] or 0:>8} {r['peak_mib']:>9.0f}"
        )
    print(f"\n{'fairness term':<26} {'B':>4} {'ms':>9} {'kernels':>8} {'setup s':>8}")
    for r in result["term"]:
        if "error" in r:
            print(f"{r['variant']:<26} {r['batch_size']:>4} error: {r['error'][:60]}")
        else:
            print(
                f"{r['variant']:<26} {r['batch_size']:>4} {r['ms']:>9.2f} {r['kernels']:>8} "
                f"{r['setup_s']:>8.1f}"
            )
    print(f"\n{'FairnessMetrics':<26} {'n':>9} {'ms':>9}")
    for r in result["metrics"]:
        print(f"{r['device']:<26} {r['n']:>9} {r['ms']:>9.1f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--precision", default="bf16-mixed", help="Lightning precision")
    args = parser.parse_args(argv)
    size = dict(SIZES["smoke" if args.smoke else "real"])
    if args.batch_sizes:
        size["batch_sizes"] = args.batch_sizes
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    config = clip_config(args.smoke)
    meta = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "smoke": args.smoke,
        "precision": args.precision,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "sizes": size,
    }
    result: dict[str, Any] = {"meta": meta, "steps": [], "term": [], "metrics": []}
    started = time.perf_counter()
    for b in size["batch_sizes"]:
        for method in args.methods:
            try:
                row = run_method(method, b, size, config, device, args.precision)
            except Exception as err:  # recorded, the check goes on
                row = {"method": method, "batch_size": b, "error": f"{type(err).__name__}: {err}"}
            result["steps"].append(row)
            print(f"[{time.perf_counter() - started:6.1f} s] {method} B={b}", file=sys.stderr)
        result["term"].extend(term_check(b, device, args.smoke))
    result["metrics"] = metrics_check(size["metric_n"], device)
    meta["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print_table(result)
    print(f"\nwrote {args.out} in {meta['wall_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
