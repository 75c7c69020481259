"""Where the nets run: the process's place in a torchrun job, the device, and the precision.

One home for what training, evaluation and the reproduction all need to know about their process:

- ``rank()``, ``world_size()``, ``local_rank()``, ``is_main()``: torchrun's environment (RANK, WORLD_SIZE,
  LOCAL_RANK), read here and nowhere else; one process without torchrun is rank 0 of 1.
- ``Dist`` and ``setup_distributed``: joining the process group (NCCL on CUDA, gloo on the CPU).
- ``pick_device``: "auto" / "cpu" / "cuda" / "cuda:N" to a ``torch.device``, with a one-line error when CUDA is
  asked for and absent; under torchrun each process takes the GPU of its local rank.
- ``cuda_path``: whether training takes the CUDA code path (bf16, compile, fused SGD).
- ``Runtime`` / ``runtime``: the inference runtime of evaluation: device, bf16 autocast (on CUDA and on a CPU
  with native bf16, ``cpu_has_native_bf16``), channels-last.
"""

from __future__ import annotations

import functools
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def rank() -> int:
    """This process's global rank under torchrun (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes the torchrun job has (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1")


def local_rank() -> int:
    """This process's rank on its machine (0 without torchrun): the index of its GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Whether this process is the one that prints and writes shared files (rank 0)."""
    return rank() == 0


@dataclass
class Dist:
    """The process's place in a joined process group (rank 0 of 1 for a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op for one process."""
    if world_size() <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank())


def cuda_path(device: torch.device) -> bool:
    """Whether training takes the CUDA code path (bf16 autocast, torch.compile, fused SGD, as the
    --amp/--compile/--fused flags allow; channels-last, which helps oneDNN's CPU convs too, applies on every
    device): on CUDA, and on the CPU when the environment has VGGNET_CUDA_PATH_ON_CPU=1, so that a CPU-only CI
    runs that path too (bf16 autocast and inductor work there)."""
    return device.type == "cuda" or os.environ.get("VGGNET_CUDA_PATH_ON_CPU", "") == "1"


def pick_device(name: str | torch.device = "auto", d: Dist | None = None) -> torch.device:
    """``name`` ("auto": CUDA when torch sees a GPU, else the CPU) as a device; a bare "cuda" under torchrun
    means the GPU of this process's local rank, which becomes the current device."""
    if isinstance(name, str) and name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is visible to torch here; use --device cpu (or auto)")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", (d or Dist(local_rank=local_rank())).local_rank)
        torch.cuda.set_device(device)
    return device


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (Intel AMX-bf16 or AVX512-bf16), where oneDNN runs
    bf16 convolutions 2.5-3.5x faster than float32 (issue 26); elsewhere bf16 is emulated and no faster."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            c = caps()
            return bool(c.get("amx_bf16") or c.get("avx512_bf16"))
        except Exception:  # noqa: BLE001 - a torch without the probe: read the kernel's flags
            pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def cpu_bf16_default() -> bool:
    """Whether evaluation on this CPU runs bf16 autocast unless told otherwise: where it has native bf16, unless
    the environment says VGGNET_CPU_BF16=0 (or forces it with 1; the test suite pins float32 this way, so that
    its exact comparisons do not depend on the machine's CPU)."""
    env = os.environ.get("VGGNET_CPU_BF16", "")
    return env == "1" if env in ("0", "1") else cpu_has_native_bf16()


@dataclass(frozen=True)
class Runtime:
    """Where and how the nets run for inference: channels-last everywhere; bf16 autocast on CUDA and on a CPU with
    native bf16 (``cpu_has_native_bf16``), float32 elsewhere or when asked (``amp=False``, ``--no-amp``)."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False

    @property
    def precision(self) -> str:
        """What the nets compute in, as reports record it: "bf16" (autocast) or "float32"."""
        return "bf16" if self.amp else "float32"

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def sync(self) -> None:
        # timing needs the queued GPU work done; a no-op on the CPU
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def prepare(self, model: nn.Module) -> nn.Module:
        model.to(self.device).eval()
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model


def runtime(device: str | torch.device = "auto", amp: bool | None = None) -> Runtime:
    """The inference runtime for ``device``: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1".

    ``amp``: None (the default) for bf16 autocast on CUDA and on a CPU with native bf16, float32 elsewhere;
    False for float32 everywhere; True for bf16 autocast everywhere (emulated, slow, on a CPU without native bf16).
    The default's accuracy against float32 (top-1 agreement, posterior differences) is measured in
    docs/performance.md.
    """
    dev = pick_device(device)
    if amp is None:
        amp = dev.type == "cuda" or (dev.type == "cpu" and cpu_bf16_default())
    # channels-last helps oneDNN's CPU convolutions too (measured 1.5-3x for inference of the demo net)
    return Runtime(dev, amp=amp, channels_last=True)


__all__ = [
    "Dist",
    "Runtime",
    "cpu_bf16_default",
    "cpu_has_native_bf16",
    "cuda_path",
    "is_main",
    "local_rank",
    "pick_device",
    "rank",
    "runtime",
    "setup_distributed",
    "world_size",
]
