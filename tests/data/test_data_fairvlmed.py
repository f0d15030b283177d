"""load_fairvlmed on hand-made npz files with the real field types, and every bad input."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fairvlm_lightning.data import ATTRIBUTE_GROUPS, load_fairvlmed

REAL_FIELDS = ("glaucoma", "race", "gender", "ethnicity", "language")


def _npz(path: Path, *, shape=(20, 16), seed=0, drop=(), **override: Any) -> dict[str, Any]:
    """Write one file with the real dtypes: 0-d int64 labels, 0-d <U note, uint8 image."""
    rng = np.random.default_rng(seed)
    fields: dict[str, Any] = {
        "slo_fundus": rng.integers(0, 256, shape, dtype=np.uint8),
        "glaucoma": np.array(int(rng.integers(0, 2)), dtype=np.int64),
        "race": np.array(int(rng.integers(0, 3)), dtype=np.int64),
        "gender": np.array(int(rng.integers(0, 2)), dtype=np.int64),
        "ethnicity": np.array(int(rng.integers(0, 2)), dtype=np.int64),
        "language": np.array(int(rng.integers(0, 3)), dtype=np.int64),
        "note": np.array(f"patient {seed}: cup-to-disc ratio 0.{seed % 10}, see plan."),
        "md": np.array(-1.5),
    }
    fields.update(override)
    for k in drop:
        fields.pop(k)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **fields)
    return fields


def _csv(root: Path, rows: list[tuple[str, str]], name="gpt-4_summarized_notes.csv") -> Path:
    with open(root / name, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filename", "note", "gpt4_summary"])
        for fn, summary in rows:
            w.writerow([fn, "long original note", summary])
    return root / name


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "FairVLMed"
    for i in range(1, 6):
        _npz(r / "Training" / f"data_{i:05d}.npz", seed=i)
    _npz(r / "Validation" / "data_00006.npz", seed=6)
    _npz(r / "Validation" / "data_00007.npz", seed=7, ethnicity=np.array(-1, dtype=np.int64))
    _npz(r / "Validation" / "data_00008.npz", seed=8, language=np.array(-1, dtype=np.int64))
    _npz(r / "Testing" / "data_00009.npz", seed=9)
    _csv(r, [(f"data_{i:05d}.npz", f"summary number {i}") for i in range(1, 10)])
    return r


def test_values_match_npz(root: Path, tmp_path: Path) -> None:
    ds = load_fairvlmed(root, "train", cache_dir=tmp_path / "cache")
    files = sorted((root / "Training").glob("*.npz"))
    assert len(ds) == len(files) == 5
    assert ds.features["image"].dtype == "uint8"
    for i, path in enumerate(files):
        ref = np.load(path)
        row = ds[i]
        assert int(row["index"]) == i and row["filename"] == path.name
        np.testing.assert_array_equal(row["image"], ref["slo_fundus"])
        assert int(row["label"]) == int(ref["glaucoma"])
        for attr in ATTRIBUTE_GROUPS:
            assert int(row[attr]) == int(ref[attr])
        assert row["note"] == f"summary number {i + 1}"  # CSV column 2, not the npz note
    assert "is_bad_pair" not in ds.column_names


def test_in_memory_equals_cached(root: Path, tmp_path: Path) -> None:
    a = load_fairvlmed(root, "train", cache_dir=tmp_path / "cache")
    b = load_fairvlmed(root, "train", keep_in_memory=True)
    assert a.column_names == b.column_names
    for col in a.column_names:
        np.testing.assert_array_equal(np.asarray(a[col]), np.asarray(b[col]))
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == 1


def test_cache_is_refreshed_when_a_file_changes(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_fairvlmed(root, "train", cache_dir=cache)
    path = root / "Training" / "data_00001.npz"
    fields = _npz(path, seed=1, race=np.array(1, dtype=np.int64), shape=(20, 16))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime even on coarse clocks
    after = load_fairvlmed(root, "train", cache_dir=cache)
    assert int(after[0]["race"]) == int(fields["race"]) == 1
    np.testing.assert_array_equal(after[0]["image"], fields["slo_fundus"])
    assert len(list(cache.glob("*.arrow"))) == 2


def test_val_drops_unknown_train_keeps(root: Path) -> None:
    for i in (1, 2):
        _npz(root / "Training" / f"data_0000{i}.npz", seed=i, language=np.array(-1, dtype=np.int64))
    train = load_fairvlmed(root, "train", keep_in_memory=True)
    assert len(train) == 5 and sorted(np.asarray(train["language"]).tolist()).count(-1) == 2
    val = load_fairvlmed(root, "val", keep_in_memory=True)
    assert list(val["filename"]) == ["data_00006.npz"]
    assert np.asarray(val["index"]).tolist() == [0]
    kept = load_fairvlmed(root, "val", drop_unknown=False, keep_in_memory=True)
    assert len(kept) == 3
    only_eth = load_fairvlmed(root, "val", drop_unknown=["ethnicity"], keep_in_memory=True)
    assert list(only_eth["filename"]) == ["data_00006.npz", "data_00008.npz"]
    assert np.asarray(only_eth["index"]).tolist() == [0, 1]  # index = position after dropping
    dropped = load_fairvlmed(root, "train", drop_unknown=True, keep_in_memory=True)
    assert len(dropped) == 3


def test_test_split_accepts_testing_folder_and_real_image_size(tmp_path: Path) -> None:
    r = tmp_path / "r"
    ref = _npz(r / "Testing" / "data_00001.npz", shape=(664, 512))
    ds = load_fairvlmed(r, "test", notes=None, keep_in_memory=True)
    assert ds[0]["image"].shape == (664, 512)
    np.testing.assert_array_equal(ds[0]["image"], ref["slo_fundus"])
    assert ds[0]["note"] == str(ref["note"])


def test_notes_csv_spellings_and_no_silent_fallback(root: Path) -> None:
    os.rename(root / "gpt-4_summarized_notes.csv", root / "gpt4_summarized_notes.csv")
    ds = load_fairvlmed(root, "train", keep_in_memory=True)
    assert ds[0]["note"] == "summary number 1"
    os.remove(root / "gpt4_summarized_notes.csv")
    # issue 20: no summaries anywhere is an error naming what was looked for, not a warning
    # that falls back to the long npz note
    with pytest.raises(FileNotFoundError, match=r"no summarised notes.*note_source='note'"):
        load_fairvlmed(root, "train", keep_in_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_fairvlmed(root, "train", note_source="note", keep_in_memory=True)
        load_fairvlmed(root, "train", notes=None, keep_in_memory=True)
    assert ds[0]["note"] == str(np.load(root / "Training" / "data_00001.npz")["note"])
    other = _csv(root, [(f"data_{i:05d}.npz", f"other {i}") for i in range(1, 6)], "mine.csv")
    ds = load_fairvlmed(root, "train", notes=other, keep_in_memory=True)
    assert np.asarray(ds["note"]).tolist() == [f"other {i}" for i in range(1, 6)]


def test_synthetic_is_bad_pair_column(synthetic_root: Path) -> None:
    ds = load_fairvlmed(synthetic_root, "train", keep_in_memory=True)
    files = sorted((synthetic_root / "Training").glob("*.npz"))
    ref = [bool(np.load(p)["is_bad_pair"]) for p in files]
    assert np.asarray(ds["is_bad_pair"]).tolist() == ref and any(ref)


# ------------------------------------------------------------------------------ bad input
def test_missing_root_split_and_files(tmp_path: Path, root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root folder not found"):
        load_fairvlmed(tmp_path / "nope", "train")
    (root / "Validation").rename(root / "Val")
    with pytest.raises(FileNotFoundError, match="'Validation' for split 'val' not found"):
        load_fairvlmed(root, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        load_fairvlmed(root, "training")
    (root / "Validation").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npz files"):
        load_fairvlmed(root, "val")
    (root / "Test").mkdir()
    with pytest.raises(ValueError, match="both"):
        load_fairvlmed(root, "test")
    with pytest.raises(FileNotFoundError, match="notes CSV not found"):
        load_fairvlmed(root, "train", notes="missing.csv")
    with pytest.raises(ValueError, match="unknown attributes"):
        load_fairvlmed(root, "train", drop_unknown=["age"])


@pytest.mark.parametrize("mode", ["truncated", "garbage", "empty"])
def test_corrupt_npz_names_file(root: Path, mode: str) -> None:
    path = root / "Training" / "data_00003.npz"
    data = path.read_bytes()
    broken = {"truncated": data[: len(data) // 2], "garbage": b"\x00junk" * 50, "empty": b""}
    path.write_bytes(broken[mode])
    with pytest.raises(ValueError, match=r"data_00003\.npz: corrupt or truncated"):
        load_fairvlmed(root, "train", keep_in_memory=True)


def test_truncated_member_is_caught(root: Path) -> None:
    """A zip whose central directory survives but whose image bytes are cut short."""
    import zipfile

    path = root / "Training" / "data_00002.npz"
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["slo_fundus.npy"] = members["slo_fundus.npy"][:-40]
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match=r"data_00002\.npz: corrupt or truncated"):
        load_fairvlmed(root, "train", keep_in_memory=True)


@pytest.mark.parametrize(
    ("override", "drop", "error", "match"),
    [
        ({}, ("race",), ValueError, r"missing field 'race'"),
        ({}, ("slo_fundus",), ValueError, r"missing field 'slo_fundus'"),
        ({"glaucoma": np.array(1.0)}, (), TypeError, r"'glaucoma' must be an integer.*float64"),
        ({"glaucoma": np.array(2)}, (), ValueError, r"'glaucoma' must be 0 or 1, got 2"),
        ({"race": np.array(3)}, (), ValueError, r"'race' must be in \[-1, 2\]"),
        ({"gender": np.array([0, 1])}, (), ValueError, r"'gender' must be a scalar.*\(2,\)"),
        # issue 20: float and (H, W, 3) images are read; out-of-range values and other shapes
        # or dtypes are errors naming the file, the field and the range found
        (
            {"slo_fundus": np.full((20, 16), 300.0, np.float32)},
            (),
            ValueError,
            r"data_00004\.npz: field 'slo_fundus'.*0-1 or 0-255, found range \[300, 300\]",
        ),
        (
            {"slo_fundus": np.full((20, 16), 1000, np.uint16)},
            (),
            ValueError,
            r"data_00004\.npz: field 'slo_fundus'.*within 0-255, found range \[1000, 1000\]",
        ),
        (
            {"slo_fundus": np.zeros((20, 16, 4), np.uint8)},
            (),
            ValueError,
            r"\(H, W, 1\) or \(H, W, 3\).*\(20, 16, 4\)",
        ),
        ({"slo_fundus": np.zeros((20, 16), bool)}, (), TypeError, r"integer or float.*bool"),
        ({"note": np.array(5)}, (), TypeError, r"'note' must be a string array"),
        ({"note": np.array(["a", "b"])}, (), ValueError, r"'note' must be a scalar"),
        ({"note": np.array("   ")}, (), ValueError, r"missing note for data_00004\.npz"),
    ],
)
def test_bad_fields(root: Path, override: dict, drop: tuple, error: type, match: str) -> None:
    _npz(root / "Training" / "data_00004.npz", seed=4, drop=drop, **override)
    with pytest.raises(error, match=match) as info:
        load_fairvlmed(root, "train", notes=None, keep_in_memory=True)
    assert "data_00004.npz" in str(info.value)


def test_object_note_is_type_error(root: Path) -> None:
    path = root / "Training" / "data_00005.npz"
    fields = dict(np.load(path))
    fields["note"] = np.array(["pickled"], dtype=object)
    np.savez(path, **fields)  # np.savez pickles object arrays
    with pytest.raises(TypeError, match=r"data_00005\.npz: field 'note' is an object"):
        load_fairvlmed(root, "train", notes=None, keep_in_memory=True)


def test_csv_problems(root: Path) -> None:
    _csv(root, [(f"data_{i:05d}.npz", f"s{i}") for i in (1, 2, 4, 5)])
    with pytest.raises(ValueError, match=r"missing note for data_00003\.npz.*notes CSV"):
        load_fairvlmed(root, "train", keep_in_memory=True)
    (root / "gpt-4_summarized_notes.csv").write_text("filename,note\ndata_00001.npz,x\n")
    with pytest.raises(ValueError, match=r"line 2: expected >= 3 columns"):
        load_fairvlmed(root, "train", keep_in_memory=True)
    _csv(root, [("data_00001.npz", "a"), ("data_00001.npz", "b")])
    with pytest.raises(ValueError, match="listed twice"):
        load_fairvlmed(root, "train", keep_in_memory=True)


def test_inconsistent_split(root: Path, tmp_path: Path) -> None:
    _npz(root / "Training" / "data_00005.npz", seed=5, shape=(21, 16))
    with pytest.raises(ValueError, match=r"data_00005\.npz: image shape \(21, 16\) differs"):
        load_fairvlmed(root, "train", keep_in_memory=True)
    _npz(root / "Training" / "data_00005.npz", seed=5, is_bad_pair=np.array(True))
    with pytest.raises(ValueError, match="'is_bad_pair' present in only some"):
        load_fairvlmed(root, "train", cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*"))  # no partial cache file left behind
