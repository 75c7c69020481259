"""Learning-curve plots of a run, written as PNG files into RUN/plots/."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from . import runs
from .files import atomic_write


def read_metrics(run: str | Path) -> list[dict]:
    """The rows of RUN/metrics.jsonl (a step row per logged step, an epoch row per epoch); [] without the file."""
    path = Path(run) / runs.METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: skip it, keep the rest
            continue
    return rows


def epoch_rows(rows: list[dict]) -> list[dict]:
    """The epoch rows among metrics rows (validation errors, lr): what learning curves and reports read."""
    return [r for r in rows if r.get("kind") == "epoch"]


def read_epochs(run: str | Path) -> list[dict]:
    """The epoch rows of RUN/metrics.jsonl."""
    return epoch_rows(read_metrics(run))


def plot_run(run: str | Path) -> list[Path]:
    """Plot training loss (per logged step) and validation top-1 / top-5 error (per epoch); return the files."""
    import matplotlib  # here, not at the top: matplotlib takes a second to import and only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    rows = read_metrics(run)
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = epoch_rows(rows)
    out = run / "plots"
    out.mkdir(exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if steps:
        ax1.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1)
        ax1.set_yscale("log")
    ax1.set(xlabel="step", ylabel="training loss", title="loss")
    if epochs:
        e = [r["epoch"] for r in epochs]
        ax2.plot(e, [100 * r["val_top1_err"] for r in epochs], "o-", label="top-1")
        ax2.plot(e, [100 * r["val_top5_err"] for r in epochs], "s-", label="top-5")
        for r0, r1 in zip(epochs, epochs[1:]):
            if r1["lr"] < r0["lr"]:
                ax2.axvline(r1["epoch"] - 0.5, color="grey", ls=":", lw=1)
        ax2.legend()
    ax2.set(xlabel="epoch", ylabel="validation error (%)", title="validation error (dotted: lr / 10)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(run.name)
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def plot_confusion(confusion: torch.Tensor, classes: Sequence[str] | None, path: str | Path, title: str = "") -> Path:
    """A confusion-matrix picture: a row per class with images, its share of images (colour) predicted as each
    of those classes, and a last column "other" for predictions outside them (an ImageNet subset scored by a
    1,000-class net); counts are written in the cells of small matrices. Written atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (confusion.sum(1) > 0).nonzero().flatten()
    counts = confusion[rows][:, rows]
    other = confusion[rows].sum(1) - counts.sum(1)
    names = [classes[i] if classes else str(i) for i in rows.tolist()]
    if int(other.sum()):
        counts, names_x = torch.cat([counts, other[:, None]], 1), [*names, "other"]
    else:
        names_x = names
    share = counts.double() / counts.sum(1, keepdim=True).clamp(min=1)
    m = len(names)
    side = min(max(4.0, 0.22 * len(names_x) + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side * max(m, 1) / len(names_x) + 1.0))
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal")
    ax.set_xticks(range(len(names_x)), names_x, rotation=90, fontsize=7 if len(names_x) > 20 else 9)
    ax.set_yticks(range(m), names, fontsize=7 if m > 20 else 9)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if len(names_x) <= 20:
        for (t, p), c in zip(
            torch.cartesian_prod(torch.arange(m), torch.arange(len(names_x))).tolist(), counts.flatten().tolist()
        ):
            if c:
                ax.text(
                    p, t, str(c), ha="center", va="center", fontsize=8, color="white" if share[t, p] > 0.5 else "black"
                )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return Path(path)
