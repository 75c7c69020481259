"""Files written so that nothing is lost: every write of a run folder, a weights file or a cache goes through
:func:`atomic_write`, so a reader (or a resumed run after a kill) sees the old file or the new one, never half.

The temporary file is hidden (``.NAME.XXXX.tmp``) beside its target, on the same file system, so the rename is
atomic; a kill between the two leaves only that hidden file, which a resumed run deletes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


__all__ = ["atomic_write", "atomic_write_text"]
