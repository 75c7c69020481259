"""Files written so that nothing is lost: every write of a run folder, a weights file or a cache goes through
:func:`atomic_write`, so a reader (or a resumed run after a kill) sees the old file or the new one, never half.

The temporary file is hidden (``.NAME.XXXX.tmp``) beside its target, on the same file system, so the rename is
atomic; a kill between the two leaves only that hidden file, which a resumed run deletes.

Outputs never clobber: :func:`atomic_write` writes only onto a regular file or a free name (never a device, a
FIFO, a socket or a folder, which a rename would replace); :func:`check_output` adds a command's rules for a
user-named output (not a file it reads, not a run's own file, an existing file only with ``--force``); and
:class:`RunLock` keeps a run folder to one writer at a time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

LOCK_FILE = ".lock"  # in a run folder: held (fcntl) by the process writing the run
# The files that mark a folder as a run (vggnet.runs.CONFIG_FILE, MODEL_FILE): another command never replaces them
_RUN_MARKERS = ("config.toml", "model.safetensors")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def writable_target(path: str | os.PathLike) -> Path:
    """The regular file a write of ``path`` replaces (a symlink's target), or raise: vggnet writes only regular
    files, through a rename that would replace a device, a FIFO or a folder by a file."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))  # write through the link: the link stays, its file is replaced
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(
            f"{path} is {_kind(st.st_mode)}: vggnet writes only regular files and will not replace "
            f"it; name a file path instead"
        )
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers see the old file or the new one, never half.

    ``path`` must be a regular file or a free name (a symlink writes its target); a device, FIFO, socket or
    folder is refused with a ValueError. A new file gets the usual permissions (0666 less the umask), a
    replaced one keeps its own.
    """
    path = writable_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _mode_for(path: Path) -> int:
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def run_folder_of(path: str | os.PathLike) -> Path | None:
    """The run folder ``path`` lies in (itself or up to two folders up: RUN/eval/x.md), or None."""
    p = Path(os.path.abspath(path))
    for folder in [p.parent, *list(p.parent.parents)[:2]]:
        if all((folder / name).is_file() for name in _RUN_MARKERS):
            return folder
    return None


def check_output(
    out: str | os.PathLike, force: bool = False, reads: Iterable[str | os.PathLike | None] = (), flag: str = "--out"
) -> Path:
    """Refuse an output path that would clobber something; return it.

    Refused: a device, FIFO, socket or folder (always); a file the command reads (``reads``); an existing
    file of a run folder (another command's output: a run's weights, config, statistics); any other existing
    file unless ``force``.
    """
    out = Path(out)
    target = writable_target(out)
    if not target.exists():
        return out
    for src in reads:
        if src is not None and Path(src).exists() and os.path.samefile(src, target):
            raise ValueError(f"{flag} {out} is the file this command reads ({src}); write to another file")
    run = run_folder_of(target)
    if run is not None:
        raise ValueError(
            f"{flag} {out} is a file of the run {run}, which only `vgg train` writes; write to a new file name"
        )
    if not force:
        raise FileExistsError(f"{flag} {out} exists; pass --force to replace it, or name another file")
    return out


def overlapping(a: str | os.PathLike, b: str | os.PathLike) -> str | None:
    """How folder ``a`` overlaps folder ``b`` ("is", "lies inside", "contains"), or None when apart."""
    ra, rb = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    if ra == rb:
        return "is"
    if rb in ra.parents:
        return "lies inside"
    if ra in rb.parents:
        return "contains"
    return None


class RunInUse(FileExistsError):
    """Another process holds the run folder's lock; the message names it."""


class RunLock:
    """One writer per run folder: an exclusive ``fcntl.flock`` on ``RUN/.lock``, holding the writer's pid.

    The kernel drops the lock when the process ends however it ends (a SIGKILL included), so a lock is never
    stale; a second writer is refused at once with the holder's pid. Use as a context manager or
    :meth:`release`.
    """

    def __init__(self, run: str | os.PathLike, command: str = "vgg train") -> None:
        self.run = Path(run)
        self.path = self.run / LOCK_FILE
        self.fd: int | None = None
        self.run.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunInUse(self.refusal()) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
        self.fd = fd

    def refusal(self) -> str:
        who = holder(self.run) or "another process"
        return (
            f"{self.run} is being written by {who}: one writer per run folder; wait for it to finish (or "
            f"stop it: it saves a checkpoint), or pass another --out"
        )

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    def __del__(self) -> None:  # a lock held by a local variable goes with it
        self.release()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(run: str | os.PathLike) -> str | None:
    """ "process PID (COMMAND)" when a process holds ``run``'s lock, else None."""
    path = Path(run) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = path.read_text(errors="replace").split(maxsplit=1)
            pid = text[0] if text else "?"
            return f"process {pid}" + (f" ({text[1].strip()})" if len(text) > 1 else "")
        return None
    finally:
        os.close(fd)  # a shared lock taken just to look is dropped here


__all__ = [
    "LOCK_FILE",
    "RunInUse",
    "RunLock",
    "atomic_write",
    "atomic_write_text",
    "check_output",
    "holder",
    "overlapping",
    "run_folder_of",
    "writable_target",
]
