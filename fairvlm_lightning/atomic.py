"""All-or-nothing writes: files, whole folders, and a lock per target.

Readers of this package's outputs (exports, benchmark reports, caches) must never see a
half-written file or folder, and two processes must never write one target at once:

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json` write into
  a uniquely named temporary file beside the target (``tempfile`` in the same folder), flush
  and ``fsync`` it, then ``os.replace`` it over the target: a reader sees the old content or
  the new one, and concurrent writers never share a temporary name.
* :func:`atomic_folder` yields a temporary sibling folder to fill; when the ``with`` block ends
  without an error it writes a completion marker (:data:`MARKER`, a JSON list of the files and
  their sizes) last, then swaps the folder in by ``rename``; the old folder is removed only
  after the new one is complete. An error (or a kill) leaves the target as it was.
* :class:`FileLock` is an exclusive ``flock``/``msvcrt`` lock on a lock file; a second holder
  gets :class:`InUseError` naming the pid that holds it (or waits up to ``timeout``). The
  operating system drops the lock when the holder dies, so a crash never leaves a stale lock.
* :func:`check_complete` / :func:`check_export_folder` refuse folders that a writer of this
  package left incomplete.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> with atomic_folder(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("hello")
    >>> sorted(p.name for p in (root / "out").iterdir())
    ['.complete.json', 'a.txt']
    >>> check_complete(root / "out")["files"]
    {'a.txt': 5}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "EXPORT_TAG",
    "MARKER",
    "FileLock",
    "InUseError",
    "IncompleteFolderError",
    "atomic_folder",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_complete",
    "check_export_folder",
    "file_identity",
]

#: Name of the completion marker :func:`atomic_folder` writes last into a folder.
MARKER = ".complete.json"
#: The tag in the front matter of a ``fairvlm export`` model card (the trace of an export).
EXPORT_TAG = "fairvlm-lightning"

_TMP_INFIX = ".tmp-"
_OLD_INFIX = ".old-"


class InUseError(RuntimeError):
    """The target is locked by another process (the message names its pid and the lock)."""


class IncompleteFolderError(OSError):
    """A folder lacks its completion marker or a file the marker lists."""


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` all or nothing (unique temp file beside it, then ``os.replace``).

    Args:
        path: the target file; its folder must exist.
        data: the whole content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> p = atomic_write_bytes(Path(tempfile.mkdtemp()) / "x.bin", b"abc")
        >>> p.read_bytes()
        b'abc'
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded with ``encoding``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> atomic_write_text(Path(tempfile.mkdtemp()) / "x.txt", "hi").read_text()
        'hi'
    """
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """:func:`atomic_write_text` of ``data`` as indented, key-sorted JSON (NaN allowed).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> p = atomic_write_json(Path(tempfile.mkdtemp()) / "x.json", {"b": 1, "a": 2})
        >>> json.loads(p.read_text())
        {'a': 2, 'b': 1}
    """
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n"
    return atomic_write_text(path, text)


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file: what identifies its content.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> p = Path(tempfile.mkdtemp()) / "x"
        >>> _ = p.write_bytes(b"abc")
        >>> file_identity(p)["size"], file_identity(p)["sha256"][:8]
        (3, 'ba7816bf')
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


# ------------------------------------------------------------------------------------------------
# locks
# ------------------------------------------------------------------------------------------------
def _try_lock(fh: IO[str]) -> bool:
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(fh: IO[str]) -> None:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class FileLock:
    """An exclusive inter-process lock held on ``path`` (a lock file, created when missing).

    The holder writes its pid into the file, so a refused process can say who holds it. The
    lock belongs to the open file: the operating system releases it when the holder exits or
    is killed. The lock file itself stays (removing it would let two processes lock two
    different files of the same name).

    Args:
        path: the lock file.
        what: what the lock protects, for the error message (default: the lock file's folder).
        timeout: seconds to wait for a held lock before failing (0: fail at once).

    Raises:
        InUseError: (on entry) another process holds the lock after ``timeout`` seconds.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> lock = Path(tempfile.mkdtemp()) / ".lock"
        >>> with FileLock(lock):
        ...     try:
        ...         FileLock(lock).acquire()
        ...     except InUseError as err:
        ...         print("in use by pid" in str(err))
        True
    """

    def __init__(
        self, path: str | os.PathLike[str], *, what: str | None = None, timeout: float = 0.0
    ) -> None:
        self.path = Path(path)
        self.what = what or str(self.path.parent)
        self.timeout = float(timeout)
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock (waiting up to ``timeout`` seconds), or raise :class:`InUseError`."""
        if self._fh is not None:
            raise RuntimeError(f"{self.path} is already locked by this FileLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        deadline = time.monotonic() + self.timeout
        while not _try_lock(fh):
            if time.monotonic() >= deadline:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                fh.close()
                raise InUseError(
                    f"{self.what} is in use by pid {holder} (lock file {self.path}); wait for "
                    "that process to finish, or use another folder"
                )
            time.sleep(0.1)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        """Drop the lock (nothing happens when it is not held)."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            _unlock(fh)
        finally:
            fh.close()

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------------------------
# folders
# ------------------------------------------------------------------------------------------------
def _listing(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _recover(out: Path) -> None:
    """Finish the swap of a writer killed between its two renames (``out`` is then absent)."""
    if out.exists() or out.is_symlink():
        return
    for tmp in sorted(out.parent.glob(f".{out.name}{_TMP_INFIX}*")):
        try:
            check_complete(tmp)
        except IncompleteFolderError:
            continue
        os.replace(tmp, out)
        return


@contextlib.contextmanager
def atomic_folder(
    target: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    info: dict[str, Any] | None = None,
    lock_timeout: float = 0.0,
) -> Iterator[Path]:
    """Fill a temporary sibling of ``target``, then swap it in whole.

    Under a :class:`FileLock` on ``.<name>.lock`` beside ``target``: leftovers of killed
    earlier writers (``.<name>.tmp-*``, ``.<name>.old-*``) are removed, a fresh
    ``.<name>.tmp-*`` folder is yielded (a complete one of a writer killed between its two
    renames is first swapped in, finishing that write); after the block, :data:`MARKER` is
    written last (``{"files": {relative path: size}, **info}``), the old ``target`` (if any)
    is renamed aside, the new folder renamed to ``target``, and only then the old one
    deleted. If the block raises, the temporary folder is deleted and ``target`` is
    untouched. A kill at any moment leaves ``target`` old, absent (between the two renames;
    the next writer finishes that swap) or complete, never half.

    Args:
        target: the folder to produce.
        overwrite: replace an existing non-empty ``target`` (else :class:`FileExistsError`).
        info: more JSON fields for the marker (who wrote the folder, from what).
        lock_timeout: seconds to wait for another writer of ``target`` (0: fail at once).

    Yields:
        The temporary folder to write into.

    Raises:
        FileExistsError: ``target`` is a non-empty folder (or a file) and not ``overwrite``.
        InUseError: another process is writing ``target``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> out = Path(tempfile.mkdtemp()) / "model"
        >>> with atomic_folder(out) as tmp:
        ...     _ = (tmp / "weights.bin").write_bytes(b"123")
        >>> check_complete(out)["files"]
        {'weights.bin': 3}
    """
    out = Path(os.path.abspath(target))  # "." or "dir/" still have a name and a parent
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)

    def occupied() -> bool:
        return out.exists() and (not out.is_dir() or any(out.iterdir()))

    if occupied() and not overwrite:
        raise FileExistsError(f"{out} exists and is not an empty folder; pass overwrite=True")
    with FileLock(parent / f".{out.name}.lock", what=str(out), timeout=lock_timeout):
        if occupied() and not overwrite:  # written meanwhile by another process
            raise FileExistsError(f"{out} exists and is not an empty folder; pass overwrite=True")
        _recover(out)
        if occupied() and not overwrite:  # a killed writer's complete folder, swapped in now
            raise FileExistsError(f"{out} exists and is not an empty folder; pass overwrite=True")
        for stale in [
            *parent.glob(f".{out.name}{_TMP_INFIX}*"),
            *parent.glob(f".{out.name}{_OLD_INFIX}*"),
        ]:
            _remove(stale)  # a killed writer's: we hold the lock, so no live writer owns it
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}{_TMP_INFIX}"))
        old: Path | None = None
        try:
            yield tmp
            marker = {"files": _listing(tmp), **(info or {})}
            atomic_write_json(tmp / MARKER, marker)
            _fsync_dir(tmp)
            if out.exists() or out.is_symlink():
                old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}{_OLD_INFIX}"))
                old.rmdir()
                os.replace(out, old)
            os.replace(tmp, out)
            _fsync_dir(parent)
        except BaseException:
            if old is not None and not out.exists():
                os.replace(old, out)  # the swap failed half-way: put the old folder back
                old = None
            _remove(tmp)
            raise
        if old is not None:
            _remove(old)


def check_complete(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The marker of a folder written by :func:`atomic_folder`, after checking it.

    Args:
        folder: the folder.

    Returns:
        The marker's content (``files`` and the writer's ``info`` fields).

    Raises:
        IncompleteFolderError: no (readable) marker, or a listed file is missing or has
            another size.

    Example:
        >>> import tempfile
        >>> try:
        ...     check_complete(tempfile.mkdtemp())
        ... except IncompleteFolderError as err:
        ...     print("no completion marker" in str(err))
        True
    """
    path = Path(folder)
    marker = path / MARKER
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IncompleteFolderError(f"{path} has no completion marker {MARKER}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise IncompleteFolderError(f"{marker} is unreadable ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise IncompleteFolderError(f"{marker} has no 'files' listing")
    for name, size in record["files"].items():
        file = path / name
        if not file.is_file():
            raise IncompleteFolderError(
                f"{path} is incomplete: {name} (listed in {MARKER}) is missing"
            )
        if file.stat().st_size != size:
            raise IncompleteFolderError(
                f"{path} is incomplete: {name} has {file.stat().st_size} bytes, {MARKER} "
                f"records {size}"
            )
    return record


def _export_traces(path: Path) -> list[str]:
    traces = []
    if path.name.startswith(".") and (_TMP_INFIX in path.name or _OLD_INFIX in path.name):
        traces.append(f"its name {path.name!r} is that of a temporary export folder")
    readme = path / "README.md"
    if readme.is_file():
        head = readme.read_text(encoding="utf-8", errors="replace")[:2000]
        if head.startswith("---") and EXPORT_TAG in head.split("\n---", 1)[0]:
            traces.append(f"its README.md is a `fairvlm export` model card (tag {EXPORT_TAG})")
    return traces


def check_export_folder(folder: str | os.PathLike[str]) -> None:
    """Refuse a local folder that ``fairvlm export`` left incomplete.

    A folder with traces of an export (a model card tagged :data:`EXPORT_TAG`, or the name of
    an export's temporary folder) must carry a valid completion marker
    (:func:`check_complete`); any other folder (a plain Hugging Face model) passes unchecked.

    Args:
        folder: the folder about to be loaded.

    Raises:
        IncompleteFolderError: an export's folder without (a valid) completion marker.

    Example:
        >>> import tempfile
        >>> check_export_folder(tempfile.mkdtemp())  # no export traces: nothing to check
    """
    path = Path(folder)
    if not path.is_dir():
        return
    if (path / MARKER).exists():
        check_complete(path)
        return
    traces = _export_traces(path)
    if traces:
        raise IncompleteFolderError(
            f"{path} looks like a `fairvlm export` folder ({'; '.join(traces)}) but has no "
            f"completion marker {MARKER}: the export may have been interrupted (or written by a "
            "version without markers). Export the checkpoint again (fairvlm export --ckpt_path "
            "CKPT --out DIR --overwrite)."
        )
