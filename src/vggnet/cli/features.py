"""`vgg features`: very deep features (Appendix B) of a data set's images, into a safetensors file."""

from __future__ import annotations

import argparse

from ..descriptors import AGGREGATES, compute_features


def add_features_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", metavar="RUN", help="a run folder whose net describes the images")
    p.add_argument("--weights", metavar="FILE", help="a weights file instead of a run (ImageNet normalisation)")
    p.add_argument("--data", required=True, help="images: an embedded data set (uci-digits, mnist, ...) or a class "
                   "folder tree; all its images (train and val) are described")  # fmt: skip
    p.add_argument("--scales", default="256,384,512", help="test scales Q, comma-separated (default 256,384,512)")
    p.add_argument("--aggregate", choices=AGGREGATES, default="mean", help="average the scales' descriptors or "
                   "stack (concatenate) them (default mean)")  # fmt: skip
    p.add_argument("--no-flip", dest="flip", action="store_false", help="do not average with the flipped image")
    p.add_argument("--random-init", action="store_true", help="baseline: the run's net with random weights")
    p.add_argument("--raw-pixels", type=int, default=0, metavar="SIDE",
                   help="baseline: the pixels rescaled to SIDE x SIDE, no net")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="the features file")


def run_features_cli(args: argparse.Namespace) -> int:
    try:
        scales = [int(v) for v in args.scales.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--scales takes comma-separated integers, got {args.scales!r}") from None
    if not scales:
        raise ValueError("--scales is empty")
    feats = compute_features(args.data, run=args.run, weights=args.weights, scales=scales, how=args.aggregate,
                             flip=args.flip, random_init=args.random_init, raw_pixels=args.raw_pixels,
                             device=args.device, out=args.out)  # fmt: skip
    n, d = feats.descriptors.shape
    print(f"{args.out}: {n} descriptors of {d} dimensions ({feats.net}; scales {feats.meta['scales']}, "
          f"{feats.meta['aggregate']}; {feats.meta.get('seconds', 0):.0f}s)")
    print(f"classify them with: vgg transfer {args.out} --classifier linear-svm")
    return 0
