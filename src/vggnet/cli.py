"""The `vgg` command: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import json
import sys

from . import configs


def _params_rows(num_classes: int, size: int) -> list[dict]:
    from .model import create_model

    names = list(configs.CONFIGS) + [f"{c}-BN" for c in configs.CONFIGS]
    rows = []
    for name in names:
        # the meta device builds the net without allocating its 130M+ weights
        import torch

        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes)
        config, bn = configs.parse_name(name)
        aliases = [a for a, c in configs.ALIASES.items() if c == config]
        macs = model.macs(size)
        rows.append(
            dict(
                arch=name,
                alias=(aliases[0] + ("_bn" if bn else "")) if aliases else "",
                weight_layers=configs.weight_layers(config),
                params=sum(p.numel() for p in model.parameters()),
                gmacs=round(macs / 1e9, 3),
                gflops=round(2 * macs / 1e9, 3),
            )
        )
    return rows


def cmd_params(args: argparse.Namespace) -> int:
    rows = _params_rows(args.num_classes, args.size)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"Table 2: parameters of the VGG nets ({args.num_classes} classes; GMAC/GFLOP per {args.size}x{args.size} image)")
    print()
    print("| net | alias | weight layers | parameters | millions | GMAC | GFLOP |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['alias']} | {r['weight_layers']} | {r['params']:,} | {r['params'] / 1e6:.0f}M "
            f"| {r['gmacs']:.2f} | {r['gflops']:.2f} |"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgg", description="The VGG paper end to end: train, evaluate, reproduce.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("params", help="print Table 2: parameters, weight layers and GFLOPs of every net")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a Markdown table")
    p.add_argument("--num-classes", type=int, default=1000, help="size of the last layer (default 1000)")
    p.add_argument("--size", type=int, default=224, help="input side for the FLOP count (default 224)")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"vgg {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
