"""Very deep features for other data sets (the paper's Appendix B): the image descriptor and the features file.

The descriptor of an image at scale Q: rescale it isotropically to smaller side Q, apply the net densely without
its last FC layer (``model.dense(x, head=False)``: the penultimate, fc_width-dimensional map), average the map
over its locations, do the same for the horizontally flipped image and average the two, L2-normalise. Several
Q are aggregated by averaging their descriptors (``mean``) or concatenating them (``stack``); the result is
L2-normalised again.

A features file (safetensors) holds ``descriptors`` (N, D) float32 and ``labels`` (N,) int64, with the file
names, class names, the net, the scales and the aggregation in its metadata. Writing over a file made with
another net, other scales or another aggregation is refused with a message: the descriptors of two requests
never mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from . import runs
from .convention import Convention
from .data import resolve_data
from .data.io import BadImageError, load_image
from .data.transforms import prepare_images, shape_groups
from .evaluation.nets import Net, as_net, weights_net
from .evaluation.views import dense_views
from .files import atomic_write
from .init import init_weights
from .model import VGG
from .pretrained import resolve_weights
from .runs import load_run
from .runtime import pick_device

AGGREGATES = ("mean", "stack")


# ---- the descriptor ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def scale_descriptors(model: nn.Module, x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """(N, 3, H, W) normalised images of one size -> (N, D) L2-normalised descriptors at that size: the
    penultimate dense map averaged over locations, averaged with the flipped images', L2-normalised."""
    # evaluation's dense views (the one dense averager): each view's map averaged over the windows on the image
    return F.normalize(dense_views(model, x, flip, head=False).mean(1), dim=1)


def aggregate(per_scale: Sequence[torch.Tensor], how: str = "mean") -> torch.Tensor:
    """Combine (N, D) descriptors of several scales: ``mean`` averages them, ``stack`` concatenates them (the
    paper's two ways); the result is L2-normalised."""
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregation {how!r}; use mean or stack")
    out = torch.stack(list(per_scale)).mean(0) if how == "mean" else torch.cat(list(per_scale), 1)
    return F.normalize(out, dim=1)


@torch.inference_mode()
def describe(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    scales: Sequence[int],
    convention: Convention,
    how: str = "mean",
    flip: bool = True,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Descriptors (N, D or D x scales) of uint8 (3, H, W) images (module doc), each rescaled to Q and put into
    the net's input by ``convention`` as every test protocol does (``prepare_images``). Every Q must be at least
    the net's crop size; images of one shape are batched together."""
    crop = getattr(model, "crop_size", 0)
    if scales and min(scales) < crop:
        raise ValueError(f"--scales {','.join(map(str, scales))}: every Q must be >= the net's crop size {crop}")
    model.eval()
    per_scale = []
    for q in scales:
        rows: dict[int, torch.Tensor] = {}
        for idx in shape_groups(images).values():
            for k in range(0, len(idx), batch_size):
                part = idx[k : k + batch_size]
                xs = prepare_images([images[i] for i in part], q, convention)
                x = torch.stack(xs).to(device)
                for i, d in zip(part, scale_descriptors(model, x, flip).cpu()):
                    rows[i] = d
        per_scale.append(torch.stack([rows[i] for i in range(len(images))]) if images else torch.empty(0, 0))
    return aggregate(per_scale, how)


def pixel_descriptors(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """The raw-pixels baseline: each image rescaled to ``size`` x ``size`` (grey), centred, L2-normalised."""
    rows = []
    for img in images:
        x = F.interpolate(img.float().mean(0)[None, None], size=(size, size), mode="bilinear", antialias=True)
        rows.append(x.flatten())
    out = torch.stack(rows)
    return F.normalize(out - out.mean(1, keepdim=True), dim=1)


# ---- the features file ------------------------------------------------------------------------------------------


@dataclass
class Features:
    """A features file in memory."""

    descriptors: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64
    files: list[str]
    classes: list[str]
    meta: dict[str, Any]  # net, net_sha256, scales, aggregate, flip, data, seconds

    @property
    def net(self) -> str:
        return self.meta.get("net", "?")


def save_features(path: str | os.PathLike, f: Features) -> Path:
    meta = {k: json.dumps(v) for k, v in dict(f.meta, files=f.files, classes=f.classes).items()}
    tensors = {"descriptors": f.descriptors.float().contiguous(), "labels": f.labels.long().contiguous()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_features(path: str | os.PathLike) -> Features:
    """Read a features file written by `vgg features`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file {path} does not exist; make it with `vgg features ... --out {path}`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise ValueError(f"{path}: not a features file ({e}); make one with `vgg features`") from None
    if "descriptors" not in tensors or "labels" not in tensors or "files" not in raw:
        raise ValueError(f"{path}: a safetensors file, but not one of `vgg features` (no descriptors/labels/files)")
    meta = {k: json.loads(v) for k, v in raw.items()}
    files, classes = meta.pop("files"), meta.pop("classes", [])
    return Features(tensors["descriptors"], tensors["labels"], files, classes, meta)


def check_request(path: str | os.PathLike, request: dict[str, Any]) -> bool:
    """Whether ``path`` already holds the descriptors of ``request`` (net, scales, aggregate, flip, data): True
    when it does; False when there is no file; a ValueError naming the difference when it holds others."""
    path = Path(path)
    if not path.exists():
        return False
    have = load_features(path).meta
    diff = [k for k in ("net", "net_sha256", "scales", "aggregate", "flip", "data") if have.get(k) != request.get(k)]
    if diff:
        said = ", ".join(f"{k} {have.get(k)!r} (requested {request.get(k)!r})" for k in diff)
        raise ValueError(
            f"{path} holds descriptors of another request: {said}; pass another --out, or delete the "
            "file to recompute it"
        )
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _data_samples(data: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Every image of a data spec (train and val together: transfer draws its own splits)."""
    train, val, classes = resolve_data(data, val_fraction=0.0)
    return sorted(train + val, key=lambda s: (s[1], s[0])), list(classes)


def _describing_net(
    run: str | None, weights: str | None, random_init: bool, normalize: str | None = None
) -> tuple[Net, str, str]:
    """(net, its description, a hash naming its weights) of a run, a run's net with random weights, or
    ``--weights`` (a run folder, a file of any supported layout, a URL or a named source: their own input
    convention, or ``normalize`` for a file that carries none)."""
    if weights and runs.is_run(weights):
        run, weights = weights, None
    if run:
        r = load_run(run)
        if not random_init:
            return as_net(r), f"run {Path(run).resolve()}", _sha256(Path(run) / runs.MODEL_FILE)
        init = str(r.config.get("init", "paper"))  # the run's own initialisation, before any training
        model = init_weights(VGG(**r.model.arch), init, generator=torch.Generator().manual_seed(0))
        net = f"random weights ({model.name} of run {Path(run).resolve()})"
        return replace(as_net(r), model=model), net, f"random-{init}-seed0"
    if weights:
        where = resolve_weights(weights)[0]
        return weights_net(weights, normalize), f"weights {weights}", _sha256(where)
    raise ValueError("vgg features needs a RUN folder, --weights SOURCE or --raw-pixels SIDE")


def compute_features(
    data: str,
    run: str | None = None,
    weights: str | None = None,
    scales: Sequence[int] | None = None,
    how: str = "mean",
    flip: bool = True,
    random_init: bool = False,
    raw_pixels: int = 0,
    device: str = "auto",
    out: str | os.PathLike | None = None,
    normalize: str | None = None,
    log=print,
) -> Features:
    """Descriptors of every image of ``data`` by a run's net (``run``), ``weights`` (any source: a run, a file, a
    URL, a named source; ``normalize`` states the convention of a file that carries none), the same net with
    random weights (``random_init``), or raw pixels (``raw_pixels`` = side), written to ``out`` when given.
    ``scales`` default to the net's test scales by the paper's rule (``vggnet.scales``)."""
    dev = pick_device(device)
    if how not in AGGREGATES:
        raise ValueError(f"--aggregate must be mean or stack, got {how!r}")
    if raw_pixels:
        net, sha, scales, how, flip = f"raw pixels {raw_pixels}x{raw_pixels}", "", [raw_pixels], "mean", False
        described = None
    else:
        described, net, sha = _describing_net(run, weights, random_init, normalize)
        scales = list(scales) if scales else described.default_scales()
    request = dict(net=net, net_sha256=sha, scales=list(map(int, scales)), aggregate=how, flip=flip, data=str(data))
    if out is not None and check_request(out, request):
        log(f"{out} is up to date (same net, scales and data)")
        return load_features(out)
    samples, classes = _data_samples(data)
    t0 = time.perf_counter()
    images, files, labels, bad = [], [], [], 0
    for path, label in samples:
        try:
            images.append(load_image(path))
        except BadImageError:
            bad += 1
            continue
        files.append(str(path))
        labels.append(label)
    if bad:
        log(f"skipped {bad} unreadable images")
    if described is None:
        desc = pixel_descriptors(images, raw_pixels)
    else:
        model = described.model.to(dev).eval()
        desc = describe(model, images, scales, described.convention, how, flip, device=dev)
    feats = Features(
        desc,
        torch.tensor(labels, dtype=torch.int64),
        files,
        classes,
        dict(request, seconds=round(time.perf_counter() - t0, 2), skipped=bad),
    )
    if out is not None:
        save_features(out, feats)
    return feats


__all__ = [
    "AGGREGATES",
    "Features",
    "aggregate",
    "check_request",
    "compute_features",
    "describe",
    "load_features",
    "pixel_descriptors",
    "save_features",
    "scale_descriptors",
]
