"""What a reproduction plan will cost before it runs: training and evaluation FLOPs of every run, turned into
GPU-hours by a step rate that is measured on this machine's GPU or, without one, stated.

The stated rate is docs/performance.md's reference on one H200: about 5,000 training images/s for net D (VGG-16)
at 224 (bf16, channels-last, torch.compile), i.e. 92.65 GFLOP a training image (forward + backward, 3x the
forward) at 463 TFLOP/s. Every net is assumed to reach the same FLOP rate, so a net's images/s is that rate
divided by its own training FLOPs (A: 2x D's images/s; E: 0.79x). The measured rate, when a GPU is there, is
a few training steps of net D at the plan's crop in bf16 with channels-last, eager (no compile): lower than the
compiled rate, so the estimate errs long.

A run's epochs are not known in advance (the plateau schedule stops it); the estimate counts its epoch cap,
an upper bound, and says so.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..data.folders import is_image_file
from ..factory import create_model

STATED_IMAGES_PER_S = 5000.0  # net D at 224, training, one H200 (docs/performance.md, reference measurements)
STATED_NET, STATED_CROP = "D", 224


def forward_flops(arch: str, num_classes: int, height: int, image_width: int | None = None, **options: Any) -> float:
    """FLOPs (2 x multiply-accumulates) of one forward pass at ``height`` x ``image_width`` (square by default),
    of the net built on the meta device with ``options`` (width, fc_width, crop_size, batch_norm)."""
    opts = {k: v for k, v in options.items() if k in ("width", "fc_width", "crop_size", "batch_norm")}
    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes, **opts)
    return 2.0 * model.macs(height, image_width or height)


def count_images(folder: str | os.PathLike) -> tuple[int, int]:
    """(images, classes) of a class-folder tree, by file name (nothing is decoded)."""
    root = Path(folder)
    classes = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")] if root.is_dir() else []
    n = 0
    for d in classes:
        for _, _, files in os.walk(d):
            n += sum(is_image_file(f) for f in files)
    return n, len(classes)


def measure_rate(crop: int, device: str = "cuda", steps: int = 5, batch: int = 64) -> float | None:
    """Training images/s of net D at ``crop`` on ``device`` (bf16, channels-last, eager), or None without CUDA."""
    if not (device.startswith("cuda") or device == "auto") or not torch.cuda.is_available():
        return None
    dev = torch.device("cuda" if device == "auto" else device)
    model = create_model(STATED_NET, num_classes=1000, crop_size=crop).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, crop, crop, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(dev)
    rate = steps * batch / (time.perf_counter() - t0)
    model = opt = x = y = None  # frees the GPU memory (the closure holds these names)
    torch.cuda.empty_cache()
    return rate


def estimate(plan: Any, measured: float | None = None) -> dict[str, Any]:
    """Per run: training FLOPs a image, images per epoch, epoch cap, hours at the rate; and the totals.

    The rate: ``measured`` (training images/s of net D at the plan's crop), else the stated H200 figure
    scaled from 224 to the plan's crop by FLOPs. Evaluation: dense at each test scale on 4:3 images (plus their
    flips) and, for the fused D and E, 50 crops a scale; FLOPs at the same rate as training's forward passes.
    """
    first = plan.runs[0].config()
    crop = first.crop_size
    train_dir = Path(str(first.data)).expanduser() / "train"
    val_dir = Path(str(first.data)).expanduser() / "val"
    n_train, classes = count_images(train_dir)
    n_val, _ = count_images(val_dir)
    classes = classes or 1000
    opts = dict(width=first.width, fc_width=first.fc_width, crop_size=crop)
    ref_train = 3 * forward_flops(STATED_NET, classes, crop, **opts)  # forward + backward: 3 forwards
    if measured:
        flop_rate, source = measured * ref_train, f"measured: net D trains at {measured:,.0f} images/s here"
    else:
        stated = 3 * forward_flops(STATED_NET, 1000, STATED_CROP)
        flop_rate = STATED_IMAGES_PER_S * stated
        source = (
            f"stated: net D at 224 trains at {STATED_IMAGES_PER_S:,.0f} images/s on one H200 "
            f"(docs/performance.md, {flop_rate / 1e12:.0f} TFLOP/s), "
            "the same FLOP rate assumed for every net"
        )
    rows, total_train = [], 0.0
    for r in plan.runs:
        cfg = r.config()
        per_image = 3 * forward_flops(r.arch, classes, crop, **opts)
        seconds = cfg.epochs * n_train * per_image / flop_rate
        total_train += seconds
        rows.append(
            dict(
                name=r.name,
                arch=r.arch,
                epochs=cfg.epochs,
                gflop_per_image=per_image / 1e9,
                images_per_s=flop_rate / per_image,
                hours=seconds / 3600,
            )
        )
    total_eval = 0.0
    for e in plan.evals:
        qs = sorted(set(e.multi) | {e.single})
        for name in e.runs:
            arch = plan.run(name).arch
            dense = sum(forward_flops(arch, classes, q, q * 4 // 3, **opts) for q in qs) * 2  # and the flips
            crops = 50 * len(e.multi) * forward_flops(arch, classes, crop, **opts) if e.kind == "protocols" else 0
            total_eval += n_val * (dense + crops) / flop_rate
    return dict(
        train_images=n_train,
        val_images=n_val,
        classes=classes,
        crop=crop,
        rate_source=source,
        runs=rows,
        train_hours=total_train / 3600,
        eval_hours=total_eval / 3600,
        total_hours=(total_train + total_eval) / 3600,
    )


def estimate_text(plan: Any, measured: float | None = None) -> str:
    """The estimate as the lines `vgg reproduce` prints before it starts (and with --dry-run)."""
    est = estimate(plan, measured)
    lines = [
        f"Estimate: {est['train_images']:,} training and {est['val_images']:,} validation images, {est['classes']} "
        f"classes, {est['crop']} crops; rate {est['rate_source']}.",
        "  run: net, epochs (cap), GFLOP a training image, images/s, GPU-hours at the cap",
    ]
    for r in est["runs"]:
        lines.append(
            f"  {r['name']}: {r['arch']}, {r['epochs']}, {r['gflop_per_image']:.1f}, "
            f"{r['images_per_s']:,.0f}, {r['hours']:.3g}"
        )
    lines.append(
        f"Total: at most {est['total_hours']:.3g} GPU-hours ({est['train_hours']:.3g} training at every run's epoch "
        f"cap, {est['eval_hours']:.3g} evaluation); the plateau schedule usually stops runs earlier. Data loading "
        "is assumed to keep up with the GPU."
    )
    return "\n".join(lines)


__all__ = ["count_images", "estimate", "estimate_text", "forward_flops", "measure_rate"]
