"""Atomic file and folder writes: an interrupted run never leaves a half-written file where a good one was.

Everything bllama writes for later runs to read (GGUF files, checkpoints, tokenizers, token files, plots,
Hugging Face folders) goes through here. Torch-free on purpose: the engine-only paths use it too.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, os.PathLike]


def _fsync_dir(d: Path) -> None:
    """Makes a rename in `d` durable; some filesystems (and Windows) cannot open a folder, which is fine."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(p: Path) -> None:
    with open(p, "rb+") as fh:
        os.fsync(fh.fileno())


def remove_path(p: Path) -> None:
    """Removes a file, a link or a folder with everything in it; nothing when `p` does not exist."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yields a fresh temporary path beside `target` (same folder, so the rename stays on one filesystem) for
    the caller to write. On a clean exit the file is fsynced and renamed over `target`, and the folder fsynced;
    on any exception the temporary file is removed and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_write(target: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """atomic_path for callers that write through a file object: yields the temporary file open in `mode`."""
    with atomic_path(target) as tmp:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh


def replace_dir(src: PathLike, dst: PathLike) -> None:
    """Moves the finished folder `src` to `dst`. An existing `dst` is first renamed to `.NAME.old` beside it and
    removed after the swap, so a crash between the two renames leaves the previous folder as `.NAME.old`."""
    src, dst = Path(src), Path(dst)
    old = dst.with_name(f".{dst.name}.old")
    remove_path(old)
    if dst.exists() or dst.is_symlink():
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    remove_path(old)


@contextmanager
def atomic_dir(target: PathLike) -> Iterator[Path]:
    """Yields a fresh temporary folder beside `target` to fill; on a clean exit it replaces `target`
    (replace_dir), on any exception it is removed with everything in it and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        remove_path(tmp)
