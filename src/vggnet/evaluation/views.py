"""The paper's views of a test image (sections 3.2 and 4.4), and the soft-max posteriors averaged over them.

Every function here takes images already rescaled to one test scale Q and normalised (``prepare_images``):

- ``dense_posteriors``: the whole, uncropped image goes through the fully convolutional net (``model.dense``);
  the class score map is spatially averaged into one score vector and turned into a posterior by the soft-max.
  A window of the map whose centre lies beyond the image's edge does not count (``model.window_mask``: only
  with crops under 64 pixels; at the paper's geometry every window counts).
- ``multicrop_posteriors``: a 5x5 regular grid of crops of the training crop size. The grid spans the image from
  edge to edge: the first crop of a row sits at offset 0, the last at the far edge (H - crop or W - crop), the
  ones between are evenly spaced (offsets rounded down in the left half and mirrored in the right half, so that
  the grid of the flipped image is the mirror image of the grid). 25 crops, plus 25 of the flipped image: the
  paper's 50 views per scale.
- ``center_posteriors``: the classic single centre crop, never flipped: the one-view baseline.

Flip: the horizontally flipped image is one more view of each kind (except the centre crop). The posteriors of
an image's views are averaged with equal weights.

``dense_average`` (and ``average_map`` for a map already computed) is the one dense averager: evaluation's dense
views, localisation's class posterior (``vggnet.localisation.protocols``) and the descriptors of Appendix B
(``vggnet.descriptors``, which average an image's and its mirror's ``dense_views``) all take their maps from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..data.transforms import center_crop, shape_groups
from ..model import spatial_average
from ..runtime import Runtime, runtime
from ..weights import unwrap

GRID = 5  # the paper's 5x5 crops per scale


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
    return torch.stack([x[..., t : t + crop, c : c + crop] for t in tops for c in lefts], dim=-4)


def softmax_mean(logits: torch.Tensor) -> torch.Tensor:
    """(B, V, C) class scores of V views of each image -> (B, C) averaged soft-max posteriors (in float32)."""
    return logits.float().softmax(-1).mean(1)


def average_map(model: nn.Module, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) dense maps of ``model`` on inputs of ``size`` (H, W) -> (N, C), averaged in float32 (bf16 sums
    over many positions lose digits) over the windows that lie on the image (``model.window_mask``)."""
    return spatial_average(maps.float(), tuple(size), unwrap(model).crop_size)


def dense_average(model: nn.Module, x: torch.Tensor, head: bool = True) -> torch.Tensor:
    """(N, 3, H, W) normalised images of one size -> (N, C): the net's dense map averaged over the image (class
    scores; with ``head=False`` the penultimate features, Appendix B's descriptors)."""
    maps = model.dense(x) if head else model.dense(x, head=False)
    return average_map(model, maps, tuple(x.shape[-2:]))


def dense_views(model: nn.Module, x: torch.Tensor, flip: bool = True, head: bool = True) -> torch.Tensor:
    """(B, 3, H, W) normalised images of one size -> (B, V, C): :func:`dense_average` of each view, the image and
    (with ``flip``) its mirror image."""
    views = with_flip(x) if flip else x[:, None]
    return dense_average(model, views.flatten(0, 1), head).view(*views.shape[:2], -1)


def _scores(model: nn.Module, views: torch.Tensor, dense: bool, rt: Runtime) -> torch.Tensor:
    """(B, V, 3, H, W) views -> (B, V, C) class scores; dense views are averaged score maps (:func:`dense_average`)."""
    b, v = views.shape[:2]
    x = rt.input(views.flatten(0, 1))
    with rt.autocast():
        y = dense_average(model, x) if dense else model(x).float()
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
    per = max(1, batch_size // (2 if flip else 1))
    for idx in shape_groups(xs).values():
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
    model: nn.Module,
    xs: Sequence[torch.Tensor],
    flip: bool = True,
    batch_size: int = 32,
    rt: Runtime | None = None,
    grid: int = GRID,
) -> torch.Tensor:
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


# The kind of view -> its posteriors (model, images, flip, batch_size, rt) -> (N, C).
VIEW_KINDS: dict[str, Callable[..., torch.Tensor]] = {
    "dense": dense_posteriors,
    "multicrop": multicrop_posteriors,
    "center": center_posteriors,
}

__all__ = [
    "GRID",
    "VIEW_KINDS",
    "average_map",
    "center_posteriors",
    "crop_posteriors",
    "dense_average",
    "dense_posteriors",
    "dense_views",
    "grid_crops",
    "grid_offsets",
    "multicrop_posteriors",
    "softmax_mean",
    "with_flip",
]
