"""Real-size FairVLMed fixture: preprocess time, peak memory and cache size (issue 20 targets).

Writes ``--n`` samples (default 10,000) at 664 x 512 as **float32 images in 0-1**, in the release
layout (``ReadMe/`` with ``data_summary.csv`` and ``gpt-4_summarized_notes.csv``; ``Training/``,
``Validation/``, ``Test/`` split 70/10/20), about 13.6 GB for 10,000 files, to a temporary folder.
Then, in a fresh child process (so its peak memory is the preprocessing's alone), it runs
``FairVLMedDataModule.prepare_data()`` with a tiny dual encoder whose image processor resizes to
224 px (CLIP's input size): every file read and validated, every image converted to uint8 by the
image rule, written to the split's Arrow cache, resized and tokenised into the preprocessed cache.

Prints the wall time of that step, the peak resident set of the child (``ru_maxrss`` of the process
and of its own children), and the cache's size against the uint8 pixel bytes (``n x 664 x 512``).
Targets: <= 3 minutes on 2 cores, peak RSS <= 3 GB, cache <= 1.2 x the uint8 pixels. The fixture
is deleted afterwards unless ``--keep``.

    python benchmarks/bench_data_real_size.py            # 10,000 samples (~14 GB of disk)
    python benchmarks/bench_data_real_size.py --quick    # 8 samples, a smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (664, 512)
SPLITS = (("Training", 0.7, "training"), ("Validation", 0.1, "validation"), ("Test", 0.2, "test"))
NOTES = ("cup to disc ratio 0.7, suspect glaucoma", "healthy optic nerve, no glaucoma")


def write_fixture(root: Path, n: int, seed: int = 0) -> float:
    """Write the release-layout fixture; return its size in bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]].astype(np.float32)
    disc = np.exp(-((yy - 332) ** 2 + (xx - 256) ** 2) / (2 * 60.0**2)).astype(np.float32)
    (root / "ReadMe").mkdir(parents=True)
    summary, notes = [], []
    counts = [int(round(n * f)) for _, f, _ in SPLITS]
    counts[0] = n - sum(counts[1:])
    number = 0
    for (folder, _, use), count in zip(SPLITS, counts, strict=True):
        (root / folder).mkdir()
        for _ in range(count):
            number += 1
            name = f"data_{number:05d}.npz"
            label = int(rng.integers(0, 2))
            noise = rng.random(SHAPE, dtype=np.float32) * np.float32(0.2)
            image = np.clip(0.3 * disc * (1 + label) + noise, 0, 1).astype(np.float32)
            attrs = {
                "race": int(rng.integers(0, 3)),
                "gender": int(rng.integers(0, 2)),
                "ethnicity": int(rng.integers(0, 2)),
                "language": int(rng.integers(0, 3)),
                "maritalstatus": int(rng.integers(-1, 5)),
            }
            age = float(rng.uniform(20, 95))
            np.savez(
                root / folder / name,
                slo_fundus=image,
                glaucoma=np.array(label),
                age=np.array(age),
                note=np.array(NOTES[1 - label]),
                **{k: np.array(v) for k, v in attrs.items()},
            )
            summary.append(
                [
                    name,
                    f"{age:.1f}",
                    *attrs.values(),
                    NOTES[1 - label],
                    NOTES[1 - label],
                    label,
                    use,
                ]
            )
            notes.append([name, NOTES[1 - label], NOTES[1 - label]])
    with open(root / "ReadMe" / "data_summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "filename",
                "age",
                "race",
                "gender",
                "ethnicity",
                "language",
                "maritalstatus",
                "note",
                "gpt4_summary",
                "glaucoma",
                "use",
            ]
        )
        w.writerows(summary)
    with open(root / "ReadMe" / "gpt-4_summarized_notes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "note", "gpt4_summary"])
        w.writerows(notes)
    return float(sum(p.stat().st_size for p in root.rglob("*.npz")))


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rss_parts() -> tuple[float, float]:
    """``(RssAnon, RssFile)`` of this process now, in GiB (Linux ``/proc/self/status``)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, kib, _ = line.split()
                values[key] = int(kib) / 2**20
    return values.get("RssAnon:", 0.0), values.get("RssFile:", 0.0)


def preprocess(root: Path, model: Path, cache: Path) -> dict[str, float]:
    """Run in the child: prepare_data on the fixture; return wall time and peak memory."""
    import threading

    import torch

    from fairvlm_lightning.data import FairVLMedDataModule

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    peaks = {"anon": 0.0, "file": 0.0}
    done = threading.Event()

    def sample() -> None:  # the peak of each part of the resident set, every 50 ms
        while not done.wait(0.05):
            anon, file = _rss_parts()
            peaks["anon"], peaks["file"] = max(peaks["anon"], anon), max(peaks["file"], file)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    dm = FairVLMedDataModule(root, model=model, cache_dir=cache, max_length=32)
    dm.prepare_data()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {
        "wall_s": wall,
        "peak_rss_gib": max(own, children),
        "rss_self_gib": own,
        "rss_children_gib": children,
        "peak_rss_anon_gib": peaks["anon"],
        "peak_rss_file_gib": peaks["file"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of samples (default 10000)")
    parser.add_argument("--quick", action="store_true", help="8 samples: a smoke run")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the fixture and caches")
    parser.add_argument(
        "--child", nargs=3, metavar=("ROOT", "MODEL", "CACHE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(preprocess(*(Path(p) for p in args.child))))
        return
    n = 8 if args.quick else args.n
    base = Path(tempfile.mkdtemp(prefix="fairvlm-real-size-", dir=args.dir))
    try:
        from fairvlm_lightning.app.synthetic import build_tiny_dual_encoder

        root, cache = base / "FairVLMed", base / "cache"
        t0 = time.perf_counter()
        fixture = write_fixture(root, n)
        written = time.perf_counter() - t0
        model = build_tiny_dual_encoder(base / "model", list(NOTES) * 4, image_size=224)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(root), str(model), str(cache)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        pixels = n * SHAPE[0] * SHAPE[1]
        cache_bytes = _folder_bytes(cache)
        result |= {
            "n": n,
            "fixture_gb": fixture / 1e9,
            "fixture_write_s": written,
            "cache_gb": cache_bytes / 1e9,
            "uint8_pixels_gb": pixels / 1e9,
            "cache_over_pixels": cache_bytes / pixels,
        }
        print(f"samples:            {n} at {SHAPE[0]} x {SHAPE[1]}, float32 in 0-1")
        print(f"fixture:            {result['fixture_gb']:.2f} GB (written in {written:.0f} s)")
        print(f"preprocess wall:    {result['wall_s']:.1f} s   (target <= 180 s)")
        print(
            f"peak RSS:           {result['peak_rss_gib']:.2f} GiB (self "
            f"{result['rss_self_gib']:.2f}, children {result['rss_children_gib']:.2f}; "
            "target <= 3 GB)"
        )
        print(
            f"  of which:         anonymous (the process's own memory) peak "
            f"{result['peak_rss_anon_gib']:.2f} GiB; file-backed (libraries, memory-mapped Arrow "
            f"cache pages, shared and reclaimable) peak {result['peak_rss_file_gib']:.2f} GiB"
        )
        print(
            f"cache:              {result['cache_gb']:.3f} GB = "
            f"{result['cache_over_pixels']:.3f} x the uint8 pixels "
            f"({result['uint8_pixels_gb']:.3f} GB; target <= 1.2)"
        )
        print(json.dumps(result))
    finally:
        if args.keep:
            print(f"kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
