"""Reports written into a run folder: Markdown tables for people, JSON for programs.

Both files of a report are written atomically (a reader never sees half a file), under ``RUN/eval/`` for
evaluations.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .files import atomic_write_text
from .runtime import world_size


def _version(package: str) -> str | None:
    """An installed package's version, read from its metadata without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` is one letter a column: "l" (left) or "r" (right, for numbers)."""
    align = align or "l" * len(headers)
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def provenance(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where and with what a result was produced (airbench's habit): time, host, Python, torch and torchvision,
    the device (``"auto"``: CUDA when there is one), the CPU model and cores, the GPUs, the torchrun world size
    and the git commit of the code (when it runs from a checkout). The one record of provenance that `vgg eval`,
    `vgg reproduce` and the benchmarks write."""
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),  # not imported: it costs seconds (torch._dynamo) at start-up
        "threads": torch.get_num_threads(),
    }
    if device is not None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
        info["device"] = str(dev)
        info["device_name"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    info["cpu_count"] = os.cpu_count()
    info["cpu"] = _cpu_model()
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    info["world_size"] = world_size()
    git = _git_describe()
    if git:
        info["git"] = git
    return info


def _cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git_describe() -> str | None:
    """``git describe --always --dirty`` of the checkout this package runs from; None outside one."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # an installed wheel: no checkout to describe
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or None
    return None


def _flat(obj: Any) -> bool:
    """Whether ``obj`` is a plain value, or a list or object of plain values only (``map(type)``: C speed)."""
    if not isinstance(obj, (dict, list, tuple)):
        return True
    return not set(map(type, obj.values() if isinstance(obj, dict) else obj)) & {dict, list, tuple}


def json_text(data: Any, level: int = 0) -> str:
    """JSON indented by one space a level, with every list or object of plain values on one line: a confusion
    matrix of 1,000 classes is 1,000 lines, not a million."""
    pad = " " * (level + 1)
    if isinstance(data, dict) and not _flat(data):
        items = [f"{pad}{json.dumps(str(k))}: {json_text(v, level + 1)}" for k, v in data.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * level + "}"
    if isinstance(data, (list, tuple)) and not _flat(data):
        return "[\n" + ",\n".join(pad + json_text(v, level + 1) for v in data) + "\n" + " " * level + "]"
    return json.dumps(data)


def write_report(folder: str | os.PathLike, name: str, markdown: str, data: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``folder/name.md`` and ``folder/name.json`` atomically; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / f"{name}.md", folder / f"{name}.json"
    atomic_write_text(md, markdown.rstrip() + "\n")
    atomic_write_text(js, json_text(data) + "\n")
    return md, js
