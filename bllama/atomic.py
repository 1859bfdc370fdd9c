"""Atomic file and folder writes: an interrupted run never leaves a half-written file where a good one was.

Everything bllama writes for later runs to read (GGUF files, checkpoints, tokenizers, token files, plots,
Hugging Face folders) goes through here. Torch-free on purpose: the engine-only paths use it too.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Union

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


def _umask() -> int:
    """This process's umask, read without changing it (os.umask sets it, and a file another thread created in
    between would get the wrong mode)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def remove_stale_temps(target: PathLike) -> None:
    """Removes what interrupted saves of `target` left beside it: our own temporaries for that name only
    (.NAME.PID.XXXXXXXX.tmp whose process is gone, and .NAME.XXXXXXXX.tmp from before PIDs were in the name),
    never another file. A save killed with kill -9 cannot clean up after itself; the next one does."""
    target = Path(target)
    ours = re.compile(r"\." + re.escape(target.name) + r"\.(?:(\d+)\.)?[a-z0-9_]{8}\.tmp")
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        hit = ours.fullmatch(entry.name)
        if not hit or (hit.group(1) and _alive(int(hit.group(1)))):
            continue
        try:
            remove_path(Path(entry.path))
        except OSError:
            pass  # another cleaner got there first, or it is not ours to remove after all


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be saving right now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**31  # someone else's live process (or a name no process can have)
    return True


def _no_space_message(target: Path, tmp: Path, size_hint) -> str:
    written = tmp.stat().st_size if tmp.exists() else 0
    try:
        size_hint = size_hint() if callable(size_hint) else size_hint
    except Exception:  # noqa: BLE001 - a hint, never a second error on top of the full disk
        size_hint = None
    free = shutil.disk_usage(target.parent).free
    need = f"about {size_hint / 2**20:.1f} MiB" if size_hint else f"more than the {written / 2**20:.1f} MiB written"
    return (f"no space left on the device writing {target}: it needs {need}, and "
            f"{free / 2**20:.1f} MiB are free there (with the partial file removed)")


@contextmanager
def atomic_path(target: PathLike, size_hint: Optional[Union[int, Callable[[], int]]] = None) -> Iterator[Path]:
    """Yields a fresh temporary path beside `target` (same folder, so the rename stays on one filesystem) for
    the caller to write. On a clean exit the file is fsynced and renamed over `target`, and the folder fsynced;
    on any exception the temporary file is removed and `target` is left as it was. The file gets the mode a plain
    open() would (0666 less the umask), and temporaries of earlier interrupted saves of `target` are removed.
    A full disk raises an OSError (ENOSPC) naming `target` and the space needed (size_hint bytes, when known; a
    callable is asked only then, so a writer can say once it knows)."""
    target = Path(target)
    if target.is_dir() and not target.is_symlink():  # os.replace would fail only after the whole write
        raise IsADirectoryError(errno.EISDIR, f"cannot write the file {target}: it is a folder (give a file path "
                                              f"inside it, or another name)")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            yield tmp
            _fsync_file(tmp)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            message = _no_space_message(target, tmp, size_hint)
            raise OSError(errno.ENOSPC, message) from e
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
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        replace_dir(tmp, target)
    finally:
        remove_path(tmp)
