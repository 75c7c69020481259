"""The result of an evaluation: a row per (net or fusion, protocol), as the paper's Tables 5 and 6 print them,
and its report written into run folders (Markdown for people, JSON for programs)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..metrics import most_confused, per_class_accuracy
from ..plots import plot_confusion
from ..report import markdown_table, write_report
from .nets import FUSED
from .protocols import parse_protocols

WORST = 5  # the classes and pairs the printed report shows (the files show every class and MOST_CONFUSED pairs)
MOST_CONFUSED = 50
MAX_PNG_CLASSES = 100  # a confusion-matrix picture of more classes is unreadable: the tables say it instead


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
    # (C, C) int64 over the net's classes: [true, predicted] counts of the top-1 predictions
    confusion: torch.Tensor | None = field(default=None, repr=False)
    classes: list[str] | None = field(default=None, repr=False)  # the net's class names (per_class, pairs)
    # scored among the data's classes only (argmax over their posteriors), when the data has fewer than the net
    subset_top1_err: float | None = None
    subset_top5_err: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")

    def scales_text(self) -> str:
        if isinstance(self.scales, dict):
            return "; ".join(f"{k}: {','.join(map(str, v))}" for k, v in self.scales.items())
        return ",".join(map(str, self.scales))

    def class_name(self, i: int) -> str:
        return self.classes[i] if self.classes else str(i)

    @property
    def per_class(self) -> list[dict[str, Any]]:
        """Top-1 accuracy of each class that has images, in class order: {index, class, n, correct, top1_acc}."""
        if self.confusion is None:
            return []
        n, acc = per_class_accuracy(self.confusion)
        correct = self.confusion.diagonal()
        return [
            {
                "index": i,
                "class": self.class_name(i),
                "n": int(n[i]),
                "correct": int(correct[i]),
                "top1_acc": float(acc[i]),
            }
            for i in n.nonzero().flatten().tolist()
        ]

    def confused_pairs(self, top: int | None = None) -> list[dict[str, Any]]:
        """The most-confused pairs, most images first: {true, predicted, count, share} (share: of the true
        class's images), with the classes' indices as true_index and predicted_index."""
        if self.confusion is None:
            return []
        return [
            {
                "true": self.class_name(t),
                "predicted": self.class_name(p),
                "count": c,
                "share": sh,
                "true_index": t,
                "predicted_index": p,
            }
            for t, p, c, sh in most_confused(self.confusion, top)
        ]

    def to_dict(self) -> dict[str, Any]:
        out = dict(
            net=self.net,
            protocol=self.protocol,
            scales=self.scales,
            flip=self.flip,
            top1_err=self.top1_err,
            top5_err=self.top5_err,
            n=self.n,
            seconds=self.seconds,
            images_per_s=self.images_per_s,
        )
        if self.subset_top1_err is not None:
            out.update(subset_top1_err=self.subset_top1_err, subset_top5_err=self.subset_top5_err)
        if self.confusion is not None:
            out.update(
                per_class=self.per_class,
                most_confused=self.confused_pairs(MOST_CONFUSED),
                confusion=self.confusion.tolist(),
            )
        return out


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
    subset: list[int] | None = None  # the data's classes when fewer than the net's (rows' subset_top*_err)
    subset_k: int | None = None  # the k of the subset's "top-5": min(5, len(subset))

    def get(self, protocol: str, net: str | None = None) -> ProtocolResult:
        """The row of ``protocol`` for ``net`` (default: the fusion when there are several nets, else the net)."""
        net = net or (FUSED if len(self.nets) > 1 else self.nets[0])
        (protocol,) = parse_protocols([protocol])
        for r in self.results:
            if r.net == net and r.protocol == protocol:
                return r
        raise KeyError(f"no result for net {net!r} and protocol {protocol!r}")

    def markdown(self, full: bool = False) -> str:
        """The table of Table 5 / Table 6's shape: a row per net and protocol, errors in percent; then where the
        nets err: by default the worst classes and most-confused pairs of the headline row (the fusion's, or the
        net's, under the first protocol), with ``full`` every class and the most-confused pairs of every row."""
        topk = f"top-{self.k} err %"
        rows = [
            [
                r.net,
                r.protocol,
                r.scales_text(),
                "yes" if r.flip and r.protocol != "center" else "no",
                f"{100 * r.top1_err:.2f}",
                f"{100 * r.top5_err:.2f}",
                f"{r.images_per_s:,.1f}",
            ]
            for r in self.results
        ]
        headers = ["net", "protocol", "Q (test scales)", "flip", "top-1 err %", topk, "images/s"]
        if self.subset:
            m = len(self.subset)
            headers[6:6] = [f"top-1 err % ({m} classes)", f"top-{self.subset_k} err % ({m} classes)"]
            for row, r in zip(rows, self.results):
                row[6:6] = [f"{100 * (r.subset_top1_err or 0.0):.2f}", f"{100 * (r.subset_top5_err or 0.0):.2f}"]
        lines = [
            f"Evaluation of {' + '.join(self.nets)} on {self.data or 'the given samples'}: {self.n} images"
            + (f" ({len(self.skipped)} unreadable, skipped)" if self.skipped else "")
            + f", {self.num_classes} classes, {self.device} ({self.precision}), batch {self.batch_size}.",
            "",
            markdown_table(headers, rows, "llll" + "r" * (len(headers) - 4)),
            "",
            "images/s: compute (rescale and forward passes) of each protocol's views, image decoding excluded; "
            f"decoding took {self.decode_s:.1f} s, the whole evaluation {self.wall_s:.1f} s.",
        ]
        lines += self._notes()
        rows_shown = self.results if full else [self.get(self.protocols[0])]
        for r in rows_shown:
            lines += ["", errors_markdown(r, None if full else WORST, MOST_CONFUSED if full else WORST)]
        if not full:
            lines += [
                "",
                (
                    "Every class, and the most-confused pairs of every net and protocol: in the report "
                    "files (RUN/eval/ or --out DIR) and the JSON."
                ),
            ]
        return "\n".join(lines)

    def _notes(self) -> list[str]:
        lines = []
        if self.subset:
            lines.append(
                f"The data has {len(self.subset)} of the nets' {self.num_classes} classes: the "
                f"'({len(self.subset)} classes)' columns score each image among those classes only (the "
                f"highest posterior of the data's classes); the others among all {self.num_classes}."
            )
        if self.k < 5:
            lines.append(
                f"top-{self.k} in place of top-5: the nets have only {self.num_classes} classes (k = min(5, classes))."
            )
        if len(self.nets) > 1:
            lines.append(f"{FUSED}: the soft-max posteriors of {', '.join(self.nets)} averaged (section 4.4).")
        if self.skipped:
            lines.append("Skipped: " + "; ".join(self.skipped[:10]) + (" ..." if len(self.skipped) > 10 else ""))
        return lines

    def to_dict(self) -> dict[str, Any]:
        return dict(
            nets=self.nets,
            data=self.data,
            n=self.n,
            num_classes=self.num_classes,
            k=self.k,
            protocols=self.protocols,
            flip=self.flip,
            batch_size=self.batch_size,
            device=self.device,
            precision=self.precision,
            wall_s=self.wall_s,
            decode_s=self.decode_s,
            skipped=self.skipped,
            results=[r.to_dict() for r in self.results],
            provenance=self.provenance,
            **({"subset": self.subset, "subset_k": self.subset_k} if self.subset else {}),
        )


def errors_markdown(r: ProtocolResult, worst: int | None = WORST, pairs: int | None = WORST) -> str:
    """Where one row errs: its ``worst`` classes by top-1 accuracy (all with None) and its ``pairs``
    most-confused pairs (true class, predicted class, images, share of the true class)."""
    per_class = sorted(r.per_class, key=lambda c: (c["top1_acc"], c["index"]))
    if worst is not None:
        per_class = per_class[:worst]
    head = f"Where {r.net} errs under {r.protocol} (top-1 among all classes)"
    what = f"the {len(per_class)} worst classes" if worst is not None else "every class with images, worst first"
    lines = [
        f"{head}: {what}",
        "",
        markdown_table(
            ["class", "images", "top-1 acc %"],
            [[c["class"], c["n"], f"{100 * c['top1_acc']:.1f}"] for c in per_class],
            "lrr",
        ),
    ]
    confused = r.confused_pairs(pairs)
    if confused:
        lines += [
            "",
            f"the {len(confused)} most-confused pairs",
            "",
            markdown_table(
                ["true class", "predicted", "images", "share of the true class %"],
                [[c["true"], c["predicted"], c["count"], f"{100 * c['share']:.1f}"] for c in confused],
                "llrr",
            ),
        ]
    else:
        lines += ["", "no image was taken for another class"]
    return "\n".join(lines)


def write_eval_files(result: EvalResult, out: str | os.PathLike) -> list[Path]:
    """Write the result into the folder ``out``: ``eval-STAMP.md`` (the table, every class and the most-confused
    pairs of every row), ``eval-STAMP.json`` (all of it, with the confusion matrices) and, for data of at most
    ``MAX_PNG_CLASSES`` classes, a confusion-matrix PNG per row; returns the files. Never replaces a report."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is not a folder: the evaluation report is written into a folder (--out DIR)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, i = f"eval-{stamp}", 1
    while (out / f"{name}.json").exists():  # two evaluations within one second keep both reports
        i += 1
        name = f"eval-{stamp}-{i}"
    written = list(write_report(out, name, result.markdown(full=True), result.to_dict()))
    for r in result.results:
        if r.confusion is not None and int((r.confusion.sum(1) > 0).sum()) <= MAX_PNG_CLASSES:
            title = f"{r.net}, {r.protocol}: top-1 err {100 * r.top1_err:.2f}% on {r.n} images"
            png = out / re.sub(r"[^\w.+-]", "_", f"{name}-confusion-{r.net}-{r.protocol}.png")
            written.append(plot_confusion(r.confusion, r.classes, png, title))
    return written


def write_eval_report(result: EvalResult, folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Write the result's files (``write_eval_files``) into each ``folder/eval/`` (run folders); returns them."""
    return [path for folder in folders for path in write_eval_files(result, Path(folder) / "eval")]


__all__ = [
    "MAX_PNG_CLASSES",
    "EvalResult",
    "ProtocolResult",
    "errors_markdown",
    "write_eval_files",
    "write_eval_report",
]
