"""FairVLMedDataModule batch contract, image transform vs HF processors, samplers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from transformers import AutoImageProcessor, AutoTokenizer

from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
from fairvlm_lightning.data import (
    ATTRIBUTE_GROUPS,
    EpochShuffleSampler,
    FairVLMedDataModule,
    GroupBalancedSampler,
    ImageTransform,
    load_fairvlmed,
)


@pytest.fixture(scope="module")
def dm(synthetic_root: Path, synthetic_kwargs: dict[str, Any]) -> FairVLMedDataModule:
    module = SyntheticFairVLMedDataModule(
        synthetic_root,
        synthetic_kwargs=synthetic_kwargs,
        batch_size=16,
        eval_batch_size=20,
        seed=3,
    )
    module.prepare_data()
    module.setup("fit")
    module.setup("test")
    return module


def test_batch_contract_against_independent_paths(
    dm: FairVLMedDataModule, synthetic_root: Path
) -> None:
    model = synthetic_root / "tiny_model"
    tok = AutoTokenizer.from_pretrained(model)
    proc = AutoImageProcessor.from_pretrained(model)
    ref = load_fairvlmed(synthetic_root, "train", keep_in_memory=True)
    seen: list[int] = []
    for batch in dm.train_dataloader():
        b = len(batch["index"])
        assert batch["pixel_values"].shape == (b, 3, 64, 64)
        assert batch["pixel_values"].dtype == torch.float32
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (b, 64)
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
        assert batch["is_bad_pair"].dtype == torch.bool and batch["is_bad_pair"].shape == (b,)
        for key in ("index", "label", *ATTRIBUTE_GROUPS):
            assert batch[key].dtype == torch.long and batch[key].shape == (b,)
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == list(range(96))  # each training pair once per epoch
    # Compare the last batch with the loader, the tokenizer and the HF image processor.
    idx = batch["index"].tolist()
    for j, i in enumerate(idx):
        row = ref[i]
        assert int(batch["label"][j]) == int(row["label"])
        for attr in ATTRIBUTE_GROUPS:
            assert int(batch[attr][j]) == int(row[attr])
        assert bool(batch["is_bad_pair"][j]) == bool(row["is_bad_pair"])
        enc = tok(str(row["note"]), padding="max_length", truncation=True, max_length=64)
        assert batch["input_ids"][j].tolist() == enc["input_ids"]
        assert batch["attention_mask"][j].tolist() == enc["attention_mask"]
        expected = proc(images=Image.fromarray(row["image"].astype(np.uint8)), return_tensors="pt")
        diff = (batch["pixel_values"][j] - expected["pixel_values"][0]).abs()
        step = 1 / 255 / proc.image_std[0]  # one grey level after normalisation
        assert diff.max() <= 2.01 * step and diff.mean() < 0.25 * step


def test_eval_loaders_in_order_without_unknowns(
    dm: FairVLMedDataModule, synthetic_root: Path
) -> None:
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        ref = load_fairvlmed(synthetic_root, split, keep_in_memory=True)
        batches = list(loader)
        assert len(batches[0]["index"]) == min(20, len(ref))
        index = torch.cat([b["index"] for b in batches]).tolist()
        assert index == list(range(len(ref)))
        for attr in ATTRIBUTE_GROUPS:
            got = torch.cat([b[attr] for b in batches])
            assert (got >= 0).all()
            assert got.tolist() == np.asarray(ref[attr]).tolist()
    assert [b["index"].tolist() for b in dm.predict_dataloader()] == [
        b["index"].tolist() for b in dm.test_dataloader()
    ]


def test_train_order_depends_only_on_seed_and_epoch(dm: FairVLMedDataModule) -> None:
    def order(epoch: int) -> list[int]:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([b["index"] for b in loader]).tolist()

    first = order(1)
    assert order(1) == first != order(2)
    expected = EpochShuffleSampler(96, seed=3)
    expected.set_epoch(1)
    assert first == list(expected)


def test_tokenize_prompts_as_notes(dm: FairVLMedDataModule, synthetic_root: Path) -> None:
    tok = AutoTokenizer.from_pretrained(synthetic_root / "tiny_model")
    prompts = ["A photo of non-glaucoma", "A photo of glaucoma"]
    out = dm.tokenize(prompts)
    ref = tok(prompts, padding="max_length", max_length=64, return_tensors="pt")
    assert torch.equal(out["input_ids"], ref["input_ids"])
    assert torch.equal(out["attention_mask"], ref["attention_mask"])
    assert tok.unk_token_id not in out["input_ids"]
    assert dm.attribute_groups == ATTRIBUTE_GROUPS
    # the folder actually used is the logged hyper-parameter (it must agree with the module's)
    assert dm.hparams_initial["model"] == str(synthetic_root / "tiny_model")


def test_single_item_access(dm: FairVLMedDataModule) -> None:
    ds = dm.split_dataset("val")
    item = ds[3]
    batch = ds.__getitems__([3])
    assert set(item) == set(batch) and item["pixels"].dtype == torch.uint8
    for key, value in item.items():
        assert torch.equal(value, batch[key][0])
    assert int(item["index"]) == 3


def test_balanced_sampling_and_workers(synthetic_root: Path, synthetic_kwargs: dict) -> None:
    module = FairVLMedDataModule(
        synthetic_root,
        model=synthetic_root / "tiny_model",
        batch_size=32,
        num_workers=1,
        balance_attribute="race",
        attributes=("race", "gender"),
    )
    assert module.cache_dir == synthetic_root / ".cache"  # recognised as a synthetic folder
    module.setup("fit")
    loader = module.train_dataloader()
    assert isinstance(loader.sampler, GroupBalancedSampler)
    batches = list(loader)
    assert set(batches[0]) == {
        "pixel_values",
        "input_ids",
        "attention_mask",
        "index",
        "label",
        "race",
        "gender",
        "is_bad_pair",
    }
    race = torch.cat([b["race"] for b in batches])
    counts = torch.bincount(race, minlength=3).numpy()
    natural = np.bincount(np.asarray(module.datasets["train"]["race"]), minlength=3) / 96
    assert natural.min() < 0.2  # the draw really re-balances an imbalanced attribute
    assert stats.chisquare(counts, [len(race) / 3] * 3).pvalue > 1e-3


def test_group_balanced_sampler_matches_closed_form() -> None:
    groups = np.array([0] * 70 + [1] * 20 + [-1] * 10)
    s = GroupBalancedSampler(groups, num_samples=30000, seed=5)
    s.set_epoch(2)
    draws = np.array(list(s))
    freq = np.bincount(draws, minlength=100) / len(draws)
    expected = np.where(groups == 0, 1 / 210, np.where(groups == 1, 1 / 60, 1 / 30))
    assert stats.chisquare(freq * len(draws), expected * len(draws)).pvalue > 1e-3
    assert list(s) == draws.tolist() and len(s) == 30000
    s.set_epoch(3)
    assert list(s) != draws.tolist()
    with pytest.raises(ValueError, match="1-D"):
        GroupBalancedSampler(np.zeros((2, 2), dtype=int))
    with pytest.raises(TypeError, match="integers"):
        GroupBalancedSampler([0.5, 1.0])
    with pytest.raises(ValueError, match="empty"):
        GroupBalancedSampler([])
    with pytest.raises(ValueError, match="num_samples"):
        GroupBalancedSampler([0, 1], num_samples=0)


def _pil_processor(**kw: Any) -> Any:
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - transformers 4.x
        from transformers import CLIPImageProcessor as Processor
    return Processor(**kw)


@pytest.mark.parametrize(
    "config",
    [
        # CLIP: shortest edge + centre crop, OpenAI mean/std, non-square input
        dict(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}),
        # SigLIP-like: fixed size, no crop, mean = std = 0.5, bilinear
        dict(
            size={"height": 20, "width": 20},
            do_center_crop=False,
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
            resample=2,
        ),
        # crop larger than the resized image: zero padding as Hugging Face
        dict(size={"shortest_edge": 16}, crop_size={"height": 28, "width": 20}),
    ],
)
def test_image_transform_matches_hf_processor(config: dict) -> None:
    proc = _pil_processor(**config)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:70, 0:54]
    base = 128 + 90 * np.sin(yy / 9.0) * np.cos(xx / 7.0)
    images = np.clip(base[None] + rng.normal(0, 8, (3, 70, 54)), 0, 255).astype(np.uint8)
    t = ImageTransform.from_processor(proc)
    ours = t.normalize(t.resize(images))
    ref = torch.cat(
        [proc(images=Image.fromarray(im), return_tensors="pt")["pixel_values"] for im in images]
    )
    assert ours.shape == ref.shape
    step = 1 / 255 / min(proc.image_std)
    diff = (ours - ref).abs()
    assert diff.max() <= 2.01 * step and diff.mean() < 0.3 * step


def test_image_size_override() -> None:
    t = ImageTransform.from_processor(_pil_processor(), image_size=12)
    assert t.resize(np.zeros((2, 40, 30), np.uint8)).shape == (2, 12, 12)
    with pytest.raises(ValueError, match="image_size must be positive"):
        ImageTransform.from_processor(_pil_processor(), image_size=0)
    with pytest.raises(ValueError, match="grayscale"):
        t.resize(np.zeros((40, 30), np.uint8))
    with pytest.raises(ValueError, match="size must be"):
        ImageTransform(size={"longest_edge": 3})
    with pytest.raises(ValueError, match="image_mean/image_std"):
        ImageTransform(size=None, image_mean=[0.5], image_std=[0.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attributes": ("race", "age")}, r"attributes \['age'\] unknown"),
        ({"balance_attribute": "age"}, "balance_attribute 'age' unknown"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"eval_batch_size": -1}, "eval_batch_size must be positive"),
        ({"num_workers": -1}, "num_workers"),
        ({"model": None}, "model .* is required"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FairVLMedDataModule(tmp_path, **{"model": "any-model", **kwargs})


def test_bad_setup(synthetic_root: Path, tmp_path: Path) -> None:
    module = FairVLMedDataModule(synthetic_root, model=synthetic_root / "tiny_model", max_length=65)
    with pytest.raises(ValueError, match="exceeds the tokenizer's model_max_length 64"):
        module.setup("fit")
    module = FairVLMedDataModule(synthetic_root, model=synthetic_root / "tiny_model")
    with pytest.raises(ValueError, match="unknown stage"):
        module.setup("train")
    with pytest.raises(RuntimeError, match="not set up"):
        module.train_dataloader()
    missing = FairVLMedDataModule(tmp_path / "none", model=synthetic_root / "tiny_model")
    with pytest.raises(FileNotFoundError, match="root folder not found"):
        missing.setup("fit")


def test_hparams_of_path_root_load_with_weights_only(
    dm: FairVLMedDataModule, synthetic_root: Path, tmp_path: Path
) -> None:
    # dm was built from a pathlib.Path root; Lightning checkpoints store these hparams.
    torch.save({"datamodule_hyper_parameters": dict(dm.hparams)}, tmp_path / "h.pt")
    loaded = torch.load(tmp_path / "h.pt", weights_only=True)
    assert loaded["datamodule_hyper_parameters"]["root"] == str(synthetic_root)


def test_drop_bad_pairs_keeps_exactly_the_clean_training_pairs(
    synthetic_root: Path, synthetic_kwargs: dict[str, Any]
) -> None:
    import csv

    with open(synthetic_root / "data_summary.csv", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "Training"]
    clean = sorted((r for r in rows if r["is_bad_pair"] == "0"), key=lambda r: r["filename"])
    assert 0 < len(clean) < len(rows)  # the fixture has planted bad pairs
    module = SyntheticFairVLMedDataModule(
        synthetic_root, synthetic_kwargs=synthetic_kwargs, batch_size=7,
        drop_bad_pairs=True,
    )
    module.prepare_data()
    module.setup("fit")
    assert list(module.datasets["train"]["filename"]) == [r["filename"] for r in clean]
    seen: dict[int, tuple[int, int, bool]] = {}
    for batch in module.train_dataloader():
        for i, y, race, bad in zip(batch["index"].tolist(), batch["label"].tolist(),
                                   batch["race"].tolist(), batch["is_bad_pair"].tolist(),
                                   strict=True):
            seen[i] = (y, race, bad)
    assert sorted(seen) == list(range(len(clean)))  # re-indexed 0..n-1, each once
    for i, r in enumerate(clean):
        assert seen[i] == (int(r["glaucoma"]), int(r["race"]), False)
    # validation is untouched
    full = SyntheticFairVLMedDataModule(synthetic_root, synthetic_kwargs=synthetic_kwargs)
    full.setup("fit")
    assert len(full.split_dataset("val")) == len(module.split_dataset("val"))
    assert len(full.split_dataset("train")) == len(rows)


def test_drop_bad_pairs_needs_the_ground_truth(synthetic_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "no_truth"
    for folder in ("Training", "Validation", "Test"):
        shutil.copytree(synthetic_root / folder, root / folder)
    for path in (root / "Training").glob("*.npz"):
        fields = dict(np.load(path))
        fields.pop("is_bad_pair")
        np.savez(path, **fields)
    module = FairVLMedDataModule(
        root, model=synthetic_root / "tiny_model", notes=None, drop_bad_pairs=True,
        cache_dir=tmp_path / "cache",
    )
    with pytest.raises(ValueError, match="drop_bad_pairs=True needs the field 'is_bad_pair'"):
        module.setup("fit")
    with pytest.raises(TypeError, match="drop_bad_pairs must be a bool"):
        FairVLMedDataModule(root, model=synthetic_root / "tiny_model", drop_bad_pairs="yes")


def test_library_preset_takes_the_cache_default_from_the_marker_file(tmp_path: Path) -> None:
    from fairvlm_lightning.schema import SYNTHETIC_MARKER

    assert FairVLMedDataModule(tmp_path, model="m").cache_dir is None
    (tmp_path / SYNTHETIC_MARKER).write_text("{}")
    assert FairVLMedDataModule(tmp_path, model="m").cache_dir == tmp_path / ".cache"
    assert FairVLMedDataModule(tmp_path, model="m", cache_dir=tmp_path / "c").cache_dir == (
        tmp_path / "c"
    )


def test_synthetic_module_is_the_library_preset_over_the_twin_it_writes(tmp_path: Path) -> None:
    """The application's module writes the twin; the library's preset reads the same batches."""
    from fairvlm_lightning.schema import SYNTHETIC_MARKER

    root = tmp_path / "twin"
    kwargs = {"sizes": {"train": 12, "val": 6, "test": 6}, "image_shape": (32, 32),
              "warm_start_steps": 0}  # fmt: skip
    syn = SyntheticFairVLMedDataModule(root, synthetic_kwargs=kwargs, batch_size=4, seed=1)
    assert not root.exists()  # nothing is written before prepare_data
    assert (syn.model, syn.cache_dir) == (str(root / "tiny_model"), root / ".cache")
    syn.prepare_data()
    assert (root / SYNTHETIC_MARKER).is_file()  # the file name the library reads
    assert (root / "tiny_model" / "config.json").is_file()
    syn.setup("fit")
    lib = FairVLMedDataModule(root, model=root / "tiny_model", batch_size=4, seed=1)
    assert lib.cache_dir == root / ".cache"
    lib.setup("fit")
    for loader in ("train_dataloader", "val_dataloader"):
        ours, theirs = next(iter(getattr(syn, loader)())), next(iter(getattr(lib, loader)()))
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (loader, key)
    # the same hyper-parameters as the preset's, plus the generator's settings (plain values)
    hparams = dict(syn.hparams)
    assert hparams.pop("synthetic_kwargs") == kwargs
    assert hparams == dict(lib.hparams)
    assert (hparams["root"], hparams["model"]) == (str(root), str(root / "tiny_model"))
    with pytest.raises(TypeError, match="synthetic_kwargs must be a dict"):
        SyntheticFairVLMedDataModule(root, synthetic_kwargs=[("seed", 1)])  # type: ignore[arg-type]
