"""`vgg features`: very deep features (Appendix B) of a data set's images, into a safetensors file."""

from __future__ import annotations

import argparse

from ..descriptors import AGGREGATES, compute_features
from ..pretrained import NORMALIZE_FORMS_OF_WEIGHTS, WEIGHTS_FORMS


def add_features_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", metavar="RUN", help="a run folder whose net describes the images")
    p.add_argument(
        "--weights",
        metavar="SOURCE",
        help="weights instead of a run: " + WEIGHTS_FORMS + "; the input convention they carry (or --normalize)",
    )
    p.add_argument(
        "--normalize",
        default=None,
        metavar=NORMALIZE_FORMS_OF_WEIGHTS,
        help="the input convention of a --weights file that carries none",
    )
    p.add_argument(
        "--data",
        required=True,
        help="images: an embedded data set (uci-digits, mnist, ...) or a class "
        "folder tree; all its images (train and val) are described",
    )
    p.add_argument(
        "--scales",
        default="",
        help="test scales Q, comma-separated (default: the net's, by the paper's "
        "rule: {S - 32, S, S + 32} for a fixed S at 224 crops, {Smin, mid, Smax} for a jittered net)",
    )
    p.add_argument(
        "--aggregate",
        choices=AGGREGATES,
        default="mean",
        help="average the scales' descriptors or stack (concatenate) them (default mean)",
    )
    p.add_argument("--no-flip", dest="flip", action="store_false", help="do not average with the flipped image")
    p.add_argument("--random-init", action="store_true", help="baseline: the run's net with random weights")
    p.add_argument(
        "--raw-pixels", type=int, default=0, metavar="SIDE", help="baseline: the pixels rescaled to SIDE x SIDE, no net"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="the features file")


def run_features_cli(args: argparse.Namespace) -> int:
    try:
        scales = [int(v) for v in args.scales.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--scales takes comma-separated integers, got {args.scales!r}") from None
    feats = compute_features(
        args.data,
        run=args.run,
        weights=args.weights,
        scales=scales or None,
        how=args.aggregate,
        flip=args.flip,
        random_init=args.random_init,
        raw_pixels=args.raw_pixels,
        device=args.device,
        out=args.out,
        normalize=args.normalize,
    )
    n, d = feats.descriptors.shape
    print(
        f"{args.out}: {n} descriptors of {d} dimensions ({feats.net}; scales {feats.meta['scales']}, "
        f"{feats.meta['aggregate']}; {feats.meta.get('seconds', 0):.0f}s)"
    )
    print(f"classify them with: vgg transfer {args.out} --classifier linear-svm")
    return 0
