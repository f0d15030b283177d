"""Checked checkpoint loading (issue 19 item 9): every cut of a checkpoint is named as such.

``torch.load`` of a cut file fails with ``OSError: [Errno 22]``, ``RuntimeError`` from the zip
reader or a bare ``EOFError``, without the file's name. The reference is the intact file, read by
``torch.load`` itself.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from fairvlm_lightning.checkpoints import CheckpointError, check_checkpoint, load_checkpoint


def _checkpoint(path: Path) -> dict:
    state = {"state_dict": {"w": torch.arange(5000.0)}, "epoch": 3, "global_step": 12}
    torch.save(state, path)
    return state


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.5, 0.99])
def test_every_cut_is_named_as_truncated(tmp_path: Path, keep: float) -> None:
    whole = tmp_path / "whole.ckpt"
    state = _checkpoint(whole)
    loaded = load_checkpoint(whole)
    assert loaded["epoch"] == state["epoch"]
    assert torch.equal(loaded["state_dict"]["w"], torch.load(whole)["state_dict"]["w"])
    data = whole.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises((OSError, RuntimeError, EOFError, pickle.UnpicklingError)) as raw:
        torch.load(cut, weights_only=True)
    assert str(cut) not in str(raw.value)  # what the user got before: no file named
    for fn in (check_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            fn(cut)
        message = str(err.value)
        assert f"checkpoint {cut} ({cut.stat().st_size:,} bytes)" in message
        assert ("is empty" if keep == 0 else "is truncated or corrupt") in message


def test_missing_file_and_refused_objects_keep_their_own_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*absent.ckpt"):
        load_checkpoint(tmp_path / "absent.ckpt")
    odd = tmp_path / "odd.ckpt"
    torch.save({"obj": Path("x")}, odd)  # readable, but not loadable with weights_only=True
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(odd)
    assert load_checkpoint(odd, weights_only=False)["obj"] == Path("x")
    with pytest.raises(CheckpointError, match="holds a list, not a checkpoint dictionary"):
        torch.save([1, 2], odd)
        load_checkpoint(odd)


def test_legacy_format_is_not_mistaken_for_a_cut_file(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.ckpt"  # torch < 1.6's format: a pickle stream, no zip directory
    torch.save({"epoch": 1, "w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert check_checkpoint(legacy) == legacy
    assert load_checkpoint(legacy)["epoch"] == 1
