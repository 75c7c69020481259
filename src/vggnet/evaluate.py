"""The paper's test-time protocols (sections 3.2 and 4.4) as one mechanism: average soft-max posteriors over views.

A *view* is (net, test scale Q, flip, whole image or crop). The test image is isotropically rescaled so that its
smaller side is Q, then:

- ``dense``: the whole, uncropped image goes through the fully convolutional net (``model.dense``); the class
  score map is spatially averaged into one score vector and turned into a posterior by the soft-max.
- ``multicrop``: a 5x5 regular grid of crops of the training crop size. The grid spans the rescaled image from
  edge to edge: the first crop of a row sits at offset 0, the last at the far edge (H - crop or W - crop), the
  ones between are evenly spaced (offsets rounded down in the left half and mirrored in the right half, so
  that the grid of the flipped image is the mirror image of the grid). 25 crops, plus 25 of the flipped
  image: the paper's 50 views per scale.
- ``center``: the classic single centre crop at each Q, never flipped: the one-view baseline (torchvision's
  "resize 256, centre crop 224" at the paper's S = 256).
- ``dense+multicrop``: the dense and the multi-crop posteriors averaged (Table 5's best row).

Flip: the horizontally flipped image is one more view of each kind (except ``center``). Multi-scale: several
Q. Fusion: several nets. Posteriors are averaged level by level, each level with equal weights: over the flips
and crops of one scale, then over scales, then over the kinds of a combined protocol (dense and multi-crop count
equally, not 6 dense views against 150 crops), then over nets. That is, every protocol is a weighted average of
the soft-max of its views.

Default test scales follow the paper (``default_scales``, the rule of ``vggnet.scales`` that `vgg reproduce`
uses too): Q = {S - 32, S, S + 32} for a net trained at a fixed S with 224 crops (the step proportional to the
crop, round(crop / 7), for smaller nets), and Q = {Smin, (Smin + Smax)/2, Smax} for a net trained with scale
jittering; single-scale evaluation uses S or (Smin + Smax)/2. Every Q is clamped to at least the crop size
(dense evaluation and crops need an input at least that large) and duplicates are dropped, so a tiny net
trained at S = crop = 32 is tested at {32, 37}.

Efficiency: images of one chunk are rescaled on the device; for dense evaluation they are grouped by their
rescaled shape and each group runs as batches (exact, no padding); crops of several images are batched
together whatever the images' shapes. Everything runs under ``torch.inference_mode``; on CUDA under bf16
autocast with channels-last inputs, decided once (``runtime``). Images are decoded by a DataLoader (workers on
CUDA by default); an unreadable image is skipped, counted and named in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from .data.folders import IMAGE_EXTENSIONS  # one list of image formats for training and evaluation
from .data.io import load_image, rescale
from .metrics import TopKErrors, effective_k
from .model import spatial_average
from .pretrained import NORMALIZE_HELP, load_pretrained, require_cfg
from .runs import Run, is_run, load_run
from .runtime import Runtime, runtime
from .scales import eval_scales
from .weights import unwrap

# Protocol name -> the kinds of views whose posteriors it averages.
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "dense": ("dense",),
    "multicrop": ("multicrop",),
    "dense+multicrop": ("dense", "multicrop"),
    "center": ("center",),
}
_PROTOCOL_ALIASES = {"multi-crop": "multicrop", "multicrop+dense": "dense+multicrop", "centre": "center",
                     "dense+multi-crop": "dense+multicrop", "multi-crop+dense": "dense+multicrop"}  # fmt: skip
GRID = 5  # the paper's 5x5 crops per scale
FUSED = "fused"

Source = Union[str, os.PathLike, torch.Tensor, np.ndarray]
Sample = tuple[Source, int]


# ---------------------------------------------------------------------------------------------------------------
# Nets: a model with its preprocessing, class names and training scales


@dataclass
class Net:
    """A net as evaluation sees it: the model, its normalisation, its class names and its training scales.

    ``mean`` and ``std`` are on the [0, 1] pixel scale: the net sees ``(pixels / 255 - mean) / std``.
    ``scale_range`` is (Smin, Smax) of training (equal for a fixed S); None when unknown.
    """

    model: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    name: str = "net"
    classes: list[str] | None = None
    scale_range: tuple[int, int] | None = None
    run: Run | None = None

    @property
    def crop_size(self) -> int:
        return int(unwrap(self.model).crop_size)

    @property
    def num_classes(self) -> int:
        return int(unwrap(self.model).num_classes)

    def default_scales(self, multi: bool = True) -> list[int]:
        """The paper's test scales for this net (module doc). Without a known training scale, S is taken as
        ``round(crop * 256 / 224)``: the paper's S = 256 for 224 crops."""
        smin, smax = self.scale_range or (round(self.crop_size * 256 / 224),) * 2
        return default_scales(smin, smax, self.crop_size, multi=multi)


def as_net(
    obj: Net | Run | nn.Module | str | os.PathLike,
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | torch.Tensor | None = None,
    classes: Sequence[str] | None = None,
    name: str | None = None,
) -> Net:
    """A ``Net`` from a run folder (path), a loaded ``Run``, or a bare VGG model.

    A bare model takes ``mean`` / ``std`` (on the [0, 1] scale) and class names from its ``pretrained_cfg``
    (weights loaded with their input convention, vggnet.pretrained) unless given; with neither, the net sees
    ``pixels / 255``. Its crop size comes from the model.
    """
    if isinstance(obj, Net):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        obj = load_run(obj)
    if isinstance(obj, Run):
        try:
            scale_range: tuple[int, int] | None = obj.scale_range
        except (KeyError, TypeError, ValueError):
            scale_range = None
        return Net(obj.model, obj.mean, obj.std, name or obj.name, list(obj.classes), scale_range, obj)
    if isinstance(obj, nn.Module):
        inner = unwrap(obj)
        if not (hasattr(inner, "dense") and hasattr(inner, "crop_size")):
            raise TypeError(
                f"{type(inner).__name__} is not a vggnet VGG (it needs .dense and .crop_size); build one with "
                f"vggnet.create_model and load the weights with vggnet.load_weights"
            )
        cfg = getattr(inner, "pretrained_cfg", None) or {}
        m = torch.as_tensor(mean if mean is not None else cfg.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32)
        s = torch.as_tensor(std if std is not None else cfg.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32)
        classes = classes or cfg.get("classes")
        # the released nets were trained at S = resize (256 for 224 crops): the paper's test scales follow it
        scale = (int(cfg["resize"]),) * 2 if cfg.get("resize") else None
        src = str(cfg.get("source") or "")
        src = Path(src).name if os.sep in src else src  # a run folder or file: its name
        return Net(obj, m, s, name or src or getattr(inner, "name", "net"),
                   list(classes) if classes else None, scale)  # fmt: skip
    raise TypeError(f"expected a run folder, a Run or a VGG model, got {type(obj).__name__}")


def as_nets(nets: Any, **kwargs: Any) -> list[Net]:
    """A list of ``Net`` from one net-like object or a sequence of them; names are made unique.

    All nets must agree on the number of classes and, where they have names for them, on the class names:
    fusion averages posteriors class by class.
    """
    many = isinstance(nets, (list, tuple))
    # copies: renaming a duplicate must not rename the caller's Net
    out = [replace(as_net(n, **kwargs)) for n in (nets if many else [nets])]
    if not out:
        raise ValueError("no nets given")
    seen: dict[str, int] = {}
    for n in out:
        seen[n.name] = seen.get(n.name, 0) + 1
        if seen[n.name] > 1 or n.name == FUSED:
            n.name = f"{n.name}#{seen[n.name]}"
    first = out[0]
    for n in out[1:]:
        if n.num_classes != first.num_classes:
            raise ValueError(f"cannot fuse {first.name} ({first.num_classes} classes) and {n.name} ({n.num_classes})")
        if first.classes and n.classes and first.classes != n.classes:
            raise ValueError(f"cannot fuse {first.name} and {n.name}: their class names (classes.json) differ")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Scales and protocols


def default_scales(scale_min: int, scale_max: int, crop_size: int, multi: bool = True) -> list[int]:
    """The paper's test scales Q (section 3.2): ``vggnet.scales.eval_scales``, the rule `vgg reproduce` uses too.

    Fixed S: ``{S - 32, S, S + 32}`` at 224 crops (the step proportional to the crop for smaller nets);
    single scale ``[S]``. Jittered [Smin, Smax]: ``{Smin, (Smin + Smax)//2, Smax}``; single scale
    ``[(Smin + Smax)//2]``. Clamped to >= the crop size, de-duplicated, sorted.
    """
    return eval_scales(scale_min, scale_max, crop_size, multi=multi)


def parse_protocols(protocols: str | Sequence[str]) -> list[str]:
    """Protocol names from a list or a comma-separated string ("dense,multicrop,dense+multicrop")."""
    names = protocols.split(",") if isinstance(protocols, str) else list(protocols)
    out = []
    for raw in names:
        name = raw.strip().lower()
        name = _PROTOCOL_ALIASES.get(name, name)
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {raw!r}; choose from {', '.join(PROTOCOLS)} (comma-separated)")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("no protocol given")
    return out


def parse_scales(text: str | None) -> str | list[int] | None:
    """``--scales``: None or "multi" (the paper's default), "single", or comma-separated integers."""
    if text is None or text.strip().lower() in ("", "multi", "default"):
        return None
    if text.strip().lower() == "single":
        return "single"
    try:
        return [int(q) for q in text.split(",") if q.strip()]
    except ValueError:
        raise ValueError(f"--scales takes comma-separated integers, 'multi' or 'single', got {text!r}") from None


def resolve_scales(net: Net, protocol: str, scales: str | int | Sequence[int] | None = None) -> list[int]:
    """The test scales of one net under one protocol.

    ``scales``: None (the paper's multi-scale default; single scale for ``center``, the one-view baseline),
    "multi", "single", an int, or a list of ints. Explicit scales must be >= the net's crop size.
    """
    if scales is None:
        return net.default_scales(multi=protocol != "center")
    if isinstance(scales, str):
        if scales not in ("multi", "single"):
            raise ValueError(f"scales must be 'multi', 'single' or integers, got {scales!r}")
        return net.default_scales(multi=scales == "multi")
    qs = sorted({int(q) for q in ([scales] if isinstance(scales, int) else scales)})
    if not qs:
        raise ValueError("no test scale given")
    if qs[0] < net.crop_size:
        raise ValueError(
            f"test scale Q = {qs[0]} is below {net.name}'s crop size {net.crop_size}: dense evaluation and crops "
            f"need the rescaled image's smaller side >= the crop size; use Q >= {net.crop_size}"
        )
    return qs


# ---------------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------------
# Views: small composable functions (airbench's infer_mirror style)


def normalize(img: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) pixels on [0, 255] -> the net's input ``(pixels / 255 - mean) / std``, in float32."""
    mean = mean.to(img.device, torch.float32)[:, None, None]
    std = std.to(img.device, torch.float32)[:, None, None]
    return (img.float() / 255 - mean) / std


def prepare_images(images: Sequence[torch.Tensor], q: int, mean: torch.Tensor, std: torch.Tensor) -> list[torch.Tensor]:
    """uint8 (3, H, W) images rescaled to smaller side Q and normalised, on the images' device.

    Images of one size are rescaled as one batch (few large kernels rather than many small ones). As the data
    package's test transform does, the rescale stays uint8 on the CPU (torch's vectorised kernel) and runs in
    float32 without rounding elsewhere (the CUDA antialiased kernel takes floating point only).
    """
    out: list[torch.Tensor] = [None] * len(images)  # type: ignore[list-item]
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        groups[tuple(img.shape)].append(i)
    for idx in groups.values():
        x = torch.stack([images[i] for i in idx])
        x = normalize(rescale(x if x.device.type == "cpu" else x.float(), q), mean, std)
        for i, xi in zip(idx, x):
            out[i] = xi
    return out


def with_flip(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 2, 3, H, W): each image and its horizontal mirror image, as two views."""
    return torch.stack([x, x.flip(-1)], dim=1)


def grid_offsets(size: int, crop: int, n: int = GRID) -> list[int]:
    """``n`` crop offsets from 0 to ``size - crop``, evenly spaced and mirror-symmetric (module doc)."""
    if size < crop:
        raise ValueError(f"cannot take {crop}-pixel crops from a side of {size}")
    span = size - crop
    if n == 1:
        return [span // 2]
    left = [i * span // (n - 1) for i in range((n + 1) // 2)]
    return left + [span - o for o in reversed(left[: n // 2])]


def grid_crops(x: torch.Tensor, crop: int, n: int = GRID) -> torch.Tensor:
    """(..., 3, H, W) -> (..., n*n, 3, crop, crop): the n x n regular grid of crops, row by row."""
    tops, lefts = grid_offsets(x.shape[-2], crop, n), grid_offsets(x.shape[-1], crop, n)
    return torch.stack([x[..., t : t + crop, l : l + crop] for t in tops for l in lefts], dim=-4)


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """(..., H, W) -> (..., crop, crop), the crop at offsets ((H - crop)//2, (W - crop)//2)."""
    t, l = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
    if t < 0 or l < 0:
        raise ValueError(f"cannot take a {crop}-pixel centre crop of {tuple(x.shape[-2:])}")
    return x[..., t : t + crop, l : l + crop]


def softmax_mean(logits: torch.Tensor) -> torch.Tensor:
    """(B, V, C) class scores of V views of each image -> (B, C) averaged soft-max posteriors (in float32)."""
    return logits.float().softmax(-1).mean(1)


def _scores(model: nn.Module, views: torch.Tensor, dense: bool, rt: Runtime) -> torch.Tensor:
    """(B, V, 3, H, W) views -> (B, V, C) class scores; dense views are spatially averaged score maps."""
    b, v = views.shape[:2]
    x = rt.input(views.flatten(0, 1))
    with rt.autocast():
        # average the score map in float32: bf16 sums over many positions lose digits
        y = spatial_average(model.dense(x).float()) if dense else model(x).float()
    return y.view(b, v, -1)


def dense_posteriors(
    model: nn.Module, xs: Sequence[torch.Tensor], flip: bool = True, batch_size: int = 32, rt: Runtime | None = None
) -> torch.Tensor:
    """Dense evaluation of normalised images (each (3, H, W), any sizes >= the crop) -> (N, C) posteriors.

    Images are grouped by shape and each group runs in batches of ``batch_size`` views (an image and its flip
    are two views), so mixed sizes never fall back to batch 1 and need no padding.
    """
    rt = rt or runtime("cpu")
    out: list[torch.Tensor | None] = [None] * len(xs)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, x in enumerate(xs):
        groups[(x.shape[-2], x.shape[-1])].append(i)
    per = max(1, batch_size // (2 if flip else 1))
    for idx in groups.values():
        for j in range(0, len(idx), per):
            part = idx[j : j + per]
            x = torch.stack([xs[i] for i in part])
            probs = softmax_mean(_scores(model, with_flip(x) if flip else x[:, None], True, rt))
            for i, p in zip(part, probs):
                out[i] = p
    return torch.stack(out)  # type: ignore[arg-type]


def crop_posteriors(
    model: nn.Module,
    xs: Sequence[torch.Tensor],
    views: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 32,
    rt: Runtime | None = None,
) -> torch.Tensor:
    """Posteriors (N, C) averaged over the crops ``views(x) -> (V, 3, crop, crop)`` of each normalised image.

    Crops of several images go through the net together (at least one image's V crops a batch), whatever the
    images' sizes.
    """
    rt = rt or runtime("cpu")
    out = []
    j = 0
    while j < len(xs):
        first = views(xs[j])
        per = max(1, batch_size // first.shape[0])
        batch = torch.stack([first] + [views(x) for x in xs[j + 1 : j + per]])
        out.append(softmax_mean(_scores(model, batch, False, rt)))
        j += per
    return torch.cat(out)


def multicrop_posteriors(
    model: nn.Module, xs: Sequence[torch.Tensor], flip: bool = True, batch_size: int = 32,
    rt: Runtime | None = None, grid: int = GRID,
) -> torch.Tensor:  # fmt: skip
    """Multi-crop evaluation: the grid x grid crops of each image, and of its flip: 50 views for the 5x5 grid."""
    crop = unwrap(model).crop_size

    def views(x: torch.Tensor) -> torch.Tensor:
        crops = grid_crops(x, crop, grid)
        return torch.cat([crops, grid_crops(x.flip(-1), crop, grid)]) if flip else crops

    return crop_posteriors(model, xs, views, batch_size, rt)


def center_posteriors(
    model: nn.Module, xs: Sequence[torch.Tensor], flip: bool = False, batch_size: int = 32, rt: Runtime | None = None
) -> torch.Tensor:
    """The classic single centre crop of each image (``flip`` is ignored: this is the one-view baseline)."""
    crop = unwrap(model).crop_size
    return crop_posteriors(model, xs, lambda x: center_crop(x, crop)[None], batch_size, rt)


VIEW_KINDS: dict[str, Callable[..., torch.Tensor]] = {
    "dense": dense_posteriors,
    "multicrop": multicrop_posteriors,
    "center": center_posteriors,
}


class _Timer:
    """Seconds spent per key, with the GPU synchronised at both ends so that each key gets its own work."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.seconds: dict[Any, float] = defaultdict(float)

    @contextmanager
    def __call__(self, key: Any) -> Iterator[None]:
        self.rt.sync()
        t0 = time.perf_counter()
        yield
        self.rt.sync()
        self.seconds[key] += time.perf_counter() - t0


def net_posteriors(
    net: Net,
    images: Sequence[torch.Tensor],
    plan: dict[str, list[int]],
    flip: bool = True,
    batch_size: int = 32,
    rt: Runtime | None = None,
    timer: _Timer | None = None,
) -> dict[str, torch.Tensor]:
    """One net's posteriors (N, C) for each protocol of ``plan`` (protocol -> its test scales Q).

    Each (kind, Q) is computed once and shared: dense at Q=384 serves both "dense" and "dense+multicrop".
    Timings go to ``timer`` under (net name, "rescale" or kind, Q).
    """
    rt = rt or runtime("cpu")
    timer = timer or _Timer(rt)
    # on the device once for all scales (a no-op when the caller moved them); mean and std once rather than
    # per image: each small copy of pageable host memory waits for the GPU to catch up
    images = [img.to(rt.device, non_blocking=True) for img in images]
    mean, std = net.mean.to(rt.device), net.std.to(rt.device)
    kinds_at: dict[int, set[str]] = defaultdict(set)
    for protocol, qs in plan.items():
        for q in qs:
            kinds_at[q].update(PROTOCOLS[protocol])
    parts: dict[tuple[str, int], torch.Tensor] = {}
    for q in sorted(kinds_at):
        with timer((net.name, "rescale", q)):
            xs = prepare_images(images, q, mean, std)
        for kind in sorted(kinds_at[q]):
            with timer((net.name, kind, q)):
                parts[(kind, q)] = VIEW_KINDS[kind](net.model, xs, flip, batch_size, rt)
        del xs
    return {
        p: torch.stack([torch.stack([parts[(k, q)] for q in qs]).mean(0) for k in PROTOCOLS[p]]).mean(0)
        for p, qs in plan.items()
    }


def _plan(nets: Sequence[Net], protocols: Sequence[str], scales: Any) -> list[dict[str, list[int]]]:
    return [{p: resolve_scales(n, p, scales) for p in protocols} for n in nets]


def _max_scale(plans: Sequence[dict[str, list[int]]]) -> int:
    # the largest Q any view needs: a JPEG may be decoded at a reduced size down to it (load_image's min_side)
    return max(q for plan in plans for qs in plan.values() for q in qs)


def _default_batch_size(rt: Runtime) -> int:
    return 256


def posteriors(
    models: Any,
    image: Source,
    protocol: str = "dense",
    scales: str | int | Sequence[int] | None = None,
    flip: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
) -> torch.Tensor:
    """The soft-max posteriors (classes,) of one image under one protocol, fused over ``models``.

    ``models``: a VGG model, a Run, a run folder, or a list of them (fusion: their posteriors are averaged);
    models are moved to ``device``. ``image``: a file path or a uint8 (3, H, W) tensor. ``scales``: see
    ``resolve_scales``. Returned on the CPU.
    """
    rt = runtime(device)
    nets = as_nets(models, mean=mean, std=std)
    (protocol,) = parse_protocols([protocol])
    plans = _plan(nets, [protocol], scales)
    img = _to_image(image, _max_scale(plans))
    bs = batch_size or _default_batch_size(rt)
    out = []
    with torch.inference_mode(), _eval_mode([n.model for n in nets], rt):
        for net, plan in zip(nets, plans):
            out.append(net_posteriors(net, [img], plan, flip, bs, rt)[protocol][0])
    return torch.stack(out).mean(0).cpu()


@contextmanager
def _eval_mode(models: Sequence[nn.Module], rt: Runtime) -> Iterator[None]:
    """Models on the device in eval mode; their training flags are restored afterwards (not their device)."""
    training = [m.training for m in models]
    for m in models:
        rt.prepare(m)
    try:
        yield
    finally:
        for m, t in zip(models, training):
            m.train(t)


# ---------------------------------------------------------------------------------------------------------------
# Samples: image folders, the run's own validation data, decoding


def _to_image(src: Any, min_side: int | None = None) -> torch.Tensor:
    """A (3, H, W) uint8 tensor from a path, a uint8 tensor ((H, W), (1|3, H, W)), an array (H, W[, 3]) or PIL.

    ``min_side``: the smallest side the caller will rescale to; a large JPEG file may be decoded at a reduced
    size that is still at least that (``load_image``).
    """
    if isinstance(src, (str, os.PathLike)):
        return load_image(src, min_side=min_side)
    if hasattr(src, "convert") and hasattr(src, "size"):  # a PIL image
        src = np.asarray(src.convert("RGB"))
    if isinstance(src, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(src))
        src = a[None] if a.dim() == 2 else a.permute(2, 0, 1)
    if not isinstance(src, torch.Tensor):
        raise TypeError(f"cannot read an image from {type(src).__name__}")
    if src.dtype != torch.uint8:
        raise TypeError(f"image tensors must be uint8 (pixels 0..255), got {src.dtype}")
    if src.dim() == 2:
        src = src[None]
    if src.dim() != 3 or src.shape[0] not in (1, 3):
        raise ValueError(f"an image tensor must be (3, H, W) or (H, W), got shape {tuple(src.shape)}")
    return src.expand(3, -1, -1).contiguous() if src.shape[0] == 1 else src


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not any(s.startswith(".") for s in p.parts[-2:])
    )  # fmt: skip


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class folders; expected {root}/<class>/<image> (or {root}/val/<class>/...)")
    return folders


def folder_samples(
    root: str | os.PathLike, classes: Sequence[str], names: dict[str, str] | None = None
) -> list[tuple[Path, int]]:
    """(path, label) of every image under ``root/<class>/``, labelled by ``classes.index(<class>)``.

    ``names`` maps folder names to class names where they differ (ImageNet's n01440764 -> "tench, ...").
    A class folder that is not among ``classes`` is an error (the net cannot score a class it does not have);
    classes without a folder are fine.
    """
    root = Path(root)
    folders = _class_folders(root)
    names = names or {}
    index = {c: i for i, c in enumerate(classes)}
    folders_named = {d.name: names.get(d.name, d.name) for d in folders}
    unknown = [d.name for d in folders if folders_named[d.name] not in index]
    if unknown:
        shown = ", ".join(list(classes)[:8]) + (", ..." if len(classes) > 8 else "")
        raise ValueError(
            f"{root}: class folder(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} are not among the "
            f"net's {len(classes)} classes ({shown}); folder names must match the run's classes.json"
        )
    samples = [(p, index[folders_named[d.name]]) for d in folders for p in _list_images(d)]
    if not samples:
        raise ValueError(f"{root}: the class folders hold no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return samples


def bare_folder_samples(folder: Path, net: Net) -> list[tuple[Path, int]]:
    """The labelled images of a class-folder tree for a net without a run: folders named by the net's class
    names, or, when they are not (ImageNet's n01440764 ...), as many folders as classes, taken in sorted order
    (torchvision's ImageFolder order, the label order of the released ImageNet nets)."""
    root = _split_root(folder)
    folders = sorted(d.name for d in _class_folders(root))
    if net.classes and set(folders) <= set(net.classes):
        return folder_samples(root, net.classes)
    if len(folders) != net.num_classes:
        raise ValueError(f"{folder} has {len(folders)} class folders, the net {net.num_classes} classes, and the "
                         f"folder names are not its class names; give one folder per class (sorted order = labels)")
    return folder_samples(root, folders)


def _split_root(folder: Path) -> Path:
    """A folder with a val/ subfolder means its validation split; otherwise the folder itself."""
    return folder / "val" if (folder / "val").is_dir() else folder


def _run_folder_samples(run: Run, root: Path) -> list[tuple[Path, int]]:
    """A class-folder tree labelled with the run's classes: by folder name, or through the run's class-names
    file when the run's classes are display names (``class_names`` in its config, as in training)."""
    classes = list(run.classes)
    folders = [d.name for d in _class_folders(root)]
    names_file = run.config.get("class_names")
    if names_file and not set(folders) <= set(classes) and Path(names_file).expanduser().is_file():
        return folder_samples(root, classes, _display_names(Path(names_file).expanduser(), folders))
    return folder_samples(root, classes)


def _display_names(path: Path, folders: list[str]) -> dict[str, str]:
    """Folder -> display name from a class-names file in the data package's two formats: "<folder> <name>"
    lines (a folder subset is fine), or one name per line in sorted folder order (all folders needed)."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    pairs = dict((p + [p[0]])[:2] for p in (ln.split(maxsplit=1) for ln in lines))
    if all(f in pairs for f in folders):
        return {f: pairs[f] for f in folders}
    return dict(zip(folders, lines)) if len(lines) == len(folders) else {}


def resolve_eval_samples(run: Run, data: str | os.PathLike | None = None) -> list[Sample]:
    """The labelled images to evaluate ``run`` on.

    ``data``: a folder of class folders (``root/<class>/<image>``), a folder with a ``val/`` subfolder of them,
    or the name of an embedded data set ("mnist", ...). None: the run's own validation data, from its
    config.toml: ``val`` if set, else ``data``'s ``val/`` subfolder, else the validation split that
    ``vggnet.data.resolve_data`` draws from ``data`` exactly as training did (an embedded name's fixed split,
    or a held-out share of one class tree, with the run's ``val_fraction`` and ``seed``). Labels follow the
    run's classes.json, matched by class name.
    """
    cfg = run.config
    if data is not None:
        path = Path(data).expanduser()
        if path.is_dir():
            return _run_folder_samples(run, _split_root(path))
        if os.sep in str(data) or "/" in str(data) or path.suffix:
            raise FileNotFoundError(f"--data {data}: no such folder")
        spec = str(data)  # an embedded data set's name
    else:
        spec, val = cfg.get("data"), cfg.get("val")
        if val:
            if not Path(val).expanduser().is_dir():
                raise FileNotFoundError(f"{run.path}: the config's val folder {val} does not exist; pass --data DIR")
            return _run_folder_samples(run, Path(val).expanduser())
        if not spec:
            raise ValueError(f"{run.path}/config.toml names no data; pass --data DIR")
        if (Path(spec).expanduser() / "val").is_dir():
            return _run_folder_samples(run, Path(spec).expanduser() / "val")
    try:
        # imported here: evaluating a folder needs nothing of the data package but load_image and rescale
        from .data import resolve_data  # type: ignore[attr-defined]
    except ImportError as e:
        raise ValueError(f"cannot rebuild the validation split of data {spec!r} (vggnet.data.resolve_data: {e}); "
                         f"pass --data DIR with DIR/<class>/<image>") from e  # fmt: skip
    _, val_samples, data_classes = resolve_data(
        spec, val=None, val_fraction=cfg.get("val_fraction", 0.1), seed=cfg.get("seed", 0),
        class_names=cfg.get("class_names") or None, cache_dir=cfg.get("cache_dir") or None,
    )  # fmt: skip
    classes = list(run.classes)
    if list(data_classes) != classes:
        # labels are indices into the data's class list: map them to the run's by name
        index = {c: i for i, c in enumerate(classes)}
        missing = [c for c in data_classes if c not in index]
        if missing:
            raise ValueError(f"data {spec!r} has classes {missing[:5]} that {run.path} was not trained on")
        val_samples = [(src, index[data_classes[y]]) for src, y in val_samples]
    if not val_samples:
        raise ValueError(f"data {spec!r} has no validation images (val_fraction 0?); pass --data DIR")
    return list(val_samples)


class _Decoded(torch.utils.data.Dataset):
    """Decodes samples to uint8 (3, H, W); an unreadable file yields None and the reason, never an exception."""

    def __init__(self, items: Sequence[tuple[Source, int]], min_side: int | None = None) -> None:
        self.items = items
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, int, str | None]:
        src, label = self.items[i]
        if isinstance(src, (str, os.PathLike)):
            try:
                return i, load_image(src, min_side=self.min_side), int(label), None
            except Exception as e:  # noqa: BLE001 - any decoder failure: skip the file and report it
                return i, None, int(label), f"{src}: {type(e).__name__}: {e}"
        return i, _to_image(src), int(label), None


def _chunks(
    items: Sequence[tuple[Source, int]], chunk: int, workers: int, min_side: int | None, pin: bool
) -> Iterator[list[tuple[int, torch.Tensor | None, int, str | None]]]:
    # pinned host memory makes the copies to the GPU asynchronous
    loader = torch.utils.data.DataLoader(
        _Decoded(items, min_side), batch_size=chunk, num_workers=workers, collate_fn=list, pin_memory=pin,
        prefetch_factor=4 if workers else None,
    )  # fmt: skip
    yield from loader


def _stream(
    nets: Sequence[Net],
    items: Sequence[tuple[Source, int]],
    plans: Sequence[dict[str, list[int]]],
    flip: bool,
    batch_size: int,
    rt: Runtime,
    workers: int,
    timer: _Timer,
    log: Callable[[str], None] | None = None,
) -> Iterator[tuple[list[int], torch.Tensor, dict[str, dict[str, torch.Tensor]], list[str]]]:
    """Per chunk of decoded images: (sample indices, labels, {net or "fused": {protocol: (n, C)}}, bad files)."""
    # a chunk holds several batches so that images of one rescaled shape can share dense batches
    chunk = max(64, 4 * batch_size)
    done = 0
    it = iter(_chunks(items, chunk, workers, _max_scale(plans), rt.device.type == "cuda"))
    while True:
        with timer("decode"):
            batch = next(it, None)
        if batch is None:
            return
        bad = [err for _, img, _, err in batch if img is None]
        good = [(i, img, y) for i, img, y, _ in batch if img is not None]
        done += len(batch)
        if good:
            idx = [i for i, _, _ in good]
            images = [img.to(rt.device, non_blocking=True) for _, img, _ in good]  # once for all nets and Q
            labels = torch.tensor([y for _, _, y in good])
            out = {n.name: net_posteriors(n, images, plan, flip, batch_size, rt, timer) for n, plan in zip(nets, plans)}
            if len(nets) > 1:
                out[FUSED] = {p: torch.stack([out[n.name][p] for n in nets]).mean(0) for p in plans[0]}
            yield idx, labels, out, bad
        elif bad:
            yield [], torch.zeros(0, dtype=torch.long), {}, bad
        if log:
            log(f"{done}/{len(items)} images")


# ---------------------------------------------------------------------------------------------------------------
# Dataset-level evaluation


@dataclass
class ProtocolResult:
    """One row of an evaluation table: one net (or the fusion) under one protocol."""

    net: str
    protocol: str
    scales: list[int] | dict[str, list[int]]  # a dict (net -> scales) for a fusion of nets tested at different Q
    flip: bool
    top1_err: float  # fraction in [0, 1]
    top5_err: float  # top-k error with k = min(5, classes), see EvalResult.k
    n: int
    seconds: float  # compute time of this protocol's views (rescale + forward), decoding excluded

    @property
    def images_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")

    def scales_text(self) -> str:
        if isinstance(self.scales, dict):
            return "; ".join(f"{k}: {','.join(map(str, v))}" for k, v in self.scales.items())
        return ",".join(map(str, self.scales))

    def to_dict(self) -> dict[str, Any]:
        return dict(net=self.net, protocol=self.protocol, scales=self.scales, flip=self.flip,
                    top1_err=self.top1_err, top5_err=self.top5_err, n=self.n, seconds=self.seconds,
                    images_per_s=self.images_per_s)  # fmt: skip


@dataclass
class EvalResult:
    """The results of ``evaluate``: one ``ProtocolResult`` per (net, protocol), plus "fused" rows for several nets.

    ``k`` is the k of the "top-5" error: ``min(5, classes)``. ``posteriors[(net, protocol)]`` (N, C) and
    ``labels`` (N,) are filled with ``return_posteriors=True``, in sample order (skipped images left out).
    """

    results: list[ProtocolResult]
    n: int
    num_classes: int
    k: int
    skipped: list[str]
    nets: list[str]
    protocols: list[str]
    flip: bool
    batch_size: int
    device: str
    wall_s: float
    decode_s: float
    data: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    posteriors: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    labels: torch.Tensor | None = None
    indices: list[int] = field(default_factory=list)

    def get(self, protocol: str, net: str | None = None) -> ProtocolResult:
        """The row of ``protocol`` for ``net`` (default: the fusion when there are several nets, else the net)."""
        net = net or (FUSED if len(self.nets) > 1 else self.nets[0])
        (protocol,) = parse_protocols([protocol])
        for r in self.results:
            if r.net == net and r.protocol == protocol:
                return r
        raise KeyError(f"no result for net {net!r} and protocol {protocol!r}")

    def markdown(self) -> str:
        """The table of Table 5 / Table 6's shape: a row per net and protocol, errors in percent."""
        from .report import markdown_table

        topk = f"top-{self.k} err %"
        rows = [
            [r.net, r.protocol, r.scales_text(), "yes" if r.flip and r.protocol != "center" else "no",
             f"{100 * r.top1_err:.2f}", f"{100 * r.top5_err:.2f}", f"{r.images_per_s:,.1f}"]
            for r in self.results
        ]  # fmt: skip
        headers = ["net", "protocol", "Q (test scales)", "flip", "top-1 err %", topk, "images/s"]
        lines = [
            f"Evaluation of {' + '.join(self.nets)} on {self.data or 'the given samples'}: {self.n} images"
            + (f" ({len(self.skipped)} unreadable, skipped)" if self.skipped else "")
            + f", {self.num_classes} classes, {self.device}, batch {self.batch_size}.",
            "",
            markdown_table(headers, rows, "llllrrr"),
            "",
            "images/s: compute (rescale and forward passes) of each protocol's views, image decoding excluded; "
            f"decoding took {self.decode_s:.1f} s, the whole evaluation {self.wall_s:.1f} s.",
        ]
        if self.k < 5:
            lines.append(f"top-{self.k} in place of top-5: the nets have only {self.num_classes} classes "
                         f"(k = min(5, classes)).")  # fmt: skip
        if len(self.nets) > 1:
            lines.append(f"{FUSED}: the soft-max posteriors of {', '.join(self.nets)} averaged (section 4.4).")
        if self.skipped:
            lines.append("Skipped: " + "; ".join(self.skipped[:10]) + (" ..." if len(self.skipped) > 10 else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dict(
            nets=self.nets, data=self.data, n=self.n, num_classes=self.num_classes, k=self.k,
            protocols=self.protocols, flip=self.flip, batch_size=self.batch_size, device=self.device,
            wall_s=self.wall_s, decode_s=self.decode_s, skipped=self.skipped,
            results=[r.to_dict() for r in self.results], provenance=self.provenance,
        )  # fmt: skip


def evaluate(
    nets: Any,
    samples: Sequence[tuple[Source, int]] | str | os.PathLike | None = None,
    protocols: str | Sequence[str] = "dense",
    scales: str | int | Sequence[int] | None = None,
    flip: bool = True,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    limit: int | None = None,
    workers: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    return_posteriors: bool = False,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Top-1 / top-5 error of one or several nets (and of their fusion) under the paper's test protocols.

    Args:
        nets: a VGG model, a ``Run``, a run folder, or a list of them. Several nets are evaluated each and fused
            (posteriors averaged). Models are moved to ``device`` and kept there; their train/eval mode is restored.
        samples: (image, label) pairs (image: a path or a uint8 (3, H, W) tensor), a folder of class folders, or
            None for the first run's validation data (``resolve_eval_samples``).
        protocols: "dense", "multicrop", "dense+multicrop", "center", or several (list or comma-separated).
        scales: test scales Q: None for the paper's defaults (multi-scale; one scale for "center"), "multi",
            "single", an int or a list of ints (shared by all nets).
        flip: add the horizontally flipped image's views (not for "center", the one-view baseline).
        batch_size: views per forward pass (a whole image for dense, one crop for multi-crop); default 256 on
            CUDA and CPU alike.
        device: "auto", "cpu", "cuda", ...
        limit: evaluate a fixed pseudo-random subset (seed 0) of this many samples, so that classes stay mixed.
        workers: DataLoader decoding processes; default min(8, CPUs - 1) on CUDA, 0 on CPU.
        mean, std, classes: for bare models (runs carry their own).
        return_posteriors: keep each row's (N, C) posteriors in the result.
        log: called with a progress line after each chunk of images.
    """
    t_start = time.perf_counter()
    rt = runtime(device)
    net_list = as_nets(nets, mean=mean, std=std, classes=classes)
    protocol_list = parse_protocols(protocols)
    bs = batch_size or _default_batch_size(rt)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}")
    first = net_list[0]
    data_name = ""
    if samples is None or isinstance(samples, (str, os.PathLike)):
        data_name = str(samples) if samples is not None else "the run's validation data"
        if first.run is not None:
            items: Sequence[tuple[Source, int]] = resolve_eval_samples(first.run, samples)
            if samples is None:
                data_name = f"the validation data of {first.run.path} (data = {first.run.config.get('data')!r})"
        elif samples is None:
            raise ValueError("a bare model has no validation data of its own; pass samples (pairs or a folder)")
        else:
            items = bare_folder_samples(Path(samples), first)
    else:
        items = list(samples)
    if not items:
        raise ValueError("no samples to evaluate")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if limit is not None and limit < len(items):
        keep = sorted(random.Random(0).sample(range(len(items)), limit))
        items = [items[i] for i in keep]
    if workers is None:
        in_memory = not isinstance(items[0][0], (str, os.PathLike))
        workers = 0 if rt.device.type != "cuda" or in_memory else max(0, min(8, (os.cpu_count() or 1) - 1))

    plans = _plan(net_list, protocol_list, scales)
    rows = [n.name for n in net_list] + ([FUSED] if len(net_list) > 1 else [])
    meters = {(r, p): TopKErrors((1, 5)) for r in rows for p in protocol_list}
    kept: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
    kept_labels: list[torch.Tensor] = []
    indices: list[int] = []
    skipped: list[str] = []
    timer = _Timer(rt)
    with torch.inference_mode(), _eval_mode([n.model for n in net_list], rt):
        for idx, labels, out, bad in _stream(net_list, items, plans, flip, bs, rt, workers, timer, log):
            skipped += bad
            if not idx:
                continue
            indices += idx
            for r in rows:
                for p in protocol_list:
                    meters[(r, p)].update(out[r][p], labels)
                    if return_posteriors:
                        kept[(r, p)].append(out[r][p].cpu())
            if return_posteriors:
                kept_labels.append(labels)
    n = len(indices)
    if not n:
        raise ValueError(f"none of the {len(items)} images could be read: {'; '.join(skipped[:3])}")

    def seconds(net: Net, plan: dict[str, list[int]], p: str) -> float:
        # what the protocol costs on its own: the rescale at each of its Q plus its kinds' forward passes
        return sum(timer.seconds[(net.name, "rescale", q)] + sum(timer.seconds[(net.name, k, q)] for k in PROTOCOLS[p])
                   for q in plan[p])  # fmt: skip

    results = []
    for r in rows:
        for p in protocol_list:
            err = meters[(r, p)].errors()
            if r == FUSED:
                per_net = {nt.name: plan[p] for nt, plan in zip(net_list, plans)}
                same = all(v == plans[0][p] for v in per_net.values())
                sc: Any = plans[0][p] if same else per_net
                secs = sum(seconds(nt, plan, p) for nt, plan in zip(net_list, plans))
            else:
                i = [nt.name for nt in net_list].index(r)
                sc, secs = plans[i][p], seconds(net_list[i], plans[i], p)
            results.append(ProtocolResult(r, p, sc, flip, err[1], err[5], n, secs))
    from .report import provenance

    return EvalResult(
        results=results, n=n, num_classes=first.num_classes, k=effective_k(5, first.num_classes),
        skipped=skipped, nets=[nt.name for nt in net_list], protocols=protocol_list, flip=flip, batch_size=bs,
        device=str(rt.device), wall_s=time.perf_counter() - t_start, decode_s=timer.seconds["decode"],
        data=data_name, provenance=provenance(rt.device),
        posteriors={k: torch.cat(v) for k, v in kept.items()},
        labels=torch.cat(kept_labels) if kept_labels else None, indices=indices,
    )  # fmt: skip


def write_eval_report(result: EvalResult, folders: Iterable[str | os.PathLike]) -> list[Path]:
    """Write the result as Markdown and JSON into each ``folder/eval/`` (run folders); returns the files."""
    from .report import write_report

    stamp = time.strftime("%Y%m%d-%H%M%S")
    written = []
    for folder in folders:
        out = Path(folder) / "eval"
        name, i = f"eval-{stamp}", 1
        while (out / f"{name}.json").exists():  # two evaluations within one second keep both reports
            i += 1
            name = f"eval-{stamp}-{i}"
        written += write_report(out, name, result.markdown(), result.to_dict())
    return written


# ---------------------------------------------------------------------------------------------------------------
# Prediction


@dataclass
class Prediction:
    """The top classes of one image: labels, class names and posteriors, best first."""

    image: str
    labels: list[int]
    names: list[str]
    probs: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "top": [{"label": l, "class": c, "prob": p}
                                             for l, c, p in zip(self.labels, self.names, self.probs)]}  # fmt: skip


def predict(
    nets: Any,
    images: Source | Sequence[Source],
    top: int = 5,
    protocol: str = "dense",
    scales: str | int | Sequence[int] | None = None,
    flip: bool = True,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
) -> list[Prediction]:
    """The ``top`` classes of each image with their posteriors; by default dense, multi-scale, with flips.

    ``nets``: a model, a Run, a run folder or a list (fused). ``images``: a path, a uint8 tensor, or a list of
    them. An unreadable file is an error here (unlike ``evaluate``, which skips it).
    """
    rt = runtime(device)
    net_list = as_nets(nets, mean=mean, std=std, classes=classes)
    (protocol,) = parse_protocols([protocol])
    single = isinstance(images, (str, os.PathLike, torch.Tensor, np.ndarray)) or hasattr(images, "convert")
    image_list = [images] if single else list(images)  # type: ignore[list-item]
    names = net_list[0].classes or [str(i) for i in range(net_list[0].num_classes)]
    bs = batch_size or _default_batch_size(rt)
    plans = _plan(net_list, [protocol], scales)
    k = effective_k(top, net_list[0].num_classes)
    preds: list[Prediction | None] = [None] * len(image_list)
    items = [(src, 0) for src in image_list]
    with torch.inference_mode(), _eval_mode([n.model for n in net_list], rt):
        for idx, _, out, bad in _stream(net_list, items, plans, flip, bs, rt, 0, _Timer(rt)):
            if bad:
                raise ValueError(f"cannot read image {bad[0]}")
            probs = out[FUSED if len(net_list) > 1 else net_list[0].name][protocol].float().cpu()
            p, lab = probs.topk(k, dim=1)
            for i, pi, li in zip(idx, p.tolist(), lab.tolist()):
                src = image_list[i]
                label = str(src) if isinstance(src, (str, os.PathLike)) else f"image {i}"
                preds[i] = Prediction(label, li, [names[j] for j in li], pi)
    return preds  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# Command-line glue (wired into `vgg` by cli.py)


def _add_common(p: argparse.ArgumentParser, default_protocol: str) -> None:
    p.add_argument("--protocol", default=default_protocol,
                   help="dense (whole image), multicrop (5x5 grid of crops from edge to edge, x2 flips), "
                        "dense+multicrop (both averaged) or center (one centre crop, no flip: the classic baseline); "
                        "a comma-separated list prints them side by side like the paper's Table 5 "
                        f"(default {default_protocol})")  # fmt: skip
    p.add_argument("--scales", default=None,
                   help="test scales Q, comma-separated (e.g. 256,384,512); 'multi' (default: the paper's "
                        "{S-S/8, S, S+S/8} for a fixed S, {Smin, (Smin+Smax)/2, Smax} for a jittered run; one "
                        "scale for center) or 'single' (S or (Smin+Smax)/2)")  # fmt: skip
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="add the horizontally flipped views (default: on, unless a run was trained without "
                        "flips, as the digit demos are: a net that never saw mirrored images is not asked about them)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="views per forward pass: whole images (dense) or crops (default 256)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N (default auto)")
    p.add_argument("--weights", action="append", default=[], metavar="FILE|URL|SOURCE",
                   help="weights to evaluate besides (or instead of) runs: a file, a URL, or torchvision:vgg16, "
                        "timm:vgg16.tv_in1k, caffe:vgg16 (downloaded on first use); repeat to fuse")  # fmt: skip
    p.add_argument("--normalize", default=None, metavar="imagenet|caffe|mean:R,G,B",
                   help="the input convention of --weights that do not carry one: imagenet (torchvision's mean and "
                        "std), caffe (the authors' BGR 0-255 minus mean, folded into conv1), mean:R,G,B (0-255)")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vgg eval RUN... [--data DIR] [--protocol ...] [--scales ...]`."""
    parser.add_argument("runs", nargs="*", metavar="RUN",
                        help="run folder(s); several (with --weights) are evaluated and fused")
    parser.add_argument("--data", default=None,
                        help="DIR/<class>/<image>, a folder with a val/ subfolder, or an embedded data set name "
                             "(default: the first run's own validation data)")  # fmt: skip
    _add_common(parser, "dense")
    parser.add_argument("--limit", type=int, default=None, help="evaluate a fixed random subset of N images")
    parser.add_argument("--workers", type=int, default=None,
                        help="image decoding processes (default: min(8, CPUs-1) on CUDA, 0 on CPU)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of Markdown")
    parser.add_argument("--no-save", action="store_true", help="do not write the report into RUN/eval/")


def _flip(args: argparse.Namespace, runs: Sequence[Run]) -> bool:
    """--flip / --no-flip, or by default whether every run was trained with flips."""
    if args.flip is not None:
        return args.flip
    trained = all(r.config.get("flip", True) for r in runs)
    if not trained:
        print("note: no flipped views (a run was trained without flips; --flip adds them)", file=sys.stderr)
    return trained


def _progress(line: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{line}", end="", file=sys.stderr, flush=True)


def weights_net(spec: str, normalize: str | None = None) -> Net:
    """A ``Net`` from ``--weights`` (a file, URL or named source) with the convention the weights carry, or
    ``normalize``; refuses weights of unknown normalisation rather than guessing."""
    model = load_pretrained(None, spec, normalize=normalize).eval()
    require_cfg(model, f"--weights {spec}")
    return as_net(model)


def _cli_nets(args: argparse.Namespace, runs: Sequence[Run]) -> list[Any]:
    if args.normalize and not args.weights:
        raise ValueError(f"--normalize applies to --weights (a run carries its own normalisation); {NORMALIZE_HELP}")
    return list(runs) + [weights_net(w, args.normalize) for w in args.weights]


def run_eval_cli(args: argparse.Namespace) -> int:
    """`vgg eval`: evaluate the runs and --weights (and their fusion), print the table, write it into each RUN/eval/."""
    runs = [load_run(p) for p in args.runs]
    if not runs and not args.weights:
        raise ValueError("nothing to evaluate: give run folders (vgg eval RUN) or --weights FILE|SOURCE --data DIR")
    if not runs and (args.data is None or not Path(args.data).expanduser().is_dir()):
        raise ValueError(f"--weights have no validation data of their own; pass --data DIR (DIR/<class>/<image>)"
                         f"{'' if args.data is None else f', not {args.data!r}'}")  # fmt: skip
    nets = _cli_nets(args, runs)
    samples: Any = resolve_eval_samples(runs[0], args.data) if runs else Path(args.data).expanduser()
    result = evaluate(
        nets, samples, protocols=args.protocol, scales=parse_scales(args.scales), flip=_flip(args, runs),
        batch_size=args.batch_size, device=args.device, limit=args.limit, workers=args.workers, log=_progress,
    )  # fmt: skip
    if sys.stderr.isatty():
        print(file=sys.stderr)
    result.data = args.data or f"the validation data of {runs[0].path} (data = {runs[0].config.get('data')!r})"
    print(json.dumps(result.to_dict(), indent=1) if args.json else result.markdown())
    if not args.no_save:
        for path in write_eval_report(result, [r.path for r in runs]):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def add_fuse_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vgg fuse RUN1 RUN2 ...`: `vgg eval` of two or more runs (section 4.4)."""
    add_eval_arguments(parser)


def run_fuse_cli(args: argparse.Namespace) -> int:
    """`vgg fuse`: each run and the fusion of all (posteriors averaged)."""
    if len(args.runs) + len(args.weights) < 2:
        raise ValueError("vgg fuse needs at least two nets, run folders or --weights (for one, use vgg eval)")
    return run_eval_cli(args)


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vgg predict RUN [RUN...] IMAGE... [--top 5] [--json] [--scales ...]`."""
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_IMAGE",
                        help="run folders (fused; none with --weights), then image files or folders of images")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    _add_common(parser, "dense")


def run_predict_cli(args: argparse.Namespace) -> int:
    """`vgg predict`: the top classes of each image with their posteriors (dense, multi-scale, flips)."""
    runs = []
    rest = list(args.paths)
    while rest and is_run(rest[0]):
        runs.append(load_run(rest.pop(0)))
    if not runs and not args.weights:
        raise FileNotFoundError(f"{args.paths[0]} is not a run folder (it needs model.safetensors and config.toml); "
                                f"or give --weights FILE|SOURCE")  # fmt: skip
    images: list[Path] = []
    for p in map(Path, rest):
        if p.is_dir():
            images += _list_images(p)
        elif p.is_file():
            images.append(p)
        else:
            raise FileNotFoundError(f"image {p} does not exist")
    if not images:
        raise ValueError("no images given: vgg predict RUN IMAGE...")
    nets = _cli_nets(args, runs)
    preds = predict(nets, images, top=args.top, protocol=args.protocol, scales=parse_scales(args.scales),
                    flip=_flip(args, runs), batch_size=args.batch_size, device=args.device)  # fmt: skip
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], indent=1))
        return 0
    for p in preds:
        print(p.image)
        width = max(len(n) for n in p.names)
        for rank, (name, prob) in enumerate(zip(p.names, p.probs), 1):
            print(f"  {rank}. {name:<{width}}  {prob:.4f}")
    return 0


__all__ = [
    "PROTOCOLS", "add_eval_arguments", "add_fuse_arguments", "add_predict_arguments", "as_net", "as_nets",
    "center_crop", "center_posteriors", "crop_posteriors", "default_scales", "dense_posteriors", "EvalResult",
    "evaluate", "folder_samples", "grid_crops", "grid_offsets", "multicrop_posteriors", "Net", "net_posteriors",
    "normalize", "parse_protocols", "parse_scales", "posteriors", "predict", "Prediction", "prepare_images",
    "ProtocolResult", "resolve_eval_samples", "resolve_scales", "run_eval_cli", "run_fuse_cli", "run_predict_cli",
    "Runtime", "runtime", "softmax_mean", "with_flip", "write_eval_report",
]  # fmt: skip
