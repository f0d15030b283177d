"""fairvlm_lightning.atomic: all-or-nothing files and folders, the lock, the completion marker.

Crashes are real: a child process is SIGKILLed while it is inside a write (it signals the test
from the injected point, then waits to be killed). Concurrency is real: several processes write
one file while another reads it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fairvlm_lightning.atomic import (
    EXPORT_TAG,
    MARKER,
    FileLock,
    IncompleteFolderError,
    InUseError,
    atomic_folder,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_complete,
    check_export_folder,
    file_identity,
)

REPO = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name != "posix", reason="SIGKILL / fork semantics")


def _spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"child never reached {path.name}")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------
def test_write_helpers_round_trip(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "b", b"\x00\x01")
    atomic_write_text(tmp_path / "t", "é")
    atomic_write_json(tmp_path / "j.json", {"x": float("nan"), "a": [1]})
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t").read_bytes() == "é".encode()
    assert json.loads((tmp_path / "j.json").read_text())["a"] == [1]
    assert _siblings(tmp_path) == ["b", "j.json", "t"]  # no temp file left behind
    import hashlib

    ident = file_identity(tmp_path / "t")
    assert ident == {"size": 2, "sha256": hashlib.sha256("é".encode()).hexdigest()}


def test_failed_write_keeps_old_content_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new" * 1000)
    assert target.read_text() == "old"
    assert _siblings(tmp_path) == ["result.json"]


def test_temp_names_are_unique_and_beside_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(os.fspath(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    for i in range(3):
        atomic_write_text(tmp_path / "result.json", str(i))
    assert len(set(seen)) == 3
    for src in seen:
        assert Path(src).parent == tmp_path and Path(src).name.startswith(".result.json.")
        assert Path(src).name != "result.json.tmp"  # the shared name two processes collided on


@posix_only
def test_killed_mid_write_leaves_old_file(tmp_path: Path) -> None:
    target, ready = tmp_path / "result.json", tmp_path / "ready"
    target.write_text("old")
    proc = _spawn(
        """
        import os, sys, time
        from pathlib import Path
        from fairvlm_lightning import atomic
        def stall(fd):  # the data is written, the rename has not happened: wait to be killed
            Path(sys.argv[2]).touch()
            time.sleep(60)
        os.fsync = stall
        atomic.atomic_write_text(sys.argv[1], "new" * 100000)
        """,
        str(target),
        str(ready),
    )
    _wait_for(ready, proc)
    _kill(proc)
    assert target.read_text() == "old"
    leftovers = [n for n in _siblings(tmp_path) if n not in ("result.json", "ready")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".result.json.")  # ignored by readers
    atomic_write_text(target, "next")
    assert target.read_text() == "next"


@posix_only
def test_concurrent_writers_never_tear_a_file(tmp_path: Path) -> None:
    """4 processes rewrite one JSON file 40 times each while this process reads it."""
    target = tmp_path / "shared.json"
    atomic_write_json(target, {"writer": -1, "pad": ""})
    writers = [
        _spawn(
            """
            import sys
            from fairvlm_lightning.atomic import atomic_write_json
            w = int(sys.argv[2])
            for i in range(40):
                atomic_write_json(sys.argv[1], {"writer": w, "i": i, "pad": str(w) * 200000})
            """,
            str(target),
            str(w),
        )
        for w in range(4)
    ]
    reads = 0
    while any(p.poll() is None for p in writers):
        data = json.loads(target.read_text())  # a torn file would not parse
        assert data["pad"] == (str(data["writer"]) * 200000 if data["writer"] >= 0 else "")
        reads += 1
    assert [p.wait() for p in writers] == [0, 0, 0, 0]
    assert reads > 0
    assert json.loads(target.read_text())["i"] == 39
    assert _siblings(tmp_path) == ["shared.json"]


# ------------------------------------------------------------------------------------------------
# lock
# ------------------------------------------------------------------------------------------------
@posix_only
def test_lock_names_the_holder_waits_and_dies_with_it(tmp_path: Path) -> None:
    lock, ready = tmp_path / ".lock", tmp_path / "ready"
    proc = _spawn(
        """
        import sys, time
        from pathlib import Path
        from fairvlm_lightning.atomic import FileLock
        with FileLock(sys.argv[1]):
            Path(sys.argv[2]).touch()
            time.sleep(float(sys.argv[3]))
        """,
        str(lock),
        str(ready),
        "60",
    )
    _wait_for(ready, proc)
    with pytest.raises(InUseError, match=rf"results is in use by pid {proc.pid} \(lock file"):
        FileLock(lock, what="results").acquire()
    _kill(proc)  # the OS drops the lock of a killed holder: no stale lock
    with FileLock(lock):
        assert lock.read_text().strip() == str(os.getpid())
    assert lock.read_text() == ""

    ready.unlink()
    proc = _spawn(
        """
        import sys, time
        from pathlib import Path
        from fairvlm_lightning.atomic import FileLock
        with FileLock(sys.argv[1]):
            Path(sys.argv[2]).touch()
            time.sleep(1.0)
            Path(sys.argv[3]).touch()  # about to release
        """,
        str(lock),
        str(ready),
        str(tmp_path / "leaving"),
    )
    _wait_for(ready, proc)
    start = time.monotonic()
    with FileLock(lock, timeout=30):  # waits for the holder to release it
        assert (tmp_path / "leaving").exists()
    assert time.monotonic() - start < 30
    proc.wait(timeout=30)


def test_lock_is_exclusive_within_a_process_too(tmp_path: Path) -> None:
    with FileLock(tmp_path / ".lock"):
        with pytest.raises(InUseError, match=f"in use by pid {os.getpid()}"):
            FileLock(tmp_path / ".lock").acquire()
    with FileLock(tmp_path / ".lock"):  # released
        pass


# ------------------------------------------------------------------------------------------------
# folders and the marker
# ------------------------------------------------------------------------------------------------
def test_folder_is_swapped_in_whole(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with atomic_folder(out, info={"writer": "test"}) as tmp:
        assert tmp.parent == tmp_path and not out.exists()
        (tmp / "adapter_config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"1234")
    marker = json.loads((out / MARKER).read_text())
    assert marker == {"files": {"adapter_config.json": 2, "sub/w.bin": 4}, "writer": "test"}
    assert check_complete(out)["writer"] == "test"
    with pytest.raises(FileExistsError, match="not an empty folder"):
        with atomic_folder(out):
            pass
    with atomic_folder(out, overwrite=True) as tmp:  # no adapter this time
        (tmp / "model.safetensors").write_bytes(b"xy")
    assert _siblings(out) == [MARKER, "model.safetensors"]  # the stale adapter is gone
    assert _siblings(tmp_path) == [".model.lock", "model"]


def test_error_in_block_leaves_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError, match="tokenizer failed"):
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "a").write_text("new")
            raise RuntimeError("tokenizer failed")
    assert (out / "a").read_text() == "old" and check_complete(out)
    assert _siblings(tmp_path) == [".model.lock", "model"]


def test_marker_checks(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "a").write_text("abc")
        (tmp / "b").write_text("d")
    (out / "a").write_text("ab")
    with pytest.raises(IncompleteFolderError, match="a has 2 bytes"):
        check_complete(out)
    (out / "b").unlink()
    (out / "a").write_text("abc")
    with pytest.raises(IncompleteFolderError, match="b .listed in .complete.json. is missing"):
        check_complete(out)
    (out / MARKER).write_text("{not json")
    with pytest.raises(IncompleteFolderError, match="unreadable"):
        check_complete(out)


def test_check_export_folder(tmp_path: Path) -> None:
    plain = tmp_path / "plain"  # any Hugging Face folder: not ours, not checked
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    (plain / "README.md").write_text("---\ntags: [clip]\n---\n# a model\n")
    check_export_folder(plain)
    check_export_folder(tmp_path / "absent")

    half = tmp_path / "half"  # an export's card but no marker
    half.mkdir()
    (half / "config.json").write_text("{}")
    (half / "README.md").write_text(
        f"---\nlibrary_name: transformers\ntags: [clip, {EXPORT_TAG}]\n---\n"
    )
    with pytest.raises(IncompleteFolderError, match="no completion marker"):
        check_export_folder(half)

    tmp_named = tmp_path / ".model.tmp-abc123"  # an interrupted export's temporary folder
    tmp_named.mkdir()
    (tmp_named / "model.safetensors").write_bytes(b"x")
    with pytest.raises(IncompleteFolderError, match="temporary export folder"):
        check_export_folder(tmp_named)

    done = tmp_path / "done"
    with atomic_folder(done) as tmp:
        (tmp / "README.md").write_text((half / "README.md").read_text())
    check_export_folder(done)
    (done / "README.md").unlink()
    with pytest.raises(IncompleteFolderError, match="README.md .listed"):
        check_export_folder(done)


_FOLDER_CHILD = """
import os, sys, time
from pathlib import Path
from fairvlm_lightning import atomic
out, ready, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
real_replace = os.replace
def stall():
    ready.touch()
    time.sleep(60)
def replace(src, dst):  # between the two renames of the swap
    real_replace(src, dst)
    if where == "swap" and ".old-" in os.fspath(dst):
        stall()
os.replace = replace
with atomic.atomic_folder(out, overwrite=True) as tmp:
    (tmp / "model.safetensors").write_bytes(b"new weights")
    if where == "fill":  # the weights are there, the tokenizer is not
        stall()
    (tmp / "tokenizer.json").write_text("new tokenizer")
"""


@posix_only
@pytest.mark.parametrize("where", ["fill", "swap"])
def test_killed_export_is_old_absent_or_complete(tmp_path: Path, where: str) -> None:
    out, ready = tmp_path / "model", tmp_path / "ready"
    with atomic_folder(out) as tmp:
        (tmp / "model.safetensors").write_bytes(b"old weights")
        (tmp / "tokenizer.json").write_text("old tokenizer")
    proc = _spawn(_FOLDER_CHILD, str(out), str(ready), where)
    _wait_for(ready, proc)
    _kill(proc)
    if where == "fill":  # the target was never touched
        assert (out / "model.safetensors").read_bytes() == b"old weights"
        assert check_complete(out)
    else:  # killed between the renames: no target, never a half one
        assert not out.exists()
    # the next writer (under the lock) finishes or discards the killed one's work
    with pytest.raises(FileExistsError):
        with atomic_folder(out):
            pass
    expected = b"old weights" if where == "fill" else b"new weights"
    assert (out / "model.safetensors").read_bytes() == expected
    check_complete(out)
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "x").write_text("x")
    assert _siblings(tmp_path) == [".model.lock", "model", "ready"]


@posix_only
def test_second_writer_of_a_folder_is_refused(tmp_path: Path) -> None:
    out, ready = tmp_path / "model", tmp_path / "ready"
    proc = _spawn(
        """
        import sys, time
        from pathlib import Path
        from fairvlm_lightning.atomic import atomic_folder
        with atomic_folder(sys.argv[1]) as tmp:
            Path(sys.argv[2]).touch()
            time.sleep(60)
        """,
        str(out),
        str(ready),
    )
    _wait_for(ready, proc)
    try:
        with pytest.raises(InUseError, match=rf"model is in use by pid {proc.pid}"):
            with atomic_folder(out, overwrite=True):
                pass
    finally:
        _kill(proc)
