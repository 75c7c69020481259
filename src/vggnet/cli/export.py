"""`vgg export`: write the net of a run or of --weights as ONNX (crop or dense net), safetensors, or a
torchvision / timm state dict."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from ..export import FORMATS, check_onnx, export, net_to_export
from ..pretrained import NORMALIZE_FORMS_OF_WEIGHTS, WEIGHTS_FORMS
from ..runs import MODEL_FILE


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vgg export [RUN] [--weights W] --format onnx [--dense] --out FILE`."""
    parser.add_argument("run", nargs="?", metavar="RUN", help="a run folder (or give --weights)")
    parser.add_argument("--weights", default=None, metavar="SOURCE", help=f"weights instead of a run: {WEIGHTS_FORMS}")
    parser.add_argument(
        "--normalize",
        default=None,
        metavar=NORMALIZE_FORMS_OF_WEIGHTS,
        help="the input convention of --weights that do not carry one (kept in the file's metadata)",
    )
    parser.add_argument(
        "--format",
        default="onnx",
        choices=FORMATS,
        help="onnx (default), safetensors (ours, with the input convention), or a torchvision / timm state dict",
    )
    parser.add_argument(
        "--dense",
        action="store_true",
        help="ONNX of the dense (fully convolutional) net: dynamic batch, height and width",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace --out when it exists (never a run's own file, the input, a device or a folder)",
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the ONNX file in onnxruntime against torch (default on when onnxruntime is installed)",
    )


def run_export_cli(args: argparse.Namespace) -> int:
    """`vgg export`: write the net of a run or of --weights in another format."""
    model = net_to_export(args.run, args.weights, args.normalize)
    reads = [Path(args.run) / MODEL_FILE if args.run else None, args.weights]
    path = export(model, args.out, args.format, args.dense, force=args.force, reads=reads)
    if args.format != "onnx":
        print(f"wrote {path}")
        return 0
    print(
        f"wrote {path} ({'dense: batch, height and width dynamic' if args.dense else 'crops: batch dynamic'}; "
        f"input {model.crop_size}x{model.crop_size} or larger, normalised as its metadata says)"
    )
    if args.check and importlib.util.find_spec("onnxruntime") is not None:
        c = model.crop_size
        sizes = [(c, c), (c + 32, c + 64), (c + 75, c + 41)] if args.dense else [(c, c)]
        diffs = check_onnx(model, path, sizes, dense=args.dense)
        print(f"checked in onnxruntime at {', '.join(f'{h}x{w}' for h, w in sizes)}: max |diff| {max(diffs):.2g}")
    return 0
