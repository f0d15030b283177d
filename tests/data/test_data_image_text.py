"""ImageTextDataModule over Hugging Face ``datasets`` sources (issue 20).

One small imagefolder (RGB PNGs of two sizes, ``metadata.csv`` per split with string and integer
attributes) is read as an imagefolder, a saved DatasetDict, Parquet files and an in-memory
DatasetDict; every source must give the same batches, and those batches must match an
independent path (PIL's grey conversion + the Hugging Face image processor + the tokenizer, the
attribute codes written by hand). Training end to end: `fairvlm fit` on 1 and 2 processes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fairvlm_lightning.app.synthetic import build_tiny_dual_encoder
from fairvlm_lightning.data import ImageTextDataModule

REPO = Path(__file__).resolve().parents[2]
SEX = {"F": 0, "M": 1}
SIZES = {"train": 40, "validation": 16, "test": 16}
TEXTS = ("a bright round spot", "a dark empty field")


def write_imagefolder(root: Path, seed: int = 0) -> Path:
    """``root/<split>/*.png`` + ``metadata.csv``: text, label, sex (F/M/empty), site (0-2), bad."""
    rng = np.random.default_rng(seed)
    for split, n in SIZES.items():
        folder = root / split
        folder.mkdir(parents=True)
        rows = []
        for i in range(n):
            label = int(i % 2)
            h, w = (80, 72) if i % 3 else (96, 96)
            image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
            if label:
                image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] += 150
            name = f"img_{split}_{i:03d}.png"
            Image.fromarray(image, "RGB").save(folder / name)
            sex = "" if i % 7 == 3 else "FM"[int(rng.integers(0, 2))]
            rows.append([name, TEXTS[1 - label], label, sex, i % 3, int(i % 5 == 0)])
        with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "text", "label", "sex", "site", "bad"])
            writer.writerows(rows)
    return root


def _metadata(root: Path, split: str) -> list[dict[str, str]]:
    with open(root / split / "metadata.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("imagefolder") / "data")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dual_encoder(tmp_path_factory.mktemp("tiny") / "model", list(TEXTS) * 8)


def _dm(source: Any, model: Path, cache: Path, **kwargs: Any) -> ImageTextDataModule:
    kwargs.setdefault("attributes", {"sex": SEX, "site": 3})
    return ImageTextDataModule(
        source, model=model, cache_dir=cache, batch_size=8, eval_batch_size=64, **kwargs
    )


def _all(loader: Any) -> dict[str, torch.Tensor]:
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_imagefolder_batches_match_an_independent_path(
    folder: Path, model: Path, tmp_path: Path
) -> None:
    from transformers import AutoImageProcessor, AutoTokenizer

    dm = _dm(str(folder), model, tmp_path)
    dm.setup(None)
    proc = AutoImageProcessor.from_pretrained(model)
    tok = AutoTokenizer.from_pretrained(model)
    for split, name in (("val", "validation"), ("test", "test")):
        got = _all(dm.val_dataloader() if split == "val" else dm.test_dataloader())
        rows = _metadata(folder, name)
        # imagefolder keeps the metadata order; the codes written by hand
        assert got["index"].tolist() == list(range(len(rows)))
        assert got["label"].tolist() == [int(r["label"]) for r in rows]
        assert got["sex"].tolist() == [SEX.get(r["sex"], -1) for r in rows]
        assert got["site"].tolist() == [int(r["site"]) for r in rows]
        grey = [Image.open(folder / name / r["file_name"]).convert("L") for r in rows]
        ref = proc(images=grey, return_tensors="pt")["pixel_values"]
        if ref.shape[1] == 1:
            ref = ref.expand(-1, 3, -1, -1)
        # uint8 rounding after the resize (as FairVLMedDataModule's test allows)
        step = float(proc.rescale_factor / np.min(proc.image_std))  # one grey level
        diff = (got["pixel_values"] - ref).abs()
        assert diff.max() <= 2.01 * step and diff.mean() < 0.25 * step
        enc = tok([r["text"] for r in rows], padding="max_length", max_length=64)
        assert got["input_ids"].tolist() == enc["input_ids"]
    assert dm.attribute_groups == {"sex": 2, "site": 3}
    names = [r["file_name"] for r in _metadata(folder, "train")]
    import hashlib

    digest = hashlib.sha256(f"image-text-train:{len(names)}\n".encode())
    for n in names:
        digest.update(n.encode() + b"\n")
    assert dm.train_fingerprint() == digest.hexdigest()


def test_every_source_gives_the_same_batches(folder: Path, model: Path, tmp_path: Path) -> None:
    import datasets

    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))
    saved = tmp_path / "saved"
    loaded.save_to_disk(str(saved))
    files = {}
    for split in SIZES:
        files[split] = str(tmp_path / f"{split}.parquet")
        loaded[split].to_parquet(files[split])
    sources: dict[str, Any] = {
        "imagefolder": (str(folder), {}),
        "saved": (str(saved), {}),
        "parquet": ("parquet", {"data_files": files}),
        "memory": (loaded, {}),
    }
    ref = None
    for name, (source, extra) in sources.items():
        dm = _dm(source, model, tmp_path / f"cache-{name}", **extra)
        dm.setup("validate")
        got = _all(dm.val_dataloader())
        if ref is None:
            ref = got
            continue
        for key in ref:
            assert torch.equal(got[key], ref[key]), (name, key)


def test_labels_multi_label_multi_class_and_truth(
    folder: Path, model: Path, tmp_path: Path
) -> None:
    import datasets

    base = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))
    extra = datasets.DatasetDict(
        {
            s: d.add_column("finding", [i % 2 for i in range(len(d))]).add_column(
                "grade", [i % 3 for i in range(len(d))]
            )
            for s, d in base.items()
        }
    )
    multi = _dm(extra, model, tmp_path / "a", label_column=["label", "finding"])
    multi.setup("validate")
    got = _all(multi.val_dataloader())
    rows = _metadata(folder, "validation")
    assert got["label"].shape == (len(rows), 2)
    assert got["label"].tolist() == [[int(r["label"]), i % 2] for i, r in enumerate(rows)]
    graded = _dm(extra, model, tmp_path / "b", label_column="grade", num_classes=3)
    graded.setup("validate")
    assert _all(graded.val_dataloader())["label"].tolist() == [i % 3 for i in range(len(rows))]
    with pytest.raises(ValueError, match=r"split 'validation', row 2, .*label 2 outside 0\.\.1"):
        _dm(extra, model, tmp_path / "c", label_column="grade").setup("validate")
    clean = _dm(extra, model, tmp_path / "d", truth_column="bad", drop_bad_pairs=True)
    clean.setup("fit")
    train = _metadata(folder, "train")
    kept = [r["file_name"] for r in train if r["bad"] == "0"]
    assert list(clean.datasets["train"]["key"]) == kept
    assert _all(clean.val_dataloader())["is_bad_pair"].tolist() == [r["bad"] == "1" for r in rows]


def test_bad_sources_and_columns_are_named(folder: Path, model: Path, tmp_path: Path) -> None:
    import datasets

    with pytest.raises(
        ValueError, match=r"split 'validation', row 0, column 'sex': value '[FM]' is not a group"
    ):
        _dm(str(folder), model, tmp_path, attributes={"sex": 2}).setup("validate")
    with pytest.raises(ValueError, match=r"value '.' is not in the attribute's mapping"):
        _dm(str(folder), model, tmp_path, attributes={"sex": {"F": 0}}).setup("validate")
    with pytest.raises(ValueError, match=r"no column\(s\) \['age'\]"):
        _dm(str(folder), model, tmp_path, attributes={"age": 2}).setup("validate")
    only_train = datasets.DatasetDict(train=datasets.load_dataset(str(folder))["train"])
    with pytest.raises(ValueError, match=r"no 'val' split \(a split named 'validation' or"):
        _dm(only_train, model, tmp_path).setup("validate")
    with pytest.raises(ValueError, match="codes must be 0..n-1"):
        _dm(str(folder), model, tmp_path, attributes={"sex": {"F": 0, "M": 2}})
    with pytest.raises(ValueError, match="balance_attribute 'race' unknown"):
        _dm(str(folder), model, tmp_path, balance_attribute="race")


# --------------------------------------------------------------------- end to end, 1 and 2 procs

CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 1
  limit_train_batches: 2
  num_sanity_val_steps: 0
  enable_progress_bar: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {{save_dir: runs, name: own}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{monitor: val/auc, mode: max}}
model:
  model: {model}
  zero_shot:
    prompts: ["a dark empty field", "a bright round spot"]
  metrics:
    attributes: {{sex: 2, site: 3}}
  fairness:
    class_path: fairvlm_lightning.sinkhorn.SinkhornFairnessLoss
  fairness_attributes: [sex]
  fairness_weight: 0.1
data:
  class_path: fairvlm_lightning.data.ImageTextDataModule
  init_args:
    dataset: {data}
    attributes: {{sex: {{F: 0, M: 1}}, site: 3}}
    cache_dir: {cache}
    batch_size: 8
    eval_batch_size: 8
"""


def _fairvlm(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fairvlm_lightning.app.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_imagefolder_trains_on_2_processes_as_on_1(
    folder: Path,
    model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fairvlm_lightning.app.cli import main

    config = tmp_path / "own.yaml"
    config.write_text(CONFIG.format(model=model, data=folder, cache=tmp_path / "cache"))
    fit = _fairvlm(
        ["fit", "--config", str(config), "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        tmp_path,
    )
    log = fit.stdout + fit.stderr
    assert fit.returncode == 0, log[-4000:]
    assert "\nsex " in fit.stdout and "\nsite " in fit.stdout  # the per-attribute table
    run = tmp_path / "runs" / "own" / "version_0"
    ddp = json.loads((run / "test_metrics.json").read_text())
    assert {"test/sex/es_auc", "test/site/es_auc"} <= set(ddp)
    # the reference: the same checkpoint tested in this (single) process
    monkeypatch.setattr(sys, "argv", ["fairvlm"])
    monkeypatch.chdir(tmp_path)
    main(["test", "--config", str(config), "--ckpt_path", ddp["ckpt_path"]])
    assert "\nsex " in capsys.readouterr().out
    ref = json.loads((run.parent / "version_1" / "test_metrics.json").read_text())
    floats = [k for k, v in ref.items() if isinstance(v, float) and k != "test/loss"]
    assert "test/sex/es_auc" in floats
    for key in floats:
        a, b = ddp[key], ref[key]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-5), key


def test_intersections_are_added_to_every_batch(folder: Path, model: Path, tmp_path: Path) -> None:
    """Intersection cells by hand from metadata.csv: site s, sex x -> s * 2 + x, -1 unknown."""
    dm = _dm(folder, model, tmp_path / "i", intersections=[["site", "sex"]])
    assert dm.attribute_groups == {"sex": 2, "site": 3, "site*sex": 6}
    assert dm.group_names["site*sex"][:3] == ("site 0 F", "site 0 M", "site 1 F")
    assert dm.group_names["sex"] == ("F", "M")
    dm.setup("validate")
    got = _all(dm.val_dataloader())
    want = [int(r["site"]) * 2 + SEX[r["sex"]] if r["sex"] else -1
            for r in _metadata(folder, "validation")]
    assert got["site*sex"].tolist() == want
    with pytest.raises(ValueError, match="site"):
        _dm(folder, model, tmp_path / "j", intersections=[["site", "age"]])
