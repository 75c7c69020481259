"""`vgg transfer`: a linear SVM on features files over random splits (Appendix B, Tables 11-12)."""

from __future__ import annotations

import argparse

from ..report import write_report
from ..transfer import CLASSIFIERS, markdown, transfer


def add_transfer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="features files made by `vgg features`")
    p.add_argument("--classifier", choices=CLASSIFIERS, default="linear-svm")
    p.add_argument(
        "--train-per-class",
        default="5,10,30",
        help="training images per class, comma-separated (one table row each; default 5,10,30)",
    )
    p.add_argument("--splits", type=int, default=5, help="random splits per setting (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="write transfer.md and transfer.json here")


def run_transfer_cli(args: argparse.Namespace) -> int:
    try:
        ns = [int(v) for v in args.train_per_class.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--train-per-class takes comma-separated integers, got {args.train_per_class!r}") from None
    if not ns or min(ns) < 1 or args.splits < 1:
        raise ValueError("--train-per-class and --splits must be positive")
    results = [transfer(f, n, args.splits, args.seed, args.classifier) for f in args.files for n in ns]
    text = markdown(results)
    print(text)
    if args.out:
        md, _ = write_report(args.out, "transfer", text, {"results": [r.to_dict() for r in results]})
        print(f"report: {md}")
    return 0
