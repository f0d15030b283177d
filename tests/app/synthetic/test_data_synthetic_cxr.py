"""The chest-X-ray-like multi-label twin: determinism, statistics, bad pairs, groups, imagefolder.

Every statistic is counted here from the written files (``metadata.csv`` read with ``csv``,
PNGs read with PIL, reports parsed by the keyword reader below), not taken from the generator.
"""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from scipy.ndimage import uniform_filter

from fairvlm_lightning.app.synthetic import cxr

BIG_SIZES = {"train": 1200, "validation": 100, "test": 100}
SMALL_SIZES = {"train": 24, "validation": 6, "test": 6}

# Affirmative wording of each finding in a report sentence (negated sentences are skipped).
KEYWORDS = {
    "cardiomegaly": ("cardiomegaly", "heart is enlarged", "enlarged cardiac"),
    "edema": ("edema",),
    "consolidation": ("consolidation",),
    "atelectasis": ("atelectasis",),
    "pleural_effusion": ("effusion",),
}
NEGATION_STARTS = ("no ", "heart size is normal", "normal cardiac")


def stated(text: str) -> set[str]:
    """Findings a report states as present (a sentence that does not negate names them)."""
    found = set()
    for sentence in text.split(". "):
        s = sentence.strip().rstrip(".")
        if not s or s.startswith(NEGATION_STARTS):
            continue
        found |= {f for f, words in KEYWORDS.items() if any(w in s for w in words)}
    return found


def read_rows(root: Path, split: str) -> list[dict[str, str]]:
    with open(root / split / "metadata.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def labels_of(row: dict[str, str]) -> tuple[int, ...]:
    return tuple(int(row[f]) for f in cxr.FINDINGS)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """1,400 patients at 32 x 32 (the statistics do not depend on the image side)."""
    root = cxr.write_synthetic_cxr(
        tmp_path_factory.mktemp("cxr_big"), seed=11, sizes=BIG_SIZES, image_size=32
    )
    rows = {s: read_rows(root, s) for s in cxr.SPLITS}
    return {"root": root, "rows": rows, "all": [r for s in cxr.SPLITS for r in rows[s]]}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete small folder with the tiny model, written by ``ensure_synthetic_cxr``."""
    root = tmp_path_factory.mktemp("cxr_assets") / "cxr"
    return cxr.ensure_synthetic_cxr(
        root,
        seed=2,
        sizes=SMALL_SIZES,
        image_size=32,
        warm_start_steps=2,
        model_kwargs={"hidden_size": 32, "num_layers": 1, "patch_size": 16, "vocab_size": 400},
    )


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    a = cxr.write_synthetic_cxr(tmp_path / "a", seed=3, sizes=SMALL_SIZES, image_size=32)
    b = cxr.write_synthetic_cxr(tmp_path / "b", seed=3, sizes=SMALL_SIZES, image_size=32)
    c = cxr.write_synthetic_cxr(tmp_path / "c", seed=4, sizes=SMALL_SIZES, image_size=32)
    da, db, dc = tree_digest(a), tree_digest(b), tree_digest(c)
    assert da == db
    assert sorted(da) == sorted(dc) and da != dc
    assert len([k for k in da if k.endswith(".png")]) == sum(SMALL_SIZES.values())


def test_layout_and_columns(big: dict[str, Any]) -> None:
    root = big["root"]
    assert sorted(p.name for p in root.iterdir()) == sorted(cxr.SPLITS)
    for split, n in BIG_SIZES.items():
        with open(root / split / "metadata.csv", encoding="utf-8", newline="") as f:
            header = next(csv.reader(f))
        assert header == [
            "file_name",
            "text",
            *cxr.FINDINGS,
            "sex",
            "age_group",
            "race",
            "is_bad_pair",
        ]
        rows = big["rows"][split]
        assert len(rows) == n == len(list((root / split).glob("*.png")))
        for r in rows[:20]:
            with Image.open(root / split / r["file_name"]) as im:
                assert im.mode == "L" and im.size == (32, 32)
        for attr, k in cxr.ATTRIBUTES.items():
            assert {int(r[attr]) for r in rows} <= set(range(k))
        assert all(set(labels_of(r)) <= {0, 1} and r["text"] for r in rows)


def test_thresholds_solve_the_prevalence_over_the_age_mix() -> None:
    t = cxr.latent_thresholds()
    for k, name in enumerate(cxr.FINDINGS):
        pairs = zip(cxr.AGE_P, cxr.AGE_SHIFT, strict=True)
        mix = sum(w * stats.norm.sf(t[k] - s) for w, s in pairs)
        assert mix == pytest.approx(cxr.PREVALENCE[name], abs=1e-9), name


def test_prevalence_composition_and_cooccurrence(big: dict[str, Any]) -> None:
    rows = big["all"]
    n = len(rows)
    y = np.array([labels_of(r) for r in rows])
    for k, name in enumerate(cxr.FINDINGS):
        p = cxr.PREVALENCE[name]
        assert abs(y[:, k].mean() - p) < 4 * math.sqrt(p * (1 - p) / n), name
    for attr, probs in (("sex", cxr.SEX_P), ("age_group", cxr.AGE_P), ("race", cxr.RACE_P)):
        counts = np.bincount([int(r[attr]) for r in rows], minlength=len(probs)) / n
        assert np.all(np.abs(counts - np.asarray(probs)) < 4 * np.sqrt(np.asarray(probs) / n))

    def col(name: str) -> np.ndarray:
        return y[:, cxr.FINDINGS.index(name)].astype(bool)

    # Co-occurrence: effusion with atelectasis, and the heart-failure cluster.
    for a, b in (
        ("pleural_effusion", "atelectasis"),
        ("cardiomegaly", "edema"),
        ("edema", "pleural_effusion"),
    ):
        assert col(b)[col(a)].mean() > 1.5 * col(b)[~col(a)].mean(), (a, b)
    # Older patients have more findings.
    age = np.array([int(r["age_group"]) for r in rows])
    assert y[age == 3].sum(1).mean() > 1.5 * y[age == 0].sum(1).mean()


def test_bad_pairs_carry_another_patients_report(big: dict[str, Any]) -> None:
    train = big["rows"]["train"]
    bad = [r for r in train if r["is_bad_pair"] == "1"]
    clean = [r for r in train if r["is_bad_pair"] == "0"]
    assert len(bad) == round(cxr.BAD_PAIR_RATE * len(train))
    for split in ("validation", "test"):
        assert all(r["is_bad_pair"] == "0" for r in big["rows"][split])
    by_text: dict[str, set[tuple[int, ...]]] = {}
    for r in clean:
        by_text.setdefault(r["text"], set()).add(labels_of(r))
    for r in bad:  # the same text as a clean patient whose findings differ
        assert any(lab != labels_of(r) for lab in by_text.get(r["text"], ())), r
    # A clean report never states a finding the patient does not have; many bad ones do.
    assert all(stated(r["text"]) <= {f for f in cxr.FINDINGS if r[f] == "1"} for r in clean)
    wrong = [r for r in bad if not stated(r["text"]) <= {f for f in cxr.FINDINGS if r[f] == "1"}]
    assert len(wrong) > 0.3 * len(bad)
    # More bad pairs among Black patients (weight 2) than among White ones (weight 1).
    race = np.array([int(r["race"]) for r in train])
    is_bad = np.array([r["is_bad_pair"] == "1" for r in train])
    assert is_bad[race == 1].mean() > is_bad[race == 2].mean()


def test_report_quality_depends_on_group(big: dict[str, Any]) -> None:
    rows = [r for r in big["all"] if r["is_bad_pair"] == "0"]
    present: dict[int, int] = {}
    said: dict[int, int] = {}
    for r in rows:
        pos = {f for f in cxr.FINDINGS if r[f] == "1"}
        g = int(r["race"])
        present[g] = present.get(g, 0) + len(pos)
        said[g] = said.get(g, 0) + len(pos & stated(r["text"]))
    recall = {g: said[g] / present[g] for g in present}
    age_factor = float(np.dot(cxr.AGE_P, cxr.MENTION_AGE))
    for g, value in recall.items():  # close to the design, to within sampling error
        expected = cxr.MENTION_P[g] * age_factor
        assert abs(value - expected) < 4 * math.sqrt(expected * (1 - expected) / present[g]) + 0.03
    assert recall[2] > recall[1] + 0.1  # White vs Black patients
    assert recall[2] > recall[3] + 0.08  # White vs Hispanic patients


def test_appearance_depends_on_group(big: dict[str, Any]) -> None:
    root, rows = big["root"], big["rows"]["train"][:600]
    noise: dict[int, list[float]] = {}
    shadow: dict[int, list[float]] = {}
    for r in rows:
        with Image.open(root / "train" / r["file_name"]) as im:
            img = np.asarray(im, dtype=np.float64) / 255
        if not any(labels_of(r)):  # no findings: appearance only
            noise.setdefault(int(r["race"]), []).append(float(np.std(img - uniform_filter(img, 3))))
            if r["race"] == "2":
                shadow.setdefault(int(r["sex"]), []).append(float(img[20:26, 2:9].mean()))
    assert np.mean(noise[1]) > 1.5 * np.mean(noise[2])  # noisier images for Black patients
    assert np.mean(noise[3]) > 1.3 * np.mean(noise[2])
    assert np.mean(shadow[0]) > np.mean(shadow[1]) + 0.02  # soft-tissue shadow, female


def test_findings_are_visible_in_the_images(big: dict[str, Any]) -> None:
    from sklearn.linear_model import RidgeClassifier
    from sklearn.metrics import roc_auc_score

    root, rows = big["root"], big["rows"]["train"]
    x = []
    for r in rows:
        with Image.open(root / "train" / r["file_name"]) as im:
            x.append(np.asarray(im, dtype=np.float64).reshape(16, 2, 16, 2).mean((1, 3)).ravel())
    xs = np.array(x) / 255
    xs = (xs - xs.mean(0)) / (xs.std(0) + 1e-6)
    half = len(rows) // 2
    for name in ("cardiomegaly", "edema", "atelectasis", "pleural_effusion"):
        y = np.array([int(r[name]) for r in rows])
        clf = RidgeClassifier(alpha=100.0).fit(xs[:half], y[:half])
        auc = roc_auc_score(y[half:], clf.decision_function(xs[half:]))
        assert auc > 0.6, (name, auc)  # 0.5 if the finding were not drawn


def test_loadable_by_datasets_imagefolder(assets: Path, tmp_path: Path) -> None:
    import datasets

    ds = datasets.load_dataset("imagefolder", data_dir=str(assets), cache_dir=str(tmp_path))
    assert sorted(ds) == sorted(cxr.SPLITS)
    for split in cxr.SPLITS:
        rows = read_rows(assets, split)
        d = ds[split]
        assert d.num_rows == SMALL_SIZES[split]
        assert set(d.column_names) == {"image", *cxr.METADATA_COLUMNS} - {"file_name"}
        assert d["text"] == [r["text"] for r in rows]
        for f in cxr.FINDINGS:
            assert d[f] == [int(r[f]) for r in rows]
        img = d[0]["image"]
        assert img.mode == "L" and img.size == (32, 32)
        with Image.open(assets / split / rows[0]["file_name"]) as ref:
            assert np.array_equal(np.asarray(img), np.asarray(ref))


def test_ensure_reuses_replaces_and_refuses(assets: Path, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    kwargs = dict(
        seed=2,
        sizes=SMALL_SIZES,
        image_size=32,
        warm_start_steps=2,
        model_kwargs={"hidden_size": 32, "num_layers": 1, "patch_size": 16, "vocab_size": 400},
    )
    marker = assets / ".complete.json"
    before = marker.stat().st_mtime_ns
    assert cxr.ensure_synthetic_cxr(assets, **kwargs) == assets  # type: ignore[arg-type]
    assert marker.stat().st_mtime_ns == before
    model = AutoModel.from_pretrained(assets / "tiny_model")
    tok = AutoTokenizer.from_pretrained(assets / "tiny_model")
    assert model.config.vision_config.image_size == 32
    for pos, neg in cxr.FINDING_PROMPTS.values():
        assert tok.unk_token_id not in tok(pos)["input_ids"] + tok(neg)["input_ids"]
    # Other settings (no model, another seed) replace the folder written by the generator.
    other = tmp_path / "other"
    cxr.ensure_synthetic_cxr(other, seed=5, sizes=SMALL_SIZES, image_size=32, model=False)
    rows5 = read_rows(other, "train")
    cxr.ensure_synthetic_cxr(other, seed=6, sizes=SMALL_SIZES, image_size=32, model=False)
    assert not (other / "tiny_model").exists()
    assert read_rows(other, "train") != rows5
    fresh = cxr.write_synthetic_cxr(tmp_path / "ref6", seed=6, sizes=SMALL_SIZES, image_size=32)
    assert read_rows(other, "train") == read_rows(fresh, "train")
    # A folder it did not write is refused.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not written by"):
        cxr.ensure_synthetic_cxr(foreign, sizes=SMALL_SIZES, model=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_concurrent_callers_write_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    root = tmp_path / "shared"
    results: list[Any] = []
    writes: list[Path] = []
    write = cxr.write_synthetic_cxr

    def counted(out: Path, **kwargs: Any) -> Path:
        writes.append(out)
        return write(out, **kwargs)

    monkeypatch.setattr(cxr, "write_synthetic_cxr", counted)

    def call() -> None:
        try:
            results.append(cxr.ensure_synthetic_cxr(root, sizes=SMALL_SIZES, model=False))
        except BaseException as err:  # noqa: BLE001 - reported below
            results.append(err)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [root] * 3
    assert len(writes) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["shared"]
    fresh = write(tmp_path / "ref", sizes=SMALL_SIZES)
    assert {k: v for k, v in tree_digest(root).items() if not k.startswith(".")} == tree_digest(
        fresh
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sizes": {"training": 3}}, ValueError, "unknown splits.*training"),
        ({"sizes": {"test": -1}}, ValueError, "sizes must be >= 0"),
        ({"image_size": 8}, ValueError, "image_size must be >= 16"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        cxr.write_synthetic_cxr(tmp_path, **kwargs)


def test_existing_split_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "validation").mkdir()
    with pytest.raises(FileExistsError, match="validation"):
        cxr.write_synthetic_cxr(tmp_path, sizes=SMALL_SIZES)
    with pytest.raises(ValueError, match="warm_start_steps"):
        cxr.synthetic_cxr_settings(warm_start_steps=-1)
