"""Reports written into a run folder: Markdown tables for people, JSON for programs.

Both files of a report are written atomically (a reader never sees half a file), under ``RUN/eval/`` for
evaluations.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


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
    """Where and with what a result was produced (airbench's habit): time, host, torch, device."""
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if device is not None:
        dev = torch.device(device)
        info["device"] = str(dev)
        info["device_name"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    return info


def write_report(folder: str | os.PathLike, name: str, markdown: str, data: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``folder/name.md`` and ``folder/name.json`` atomically; returns both paths."""
    from .weights import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / f"{name}.md", folder / f"{name}.json"
    atomic_write(md, lambda tmp: Path(tmp).write_text(markdown.rstrip() + "\n"))
    atomic_write(js, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))
    return md, js
