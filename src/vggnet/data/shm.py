"""Shared memory for the DataLoader's worker processes: a check at start-up, before a worker dies of it.

Each worker process hands its batches to the main process through shared memory (files under ``/dev/shm`` on
Linux), holding up to ``prefetch_factor`` batches ahead. Containers often mount a small ``/dev/shm`` (Docker's
default is 64 MB): a worker that outgrows it dies of a bus error minutes into the run, with a message that
names neither the cause nor the fix. :func:`check_shared_memory` estimates the need up front and refuses to
start with one line that names the size and the fix.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

SHM = "/dev/shm"


class SharedMemoryError(ValueError):
    """The data loader's workers would need more shared memory than the machine has free."""


def batches_in_flight(workers: int, prefetch_factor: int) -> int:
    """Batches that can sit in shared memory at once: each worker's prefetch, plus the one being consumed and
    the one the pinning thread holds."""
    return workers * prefetch_factor + 2


def mean_file_bytes(paths: Sequence[str], n: int = 64) -> float:
    """The mean size of (up to ``n`` evenly spaced) files; 0 when none can be read."""
    step = max(1, len(paths) // n)
    sizes = []
    for p in list(paths)[::step][:n]:
        try:
            sizes.append(os.path.getsize(p))
        except OSError:
            pass
    return sum(sizes) / len(sizes) if sizes else 0.0


def check_shared_memory(need: float, what: str, folder: str = SHM) -> None:
    """Raise :class:`SharedMemoryError` when ``need`` bytes exceed the free space of ``folder``; nothing when
    the folder does not exist (not Linux) or cannot be read."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return
    if need > usage.free:
        gib = 2**30
        raise SharedMemoryError(
            f"{what} would keep about {need / gib:.2f} GiB of batches in shared memory, but {folder} has "
            f"{usage.free / gib:.2f} GiB free ({usage.total / gib:.2f} GiB in all): lower --workers or --batch-size, "
            f"or enlarge {folder} (docker run --shm-size=16g; Kubernetes: an emptyDir of medium Memory)"
        )
