"""Fine-tuning at laptop scale (issue 23, docs/finetune.md): a net A trained on the embedded ``mnist``, exported in
torchvision's layout, fine-tuned on the embedded ``uci-digits`` three ways (head only, from conv5, all layers)
against the same net trained from scratch there. Prints each command with its wall time, the final top-1 of the
centre crop on uci-digits' validation split, and a per-class accuracy table (Markdown).

Each step is the `vgg` command a user would type (run in a subprocess, timed as a whole, its output appended to
OUT/commands.log); a command already timed in OUT/times.json is not run again, so seeds can be added to an OUT.

    python benchmarks/finetune.py --out /tmp/ft                    # about 5 minutes on 2 loaded CPU cores
    python benchmarks/finetune.py --out /tmp/ft --seeds 0,1,2      # then about 4 minutes more a seed
    python benchmarks/finetune.py --out /tmp/ft --source-epochs 3 --epochs 5   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

import vggnet

# the four uci-digits runs: a batch for 1,437 images, no flips (digits are not mirror-symmetric: the mnist presets
# turn them off too), the CPU, one loader process on a shared machine
COMMON = ["--batch-size", "64", "--no-flip", "--workers", "1", "--cache-images", "--no-tensorboard", "--device", "cpu"]


def vgg(args: list[str], log: Path) -> float:
    """Run `vgg ARGS` (this interpreter's vggnet), its output appended to ``log``; its wall time in seconds. A
    failure stops the benchmark."""
    print("$ vgg " + shlex.join(args), flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        done = subprocess.run([sys.executable, "-m", "vggnet", *args], stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"vgg {args[0]} failed with exit code {done.returncode}; see {log}")
    return time.perf_counter() - t0


def per_class(run: Path) -> tuple[float, list[str], list[float], list[int]]:
    """(top-1 accuracy, classes, accuracy per class, images per class) of the centre crop at Q = S on the run's
    validation data."""
    result = vggnet.evaluate(str(run), None, protocols="center", device="cpu", return_posteriors=True, amp=False)
    post = result.posteriors[(result.nets[0], "center")]
    pred, labels = post.argmax(1), result.labels
    classes = json.loads((run / "classes.json").read_text())
    hits = [(pred[labels == c] == c).float() for c in range(len(classes))]
    return float((pred == labels).float().mean()), classes, [float(h.mean()) for h in hits], [len(h) for h in hits]


def epoch_rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "epoch"]


def epochs_run(run: Path) -> int:
    return max((r["epoch"] for r in epoch_rows(run)), default=0)


def val_error_after(run: Path, epoch: int) -> float:
    """The validation top-1 error (%) logged after ``epoch`` (NaN when the run stopped before)."""
    return next((100 * r["val_top1_err"] for r in epoch_rows(run) if r["epoch"] == epoch), float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="finetune-bench", help="folder for the runs and the exported weights")
    ap.add_argument("--source-epochs", type=int, default=8, help="epochs of the mnist source run (preset: 18)")
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of the uci-digits runs (default: the fine-tuning preset's 20 for all four)",
    )
    ap.add_argument("--seeds", default="0", help="seeds of the uci-digits runs, comma-separated (the source: seed 0)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times = Times(out)
    source = out / "mnist"
    times.run(
        "source (mnist)",
        [
            "train",
            "--data",
            "mnist",
            "--epochs",
            str(args.source_epochs),
            "--out",
            str(source),
            "--no-tensorboard",
            "--device",
            "cpu",
            "--seed",
            "0",
        ],
    )
    pth = out / "mnist_A.pth"
    times.run("export", ["export", str(source), "--format", "torchvision", "--out", str(pth)])
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    kinds = {
        "head only (--freeze features)": ("head", ["--init-from", str(pth), "--freeze", "features", *epochs]),
        "from conv5 (--freeze conv4_2)": ("conv5", ["--init-from", str(pth), "--freeze", "conv4_2", *epochs]),
        "all layers (--freeze none)": ("all", ["--init-from", str(pth), "--freeze", "none", *epochs]),
        "scratch": (
            "scratch",
            [
                "--arch",
                "A",
                "--width",
                "0.25",
                "--fc-width",
                "256",
                "--crop-size",
                "32",
                "--scale",
                "37",
                "--init",
                "kaiming",
                "--lr",
                "0.02",
                "--epochs",
                str(args.epochs or 20),
            ],
        ),
    }
    folders: dict[str, list[Path]] = {name: [] for name in kinds}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, (folder, flags) in kinds.items():
            run = out / f"{folder}-s{seed}"
            times.run(
                f"{name}, seed {seed}",
                ["train", "--data", "uci-digits", *flags, *COMMON, "--seed", str(seed), "--out", str(run)],
            )
            folders[name].append(run)
    report(times.seconds, folders, source)


class Times:
    """Each command's wall time, kept in OUT/times.json: a command already timed there is not run again."""

    def __init__(self, out: Path) -> None:
        self.path, self.log = out / "times.json", out / "commands.log"
        self.seconds: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name: str, args: list[str]) -> None:
        if name in self.seconds:
            print(f"(timed before: {name}, {self.seconds[name]:.0f} s)")
            return
        self.seconds[name] = vgg(args, self.log)
        self.path.write_text(json.dumps(self.seconds, indent=1))


def report(seconds: dict[str, float], folders: dict[str, list[Path]], source: Path) -> None:
    load = os.getloadavg()[0]
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load:.1f} at the end; torch {torch.__version__}")
    print(
        f"source: mnist top-1 {per_class(source)[0]:.2%} (centre crop, its validation split), "
        f"{epochs_run(source)} epochs, {seconds.get('source (mnist)', float('nan')):.0f} s\n"
    )
    table = {name: [per_class(run) for run in runs] for name, runs in folders.items()}
    print("| run | top-1 % per seed | mean | epochs run | wall s per seed |\n|---|---|---:|---:|---|")
    for name, rows in table.items():
        accs = [100 * r[0] for r in rows]
        walls = [seconds.get(f"{name}, seed {run.name.rsplit('-s', 1)[1]}", float("nan")) for run in folders[name]]
        print(
            f"| {name} | {', '.join(f'{a:.1f}' for a in accs)} | {sum(accs) / len(accs):.1f} | "
            f"{', '.join(str(epochs_run(run)) for run in folders[name])} | {', '.join(f'{w:.0f}' for w in walls)} |"
        )
    marks = (1, 3, 5, 10, 20)
    print("\nhow fast: validation top-1 error % after epoch " + ", ".join(map(str, marks)) + " (mean over the seeds)\n")
    print("| run | " + " | ".join(f"epoch {e}" for e in marks) + " |\n|---|" + "---:|" * len(marks))
    for name, runs in folders.items():
        cells = [sum(val_error_after(run, e) for run in runs) / len(runs) for e in marks]
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    first = next(iter(table.values()))[0]
    classes, counts = first[1], first[3]
    print("\nper-class accuracy % (uci-digits validation split, centre crop; mean over the seeds)\n")
    print("| class | images | " + " | ".join(table) + " |")
    print("|---|---:|" + "---:|" * len(table))
    for c, cls in enumerate(classes):
        cells = [sum(r[2][c] for r in rows) / len(rows) for rows in table.values()]
        print(f"| {cls} | {counts[c]} | " + " | ".join(f"{100 * v:.1f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
