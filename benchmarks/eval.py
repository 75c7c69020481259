"""Evaluation throughput: images/s of each test protocol (dense, multi-crop, both, centre crop).

By default a small random net (config A at 1/16 width, 32-pixel crops) on synthetic images, so that it runs on
a laptop CPU in well under a minute:

    python benchmarks/eval.py

The paper's net D at Q = 384 on a GPU (the performance page's dense-evaluation target):

    python benchmarks/eval.py --preset D384 --device cuda

Images are random uint8 tensors held in memory (decoding is not measured here), in four aspect ratios
(4:3, 3:4, 3:2, 1:1) so that dense evaluation sees several shape groups, as with real photos. Each protocol's
images/s is its compute time (rescale and forward passes, GPU synchronised) as ``vggnet.evaluation`` reports
it, the median of ``--repeats`` runs after one warm-up run. GFLOP/image counts the conv and FC layers of every
view; TFLOP/s is that times images/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import vggnet
from vggnet.evaluation import PROTOCOLS, evaluate, parse_protocols
from vggnet.report import markdown_table, provenance
from vggnet.runtime import runtime

PRESETS = {
    # the paper's net D, ImageNet-sized: 224 crops, evaluated at Q = 384
    "D384": dict(
        arch="D", width=1.0, fc_width=4096, crop_size=224, classes=1000, scales="384", images=1024, protocols="dense"
    ),
}
ASPECTS = [(3, 4), (4, 3), (2, 3), (1, 1)]  # height : width of the synthetic "photos"


def synthetic_images(n: int, short_side: int, same_size: bool, seed: int = 0) -> list[torch.Tensor]:
    """``n`` random uint8 images whose smaller side is ``short_side``, cycling through ``ASPECTS``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        a, b = ASPECTS[0 if same_size else i % len(ASPECTS)]
        h, w = (short_side, short_side * b // a) if a <= b else (short_side * a // b, short_side)
        out.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
    return out


def view_gflop(model: vggnet.VGG, protocol: str, qs: list[int], images: list[torch.Tensor], flip: bool) -> float:
    """Forward GFLOP per image of a protocol's views, averaged over the images' shapes."""
    c = model.crop_size
    total = 0.0
    for img in images:
        h, w = img.shape[-2:]
        for q in qs:
            rh, rw = (q, round(w * q / h)) if h <= w else (round(h * q / w), q)
            for kind in PROTOCOLS[protocol]:
                if kind == "dense":
                    total += 2 * model.macs(rh, rw) * (2 if flip else 1)
                elif kind == "multicrop":
                    total += 2 * model.macs(c) * 25 * (2 if flip else 1)
                else:
                    total += 2 * model.macs(c)
    return total / len(images) / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named setting (overrides the net and data flags)")
    p.add_argument("--arch", default="A", help="config letter or alias (default A)")
    p.add_argument("--width", type=float, default=1 / 16, help="conv width multiplier (default 1/16)")
    p.add_argument("--fc-width", type=int, default=64, help="FC1/FC2 width (default 64)")
    p.add_argument("--crop-size", type=int, default=32, help="training crop size (default 32)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--scales", default="32,40,48", help="test scales Q, comma-separated (default 32,40,48)")
    p.add_argument("--protocols", default="dense,multicrop,dense+multicrop,center")
    p.add_argument("--images", type=int, default=64, help="images per run (default 64)")
    p.add_argument("--short-side", type=int, default=None, help="smaller side of the synthetic images (default 1.3 Q)")
    p.add_argument("--same-size", action="store_true", help="all images 4:3 (one shape group) instead of four aspects")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--batch-size", type=int, default=None, help="views per forward pass (default: evaluate's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.preset:
        for k, v in PRESETS[args.preset].items():
            setattr(args, k, v)

    rt = runtime(args.device)
    scales = [int(q) for q in args.scales.split(",")]
    protocols = parse_protocols(args.protocols)
    flip = not args.no_flip
    model = vggnet.create_model(
        args.arch,
        num_classes=args.classes,
        width=args.width,
        fc_width=args.fc_width,
        crop_size=args.crop_size,
        init="kaiming",
        seed=0,
    )
    images = synthetic_images(args.images, args.short_side or round(1.3 * max(scales)), args.same_size)
    samples = [(img, i % args.classes) for i, img in enumerate(images)]
    kw = dict(protocols=protocols, scales=scales, flip=flip, batch_size=args.batch_size, device=rt.device)

    # warm-up: allocator, cuDNN algorithm choice for each shape group, lazy CUDA init
    evaluate(model, samples[: max(len(ASPECTS), min(len(samples), 2 * len(ASPECTS)))], **kw)
    per_protocol: dict[str, list[float]] = {pr: [] for pr in protocols}
    end_to_end = []
    for _ in range(args.repeats):
        res = evaluate(model, samples, **kw)
        for pr in protocols:
            per_protocol[pr].append(res.get(pr).images_per_s)
        end_to_end.append(res.n / res.wall_s)

    info = provenance(rt.device)
    net = f"{args.arch} (width {args.width:g}, FC {args.fc_width}, crop {args.crop_size}, {args.classes} classes)"
    print(
        f"vggnet evaluation throughput: {net}, {args.images} images, Q = {scales}, flip {flip}, batch {res.batch_size}"
    )
    print(
        f"{info['device_name']} ({info['device']}), torch {info['torch']}, {info['threads']} threads; "
        f"median of {args.repeats} runs after a warm-up"
    )
    print()
    rows = []
    for pr in protocols:
        ips = statistics.median(per_protocol[pr])
        gflop = view_gflop(model, pr, scales, images, flip)
        spread = f"{min(per_protocol[pr]):,.1f} - {max(per_protocol[pr]):,.1f}"
        rows.append([pr, ",".join(map(str, scales)), f"{ips:,.1f}", spread, f"{gflop:.3f}", f"{gflop * ips / 1e3:.3g}"])
    print(markdown_table(["protocol", "Q", "images/s", "min - max", "GFLOP/image", "TFLOP/s"], rows, "llrrrr"))
    print()
    print(
        f"all protocols together (shared views computed once, decoding included): "
        f"{statistics.median(end_to_end):,.1f} images/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
