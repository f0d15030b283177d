"""The synthetic FairVLMed twin: layout, determinism, statistics, bad pairs, ensure_*."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from scipy.ndimage import uniform_filter
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from fairvlm_lightning.app.synthetic import ensure_synthetic_assets, write_synthetic_fairvlmed
from fairvlm_lightning.data import load_fairvlmed

SMALL = {"sizes": {"train": 40, "val": 10, "test": 10}, "image_shape": (32, 32)}


def _read(root: Path, folder: str) -> dict[str, Any]:
    files = sorted((root / folder).glob("*.npz"))
    rows = [dict(np.load(p, allow_pickle=False)) for p in files]
    out = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    out["filename"] = [p.name for p in files]
    return out


def _summaries(root: Path) -> dict[str, str]:
    with open(root / "gpt-4_summarized_notes.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["filename", "note", "gpt4_summary"]
    return {r[0]: r[2] for r in rows[1:]}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = write_synthetic_fairvlmed(
        tmp_path_factory.mktemp("big"), seed=3, sizes={"train": 3000, "val": 0, "test": 0},
        image_shape=(48, 48), bad_pair_rate=0.2, bad_pair_groups={"race": [1]},
        bad_pair_concentration=0.6,
    )
    return root, _read(root, "Training")


def test_real_field_types_and_layout(tmp_path: Path) -> None:
    root = write_synthetic_fairvlmed(tmp_path, seed=0, **SMALL)
    z = np.load(root / "Validation" / "data_00041.npz", allow_pickle=False)
    for k in ("glaucoma", "race", "gender", "ethnicity", "language"):
        assert z[k].shape == () and z[k].dtype == np.int64
    assert z["note"].shape == () and z["note"].dtype.kind == "U"
    assert z["slo_fundus"].dtype == np.uint8 and z["slo_fundus"].shape == (32, 32)
    assert z["is_bad_pair"].dtype == np.bool_ and z["is_bad_pair"].shape == ()
    names = [p.name for p in sorted((root / "Test").glob("*.npz"))]
    assert names == [f"data_{i:05d}.npz" for i in range(51, 61)]
    notes = _summaries(root)
    assert len(notes) == 60
    ds = load_fairvlmed(root, "train", keep_in_memory=True)
    assert np.asarray(ds["note"]).tolist() == [notes[f] for f in ds["filename"]]


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = write_synthetic_fairvlmed(tmp_path / "a", seed=7, **SMALL)
    b = write_synthetic_fairvlmed(tmp_path / "b", seed=7, **SMALL)
    c = write_synthetic_fairvlmed(tmp_path / "c", seed=8, **SMALL)
    for folder in ("Training", "Validation", "Test"):
        ra, rb, rc = _read(a, folder), _read(b, folder), _read(c, folder)
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k])
        assert not np.array_equal(ra["slo_fundus"], rc["slo_fundus"])
    for name in ("gpt-4_summarized_notes.csv", "data_summary.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_group_proportions(big: tuple[Path, dict[str, Any]]) -> None:
    _, d = big
    n = len(d["race"])
    counts = np.bincount(d["race"], minlength=3)
    p = stats.chisquare(counts, n * np.array([0.08, 0.15, 0.77])).pvalue
    assert p > 1e-3, (counts, p)
    assert stats.binomtest(int((d["gender"] == 0).sum()), n, 0.56).pvalue > 1e-3
    for attr in ("ethnicity", "language"):
        unknown = (d[attr] == -1).mean()
        assert 0.02 < unknown < 0.09, (attr, unknown)
    spanish = d["language"] == 1
    hispanic = d["ethnicity"] == 1
    assert spanish[hispanic].mean() > 3 * spanish[~hispanic].mean()  # correlated attributes


def test_label_carried_by_cdr_and_images(big: tuple[Path, dict[str, Any]]) -> None:
    _, d = big
    auc = roc_auc_score(d["glaucoma"], d["cdr"])
    assert 0.88 < auc < 0.98  # informative but overlapping classes
    # Where the cup is fully visible it is the brightest blob: its area tracks the CDR.
    img = uniform_filter(d["slo_fundus"].astype(np.float64), size=(1, 3, 3))
    peak = img.reshape(len(img), -1).max(1)[:, None, None]
    area = (img > 0.9 * peak).sum(axis=(1, 2))
    white = d["race"] == 2
    assert stats.spearmanr(d["cdr"][white], area[white]).statistic > 0.8
    # A pixel-level classifier (scikit-learn) reads the label off the images, and less well in
    # the groups whose cup is paler and noisier.
    n = len(img)
    x = d["slo_fundus"].reshape(n, 24, 2, 24, 2).mean(axis=(2, 4)).reshape(n, -1) / 255
    y, race = d["glaucoma"], d["race"]
    clf = LogisticRegression(C=0.01, max_iter=2000).fit(x[:2000], y[:2000])
    p, y, race = clf.predict_proba(x[2000:])[:, 1], y[2000:], race[2000:]
    assert roc_auc_score(y, p) > 0.7
    group_auc = [roc_auc_score(y[race == r], p[race == r]) for r in range(3)]
    assert group_auc[2] > max(group_auc[0], group_auc[1]) + 0.05, group_auc


def test_group_dependent_appearance(tmp_path: Path, big: tuple[Path, dict[str, Any]]) -> None:
    def residual_std(d: dict[str, Any]) -> np.ndarray:
        img = d["slo_fundus"].astype(np.float64)
        res = (img - uniform_filter(img, size=(1, 3, 3)))[:, 6:-6, 6:-6]
        return np.array([res[d["race"] == r].std() for r in range(3)])

    noisy = residual_std(big[1])
    assert noisy[2] < noisy[0] < noisy[1]  # configured noise: White < Asian < Black
    flat_root = write_synthetic_fairvlmed(
        tmp_path, seed=3, sizes={"train": 1500, "val": 0, "test": 0}, image_shape=(48, 48),
        group_effect=0.0,
    )
    flat = residual_std(_read(flat_root, "Training"))
    assert flat.max() / flat.min() < 1.1 < noisy.max() / noisy.min()


def test_note_informativeness(big: tuple[Path, dict[str, Any]]) -> None:
    root, d = big
    notes = _summaries(root)
    with open(root / "data_summary.csv", newline="") as f:
        summary = {r["filename"]: r for r in csv.DictReader(f)}
    names = d["filename"]
    informative = np.array([summary[n]["informative_note"] == "1" for n in names])
    states = np.array(["glaucoma" in notes[n] for n in names])
    np.testing.assert_array_equal(informative, states)  # only informative notes name a diagnosis
    own = ~d["is_bad_pair"]  # a bad pair carries another patient's note
    rate = [informative[own & (d["race"] == r)].mean() for r in range(3)]
    assert rate[2] > rate[0] + 0.1 and rate[2] > rate[1] + 0.1
    clean = own & informative
    negated = ("non-glaucoma", "no glaucoma")
    says_glaucoma = np.array([not any(w in notes[n] for w in negated) for n in names])
    np.testing.assert_array_equal(says_glaucoma[clean], d["glaucoma"][clean] == 1)
    for i in np.flatnonzero(clean):  # informative notes quote the patient's own CDR
        c = float(d["cdr"][i])
        assert f"{c:.2f}" in notes[names[i]] or f"{c:.1f}" in notes[names[i]], notes[names[i]]


def test_bad_pairs_rate_concentration_and_donors(big: tuple[Path, dict[str, Any]]) -> None:
    root, d = big
    bad = d["is_bad_pair"]
    n = len(bad)
    assert bad.sum() == round(0.2 * n)
    assert (bad & (d["race"] == 1)).sum() == round(0.6 * bad.sum())
    notes = list(d["note"])
    index = {}
    for i in np.flatnonzero(~bad):
        index.setdefault(notes[i], []).append(i)
    for i in np.flatnonzero(bad):
        donors = index.get(notes[i], [])
        assert any(d["glaucoma"][j] != d["glaucoma"][i] for j in donors), i
    summaries = _summaries(root)
    by_note = {notes[i]: summaries[d["filename"][i]] for i in np.flatnonzero(~bad)}
    for i in np.flatnonzero(bad):  # the CSV summary moves with the note
        assert summaries[d["filename"][i]] == by_note[notes[i]]


def test_bad_pairs_uniform_and_only_in_train(tmp_path: Path) -> None:
    root = write_synthetic_fairvlmed(
        tmp_path, seed=5, sizes={"train": 2000, "val": 100, "test": 100}, image_shape=(16, 16),
        bad_pair_rate=0.25, bad_pair_groups={},
    )
    d = _read(root, "Training")
    bad = d["is_bad_pair"]
    share = (d["race"] <= 1).mean()
    assert stats.binomtest(int((bad & (d["race"] <= 1)).sum()), int(bad.sum()), share).pvalue > 1e-3
    assert not _read(root, "Validation")["is_bad_pair"].any()
    assert not _read(root, "Test")["is_bad_pair"].any()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sizes": {"training": 3}}, ValueError, "unknown splits"),
        ({"sizes": {"train": -1}}, ValueError, ">= 0"),
        ({"bad_pair_rate": 0.7}, ValueError, r"bad_pair_rate must be in \[0, 0.5\]"),
        ({"bad_pair_concentration": 1.5}, ValueError, "bad_pair_concentration"),
        ({"bad_pair_groups": {"age": [1]}}, ValueError, "unknown attribute 'age'"),
        ({"bad_pair_groups": {"race": [3]}}, ValueError, r"group ids \[3\] out of range"),
        ({"image_shape": (8, 8)}, ValueError, "image_shape"),
        ({"group_effect": 2.0}, ValueError, "group_effect"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        write_synthetic_fairvlmed(tmp_path, **kwargs)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    write_synthetic_fairvlmed(tmp_path, **SMALL)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_synthetic_fairvlmed(tmp_path, **SMALL)
    write_synthetic_fairvlmed(tmp_path, seed=1, overwrite=True, **SMALL)


# ------------------------------------------------------------------ ensure_synthetic_assets
TINY = {
    "sizes": {"train": 24, "val": 8, "test": 8},
    "image_shape": (32, 32),
    "model_kwargs": {"hidden_size": 16, "image_size": 16, "patch_size": 8},
    "warm_start_steps": 2,
}


def test_ensure_is_idempotent_and_checks_settings(tmp_path: Path) -> None:
    root = ensure_synthetic_assets(tmp_path / "s", **TINY)
    marker = json.loads((root / ".fairvlm_synthetic.json").read_text())
    assert marker["settings"]["data"]["sizes"] == TINY["sizes"]
    stamp = (root / "Training" / "data_00001.npz").stat().st_mtime_ns
    assert ensure_synthetic_assets(root, **TINY) == root
    same = {**TINY, "image_shape": [32, 32], "bad_pair_groups": {"race": [0, 1]}}  # defaults spelt
    assert ensure_synthetic_assets(root, **same) == root
    assert (root / "Training" / "data_00001.npz").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings"):
        ensure_synthetic_assets(root, **{**TINY, "bad_pair_rate": 0.2})
    with pytest.raises(TypeError):
        ensure_synthetic_assets(root, **{**TINY, "colour": "red"})
    with pytest.raises(TypeError, match="model_kwargs"):
        ensure_synthetic_assets(root, **{**TINY, "model_kwargs": {"texts": []}})


def test_ensure_rewrites_assets_of_an_older_format(tmp_path: Path) -> None:
    root = ensure_synthetic_assets(tmp_path / "s", **TINY)
    marker = root / ".fairvlm_synthetic.json"
    old = json.loads(marker.read_text())
    old["settings"]["format"] -= 1
    marker.write_text(json.dumps(old))
    (root / "Training" / "data_00001.npz").write_bytes(b"stale")
    with pytest.warns(UserWarning, match="outdated"):
        ensure_synthetic_assets(root, **TINY)
    assert json.loads(marker.read_text())["settings"]["format"] == old["settings"]["format"] + 1
    assert len(load_fairvlmed(root, "train", keep_in_memory=True)) == 24


def test_ensure_redoes_an_interrupted_write(tmp_path: Path) -> None:
    root = tmp_path / "s"
    (root / "Training").mkdir(parents=True)
    (root / "Training" / "data_00001.npz").write_bytes(b"half a file")
    (root / ".fairvlm_synthetic.incomplete").write_text("incomplete\n")
    ensure_synthetic_assets(root, **TINY)
    assert not (root / ".fairvlm_synthetic.incomplete").exists()
    assert len(load_fairvlmed(root, "train", keep_in_memory=True)) == 24
    assert (root / "tiny_model" / "config.json").is_file()


def test_ensure_refuses_foreign_folders(tmp_path: Path) -> None:
    (tmp_path / "real" / "Training").mkdir(parents=True)
    with pytest.raises(ValueError, match="refusing"):
        ensure_synthetic_assets(tmp_path / "real", **TINY)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="thesis.tex"):
        ensure_synthetic_assets(tmp_path / "other", **TINY)


def test_ensure_concurrent_callers(tmp_path: Path) -> None:
    root = tmp_path / "s"
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ensure_synthetic_assets(root, **TINY)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(list((root / "Training").glob("*.npz"))) == 24
    marker = json.loads((root / ".fairvlm_synthetic.json").read_text())
    assert marker["settings"]["data"]["seed"] == 0
