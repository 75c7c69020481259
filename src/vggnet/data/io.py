"""Reading one image file into an RGB uint8 tensor, and the paper's isotropic rescale."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from PIL import Image


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a (3, H, W) uint8 RGB tensor (grayscale, CMYK, alpha are converted to RGB)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        return torch.from_numpy(__import__("numpy").asarray(im).copy()).permute(2, 0, 1).contiguous()


def rescale(img: torch.Tensor, size: int) -> torch.Tensor:
    """Isotropically rescale (..., H, W) so that its smaller side is ``size`` (bilinear, antialiased)."""
    h, w = img.shape[-2:]
    if min(h, w) == size:
        return img
    if h <= w:
        nh, nw = size, max(1, round(w * size / h))
    else:
        nh, nw = max(1, round(h * size / w)), size
    x = img if img.is_floating_point() else img.float()
    batched = x.dim() == 4
    y = F.interpolate(x if batched else x[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    y = y if batched else y[0]
    if not img.is_floating_point():
        y = y.round_().clamp_(0, 255).to(img.dtype)
    return y
