"""Checked checkpoint loading: a missing, empty, truncated or corrupt file is named in the error.

``torch.load`` of a cut-off checkpoint ends in ``OSError: [Errno 22] Invalid argument``,
``RuntimeError: PytorchStreamReader failed ...`` or (empty file) a bare ``EOFError``, none of
which says which file was read. :func:`check_checkpoint` tells that cheaply (a checkpoint written
by ``torch.save`` is a zip archive whose directory sits at its end, so a truncated one has no
readable directory) and :func:`load_checkpoint` wraps ``torch.load`` with the same message.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "model.ckpt"
    >>> torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, path)
    >>> load_checkpoint(path)["epoch"]
    3
    >>> _ = path.write_bytes(path.read_bytes()[:100])
    >>> load_checkpoint(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fairvlm_lightning.checkpoints.CheckpointError: checkpoint .../model.ckpt (100 bytes) is trunc...
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "check_checkpoint", "load_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (empty, truncated, corrupt or not a checkpoint)."""


def _describe(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return f"checkpoint {path}"
    return f"checkpoint {path} ({size:,} bytes)"


def check_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Raise unless ``path`` is a complete ``torch.save`` archive; return it as a ``Path``.

    Reads only the archive's directory (at the end of the file), so it is cheap for large
    checkpoints; it does not unpickle anything.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is empty, truncated or not a ``torch.save`` archive.

    Example:
        >>> import tempfile
        >>> empty = Path(tempfile.mkdtemp()) / "last.ckpt"
        >>> _ = empty.write_bytes(b"")
        >>> check_checkpoint(empty)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fairvlm_lightning.checkpoints.CheckpointError: checkpoint .../last.ckpt (0 bytes) is em...
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    what = _describe(path)
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{what} is empty (a write that never happened or was cut off); use another "
            "checkpoint, e.g. the run's last.ckpt or an earlier epoch's file"
        )
    with path.open("rb") as f:
        if f.read(1) == b"\x80":  # torch's legacy (pre-1.6) format, a bare pickle stream
            return path  # not checkable without reading it all: load_checkpoint names it
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(
            f"{what} is truncated or corrupt: it is not a complete torch.save archive "
            f"({type(err).__name__}: {err}); the write was probably cut off (disk full, process "
            "killed, incomplete copy). Use another checkpoint, e.g. an earlier epoch's file"
        ) from err
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise CheckpointError(f"{what} is a zip archive but not a torch.save checkpoint")
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    map_location: Any = "cpu",
    weights_only: bool = True,
) -> dict[str, Any]:
    """``torch.load`` a checkpoint, naming the file when it is missing, truncated or corrupt.

    Args:
        path: the checkpoint file.
        map_location: as for ``torch.load`` (default ``"cpu"``).
        weights_only: as for ``torch.load`` (default ``True``: tensors and plain containers).

    Returns:
        The loaded dictionary.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is empty, truncated, corrupt or does not hold a dict.
    """
    path = check_checkpoint(path)
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise  # a readable file holding objects that weights_only refuses: torch's message
        raise CheckpointError(
            f"{_describe(path)} is truncated or corrupt: torch.load failed "
            f"({type(err).__name__}: {err}). Use another checkpoint, e.g. an earlier epoch's file"
        ) from err
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{_describe(path)} is truncated or corrupt: torch.load failed "
            f"({type(err).__name__}: {err}). Use another checkpoint, e.g. an earlier epoch's file"
        ) from err
    if not isinstance(loaded, dict):
        raise CheckpointError(
            f"{_describe(path)} holds a {type(loaded).__name__}, not a checkpoint dictionary"
        )
    return loaded
