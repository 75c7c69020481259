"""ONNX export: the crop net (dynamic batch) or the dense net (dynamic batch, height and width).

The exported graph takes the normalised input, as the torch model does; the weights' input convention
(``pretrained_cfg``) and the architecture travel in the ONNX file's metadata (``vggnet.pretrained_cfg``,
``vggnet.arch``). ``check_onnx`` runs the file in onnxruntime (an optional dependency) against torch.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .weights import ARCH_KEY, PRETRAINED_CFG_KEY, atomic_write, unwrap


class DenseNet(nn.Module):
    """``model.dense(x)`` as a module's forward: the class score map of whole images of any size."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.dense(x)


def export_onnx(model: nn.Module, path: str | os.PathLike, dense: bool = False, opset: int | None = None) -> Path:
    """Write ``model`` as ONNX (atomically): the crop net on (N, 3, crop, crop) inputs with N dynamic, or with
    ``dense`` the fully convolutional net on (N, 3, H, W) with N, H and W dynamic (H, W >= the crop size).

    Exported with torch.export (``torch.onnx.export(dynamo=True)``, which needs onnxscript).
    """
    net = unwrap(model).eval()
    crop = net.crop_size
    batch = torch.export.Dim("batch", min=1, max=4096)
    if dense:
        module: nn.Module = DenseNet(net).eval()
        h, w = torch.export.Dim("height", min=crop, max=8192), torch.export.Dim("width", min=crop, max=8192)
        example = torch.randn(2, 3, crop + 32, crop + 64)
        shapes: dict[str, Any] = {"x": {0: batch, 2: h, 3: w}}
    else:
        module, example = net, torch.randn(2, 3, crop, crop)
        shapes = {"x": {0: batch}}
    try:
        import onnxscript  # noqa: F401  torch's ONNX exporter needs it
    except ImportError:
        raise ValueError("ONNX export needs onnxscript and onnx: pip install onnxscript onnx onnxruntime "
                         "(or pip install vggnet[dev])") from None  # fmt: skip
    meta = {ARCH_KEY: json.dumps(getattr(net, "arch", {})), "vggnet.input": "dense" if dense else "crop"}
    if getattr(net, "pretrained_cfg", None):
        meta[PRETRAINED_CFG_KEY] = json.dumps(net.pretrained_cfg)

    def write(tmp: str) -> None:
        with torch.no_grad():
            program = torch.onnx.export(module, (example,), dynamic_shapes=shapes, input_names=["x"],
                                        output_names=["scores"], dynamo=True, opset_version=opset,
                                        verbose=False)  # fmt: skip
        for k, v in meta.items():
            program.model.metadata_props[k] = v
        program.save(tmp)

    return atomic_write(path, write)


def check_onnx(
    model: nn.Module, path: str | os.PathLike, sizes: Sequence[tuple[int, int]], dense: bool = False,
    batch: int = 2, atol: float = 1e-3,
) -> list[float]:
    """Run the ONNX file in onnxruntime and the torch model (``model.dense`` with ``dense``) on the same random
    inputs of each (H, W) in ``sizes``; return the max abs differences, raising if one exceeds ``atol`` times
    the output scale."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("checking an ONNX file needs onnxruntime: pip install onnxruntime") from None
    net = unwrap(model).eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    gen = torch.Generator().manual_seed(0)
    for h, w in sizes:
        x = torch.randn(batch, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = net.dense(x) if dense else net(x)
        out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        if out.shape != ref.shape:
            raise ValueError(f"{path}: output {tuple(out.shape)} at {h}x{w}, torch gives {tuple(ref.shape)}")
        d = (out - ref).abs().max().item()
        if d > atol * max(1.0, ref.abs().max().item()):
            raise ValueError(f"{path}: onnxruntime differs from torch by {d:.3g} at {h}x{w}")
        diffs.append(d)
    return diffs


# ---------------------------------------------------------------------------------------------------------------
# Command-line glue (wired into `vgg` by cli.py)

FORMATS = ("onnx", "safetensors", "torchvision", "timm")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vgg export [RUN] [--weights W] --format onnx [--dense] --out FILE`."""
    parser.add_argument("run", nargs="?", metavar="RUN", help="a run folder (or give --weights)")
    parser.add_argument("--weights", default=None, metavar="FILE|URL|SOURCE",
                        help="weights instead of a run: a file, a URL, or torchvision:vgg16, timm:..., caffe:vgg16")
    parser.add_argument("--normalize", default=None, metavar="imagenet|caffe|mean:R,G,B",
                        help="the input convention of --weights that do not carry one (kept in the file's metadata)")
    parser.add_argument("--format", default="onnx", choices=FORMATS,
                        help="onnx (default), safetensors (ours, with the input convention), or a torchvision / "
                             "timm state dict")  # fmt: skip
    parser.add_argument("--dense", action="store_true",
                        help="ONNX of the dense (fully convolutional) net: dynamic batch, height and width")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                        help="run the ONNX file in onnxruntime against torch (default on when onnxruntime is installed)")


def run_export_cli(args: argparse.Namespace) -> int:
    """`vgg export`: write the net of a run or of --weights in another format."""
    if bool(args.run) == bool(args.weights):
        raise ValueError("give a run folder or --weights FILE|SOURCE (one of them)")
    if args.run:
        from .runs import load_run

        run = load_run(args.run)
        model = run.model
        if not getattr(model, "pretrained_cfg", None):  # older runs: their convention from stats.json
            from .pretrained import make_cfg

            s = run.config.get("scale_min", model.crop_size)
            model.pretrained_cfg = make_cfg(tuple(run.mean.tolist()), tuple(run.std.tolist()), source=str(run.path),
                                            num_classes=model.num_classes, classes=list(run.classes), resize=s,
                                            crop=model.crop_size)  # fmt: skip
    else:
        from .pretrained import load_pretrained

        model = load_pretrained(None, args.weights, normalize=args.normalize)
    model.eval()
    if args.dense and args.format != "onnx":
        raise ValueError("--dense applies to --format onnx (the weights are the same for crops and dense)")
    if args.format == "onnx":
        path = export_onnx(model, args.out, dense=args.dense)
        print(f"wrote {path} ({'dense: batch, height and width dynamic' if args.dense else 'crops: batch dynamic'}; "
              f"input {model.crop_size}x{model.crop_size} or larger, normalised as its metadata says)")  # fmt: skip
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return 0
        if args.check:
            c = model.crop_size
            sizes = [(c, c), (c + 32, c + 64), (c + 75, c + 41)] if args.dense else [(c, c)]
            diffs = check_onnx(model, path, sizes, dense=args.dense)
            print(f"checked in onnxruntime at {', '.join(f'{h}x{w}' for h, w in sizes)}: max |diff| "
                  f"{max(diffs):.2g}")  # fmt: skip
        return 0
    if args.format == "safetensors":
        from .weights import save_weights

        path = save_weights(model, args.out)
    else:
        from .weights import export_weights

        path = export_weights(model, args.out, layout=args.format)
    print(f"wrote {path}")
    return 0
