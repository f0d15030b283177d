"""Every published form of Harvard-FairVLMed loads to the same samples (issue 20).

The synthetic twin is rewritten by ``write_release_form`` in each form; each must load to the
canonical folder's labels, attributes, notes and pixels (within one grey level). The optional
attributes are checked against the release's ``data_summary.csv`` binned by hand, the image rule
against PIL and closed forms, and one form is trained on with ``fairvlm fit``.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fairvlm_lightning.app.synthetic import (
    RELEASE_FORMS,
    write_release_form,
    write_synthetic_fairvlmed,
)
from fairvlm_lightning.data import load_fairvlmed, split_files, to_grey_uint8
from fairvlm_lightning.schema import ATTRIBUTES

SPLITS = ("train", "val", "test")
COLUMNS = ("filename", "label", *ATTRIBUTES, "note", "is_bad_pair")


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small canonical twin (32/16/16 samples, 40 x 32 images)."""
    root = tmp_path_factory.mktemp("twin") / "canonical"
    sizes = {"train": 32, "val": 16, "test": 16}
    return write_synthetic_fairvlmed(root, sizes=sizes, image_shape=(40, 32), seed=3)


@pytest.fixture(scope="module")
def forms(twin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("release_forms")
    return {f: write_release_form(twin, base / f, f) for f in RELEASE_FORMS}


@pytest.fixture(scope="module")
def canonical(twin: Path) -> dict[str, Any]:
    return {s: load_fairvlmed(twin, s, drop_unknown=False, keep_in_memory=True) for s in SPLITS}


def _summary(root: Path) -> dict[str, dict[str, str]]:
    path = root / "ReadMe" / "data_summary.csv"
    path = path if path.is_file() else root / "data_summary.csv"
    with open(path, encoding="utf-8", newline="") as f:
        return {row["filename"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("form", list(RELEASE_FORMS))
def test_every_form_loads_to_the_canonical_samples(
    form: str, forms: dict[str, Path], canonical: dict[str, Any]
) -> None:
    root = forms[form]
    summary = _summary(root)
    for split in SPLITS:
        ds = load_fairvlmed(
            root,
            split,
            drop_unknown=False,
            extra_attributes=["age_60", "age_decade", "maritalstatus"],
            keep_in_memory=True,
        )
        ref = canonical[split]
        assert len(ds) == len(ref)
        for col in COLUMNS:
            assert np.asarray(ds[col]).tolist() == np.asarray(ref[col]).tolist(), (form, col)
        diff = np.abs(np.asarray(ds["image"], np.int16) - np.asarray(ref["image"], np.int16))
        assert diff.max() <= 1, (form, split)
        # the optional attributes, binned by hand from the release's table
        ages = [float(summary[f]["age"]) for f in ds["filename"]]
        assert np.asarray(ds["age_60"]).tolist() == [int(a >= 60) for a in ages]
        decades = [0 if a < 40 else 5 if a >= 80 else int(a // 10) - 3 for a in ages]
        assert np.asarray(ds["age_decade"]).tolist() == decades
        marital = [int(summary[f]["maritalstatus"]) for f in ds["filename"]]
        assert np.asarray(ds["maritalstatus"]).tolist() == marital


def test_forms_differ_where_they_should(forms: dict[str, Path]) -> None:
    """The writer really wrote the variants the comparison above is about."""

    def first(form: str, sub: str) -> np.ndarray:
        path = sorted((forms[form] / sub).glob("*.npz"))[0]
        with np.load(path) as npz:
            return npz["slo_fundus"]

    assert (forms["readme"] / "ReadMe" / "gpt-4_summarized_notes.csv").is_file()
    assert (forms["root"] / "Testing").is_dir() and not (forms["root"] / "ReadMe").exists()
    assert first("float01", "Training").dtype == np.float32
    assert first("float01", "Training").max() <= 1.0
    assert first("hw1", "Training").shape[-1] == 1
    assert first("rgb", "Training").shape[-1] == 3
    assert first("int64", "Training").dtype == np.int64
    assert not (forms["use_column"] / "Training").exists()
    assert (forms["split_files"] / "ReadMe" / "split_files.csv").is_file()
    with np.load(sorted((forms["no_npz_note"] / "Training").glob("*.npz"))[0]) as npz:
        assert "note" not in npz.files


def test_fairvlmed_datamodule_reads_a_form_with_optional_attributes(
    forms: dict[str, Path], synthetic_root: Path, tmp_path: Path
) -> None:
    from fairvlm_lightning.data import FairVLMedDataModule

    dm = FairVLMedDataModule(
        forms["use_column"],
        model=synthetic_root / "tiny_model",
        attributes=("race", "age_60", "maritalstatus"),
        balance_attribute="age_60",
        cache_dir=tmp_path,
        batch_size=8,
    )
    dm.setup("fit")
    assert dm.attribute_groups == {"race": 3, "age_60": 2, "maritalstatus": 5}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"race", "age_60", "maritalstatus", "is_bad_pair"}
    assert batch["pixel_values"].shape[0] == 8


def test_image_rule_against_pil_and_closed_forms() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    np.testing.assert_array_equal(to_grey_uint8(rgb), expected)
    np.testing.assert_array_equal(to_grey_uint8(Image.fromarray(rgb, "RGB")), expected)
    grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    for variant in (
        grey.astype(np.float32) / 255,
        grey.astype(np.float64),
        grey[:, :, None],
        grey.astype(np.int64),
        grey.astype(np.uint16),
        np.repeat(grey[:, :, None], 3, axis=2),
        Image.fromarray(grey, "L"),
    ):
        np.testing.assert_array_equal(to_grey_uint8(variant), grey)
    # floats: 0-1 scaled by 255 and rounded; 0-255 rounded
    assert to_grey_uint8(np.array([[0.0, 0.2, 1.0]])).tolist() == [[0, 51, 255]]
    assert to_grey_uint8(np.array([[0.0, 2.4, 254.6]])).tolist() == [[0, 2, 255]]
    with pytest.raises(ValueError, match=r"x\.npz: .*found range \[-1, 3\]"):
        to_grey_uint8(np.array([[-1.0, 3.0]]), "x.npz")
    with pytest.raises(ValueError, match="NaN"):
        to_grey_uint8(np.array([[np.nan, 0.5]]))


def test_missing_notes_name_the_file_and_sources(forms: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "no_note"
    shutil.copytree(forms["no_npz_note"], root)
    path = root / "ReadMe" / "data_summary.csv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    victim = rows[1][0]
    rows[1][rows[0].index("gpt4_summary")] = ""
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(ValueError, match=rf"missing note for {victim}: .*'gpt4_summary'"):
        load_fairvlmed(root, "train", keep_in_memory=True)
    # the full notes: data_summary.csv's 'note' column provides them (no npz note field here)
    ds = load_fairvlmed(root, "train", note_source="note", keep_in_memory=True)
    assert ds[0]["note"] == rows[1][rows[0].index("note")]


def test_split_listing_errors_name_file_and_value(forms: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "listing"
    shutil.copytree(forms["split_files"], root)
    listing = root / "ReadMe" / "split_files.csv"
    text = listing.read_text()
    files = split_files(root, "val")
    assert [p.name for p in files] == sorted(p.name for p in files) and files
    listing.write_text(text.replace("validation", "holdout", 1))
    with pytest.raises(ValueError, match=r"split_files\.csv, data_\d+\.npz: split value 'holdout'"):
        load_fairvlmed(root, "train", keep_in_memory=True)
    listing.write_text(text)
    files[0].unlink()
    with pytest.raises(FileNotFoundError, match=rf"lists 1 file.*'{files[0].name}'"):
        load_fairvlmed(root, "val", keep_in_memory=True)


def test_fairvlm_fit_trains_on_a_release_form(
    forms: dict[str, Path],
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fairvlm_lightning.app.cli import main

    monkeypatch.setattr(sys, "argv", ["fairvlm"])
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[3] / "fairvlm_lightning/configs/synthetic_clip.yaml"
    main(
        [
            "fit",
            "--config",
            str(config),
            "--data.root",
            str(forms["readme"]),
            "--data.class_path",
            "fairvlm_lightning.data.FairVLMedDataModule",
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--model.model",
            str(synthetic_root / "tiny_model"),
            "--data.batch_size",
            "16",
            "--trainer.max_epochs",
            "1",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    out = capsys.readouterr().out
    assert "attribute  AUC    ES-AUC" in out and "\nrace " in out
    run = next((tmp_path / "runs").rglob("test_metrics.json"))
    metrics = json.loads(run.read_text())
    assert 0.0 <= metrics["test/auc"] <= 1.0
