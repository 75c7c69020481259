"""The result of an evaluation: a row per (net or fusion, protocol), as the paper's Tables 5 and 6 print them,
and its report written into run folders (Markdown for people, JSON for programs)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..report import markdown_table, write_report
from .nets import FUSED
from .protocols import parse_protocols


@dataclass
class ProtocolResult:
    """One row of an evaluation table: one net (or the fusion) under one protocol."""

    net: str
    protocol: str
    scales: list[int] | dict[str, list[int]]  # a dict (net -> scales) for a fusion of nets tested at different Q
    flip: bool
    top1_err: float  # fraction in [0, 1]
    top5_err: float  # top-k error with k = min(5, classes), see EvalResult.k
    n: int
    seconds: float  # compute time of this protocol's views (rescale + forward), decoding excluded

    @property
    def images_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")

    def scales_text(self) -> str:
        if isinstance(self.scales, dict):
            return "; ".join(f"{k}: {','.join(map(str, v))}" for k, v in self.scales.items())
        return ",".join(map(str, self.scales))

    def to_dict(self) -> dict[str, Any]:
        return dict(net=self.net, protocol=self.protocol, scales=self.scales, flip=self.flip,
                    top1_err=self.top1_err, top5_err=self.top5_err, n=self.n, seconds=self.seconds,
                    images_per_s=self.images_per_s)  # fmt: skip


@dataclass
class EvalResult:
    """The results of ``evaluate``: one ``ProtocolResult`` per (net, protocol), plus "fused" rows for several nets.

    ``k`` is the k of the "top-5" error: ``min(5, classes)``. ``posteriors[(net, protocol)]`` (N, C) and
    ``labels`` (N,) are filled with ``return_posteriors=True``, in sample order (skipped images left out).
    """

    results: list[ProtocolResult]
    n: int
    num_classes: int
    k: int
    skipped: list[str]
    nets: list[str]
    protocols: list[str]
    flip: bool
    batch_size: int
    device: str
    wall_s: float
    decode_s: float
    data: str = ""
    precision: str = "float32"  # what the nets computed in: "bf16" (autocast) or "float32"
    provenance: dict[str, Any] = field(default_factory=dict)
    posteriors: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    labels: torch.Tensor | None = None
    indices: list[int] = field(default_factory=list)

    def get(self, protocol: str, net: str | None = None) -> ProtocolResult:
        """The row of ``protocol`` for ``net`` (default: the fusion when there are several nets, else the net)."""
        net = net or (FUSED if len(self.nets) > 1 else self.nets[0])
        (protocol,) = parse_protocols([protocol])
        for r in self.results:
            if r.net == net and r.protocol == protocol:
                return r
        raise KeyError(f"no result for net {net!r} and protocol {protocol!r}")

    def markdown(self) -> str:
        """The table of Table 5 / Table 6's shape: a row per net and protocol, errors in percent."""
        topk = f"top-{self.k} err %"
        rows = [
            [r.net, r.protocol, r.scales_text(), "yes" if r.flip and r.protocol != "center" else "no",
             f"{100 * r.top1_err:.2f}", f"{100 * r.top5_err:.2f}", f"{r.images_per_s:,.1f}"]
            for r in self.results
        ]  # fmt: skip
        headers = ["net", "protocol", "Q (test scales)", "flip", "top-1 err %", topk, "images/s"]
        lines = [
            f"Evaluation of {' + '.join(self.nets)} on {self.data or 'the given samples'}: {self.n} images"
            + (f" ({len(self.skipped)} unreadable, skipped)" if self.skipped else "")
            + f", {self.num_classes} classes, {self.device} ({self.precision}), batch {self.batch_size}.",
            "",
            markdown_table(headers, rows, "llllrrr"),
            "",
            "images/s: compute (rescale and forward passes) of each protocol's views, image decoding excluded; "
            f"decoding took {self.decode_s:.1f} s, the whole evaluation {self.wall_s:.1f} s.",
        ]
        if self.k < 5:
            lines.append(f"top-{self.k} in place of top-5: the nets have only {self.num_classes} classes "
                         f"(k = min(5, classes)).")  # fmt: skip
        if len(self.nets) > 1:
            lines.append(f"{FUSED}: the soft-max posteriors of {', '.join(self.nets)} averaged (section 4.4).")
        if self.skipped:
            lines.append("Skipped: " + "; ".join(self.skipped[:10]) + (" ..." if len(self.skipped) > 10 else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dict(
            nets=self.nets, data=self.data, n=self.n, num_classes=self.num_classes, k=self.k,
            protocols=self.protocols, flip=self.flip, batch_size=self.batch_size, device=self.device,
            precision=self.precision, wall_s=self.wall_s, decode_s=self.decode_s, skipped=self.skipped,
            results=[r.to_dict() for r in self.results], provenance=self.provenance,
        )  # fmt: skip


def write_eval_report(result: EvalResult, folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Write the result as Markdown and JSON into each ``folder/eval/`` (run folders); returns the files."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    written = []
    for folder in folders:
        out = Path(folder) / "eval"
        name, i = f"eval-{stamp}", 1
        while (out / f"{name}.json").exists():  # two evaluations within one second keep both reports
            i += 1
            name = f"eval-{stamp}-{i}"
        written += write_report(out, name, result.markdown(), result.to_dict())
    return written


__all__ = ["EvalResult", "ProtocolResult", "write_eval_report"]
