"""Perceptual (feature reconstruction) and style losses on VGG features (Johnson et al. 2016; Gatys et al. 2016).

The net is frozen and kept in eval mode; inputs are images on [0, 1] (RGB), normalised with the weights' own
convention (``pretrained_cfg``) inside the loss, so that Caffe weights, torchvision weights and our runs all
see what they were trained on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .convention import Convention
from .factory import create_model
from .features import VGGFeatures
from .pretrained import normalization_cfg, require_cfg
from .weights import unwrap

DEFAULT_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


def gram(x: torch.Tensor) -> torch.Tensor:
    """The Gram matrix (N, C, C) of feature maps (N, C, H, W), divided by C*H*W."""
    n, c, h, w = x.shape
    f = x.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


class PerceptualLoss(nn.Module):
    """Sum over ``layers`` of ``weight * MSE(features(input), features(target))``, or with ``style=True`` of the
    MSE of their Gram matrices.

    Args:
        net: a model name ("vgg16", "D", ...) built with ``pretrained`` and ``create_options``, or a built VGG /
            VGGFeatures whose conv layers are used.
        pretrained: weights for a named net (a file, URL or source such as "torchvision:vgg16").
        layers: the paper's layer names (default relu1_2, relu2_2, relu3_3, relu4_3).
        weights: one weight per layer (default 1 each).
        style: compare Gram matrices (style) instead of the maps (content).
        normalize: the weights' convention when they carry none ("imagenet", "caffe", "mean:R,G,B").
    """

    def __init__(
        self,
        net: str | nn.Module = "vgg16",
        pretrained: str | os.PathLike | None = None,
        layers: Sequence[str] = DEFAULT_LAYERS,
        weights: Sequence[float] | None = None,
        style: bool = False,
        normalize: str | None = None,
        **create_options: Any,
    ) -> None:
        super().__init__()
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        self.weights = [1.0] * len(self.layers) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.layers):
            raise ValueError(f"{len(self.weights)} weights for {len(self.layers)} layers; give one weight per layer")
        if isinstance(net, str):
            extractor = create_model(
                net,
                pretrained=pretrained,
                features_only=True,
                layers=self.layers,
                normalize=normalize,
                **create_options,
            )
        else:
            src = unwrap(net)
            arch = src.arch
            extractor = VGGFeatures(
                arch["config"],
                arch.get("width", 1.0),
                arch.get("batch_norm", False),
                arch.get("in_chans", 3),
                layers=self.layers,
            )
            own = extractor.state_dict()
            extractor.load_state_dict({k: v for k, v in src.state_dict().items() if k in own})
            extractor.pretrained_cfg = getattr(src, "pretrained_cfg", None)
        if normalize and not extractor.pretrained_cfg:
            extractor.pretrained_cfg = normalization_cfg(normalize)[0]
        cfg = require_cfg(extractor, "the perceptual loss's net")
        self.net = extractor.eval().requires_grad_(False)
        conv = Convention.from_cfg(cfg)
        # the convention's arithmetic as buffers (they follow the loss to its device): x01 * 255 * scale + offset
        self.register_buffer("scale", 255.0 * torch.tensor(conv.scale, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("offset", torch.tensor(conv.offset, dtype=torch.float32).view(1, -1, 1, 1))
        self.bgr = conv.channel_order == "BGR"
        self.style = style

    def train(self, mode: bool = True) -> PerceptualLoss:
        """The loss's net stays in eval mode (frozen batch-norm statistics) whatever the caller's mode."""
        super().train(mode)
        self.net.eval()
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The maps at ``layers`` of images on [0, 1]."""
        return self.net((x.flip(1) if self.bgr else x) * self.scale + self.offset)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fi = self.features(input)
        with torch.no_grad():
            ft = self.features(target)
        loss = input.new_zeros(())
        for w, a, b in zip(self.weights, fi, ft):
            loss = loss + w * (F.mse_loss(gram(a), gram(b)) if self.style else F.mse_loss(a, b))
        return loss
