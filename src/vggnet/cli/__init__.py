"""The `vgg` command: parses arguments and calls the library; no logic of its own.

Every failure ends in one line on stderr naming the file or flag and the fix, and a non-zero exit code; the
traceback is shown with ``--debug`` (or ``VGG_DEBUG=1``). Only the chosen command's options are built, so
``vgg --help`` and ``vgg train --help`` answer without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys


def cmd_params(args: argparse.Namespace) -> int:
    # imported when the command runs: they import torch, which `vgg --help` must not wait for
    from ..factory import model_table
    from ..report import markdown_table

    rows = model_table(args.num_classes, args.size)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(
        f"Table 2: parameters of the VGG nets ({args.num_classes} classes; "
        f"GMAC/GFLOP per {args.size}x{args.size} image)"
    )
    print()
    headers = ("net", "alias", "weight layers", "parameters", "millions", "GMAC", "GFLOP")
    cells = [
        (
            r["arch"],
            r["alias"],
            r["weight_layers"],
            f"{r['params']:,}",
            f"{r['params'] / 1e6:.0f}M",
            f"{r['gmacs']:.2f}",
            f"{r['gflops']:.2f}",
        )
        for r in rows
    ]
    print(markdown_table(headers, cells, align="llrrrrr"))
    print()
    print("B-5x5 is not in Table 2: section 4.1's control net, B with each pair of 3x3 convs replaced by one 5x5 conv.")
    return 0


_GROUPS = {
    "model": ("arch", "width", "fc_width", "crop_size", "dropout", "batch_norm", "init"),
    "fine-tuning (docs/finetune.md)": ("init_from", "finetune_preset", "freeze", "head_lr_mult"),
    "data": (
        "data",
        "val",
        "val_fraction",
        "class_names",
        "scale_min",
        "scale_max",
        "flip",
        "colour_shift",
        "normalize",
        "pixel_range",
        "stats_images",
        "workers",
    ),
    "optimisation (the paper's recipe)": (
        "epochs",
        "batch_size",
        "accum_steps",
        "lr",
        "momentum",
        "weight_decay",
        "plateau",
        "lr_window",
        "lr_patience",
        "lr_threshold",
        "lr_decays",
        "label_smoothing",
    ),
}
# the placeholders of --help where the field's name would say less (SOURCE: as every command that reads weights)
_METAVARS = {"init_from": "SOURCE", "data": "DIR_OR_NAME", "out": "RUN_DIR"}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One dashed option per TrainConfig field, grouped; defaults stay None so recipes and presets can fill them."""
    from dataclasses import fields

    from ..config import TrainConfig, field_help

    helps = field_help()
    groups = {title: p.add_argument_group(title) for title in _GROUPS}
    system = p.add_argument_group("system, run folder, checkpoints")
    for f in fields(TrainConfig):
        group = next((groups[t] for t, names in _GROUPS.items() if f.name in names), system)
        flag = "--" + f.name.replace("_", "-")
        text = f"{helps.get(f.name, '')} (default {f.default!r})"
        if isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            metavar = _METAVARS.get(f.name, f.name.upper())
            group.add_argument(flag, dest=f.name, type=type(f.default), default=None, help=text, metavar=metavar)
    p.add_argument(
        "--scale",
        metavar="S[,SMAX]",
        help="training scale: S, or Smin,Smax for scale jittering (sets --scale-min and --scale-max)",
    )
    p.add_argument("--recipe", metavar="FILE.toml", help="a TOML recipe of these options (flags override it)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .. import config as config_mod
    from ..runtime import is_main
    from ..training import resolve_config, train

    overrides = {f.name: getattr(args, f.name) for f in fields(config_mod.TrainConfig)}
    if args.scale:
        try:
            parts = [int(v) for v in args.scale.split(",")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2):
            raise ValueError(f"--scale takes S or Smin,Smax (integers), got {args.scale!r}")
        overrides["scale_min"], overrides["scale_max"] = parts[0], parts[-1]
    if args.resume:
        given = {k: v for k, v in overrides.items() if v is not None}
        if args.recipe:
            given = {**config_mod.read_recipe(args.recipe), **given}
        run = train(given, resume=args.resume)
    else:
        run = train(resolve_config(overrides, recipe=args.recipe))  # with --init-from: the net from SOURCE
    if is_main():
        print(f"run folder: {run}")
        if not (run / "model.safetensors").is_file():  # stopped by --max-steps inside the first epoch
            print(
                f"  no weights yet (they are written at the end of each epoch); continue with "
                f"`vgg train --resume {run}`"
            )
            return 0
        print(f"  weights:  {run / 'model.safetensors'}")
        print(f"  metrics:  {run / 'metrics.jsonl'}")
        print(f"  plots:    {run / 'plots' / 'learning_curves.png'}")
        print(f"evaluate it with: vgg eval {run} --protocol center,dense,multicrop,dense+multicrop")
    return 0


# The commands that live in their own modules: (name, module, function adding its options, function running it
# or None when the options set it themselves, help, description). Their modules import torch, so a command's
# module is imported only when that command runs (or for the full parser).
_MODULE_COMMANDS = (
    (
        "eval",
        "cli.evaluate",
        "add_eval_arguments",
        "run_eval_cli",
        "evaluate runs with the paper's protocols (dense, multi-crop, both, centre)",
        None,
    ),
    (
        "fuse",
        "cli.evaluate",
        "add_fuse_arguments",
        "run_fuse_cli",
        "fuse several runs: average their soft-max posteriors (Table 6)",
        None,
    ),
    (
        "predict",
        "cli.evaluate",
        "add_predict_arguments",
        "run_predict_cli",
        "top-5 classes of images (dense, multi-scale, flips)",
        None,
    ),
    (
        "export",
        "cli.export",
        "add_export_arguments",
        "run_export_cli",
        "write a run or --weights as ONNX (crop or dense net), safetensors, or a torchvision/timm state dict",
        None,
    ),
    (
        "localize",
        "cli.localize",
        "add_localize_arguments",
        None,
        "object localisation (Appendix A): train box regressors from a run, evaluate them (Tables 8-9)",
        "`vgg localize train --from RUN --regression scr|pcr [--finetune all|fc]` makes a localisation run; "
        "`vgg localize eval LOCRUN... --protocol center,dense [--scales ...]` reports its errors.",
    ),
    (
        "features",
        "cli.features",
        "add_features_arguments",
        "run_features_cli",
        "very deep features (Appendix B): a net's image descriptors of a data set, into a safetensors file",
        "Describe every image of --data with a net applied densely without its last layer, averaged over "
        "locations and flips, L2-normalised, at several scales averaged or stacked.",
    ),
    (
        "transfer",
        "cli.transfer",
        "add_transfer_arguments",
        "run_transfer_cli",
        "a linear SVM on features files over random splits: accuracy, mean class recall, mAP (Tables 11-12)",
        None,
    ),
    (
        "reproduce",
        "cli.reproduce",
        "add_reproduce_arguments",
        "run_reproduce_cli",
        "run the paper's experiments (Tables 3-6, its findings) and write REPORT.md",
        "Train and evaluate the paper's grid (Tables 3-6 and section 4.1's B-5x5): small scale on the embedded "
        "mnist-clutter digits (default), an ImageNet-style subset on one GPU with --grid medium --data DIR, or "
        "the paper's ImageNet schedule with --grid paper.",
    ),
)
COMMANDS = ("params", "train") + tuple(c[0] for c in _MODULE_COMMANDS)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `vgg` parser. ``only``: build the options of that command alone (the others keep their name and
    help line; "" builds none): the evaluation and reproduction modules import torch, which takes seconds."""

    def want(name: str) -> bool:
        return only is None or only == name

    parser = argparse.ArgumentParser(prog="vgg", description="The VGG paper end to end: train, evaluate, reproduce.")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("params", help="print Table 2: parameters, weight layers and GFLOPs of every net")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a Markdown table")
    p.add_argument("--num-classes", type=int, default=1000, help="size of the last layer (default 1000)")
    p.add_argument("--size", type=int, default=224, help="input side for the FLOP count (default 224)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser(
        "train",
        help="train a net with the paper's recipe (no arguments: the embedded MNIST demo)",
        description="Train a VGG net. Values come from the paper's defaults, overlaid by the embedded data "
        "set's preset (for mnist / mnist-scale), a --recipe file, then these flags. Launch with torchrun for "
        "several GPUs or machines.",
    )
    if want("train"):
        add_train_arguments(p)
        p.set_defaults(func=cmd_train)

    for name, module, adder, runner, text, description in _MODULE_COMMANDS:
        p = sub.add_parser(name, help=text, description=description)
        if want(name):
            mod = importlib.import_module(f"vggnet.{module}")  # e.g. vggnet.cli.evaluate
            getattr(mod, adder)(p)
            if runner is not None:
                p.set_defaults(func=getattr(mod, runner))
    return parser


# Errors a user can cause and fix (a path, a flag, a file); anything else is reported as an internal error.
_USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:600] + (" ..." if len(text) > 600 else "") if text else type(e).__name__


def _describe(e: BaseException) -> tuple[str, int]:
    """(message, exit code) of an exception that ends a command."""
    import errno
    import pickle

    if isinstance(e, _USAGE_ERRORS):
        return _one_line(e), 2
    if isinstance(e, OSError):
        hint = ""
        if e.errno == errno.ENOSPC:
            hint = "; free some space (or point --out elsewhere) and run the same command again: it continues"
        return f"{_one_line(e)}{hint}", 1
    if isinstance(e, pickle.UnpicklingError):
        return f"refused to unpickle a file: {_one_line(e)}", 1
    if type(e).__name__ in ("NonFiniteLoss",):
        return _one_line(e), 1
    if type(e).__name__ == "SafetensorError":  # safetensors' errors: most often a full disk or a torn file
        return f"safetensors: {_one_line(e)} (a full disk, or a damaged .safetensors file)", 1
    return f"{type(e).__name__}: {_one_line(e)} (rerun with --debug for the traceback)", 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("VGG_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    command = next((a for a in argv if not a.startswith("-")), "")
    parser = build_parser(command if command in COMMANDS else "")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        code = args.func(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at interpreter exit
        return code
    except BrokenPipeError:
        # `vgg predict ... | head`: the reader left; say nothing more (Python would complain again at exit)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt as e:
        if debug:
            raise
        print(f"vgg {args.command}: {e}" if str(e) else f"vgg {args.command}: interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug shows the traceback
        if debug:
            raise
        message, code = _describe(e)
        print(f"vgg {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
