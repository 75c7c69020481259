"""Fine-tuning at laptop scale (issue 23, docs/finetune.md): a net A trained on the embedded ``mnist``, exported in
torchvision's layout, fine-tuned on the embedded ``uci-digits`` three ways (head only, from conv5, all layers)
against the same net trained from scratch there. Prints each command with its wall time, the final top-1 of the
centre crop on uci-digits' validation split, and a per-class accuracy table (Markdown).

Each step is the `vgg` command a user would type (run in a subprocess, timed as a whole, its output appended to
OUT/commands.log); a run folder that is finished already is reused (the command continues it and finds nothing to do), so the script can be run again.

    python benchmarks/finetune.py --out /tmp/ft                    # about 5-10 minutes on 2 quiet CPU cores
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


def epochs_run(run: Path) -> int:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return max((r["epoch"] for r in rows if r.get("kind") == "epoch"), default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="finetune-bench", help="folder for the runs and the exported weights")
    ap.add_argument("--source-epochs", type=int, default=8, help="epochs of the mnist source run (preset: 18)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs of the uci-digits runs (default: the fine-tuning preset's 20 for all four)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = ["--seed", str(args.seed)]
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    times: dict[str, float] = {}
    source = out / "mnist"
    log = out / "commands.log"
    times["source (mnist)"] = vgg(["train", "--data", "mnist", "--epochs", str(args.source_epochs), "--out",
                                   str(source), "--no-tensorboard", "--device", "cpu", *seed], log)  # fmt: skip
    pth = out / "mnist_A.pth"
    if not pth.exists():
        times["export"] = vgg(["export", str(source), "--format", "torchvision", "--out", str(pth)], log)
    runs = {"head only (--freeze features)": ("head", ["--freeze", "features"]),
            "from conv5 (--freeze conv4_2)": ("conv5", ["--freeze", "conv4_2"]),
            "all layers (--freeze none)": ("all", ["--freeze", "none"])}  # fmt: skip
    folders = {}
    for name, (folder, flags) in runs.items():
        folders[name] = out / folder
        times[name] = vgg(["train", "--init-from", str(pth), "--data", "uci-digits", *flags, *COMMON, *seed, *epochs,
                           "--out", str(out / folder)], log)  # fmt: skip
    name = "scratch"
    folders[name] = out / "scratch"
    times[name] = vgg(["train", "--data", "uci-digits", "--arch", "A", "--width", "0.25", "--fc-width", "256",
                       "--crop-size", "32", "--scale", "37", "--init", "kaiming", "--lr", "0.02", "--epochs",
                       str(args.epochs or 20), *COMMON, *seed, "--out", str(folders[name])], log)  # fmt: skip
    report(times, folders, source)


def report(times: dict[str, float], folders: dict[str, Path], source: Path) -> None:
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; torch {torch.__version__}")
    src_acc = per_class(source)[0]
    print(f"source: mnist top-1 {src_acc:.2%} (centre crop, its validation split), {epochs_run(source)} epochs\n")
    print("| run | epochs run | wall s | top-1 % |\n|---|---:|---:|---:|")
    table = {}
    for name, run in folders.items():
        table[name] = per_class(run)
        print(f"| {name} | {epochs_run(run)} | {times.get(name, float('nan')):.0f} | {100 * table[name][0]:.1f} |")
    classes, counts = next(iter(table.values()))[1], next(iter(table.values()))[3]
    print("\nper-class accuracy % (uci-digits validation split, centre crop)\n")
    print("| class | images | " + " | ".join(table) + " |")
    print("|---|---:|" + "---:|" * len(table))
    for c, cls in enumerate(classes):
        print(f"| {cls} | {counts[c]} | " + " | ".join(f"{100 * t[2][c]:.1f}" for t in table.values()) + " |")
    print("\nwall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))


if __name__ == "__main__":
    main()
