"""The paper's scale, checked end to end: every stage of recipes/imagenet/ at full width, through the real CLI.

What it does (issue 10):

1. Makes an ImageNet-like folder of real-size JPEGs (500x375, one in five 375x500, quality 90) with ``train/`` and
   ``val/`` class folders. Each class is a texture family (stripes of a class-specific orientation and period
   over a smooth random colour field, plus noise), so a class is visible in any 224 crop at any S: a task a
   full-width net can learn in a few dozen steps.
2. Runs every stage of ``recipes/imagenet/`` in the paper's order with ``vgg train --recipe R --init-from
   <the stage it names>``: net A and A-LRN from random weights at lr 1e-2, B-E from A's four convs and three FC
   layers, S = 384 from S = 256 at lr 1e-3, jittered [256, 512] from S = 384; full width, 224 crops, the paper's
   full augmentation (scale, crop, flip, PCA colour shift, mean RGB). Each stage runs a few steps and fails on a
   non-finite loss (the CLI stops with a message) or an exploding one (above ``EXPLODE`` x ln(classes)).
3. Shows learning: net A from the paper's random init learns the texture task from fresh images (no dropout, the
   learning rate held), and net D initialised from that net A (the paper's stage 2) does the same; each must
   bring its loss below ``LEARN_FRACTION`` x ln(classes) within the stated number of steps. One rule sets the
   rate at a batch B: lr = 1e-2 x B / 256 (``learn_lr``, the linear scaling rule), so the ``--device cuda``
   rows run the paper's batch 256 at its 1e-2. On 2 CPU cores these rows wait for the GPU (``CPU_LEARN_NOTE``,
   docs/paper-check.md): at that rule the init's plateau alone outlasts 30 minutes there; ``--learn`` runs them
   anyway.

It prints one table (stage, steps, first and last loss, images/s, peak memory) and exits non-zero when a check
fails. The values changed against a recipe are printed with the table: batch size, epochs (so that a stage is a few
steps), stats images, the learning-rate patience (held, so a few-step run keeps the recipe's rate) and, in the
learning rows only, dropout 0.

    make paper-check                                      # the CPU check: 12 stages + 2 learning runs
    python benchmarks/paper_check.py --stages 1-A-S256 --steps 2 --no-learn       # the cheap slice
    PYTHONPATH=src python benchmarks/paper_check.py --device cuda                 # the GPU path, batch 256
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "imagenet"
EXPLODE = 10.0  # a loss above EXPLODE * ln(classes) counts as exploding
LEARN_FRACTION = 0.5  # the learning rows must bring the loss below this fraction of ln(classes)
PAPER_BATCH, PAPER_LR = 256, 1e-2  # the recipe's batch and initial learning rate
# Why the learning rows wait for the GPU (docs/paper-check.md, measured on 2 CPU cores): at the linear scaling rule
# the number of images until net A leaves its init's plateau hardly depends on the batch (about 30 steps at lr 1e-2
# and batch 32, so about 7,700 images at any batch B with lr 1e-2 x B / 256), and this CPU trains some 4 full-width
# images a second: 30 minutes or more for the plateau alone.
CPU_LEARN_NOTE = (
    "learning rows not run on the CPU: at the linear scaling rule (batch 32, lr 1.25e-3) net A was still "
    "on its init's plateau after 60 steps (8.6 s a step, loss 1.3863 -> 1.3841); leaving it takes about "
    "7,700 images at any batch, 30+ minutes on 2 cores (docs/paper-check.md). They wait for the GPU: "
    "--device cuda runs them at batch 256, lr 1e-2; --learn runs them here anyway"
)


def learn_lr(batch: int) -> float:
    """The learning rows' rate at batch ``batch``: the linear scaling rule (Goyal et al. 2017), lr x B / 256,
    so the paper's 1e-2 at its batch of 256 (the CUDA rows) and 1.25e-3 at a CPU's 32. The gradient noise of a
    batch B is 256 / B times the recipe's; scaling the rate with B keeps the noise of an update where the recipe
    has it (docs/paper-check.md: lr 1e-2 spiked after the init's plateau at batches 4 and 32)."""
    return PAPER_LR * batch / PAPER_BATCH


# ---- the JPEG folder --------------------------------------------------------------------------------------------


COLOURS = [(170, 80, 80), (80, 170, 80), (80, 80, 170), (160, 160, 70), (160, 70, 160), (70, 160, 160)]


def texture(rng: np.random.Generator, cls: int, classes: int, w: int, h: int) -> np.ndarray:
    """One image of class ``cls``: stripes of the class's orientation and period over a smooth colour field tinted
    with the class's colour. The colour is what a net fresh from the paper's init picks up first
    (docs/paper-check.md)."""
    angle = math.pi * cls / classes + rng.normal(0, 0.05)
    period = 18.0 + 10.0 * cls / max(classes - 1, 1)  # 18..28 px at 500x375
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    phase = rng.uniform(0, 2 * math.pi)
    stripes = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase)
    # the class's colour, varied by a smooth random colour field of a fifth of its weight
    field_ = Image.fromarray(rng.integers(60, 196, (max(h // 60, 2), max(w // 60, 2), 3), dtype=np.uint8))
    base = 0.2 * np.asarray(field_.resize((w, h), Image.BICUBIC), np.float64) + 0.8 * np.array(
        COLOURS[cls % len(COLOURS)]
    )
    img = base + 45.0 * stripes[..., None] + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: Path, classes: int, train_per_class: int, val_per_class: int, seed: int = 0) -> Path:
    """``root/train/cNN/*.jpg`` and ``root/val/cNN/*.jpg``; kept when already complete."""
    marker = root / ".complete"
    want = f"{classes} {train_per_class} {val_per_class} {seed} v2"
    if marker.is_file() and marker.read_text() == want:
        return root
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"c{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (375, 500) if i % 5 == 4 else (500, 375)
                Image.fromarray(texture(rng, c, classes, w, h)).save(folder / f"{split}_{c}_{i:05d}.jpg", quality=90)
    marker.write_text(want)
    return root


# ---- one stage through the CLI ------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    recipe: Path
    init_from: str = ""  # the stage this one starts from ("" for random weights)
    extra: list[str] = field(default_factory=list)


def stages(names: list[str] | None) -> list[Stage]:
    """The recipes in the paper's order (the file names' stage numbers), with the stage each starts from."""
    out = []
    for path in sorted(RECIPES.glob("*.toml")):
        with open(path, "rb") as f:
            recipe = tomllib.load(f)
        src = Path(recipe.get("init_from", "")).name
        out.append(Stage(path.stem, path, src))
    known = {s.name for s in out}
    if names:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"unknown stage(s) {unknown}; known: {sorted(known)}")
        out = [s for s in out if s.name in names]
    return out


@dataclass
class Result:
    name: str
    steps: int = 0
    first: float = math.nan
    last: float = math.nan
    images_per_s: float = math.nan
    peak_mb: float = math.nan
    seconds: float = 0.0
    ok: bool = False
    why: str = ""
    losses: list[float] = field(default_factory=list)


def run_stage(stage: Stage, data: Path, out: Path, args: argparse.Namespace, steps: int, extra: list[str]) -> Result:
    """``vgg train --recipe`` for one stage, ``steps`` optimizer steps at ``args.batch_size``; read its metrics."""
    run = out / stage.name
    if run.exists():
        shutil.rmtree(run)
    per_epoch = args.train_per_class * args.classes // args.batch_size
    cmd = [
        sys.executable,
        "-m",
        "vggnet",
        "train",
        "--recipe",
        str(stage.recipe),
        "--data",
        str(data),
        "--out",
        str(run),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(max(1, math.ceil(steps / per_epoch))),
        "--max-steps",
        str(steps),
        "--log-every",
        str(args.log_every),
        "--stats-images",
        str(args.stats_images),
        "--plateau",
        "best",
        "--lr-patience",
        "1000",
        "--device",
        args.device,
        "--workers",
        str(args.workers),
        "--no-tensorboard",
        "--keep-checkpoints",
        "1",
    ]
    if stage.init_from:
        cmd += ["--init-from", str(out / stage.init_from)]
    cmd += extra
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    res = Result(stage.name, seconds=time.perf_counter() - t0)
    records = []
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps_rec = [r for r in records if r.get("kind") == "step"]
    epochs_rec = [r for r in records if r.get("kind") == "epoch"]
    res.losses = [float(r["loss"]) for r in steps_rec]
    res.steps = max((int(r["step"]) for r in steps_rec), default=0)
    if res.losses:
        res.first, res.last = res.losses[0], res.losses[-1]
    rates = [float(r["images_per_s"]) for r in steps_rec[1:]] or [float(r["images_per_s"]) for r in steps_rec]
    if rates:
        res.images_per_s = float(np.median(rates))
    peaks = [float(r["peak_mem_mb"]) for r in epochs_rec + steps_rec if "peak_mem_mb" in r]
    if peaks:
        res.peak_mb = max(peaks)
    limit = EXPLODE * math.log(args.classes)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        res.why = f"exit {proc.returncode}: {tail[0][:200]}"
    elif not res.losses:
        res.why = "no step was logged"
    elif not all(math.isfinite(v) for v in res.losses):
        res.why = "non-finite loss"
    elif max(res.losses) > limit:
        res.why = f"exploding loss {max(res.losses):.3g} > {limit:.3g}"
    elif res.steps < steps:
        res.why = f"ran {res.steps} of {steps} steps"
    else:
        res.ok = True
    shutil.rmtree(
        run / "checkpoints", ignore_errors=True
    )  # ~1 GB each at full width; the next stage needs only the weights
    if not res.ok and args.verbose:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
    return res


def learned(res: Result, classes: int, window: int = 3) -> Result:
    """A learning row passes when the mean of its last ``window`` losses is below LEARN_FRACTION x ln(classes)."""
    if res.ok:
        tail = res.losses[-window:]
        mean = sum(tail) / len(tail)
        target = LEARN_FRACTION * math.log(classes)
        if mean >= target:
            res.ok, res.why = False, f"did not learn: last {len(tail)} losses average {mean:.3f} >= {target:.3f}"
    return res


# ---- the data-free step (CUDA): the speed the data path must keep up with ----------------------------------------


def data_free_rate(arch: str, batch: int, steps: int = 20, warmup: int = 5) -> float:
    """Images/s of the training step of ``arch`` on synthetic inputs already on the GPU, with the defaults that
    `vgg train` uses on CUDA (bf16 autocast, channels-last, torch.compile, fused SGD)."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "src"))
    import vggnet

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = vggnet.create_model(arch, num_classes=1000).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4, fused=True)
    net = torch.compile(model)
    x = torch.randn(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        step()
    end.record()
    torch.cuda.synchronize()
    return batch * steps / (start.elapsed_time(end) / 1000)


# ---- the table --------------------------------------------------------------------------------------------------


def table(rows: list[tuple[str, Result]]) -> str:
    lines = [
        "| stage | check | steps | loss first | loss last | img/s | peak MB | time s | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for check, r in rows:
        lines.append(
            f"| {r.name} | {check} | {r.steps} | {r.first:.4f} | {r.last:.4f} | {r.images_per_s:,.1f} | "
            f"{r.peak_mb:,.0f} | {r.seconds:.0f} | {'ok' if r.ok else 'FAIL: ' + r.why} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda for the GPU path (bf16, channels-last, compile, fused SGD, the nvJPEG loader)",
    )
    p.add_argument("--out", default="runs/paper-check", help="work folder (the JPEGs and one run per stage)")
    p.add_argument("--stages", default="", help="comma-separated stage names (recipe file stems); default all")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (cpu 2, cuda 100)")
    p.add_argument("--batch-size", type=int, default=None, help="cpu 8, cuda 256 (the paper's)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--learn-steps", type=int, default=None, help="steps of each learning row (cpu 60, cuda 200)")
    p.add_argument("--learn-batch-size", type=int, default=None, help="batch of the learning rows (cpu 32, cuda 256)")
    p.add_argument(
        "--learn-lr",
        type=float,
        default=None,
        help="learning rate of the learning rows (default: 1e-2 x batch / 256, the linear scaling rule)",
    )
    p.add_argument(
        "--learn-rows",
        default="A,D",
        help="which learning rows: A (net A from the paper's init), D (net D "
        "from that A); a pilot of the init's plateau runs A alone",
    )
    p.add_argument(
        "--learn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the learning rows (default: on CUDA only; on 2 CPU cores the init's plateau at the "
        "linear scaling rule outlasts 30 minutes: docs/paper-check.md)",
    )
    p.add_argument("--no-stages", dest="run_stages", action="store_false", help="only the learning rows")
    p.add_argument("--workers", type=int, default=None, help="data loader processes (cpu 1, cuda 12)")
    p.add_argument("--verbose", action="store_true", help="print a failing stage's output")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.learn = cuda if args.learn is None else args.learn
    args.steps = args.steps or (100 if cuda else 2)
    args.batch_size = args.batch_size or (256 if cuda else 8)
    args.learn_steps = args.learn_steps or (
        200 if cuda else 60
    )  # the escape from the init's plateau: ~35 steps in the pilot
    args.learn_batch_size = args.learn_batch_size or (256 if cuda else 32)  # the paper's batch on a GPU
    args.learn_lr = args.learn_lr or learn_lr(args.learn_batch_size)
    args.workers = args.workers if args.workers is not None else (12 if cuda else 1)
    # a train set of 10 steps' worth of images on CUDA (validation each epoch stays cheap); on the CPU exactly
    # the stage's steps, so that a stage is one epoch and saves the weights the next stage starts from
    args.train_per_class = max(1, (args.batch_size * (10 if cuda else args.steps)) // args.classes)
    args.val_per_class = max(1, (256 if cuda else 8) // args.classes)
    args.stats_images = min(args.train_per_class * args.classes, 256)
    args.log_every = 10 if cuda else 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = make_folder(out / "jpegs", args.classes, args.train_per_class, args.val_per_class)
    print(
        f"JPEG folder {data}: {args.classes} classes, {args.train_per_class} train and {args.val_per_class} val "
        f"images per class, 500x375 (one in five 375x500), made in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    rows: list[tuple[str, Result]] = []
    chosen = stages([s for s in args.stages.split(",") if s]) if args.run_stages else []
    for st in chosen:
        if st.init_from and not (out / st.init_from / "model.safetensors").is_file():
            rows.append(("recipe", Result(st.name, why=f"needs stage {st.init_from} first (run it, or all stages)")))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            continue
        rows.append(("recipe", run_stage(st, data, out, args, args.steps, [])))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    if args.learn:
        # net A from random weights, then net D from that net A (the paper's stage 2), each on a fresh set of
        # images (one pass on the CPU: every step sees new images), no dropout, the rate of ``learn_lr`` held
        learn_args = argparse.Namespace(**vars(args))
        learn_args.batch_size = args.learn_batch_size
        per_epoch = args.learn_steps if not args.device.startswith("cuda") else 20
        learn_args.train_per_class = max(1, per_epoch * args.learn_batch_size // args.classes)
        learn_args.stats_images = min(learn_args.train_per_class * args.classes, 256)
        learn_args.log_every = 1
        mem = make_folder(out / "learn", args.classes, learn_args.train_per_class, 2, seed=1)
        learn_a = Stage("learn-A", RECIPES / "1-A-S256.toml")
        learn_d = Stage("learn-D-from-A", RECIPES / "2-D-S256.toml", "learn-A")
        wanted = {r.strip().upper() for r in args.learn_rows.split(",")}
        for st in [st for st, key in ((learn_a, "A"), (learn_d, "D")) if key in wanted]:
            extra = ["--dropout", "0", "--lr", f"{args.learn_lr:g}"]
            r = learned(run_stage(st, mem, out, learn_args, args.learn_steps, extra), args.classes)
            rows.append((f"learns (batch {args.learn_batch_size}, lr {args.learn_lr:g})", r))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(
        f"Paper-scale check: full-width nets, 224 crops, batch {args.batch_size}, device {args.device}, "
        f"{args.classes} classes (ln {args.classes} = {math.log(args.classes):.4f}); fails above "
        f"{EXPLODE:g} x ln(classes); learning rows need the mean of the last 3 losses < "
        f"{LEARN_FRACTION:g} x ln(classes) = {LEARN_FRACTION * math.log(args.classes):.4f}"
    )
    print()
    print(table(rows))
    if not args.learn and not args.device.startswith("cuda"):
        print(f"\n{CPU_LEARN_NOTE}")
    if args.device.startswith("cuda"):
        free = data_free_rate("D", args.batch_size)
        ours = [r.images_per_s for _, r in rows if r.name.startswith(("2-D", "3-D", "4-D")) and r.ok]
        print()
        print(
            f"data-free training step, D, batch {args.batch_size}, compiled bf16 channels-last fused SGD: "
            f"{free:,.0f} images/s; from JPEGs through `vgg train` (D stages, median of logged windows): "
            + (
                ", ".join(f"{v:,.0f}" for v in ours) + f" images/s ({ours[0] / free:.0%} of data-free)"
                if ours
                else "n/a"
            )
        )
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    return 0 if all(r.ok for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
