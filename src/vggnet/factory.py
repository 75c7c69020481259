"""``create_model``: the one entry point that builds a net by name, random, pretrained or features-only.

It sits above the modules it combines (the net in :mod:`vggnet.model`, the conv trunk in :mod:`vggnet.features`,
released weights in :mod:`vggnet.pretrained`), so none of them needs to import another lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .architectures import ALIASES, CONFIGS, TORCHVISION_NAMES, parse_name, weight_layers
from .features import VGGFeatures
from .init import init_weights
from .model import VGG
from .pretrained import SOURCES, WeightsError, load_pretrained


def create_model(
    name: str = "D",
    num_classes: int | None = None,
    pretrained: str | os.PathLike | bool | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a VGG net by config letter ("A", "A-LRN", "B", "C", "D", "E", "B-5x5") or alias ("vgg16", "vgg16_bn", ...).

    Options: ``width``, ``fc_width``, ``crop_size``, ``dropout``, ``batch_norm`` (overrides the name's _bn),
    ``in_chans``, ``inplace_relu``, and ``init`` ("paper", the default: N(0, 0.01^2) weights and zero biases, the
    authors' Caffe filler, for inputs on the 0-255 scale; "paper-literal": std 0.1; "glorot"; "kaiming"), ``seed``
    (an int: the init is drawn from torch.Generator seeded with it).

    ``pretrained``: weights to load, downloaded only when asked (vggnet.pretrained): a run folder, a local file,
    a URL, a named source ("torchvision:vgg16", "timm:vgg16.tv_in1k", "caffe:vgg16"), or True for the net's
    default released weights (torchvision's; ``default_weights``); the model then carries their
    input convention in ``model.pretrained_cfg`` (``normalize="imagenet" | "caffe" | "mean:R,G,B"`` states it for
    a file that has none). ``num_classes`` (default: the weights' classes, else 1000) other than the weights'
    keeps every layer but the last. ``features_only=True``: the conv layers alone (``VGGFeatures``, no FC
    layer allocated) returning the maps of the stages ``out_indices`` (0-4 the last ReLU of each block,
    5 pool5) or of ``layers=[...]`` by the paper's names.
    """
    if pretrained is True:
        pretrained = default_weights(name)
    if pretrained is False:
        pretrained = None
    if pretrained is not None or features_only:
        options.pop("init", None), options.pop("seed", None)
        if pretrained is not None:
            return load_pretrained(name, pretrained, num_classes, features_only, out_indices, **options)
        config, bn = parse_name(name)
        if options.get("batch_norm") is None:
            options["batch_norm"] = bn
        keep = ("width", "batch_norm", "in_chans", "layers", "inplace_relu")
        return VGGFeatures(config, out_indices=out_indices, **{k: v for k, v in options.items() if k in keep})
    config, bn = parse_name(name)
    init = options.pop("init", "paper")
    seed = options.pop("seed", None)
    if options.get("batch_norm") is None:
        options["batch_norm"] = bn
    model = VGG(config, num_classes=1000 if num_classes is None else num_classes, **options)
    if init != "paper" or seed is not None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init_weights(model, init, generator=gen)
    return model


def default_weights(name: str) -> str:
    """The released weights ``pretrained=True`` takes for a net (timm's habit): torchvision's for A, B, D, E and
    their _bn; A-LRN, C and B-5x5 have none (a one-line error naming the sources there are)."""
    config, bn = parse_name(name)
    alias = next((a for a, c in ALIASES.items() if c == config), None)
    if alias not in TORCHVISION_NAMES:
        raise WeightsError(
            f"{name}: no released weights for config {config} (torchvision's are for A, B, D, E and "
            f"their _bn, the Caffe files for D and E); pass pretrained= a run folder, a file or a "
            f"URL, or one of {', '.join(SOURCES)}"
        )
    return f"torchvision:{alias}{'_bn' if bn else ''}"


def model_table(num_classes: int = 1000, size: int = 224) -> list[dict]:
    """Table 2 and more, one row a net (the configs and their batch-norm variants): name, torchvision alias,
    weight layers, parameters, and multiply-accumulates / FLOPs per ``size`` x ``size`` image."""
    names = list(CONFIGS) + [f"{c}-BN" for c in CONFIGS]
    rows = []
    for name in names:
        with torch.device("meta"):  # builds the net without allocating its 130M+ weights
            model = create_model(name, num_classes=num_classes)
        config, bn = parse_name(name)
        aliases = [a for a, c in ALIASES.items() if c == config]
        macs = model.macs(size)
        rows.append(
            dict(
                arch=name,
                alias=(aliases[0] + ("_bn" if bn else "")) if aliases else "",
                weight_layers=weight_layers(config),
                params=sum(p.numel() for p in model.parameters()),
                gmacs=round(macs / 1e9, 3),
                gflops=round(2 * macs / 1e9, 3),
            )
        )
    return rows


__all__ = ["create_model", "default_weights", "model_table"]
