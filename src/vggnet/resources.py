"""What a command may use of the machine: CPU cores and memory, so that no option asked for can start a thousand
processes or a batch that brings on the kernel's OOM killer.

- :func:`cap_workers`: loader workers, whatever ``--workers`` asks, capped by the cores and the available memory
  (with a one-line note);
- :func:`die_with_parent`: a loader worker (which ignores Ctrl-C and SIGTERM, left to the main process) is
  killed by the kernel when its parent dies;
- :func:`fit_eval_batch`: evaluation's largest view batch estimated before it runs: shrunk to fit, or refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Sequence

import torch
from torch import nn

# What a loader worker costs in memory, at least: a Python process with torch imported, its prefetched batches.
WORKER_BYTES = 512 * 2**20
PR_SET_PDEATHSIG = 1
_CAPPED: set[int] = set()  # the --workers values already capped with a note (said once a process)


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``): a
    loader worker never outlives a training process killed by the OOM killer or SIGKILL. True when set."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request: go now
        os._exit(1)
    return True


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a Slurm or container share), else all."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 2


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Free memory in bytes: the GPU's on CUDA, else MemAvailable of /proc/meminfo (Linux); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        with contextlib.suppress(RuntimeError, AssertionError):
            return int(torch.cuda.mem_get_info(device)[0])
        return None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def cap_workers(asked: int, say: bool = True) -> int:
    """``asked`` loader workers, at most 2 per usable core and as many as the available memory holds (about
    512 MiB each): a thousand workers would start a thousand processes and bring on the OOM killer."""
    cores, memory = usable_cores(), available_memory()
    cap = 2 * cores
    if memory is not None:
        cap = min(cap, max(1, memory // WORKER_BYTES))
    if asked <= cap:
        return asked
    if say and asked not in _CAPPED:
        _CAPPED.add(asked)
        room = f", {memory / 2**30:.1f} GiB available" if memory is not None else ""
        print(f"--workers {asked}: using {cap} ({cores} usable cores{room})", flush=True)
    return cap


# Evaluation keeps a chunk of at least this many decoded images on the device (vggnet.evaluation.driver.stream),
# each rescaled to a test scale; an image is taken as 4:3 (a wider one is rarer than the margin below covers).
EVAL_CHUNK = 64
ASPECT = 4 / 3
HEADROOM = 0.7  # the share of the free memory an evaluation may plan to use


def activation_bytes(model: nn.Module, height: int, width: int) -> int:
    """Bytes of the largest activations of one view of ``height`` x ``width`` pixels, float32: a conv's input
    and output feature maps, alive together."""
    peak, channels, pixels = 0.0, 3, float(height * width)
    for m in getattr(model, "features", []):
        if isinstance(m, nn.Conv2d):
            peak = max(peak, (channels + m.out_channels) * pixels)
            channels = m.out_channels
        elif isinstance(m, nn.MaxPool2d):
            pixels /= 4
    return int(peak * 4)


def fit_eval_batch(
    models: Sequence[nn.Module], plans: Sequence[dict[str, list[int]]], batch_size: int, device: torch.device | str
) -> int:
    """The views per forward pass (at most ``batch_size``) whose largest batch fits in the free memory of
    ``device``: a chunk of decoded images rescaled to the largest Q, and a batch of dense views at the largest
    dense Q (or of crops). Smaller, with a note, when ``batch_size`` would not fit; a ValueError naming --scales
    when even one view does not. Unknown free memory: ``batch_size`` as asked."""
    free = available_memory(device)
    if free is None:
        return batch_size
    q = max(s for plan in plans for qs in plan.values() for s in qs)
    dense_q = max((s for plan in plans for p, qs in plan.items() if "dense" in p for s in qs), default=0)
    image = int(3 * q * q * ASPECT * 4)
    act = max(
        activation_bytes(m, dense_q, int(dense_q * ASPECT))
        if dense_q
        else activation_bytes(m, m.crop_size, m.crop_size)
        for m in models
    )

    def need(b: int) -> int:
        return max(EVAL_CHUNK, 4 * b) * image + b * act

    budget = int(free * HEADROOM)
    if need(1) > budget:
        raise ValueError(
            f"--scales {q}: evaluating at Q = {q} needs about {need(1) / 2**30:.1f} GiB even at one view "
            f"a batch, more than the {free / 2**30:.1f} GiB free on {device}; use smaller --scales "
            f"(the paper's go up to 512)"
        )
    fit = batch_size
    while fit > 1 and need(fit) > budget:
        fit //= 2
    if fit < batch_size:
        print(
            f"--batch-size {batch_size}: using {fit} at Q = {q} (about {need(fit) / 2**30:.1f} GiB of the "
            f"{free / 2**30:.1f} GiB free on {device})",
            file=sys.stderr,
            flush=True,
        )
    return fit


__all__ = [
    "activation_bytes",
    "available_memory",
    "cap_workers",
    "die_with_parent",
    "fit_eval_batch",
    "usable_cores",
]
