"""ONNX export: the crop net (dynamic batch) or the dense net (dynamic batch, height and width).

The exported graph takes the normalised input, as the torch model does; the weights' input convention
(``pretrained_cfg``) and the architecture travel in the ONNX file's metadata (``vggnet.pretrained_cfg``,
``vggnet.arch``). ``check_onnx`` runs the file in onnxruntime (an optional dependency) against torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_write, check_output
from .pretrained import load_pretrained, make_cfg
from .runs import load_run
from .weights import ARCH_KEY, PRETRAINED_CFG_KEY, export_weights, save_weights, unwrap


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
        raise ValueError(
            "ONNX export needs onnxscript and onnx: pip install onnxscript onnx onnxruntime "
            "(or pip install vggnet[dev])"
        ) from None
    meta = {ARCH_KEY: json.dumps(getattr(net, "arch", {})), "vggnet.input": "dense" if dense else "crop"}
    if getattr(net, "pretrained_cfg", None):
        meta[PRETRAINED_CFG_KEY] = json.dumps(net.pretrained_cfg)

    def write(tmp: str) -> None:
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                (example,),
                dynamic_shapes=shapes,
                input_names=["x"],
                output_names=["scores"],
                dynamo=True,
                opset_version=opset,
                verbose=False,
            )
        for k, v in meta.items():
            program.model.metadata_props[k] = v
        program.save(tmp)

    return atomic_write(path, write)


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    sizes: Sequence[tuple[int, int]],
    dense: bool = False,
    batch: int = 2,
    atol: float = 1e-3,
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


FORMATS = ("onnx", "safetensors", "torchvision", "timm")


def net_to_export(
    run: str | os.PathLike | None = None, weights: str | None = None, normalize: str | None = None
) -> nn.Module:
    """The net of a run folder or of ``weights`` (a file, URL or named source), in eval mode, carrying its input
    convention (``pretrained_cfg``: a run made before weights carried one gets it from its stats.json)."""
    if bool(run) == bool(weights):
        raise ValueError("give a run folder or --weights FILE|SOURCE (one of them)")
    if weights:
        return load_pretrained(None, weights, normalize=normalize).eval()
    r = load_run(run)
    model = r.model
    if not getattr(model, "pretrained_cfg", None):  # older runs: their convention from stats.json
        s = r.config.get("scale_min", model.crop_size)
        model.pretrained_cfg = make_cfg(
            r.convention,
            source=str(r.path),
            num_classes=model.num_classes,
            classes=list(r.classes),
            resize=s,
            crop=model.crop_size,
        )
    return model.eval()


# The configs torchvision and timm build (vgg11, vgg13, vgg16, vgg19 and their _bn): A-LRN, C and B-5x5 have none.
LIBRARY_CONFIGS = ("A", "B", "D", "E")


def export(
    model: nn.Module,
    out: str | os.PathLike,
    format: str = "onnx",
    dense: bool = False,
    force: bool = False,
    reads: Sequence[str | os.PathLike | None] = (),
) -> Path:
    """Write ``model`` as ONNX (crop or dense net), our safetensors, or a torchvision / timm state dict.

    ``out`` is checked first (:func:`vggnet.files.check_output`): never a device, FIFO or folder, never a file
    in ``reads`` (the weights the net came from) or a run's own file, an existing file only with ``force``.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if dense and format != "onnx":
        raise ValueError("--dense applies to --format onnx (the weights are the same for crops and dense)")
    config = getattr(unwrap(model), "arch", {}).get("config")
    if format in ("torchvision", "timm") and config not in LIBRARY_CONFIGS:
        raise ValueError(
            f"--format {format}: {format} has no VGG of config {config} (only A, B, D, E: vgg11-19); "
            f"export it with --format safetensors or onnx"
        )
    check_output(out, force=force, reads=reads)
    if format == "onnx":
        return export_onnx(model, out, dense=dense)
    if format == "safetensors":
        return save_weights(model, out)
    return export_weights(model, out, layout=format)


__all__ = ["DenseNet", "FORMATS", "LIBRARY_CONFIGS", "check_onnx", "export", "export_onnx", "net_to_export"]
