"""Nets as evaluation sees them: a model with its input convention, class names and training scales.

A net comes from a run folder, a loaded ``Run``, a bare VGG model (its ``pretrained_cfg`` giving the input
convention), or ``--weights`` (a file, a URL or a named source). Several nets are fused: they must agree on
their classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..convention import Convention, ConventionTensors
from ..data.folders import imagenet_wnids
from ..pretrained import imagenet_classes, load_pretrained, require_cfg
from ..runs import Run, load_run
from ..scales import eval_scales
from ..weights import unwrap

FUSED = "fused"  # the name of the fusion's rows: the posteriors of all nets averaged


@dataclass
class Net(ConventionTensors):
    """A net as evaluation sees it: the model, its input convention, its class names and its training scales.

    ``convention`` (vggnet.convention) turns decoded pixels into the net's input.
    ``scale_range`` is (Smin, Smax) of training (equal for a fixed S); None when unknown.
    """

    model: nn.Module
    convention: Convention
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
        """The paper's test scales for this net (``vggnet.scales.eval_scales``). Without a known training scale,
        S is taken as ``round(crop * 256 / 224)``: the paper's S = 256 for 224 crops."""
        smin, smax = self.scale_range or (round(self.crop_size * 256 / 224),) * 2
        return eval_scales(smin, smax, self.crop_size, multi=multi)


def _model_net(
    obj: nn.Module,
    mean: Sequence[float] | torch.Tensor | None,
    std: Sequence[float] | torch.Tensor | None,
    classes: Sequence[str] | None,
    name: str | None,
) -> Net:
    """A ``Net`` of a bare VGG model: the input convention from its ``pretrained_cfg`` unless given."""
    inner = unwrap(obj)
    if not (hasattr(inner, "dense") and hasattr(inner, "crop_size")):
        raise TypeError(
            f"{type(inner).__name__} is not a vggnet VGG (it needs .dense and .crop_size); build one with "
            f"vggnet.create_model and load the weights with vggnet.load_weights"
        )
    cfg = getattr(inner, "pretrained_cfg", None) or {}
    if mean is not None or std is not None:
        conv = Convention(
            tuple(torch.as_tensor(mean if mean is not None else (0.0,) * 3).tolist()),
            tuple(torch.as_tensor(std if std is not None else (1.0,) * 3).tolist()),
        )
    else:
        conv = Convention.from_cfg(cfg) or Convention()
    classes = classes or cfg.get("classes")
    if not classes and int(inner.num_classes) == 1000:
        classes = imagenet_classes()  # a bare 1,000-class head (a torchvision .pth file): ImageNet's, in its order
    # the released nets were trained at S = resize (256 for 224 crops): the paper's test scales follow it
    scale = (int(cfg["resize"]),) * 2 if cfg.get("resize") else None
    src = str(cfg.get("source") or "")
    src = Path(src).name if os.sep in src else src  # a run folder or file: its name
    return Net(obj, conv, name or src or getattr(inner, "name", "net"), list(classes) if classes else None, scale)


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
        return Net(obj.model, obj.convention, name or obj.name, list(obj.classes), scale_range, obj)
    if isinstance(obj, nn.Module):
        return _model_net(obj, mean, std, classes, name)
    raise TypeError(f"expected a run folder, a Run or a VGG model, got {type(obj).__name__}")


def _canonical(classes: Sequence[str]) -> list[str]:
    """Class names to compare nets by: ImageNet's WordNet ids (a run trained on ImageNet's folders) read as the
    released nets' names of the same classes."""
    classes = list(classes)
    return imagenet_classes() if classes == imagenet_wnids() else classes


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
        if first.classes and n.classes and _canonical(first.classes) != _canonical(n.classes):
            raise ValueError(f"cannot fuse {first.name} and {n.name}: their class names (classes.json) differ")
    return out


def weights_net(spec: str, normalize: str | None = None) -> Net:
    """A ``Net`` from ``--weights`` (a file, URL or named source) with the convention the weights carry, or
    ``normalize``; refuses weights of unknown normalisation rather than guessing."""
    model = load_pretrained(None, spec, normalize=normalize).eval()
    require_cfg(model, f"--weights {spec}")
    return as_net(model)


__all__ = ["FUSED", "Net", "as_net", "as_nets", "weights_net"]
