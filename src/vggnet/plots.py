"""Learning-curve plots of a run, written as PNG files into RUN/plots/."""

from __future__ import annotations

import json
from pathlib import Path

from . import runs


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
