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


# Below this many free bytes a failed write is taken for a full disk whatever the writer called it: numpy's tofile
# says "50688 requested and 23872 written", torch.save "unexpected pos", SentencePiece "INTERNAL: ... WriteLine",
# none with an errno. A write that fails for lack of space fills the disk to its last block first.
NEARLY_FULL = 1 << 20


def _free_bytes(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def out_of_space(e: BaseException, folder: Path) -> bool:
    """Whether the failure `e` of a write into `folder` is a full disk (or quota): ENOSPC or EDQUOT in the exception
    or its causes, the system's text for it in a library's message, or an I/O-ish error (OSError, RuntimeError)
    while the disk is nearly full. Ctrl-C, and a ValueError about the input, stay what they are."""
    if not isinstance(e, Exception):
        return False
    seen, cur = set(), e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(cur) or "os error 28" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    if not isinstance(e, (OSError, RuntimeError)):
        return False
    free = _free_bytes(folder)
    return free is not None and free < NEARLY_FULL


def _size_of(p: Path) -> int:
    """Bytes that removing `p` (a file or a folder) gives back."""
    try:
        if p.is_dir() and not p.is_symlink():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        return p.stat().st_size
    except OSError:
        return 0


def _no_space_error(target: Path, written: int, size_hint, cause: BaseException) -> OSError:
    """The OSError(ENOSPC) a full disk raises, once the partial output (`written` bytes) is removed."""
    try:
        size_hint = size_hint() if callable(size_hint) else size_hint
    except Exception:  # noqa: BLE001 - a hint, never a second error on top of the full disk
        size_hint = None
    free = _free_bytes(target.parent) or 0
    if size_hint:
        need = f"it needs about {size_hint / 2**20:.1f} MiB, and "
    elif written >= 1 << 16:
        need = f"it needs more than the {written / 2**20:.1f} MiB written, and "
    else:  # "more than the 0.0 MiB written" said nothing
        need = ""
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return OSError(errno.ENOSPC, f"no space left on the device writing {target}: {need}{free / 2**20:.1f} MiB are "
                                 f"free there (with the partial file removed; the writer said: {detail})")


def check_writable(target: PathLike) -> None:
    """Fails at once, before hours of work, where `target` could not be written: a parent that is a file, or a
    folder this process may not write in (permissions, a read-only filesystem). Folders that do not exist yet are
    fine where the nearest existing one is writable (the writers create them)."""
    target = Path(target)
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {target}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        why = "a read-only filesystem" if _read_only(folder) else "no permission to create files there"
        raise PermissionError(errno.EACCES, f"cannot write {target}: {why} ({folder})")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _make_temp(target: Path, folder: bool = False) -> Path:
    """A fresh temporary file (or folder) beside `target`; a folder it may not write in fails naming `target`
    (it named the temporary, .NAME.PID.XXXXXXXX.tmp, which the user never asked for)."""
    try:
        if folder:
            return Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise type(e)(e.errno, f"cannot write {target}: {e.strerror}") from None
    os.close(fd)
    return Path(name)


@contextmanager
def _full_disk_named(target: Path, tmp: Path, size_hint=None) -> Iterator[None]:
    """Around a write into `tmp` (a file or folder) for `target`: a failure that is a full disk (out_of_space)
    removes `tmp` and raises _no_space_error naming `target`; any other failure goes through unchanged."""
    try:
        yield
    except Exception as e:
        if not out_of_space(e, target.parent):
            raise
        written = _size_of(tmp)
        remove_path(tmp)
        raise _no_space_error(target, written, size_hint, e) from e


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
    tmp = _make_temp(target)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with _full_disk_named(target, tmp, size_hint):
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
def atomic_dir(target: PathLike, size_hint: Optional[Union[int, Callable[[], int]]] = None) -> Iterator[Path]:
    """Yields a fresh temporary folder beside `target` to fill; on a clean exit it replaces `target`
    (replace_dir), on any exception it is removed with everything in it and `target` is left as it was. A full disk
    raises as in atomic_path (size_hint: the bytes the folder will hold, when known)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = _make_temp(target, folder=True)
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        with _full_disk_named(target, tmp, size_hint):
            yield tmp
        replace_dir(tmp, target)
    finally:
        remove_path(tmp)


@contextmanager
def atomic_files(*targets: PathLike) -> Iterator[Path]:
    """For writers that make several files of fixed names at once (SentencePiece writes PREFIX.model and
    PREFIX.vocab itself): yields a fresh temporary folder beside the targets (one folder for all) in which the
    caller writes each target under its own file name. On a clean exit each is moved over its target, in the order
    given; on any exception the folder is removed and the targets are left as they were. A full disk raises as in
    atomic_path."""
    targets = [Path(t) for t in targets]
    if len({t.parent.resolve() for t in targets}) != 1:
        raise ValueError(f"atomic_files: the targets must share one folder, got {targets}")
    for t in targets:
        if t.is_dir() and not t.is_symlink():
            raise IsADirectoryError(errno.EISDIR, f"cannot write the file {t}: it is a folder")
    first = targets[0]
    first.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(first)
    tmp = _make_temp(first, folder=True)
    try:
        with _full_disk_named(first, tmp):
            yield tmp
            for t in targets:
                _fsync_file(tmp / t.name)
        for t in targets:
            os.chmod(tmp / t.name, 0o666 & ~_umask())
            os.replace(tmp / t.name, t)
        _fsync_dir(first.parent)
    finally:
        remove_path(tmp)
