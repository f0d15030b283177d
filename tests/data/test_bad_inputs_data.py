"""Bad-input matrix of the data loading (issue 11, items 5 and 8-11).

The loader's older bad-input cases (corrupt npz, bad fields, CSV rows) stay in
``test_data_fairvlmed.py`` next to the values they guard; this file holds the cases of issue 11:
each names the file and the problem, and a damaged cache repairs itself. The command-level
cases (checkpoints, run folders, SIGKILL resume) are in ``test_bad_inputs_cli.py``, the training
ones in ``test_bad_inputs_training.py``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fairvlm_lightning.app.synthetic import SyntheticFairVLMedDataModule
from fairvlm_lightning.data import FairVLMedDataModule, load_fairvlmed
from fairvlm_lightning.data.sampling import EpochShuffleSampler, ResumableDataLoader


def _npz(path: Path, seed: int, **override: Any) -> None:
    rng = np.random.default_rng(seed)
    fields: dict[str, Any] = {
        "slo_fundus": rng.integers(0, 256, (12, 10), dtype=np.uint8),
        "glaucoma": np.array(seed % 2, dtype=np.int64),
        "race": np.array(seed % 3, dtype=np.int64),
        "gender": np.array(seed % 2, dtype=np.int64),
        "ethnicity": np.array(0, dtype=np.int64),
        "language": np.array(0, dtype=np.int64),
        "note": np.array(f"patient {seed}: cup-to-disc ratio 0.{seed % 10}."),
    }
    fields.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **fields)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "FairVLMed"
    for i in range(1, 5):
        _npz(r / "Training" / f"data_{i:05d}.npz", i)
    for i in range(5, 8):
        _npz(r / "Validation" / f"data_{i:05d}.npz", i)
    return r


# --------------------------------------------------------------------------- 8: empty split


@pytest.mark.parametrize("keep_in_memory", [True, False])
def test_split_empty_after_dropping_unknowns_names_folder_and_attribute(
    root: Path, tmp_path: Path, keep_in_memory: bool
) -> None:
    for i in range(5, 8):
        unknown = {"language": np.array(-1)} if i != 6 else {"race": np.array(-1)}
        _npz(root / "Validation" / f"data_{i:05d}.npz", i, **unknown)
    with pytest.raises(ValueError) as err:
        load_fairvlmed(
            root, "val", notes=None, keep_in_memory=keep_in_memory, cache_dir=tmp_path / "c"
        )
    msg = str(err.value)
    assert str(root / "Validation") in msg
    assert "all 3 samples have an unknown (-1) value" in msg
    assert "language: 2" in msg and "race: 1" in msg
    assert "drop_unknown" in msg
    assert not list((tmp_path / "c").glob("*.arrow*"))  # nothing half-written left behind
    # keeping unknowns loads them all
    assert (
        len(load_fairvlmed(root, "val", notes=None, drop_unknown=False, keep_in_memory=True)) == 3
    )


# --------------------------------------------------------------------------- 9: encodings


def test_latin1_note_in_npz_names_the_file(root: Path) -> None:
    bad = root / "Training" / "data_00003.npz"
    _npz(bad, 3, note=np.array("cup-to-disc 0.7, caf\xe9 au lait spots".encode("latin-1")))
    with pytest.raises(ValueError) as err:
        load_fairvlmed(root, "train", notes=None, keep_in_memory=True)
    msg = str(err.value)
    assert str(bad) in msg and "field 'note' is not UTF-8 text" in msg
    assert "byte 0xe9 at position 20 (line 1)" in msg


def test_utf8_bytes_note_in_npz_still_reads(root: Path) -> None:
    _npz(root / "Training" / "data_00003.npz", 3, note=np.array("caf\xe9".encode()))
    ds = load_fairvlmed(root, "train", notes=None, keep_in_memory=True)
    assert str(ds[2]["note"]) == "caf\xe9"


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ("filename,note,summary\ndata_00001.npz,x,caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
        (b"filename,note,summary\n\x00\x01\x02\xff\xfe binary", "not UTF-8 text"),
        (b"filename,note,summary\ndata_00001.npz,x,a\x00b\n", "NUL byte"),
    ],
    ids=["latin-1", "binary", "nul"],
)
def test_bad_notes_csv_names_the_file_and_line(root: Path, payload: bytes, problem: str) -> None:
    path = root / "gpt-4_summarized_notes.csv"
    path.write_bytes(payload)
    with pytest.raises(ValueError) as err:
        load_fairvlmed(root, "train", keep_in_memory=True)
    msg = str(err.value)
    assert f"notes CSV {path}" in msg and problem in msg
    assert "line 2" in msg


# --------------------------------------------------------------------------- 10: damaged cache


def _arrow(cache: Path, split: str) -> Path:
    (target,) = cache.glob(f"fairvlmed-{split}-*.arrow")
    return target


@pytest.mark.parametrize("cut", ["middle", "batch_boundary", "empty"])
def test_truncated_arrow_cache_is_rebuilt(root: Path, tmp_path: Path, cut: str) -> None:
    cache = tmp_path / "cache"
    for i in range(5, 5 + 70):  # > one write batch (64 rows) so a batch boundary exists
        _npz(root / "Training" / f"data_{i:05d}.npz", i)
    reference = load_fairvlmed(root, "train", notes=None, keep_in_memory=True)
    load_fairvlmed(root, "train", notes=None, cache_dir=cache)
    target = _arrow(cache, "train")
    data = target.read_bytes()
    if cut == "middle":
        data = data[: len(data) // 2]
    elif cut == "batch_boundary":
        # keep the schema and the first record batch only: a valid stream with fewer rows
        import pyarrow as pa

        with pa.memory_map(str(target)) as source:
            reader = pa.ipc.open_stream(source)
            first = reader.read_next_batch()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, reader.schema) as writer:
            writer.write_batch(first)
        data = sink.getvalue().to_pybytes()
        assert first.num_rows < len(reference)
    else:
        data = b""
    target.write_bytes(data)
    with pytest.warns(UserWarning, match=rf"cache file {target} .* rebuilding it"):
        ds = load_fairvlmed(root, "train", notes=None, cache_dir=cache)
    assert len(ds) == len(reference) == 74
    assert np.array_equal(ds["label"][:], reference["label"][:])
    assert np.array_equal(ds["image"][:], reference["image"][:])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: no second rebuild
        assert len(load_fairvlmed(root, "train", notes=None, cache_dir=cache)) == 74


def test_truncated_preprocessed_cache_is_rebuilt(tmp_path: Path) -> None:
    kwargs = {
        "sizes": {"train": 12, "val": 6, "test": 6},
        "image_shape": (32, 32),
        "warm_start_steps": 0,
    }
    root = tmp_path / "syn"

    def first_batches() -> dict[str, torch.Tensor]:
        dm = SyntheticFairVLMedDataModule(root, synthetic_kwargs=kwargs, batch_size=12)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    before = first_batches()
    maps = sorted((root / ".cache").glob("cache-*.arrow"))
    assert maps
    for path in maps:  # the datasets.map output of every split
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.warns(
        UserWarning, match=r"preprocessed cache file .*cache-.*\.arrow .* rebuilding"
    ):
        after = first_batches()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


# --------------------------------------------------------------------------- 11: stale cache


def test_rewrite_with_same_size_and_mtime_needs_the_content_check(
    root: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    path = root / "Training" / "data_00002.npz"
    assert int(load_fairvlmed(root, "train", notes=None, cache_dir=cache)[1]["label"]) == 0
    before = load_fairvlmed(root, "train", notes=None, cache_dir=cache, cache_check="content")
    assert int(before[1]["label"]) == 0  # both caches filled before the edit
    stat = path.stat()
    _npz(path, 2, glaucoma=np.array(1, dtype=np.int64))  # relabelled, same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    # The default key (names, sizes, mtimes) cannot see this edit, as documented ...
    assert int(load_fairvlmed(root, "train", notes=None, cache_dir=cache)[1]["label"]) == 0
    # ... the content check hashes the bytes and reads the new label.
    ds = load_fairvlmed(root, "train", notes=None, cache_dir=cache, cache_check="content")
    assert int(ds[1]["label"]) == 1
    dm = FairVLMedDataModule(
        root, model="unused", notes=None, cache_dir=cache, cache_check="content"
    )
    assert dm.cache_check == "content"
    with pytest.raises(ValueError, match="cache_check must be 'stat' or 'content'"):
        load_fairvlmed(root, "train", notes=None, cache_dir=cache, cache_check="mtime")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- 5: resumable loader


def _loader(n: int, batch_size: int, seed: int = 3, num_workers: int = 0) -> ResumableDataLoader:
    return ResumableDataLoader(
        list(range(n)),
        batch_size=batch_size,
        sampler=EpochShuffleSampler(n, seed=seed),
        num_workers=num_workers,
    )


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize(("seen", "epoch"), [(0, 0), (2, 1), (4, 1), (5, 2)])
def test_resumable_loader_continues_where_the_state_was_taken(
    seen: int, epoch: int, num_workers: int
) -> None:
    n, bs = 22, 4  # 6 batches, the last one short
    reference = _loader(n, bs)
    reference.sampler.set_epoch(epoch)
    full = [b.tolist() for b in reference]
    g = torch.Generator().manual_seed(3 + epoch)
    assert sum(full, []) == torch.randperm(n, generator=g).tolist()  # independent order

    first = _loader(n, bs)
    first.sampler.set_epoch(epoch)
    it = iter(first)
    got = [next(it).tolist() for _ in range(seen)]
    state = first.state_dict()
    assert state == {"epoch": epoch, "batches": seen, "num_batches": 6}

    resumed = _loader(n, bs, num_workers=num_workers)  # a fresh process: epoch 0, no skip
    resumed.load_state_dict(state)
    rest = [b.tolist() for b in resumed]  # Lightning iterates before it calls set_epoch
    assert got + rest == full
    assert resumed.state_dict() == {"epoch": epoch, "batches": 6, "num_batches": 6}
    resumed.sampler.set_epoch(epoch + 1)  # the next epoch is whole again
    next_epoch = [b.tolist() for b in resumed]
    g = torch.Generator().manual_seed(3 + epoch + 1)
    assert sum(next_epoch, []) == torch.randperm(n, generator=g).tolist()


def test_resumable_loader_after_a_complete_epoch_starts_the_next() -> None:
    loader = _loader(10, 5)
    loader.sampler.set_epoch(2)
    list(loader)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 2, "num_batches": 2}
    resumed = _loader(10, 5)
    resumed.load_state_dict(state)
    g = torch.Generator().manual_seed(3 + 3)
    assert sum((b.tolist() for b in resumed), []) == torch.randperm(10, generator=g).tolist()
    with pytest.raises(ValueError, match="state of a loader with 2 batches per epoch"):
        _loader(12, 3).load_state_dict(state)
