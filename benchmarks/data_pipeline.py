"""Data pipeline cost: synthetic writer, loader, preprocessing cache, and an epoch of batches.

Compares, side by side in one run, the data module's epoch (preprocessed once, one Arrow take per
batch) with a per-sample pipeline in the style of the FairCLIP reference code (``np.load`` every
file, PIL + the Hugging Face image processor, tokenise each note, default collate), and with the
tiny model's training step. Two image sizes: the synthetic default (128 x 128 -> 64) and the real
FairVLMed size (664 x 512 -> 224, as for ViT-B/16).

    python benchmarks/data_pipeline.py [--quick]

Prints a table and writes ``benchmarks/results/data_pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fairvlm_lightning.app.synthetic import (
    build_tiny_dual_encoder,
    ensure_synthetic_assets,
    write_synthetic_fairvlmed,
)
from fairvlm_lightning.data import FairVLMedDataModule, load_fairvlmed
from fairvlm_lightning.schema import IMAGE_FIELD, LABEL_FIELD, NOTE_FIELD, SPLIT_FOLDERS


class ReferenceStyle(Dataset):
    """Per-sample work on every access, as the reference ``fair_vl_med_dataset.__getitem__``."""

    def __init__(self, root: Path, model: Path, notes: dict[str, str], max_length: int) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer

        self.files = sorted((root / SPLIT_FOLDERS["train"][0]).glob("*.npz"))
        self.proc = AutoImageProcessor.from_pretrained(model)
        self.tok = AutoTokenizer.from_pretrained(model)
        self.notes, self.max_length = notes, max_length

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        z = np.load(self.files[i])
        pix = self.proc(images=Image.fromarray(z[IMAGE_FIELD]), return_tensors="pt")
        enc = self.tok(
            self.notes[self.files[i].name],
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "pixel_values": pix["pixel_values"][0],
            "input_ids": enc["input_ids"][0],
            "attention_mask": enc["attention_mask"][0],
            "index": i,
            "label": int(z[LABEL_FIELD]),
            "race": int(z["race"]),
        }


def timed(fn: Any, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def epoch(loader: DataLoader) -> int:
    n = 0
    for batch in loader:
        n += len(batch["index"])
    return n


def model_step_time(model_dir: Path, batch: dict[str, torch.Tensor], steps: int = 5) -> float:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        out = model(
            pixel_values=batch["pixel_values"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            return_loss=True,
        )
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    return timed(lambda: [step() for _ in range(steps)]) / steps


def scenario(name: str, root: Path, model: Path, n_train: int, batch_size: int) -> dict[str, Any]:
    import csv

    with open(root / "gpt-4_summarized_notes.csv", newline="") as f:
        notes = {r[0]: r[2] for r in list(csv.reader(f))[1:]}
    cache = root / ".bench_cache"
    load_cold = timed(lambda: load_fairvlmed(root, "train", cache_dir=cache))
    load_warm = timed(lambda: load_fairvlmed(root, "train", cache_dir=cache), repeat=3)

    def setup() -> FairVLMedDataModule:
        dm = FairVLMedDataModule(root, model=model, batch_size=batch_size, cache_dir=cache)
        dm.setup("fit")
        return dm

    prep_cold = timed(setup)
    dm = setup()
    prep_warm = timed(setup, repeat=3)
    ours = timed(lambda: epoch(dm.train_dataloader()), repeat=3)
    ref_loader = DataLoader(
        ReferenceStyle(root, model, notes, dm.max_length), batch_size=batch_size, shuffle=True
    )
    ref = timed(lambda: epoch(ref_loader))
    batch = next(iter(dm.train_dataloader()))
    step = model_step_time(model, batch)
    n_batches = -(-n_train // batch_size)
    return {
        "scenario": name,
        "n_train": n_train,
        "input": list(batch["pixel_values"].shape[1:]),
        "load_cold_s": load_cold,
        "load_warm_s": load_warm,
        "preprocess_cold_s": prep_cold,
        "preprocess_warm_s": prep_warm,
        "epoch_ours_s": ours,
        "epoch_reference_style_s": ref,
        "speedup_vs_reference_style": ref / ours,
        "ours_ms_per_batch": 1e3 * ours / n_batches,
        "model_step_ms": 1e3 * step,
        "data_over_step": (ours / n_batches) / step,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes (CI smoke run)")
    args = parser.parse_args()
    # One torch thread: on a small shared machine the intra-op pool's wake-ups dominate tiny ops
    # and make the model-step timings erratic (seen: 30 ms to 2.4 s for the same step).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sizes = {"train": 400 if args.quick else 2000, "val": 100, "test": 100}
    big_n = 64 if args.quick else 300
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_write = timed(
            lambda: write_synthetic_fairvlmed(
                tmp / "w", sizes={"train": sizes["train"], "val": 0, "test": 0}
            )
        )
        t_ensure = timed(lambda: ensure_synthetic_assets(tmp / "syn", sizes=sizes))
        rows.append(
            scenario(
                "synthetic 128x128 -> 64",
                tmp / "syn",
                tmp / "syn" / "tiny_model",
                sizes["train"],
                64,
            )
        )
        real = write_synthetic_fairvlmed(
            tmp / "real", sizes={"train": big_n, "val": 8, "test": 0}, image_shape=(664, 512)
        )
        train = real / SPLIT_FOLDERS["train"][0]
        texts = [str(np.load(p)[NOTE_FIELD]) for p in sorted(train.glob("*.npz"))]
        build_tiny_dual_encoder(
            real / "model", texts, image_size=224, patch_size=32, image_mean=0.45, image_std=0.25
        )
        rows.append(scenario("real size 664x512 -> 224", real, real / "model", big_n, 32))
    header = (
        f"{'scenario':26s} {'n':>5s} {'load cold/warm s':>17s} {'prep cold/warm s':>17s} "
        f"{'epoch ours s':>12s} {'ref-style s':>11s} {'speedup':>8s} {'ms/batch':>8s} "
        f"{'step ms':>8s} {'data/step':>9s}"
    )
    print(
        f"synthetic writer: {sizes['train']} train samples (128x128) in {t_write:.2f} s; "
        f"ensure_synthetic_assets ({sum(sizes.values())} samples + tiny model) in {t_ensure:.2f} s"
    )
    print(header)
    for r in rows:
        load = f"{r['load_cold_s']:8.2f}/{r['load_warm_s']:<8.3f}"
        prep = f"{r['preprocess_cold_s']:8.2f}/{r['preprocess_warm_s']:<8.3f}"
        print(
            f"{r['scenario']:26s} {r['n_train']:5d} {load} {prep} {r['epoch_ours_s']:12.3f} "
            f"{r['epoch_reference_style_s']:11.2f} {r['speedup_vs_reference_style']:7.1f}x "
            f"{r['ours_ms_per_batch']:8.2f} {r['model_step_ms']:8.1f} {r['data_over_step']:9.3f}"
        )
    out = {
        "machine": {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        "synthetic_write_s": t_write,
        "synthetic_write_train": sizes["train"],
        "ensure_synthetic_assets_s": t_ensure,
        "scenarios": rows,
    }
    path = Path(__file__).parent / "results" / "data_pipeline.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
