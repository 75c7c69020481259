"""The paper's transforms (3.1, 3.2): isotropic rescale to S (fixed or jittered), random crop, horizontal flip,
AlexNet's PCA colour shift, mean RGB subtraction; at test time a rescale to Q, whole image or centre crop.

One function draws all of a sample's randomness, :func:`draw_params`, from a ``torch.Generator``; the CPU path
(:class:`TrainTransform`, per image, in DataLoader workers) and the batched path (:mod:`vggnet.data.gpu`) both
apply the resulting :class:`AugParams` with the same :meth:`ImageTransform.resample` (:func:`resized_crop` in
training) and :meth:`ImageTransform.normalize`, so a sample seed gives the same augmentation on either path, up
to the resampling kernel's numerics.

Pixel scale: decoded images are uint8; the output is the run's input convention (:mod:`vggnet.convention`, the
only normalisation of the package) applied to ``x / 255 + shift``, with ``shift`` the colour shift: for the paper,
``(x / 255 + shift) * 255 - mean`` with ``mean`` the training set's mean RGB on 0-255.

The test-time protocols (vggnet.evaluation) take a batch of decoded images to several test scales Q on the
device rather than one image through one transform: :func:`prepare_images` (rescale with :func:`eval_rescale`,
as :class:`EvalTransform` does, then the net's :class:`~vggnet.convention.Convention`) and :func:`center_crop` are
their preprocessing, kept
here beside the transforms. One centre for all: the offset ``(H - crop) // 2``, of the protocols'
:func:`center_crop` and of :func:`crop_offsets` at position 0.5 (:class:`EvalTransform`: validation in training,
localisation), so that the same net sees the same pixels through every command.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..convention import Convention
from .io import load_image, rescale, rescaled_size
from .stats import Stats

# The op behind F.interpolate(mode="bilinear", antialias=True), called directly because it takes an output
# size and a scale factor together: the crop below resamples a sub-region of the image at exactly the scale
# of the full rescale, which F.interpolate cannot express (its size and scale_factor are exclusive).
_resample = torch.ops.aten._upsample_bilinear2d_aa


@dataclass(frozen=True)
class AugParams:
    """Everything random about one sample's augmentation, independent of the image's size.

    Attributes:
        scale: S (training) or Q (test): the image's smaller side after the isotropic rescale.
        top, left: the crop position as a fraction in [0, 1) of the free range; the crop's offset in the
            rescaled image is ``floor(top * (H - crop + 1))``, and ``(H - crop) // 2`` at 0.5, the centre
            (see :func:`crop_offsets`).
        flip: mirror horizontally.
        alpha: AlexNet's colour-shift coefficients, already multiplied by the colour std (0.1 in AlexNet).
    """

    scale: int
    top: float = 0.5
    left: float = 0.5
    flip: bool = False
    alpha: tuple[float, float, float] = (0.0, 0.0, 0.0)


def draw_params(
    generator: torch.Generator | None,
    scale: int | tuple[int, int],
    flip: bool = True,
    colour_std: float = 0.1,
) -> AugParams:
    """Draw one sample's augmentation from ``generator`` (None: torch's global RNG).

    S is uniform over the integers of [Smin, Smax] (inclusive), crop position uniform, flip with p = 1/2, the
    colour coefficients alpha_i ~ N(0, colour_std). The same numbers are drawn in the same order whatever the
    options, so turning flips or the colour shift off leaves the other parameters of a seed unchanged.
    """
    smin, smax = (scale, scale) if isinstance(scale, int) else scale
    s = int(torch.randint(smin, smax + 1, (1,), generator=generator))
    u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
    a = (torch.randn(3, generator=generator, dtype=torch.float64) * colour_std).tolist()
    return AugParams(scale=s, top=u[0], left=u[1], flip=flip and u[2] < 0.5, alpha=(a[0], a[1], a[2]))


def crop_offsets(height: int, width: int, params: AugParams, crop: int) -> tuple[int, int, int, int]:
    """(H, W, top, left): the rescaled size of a height x width image and the crop's offset in it."""
    nh, nw = rescaled_size(height, width, params.scale)
    if crop > min(nh, nw):
        raise ValueError(f"crop {crop} is larger than the rescaled image {nh}x{nw}; use a scale >= the crop size")
    return nh, nw, _offset(params.top, nh - crop), _offset(params.left, nw - crop)


def _offset(position: float, free: int) -> int:
    """The crop's offset at ``position`` in [0, 1) of ``free`` spare pixels: uniform over 0..free for a uniform
    position; 0.5, the centre, is ``free // 2`` as in :func:`center_crop`, so that validation in training,
    localisation and every test protocol crop the same pixels."""
    if position == 0.5:
        return free // 2
    return min(int(position * (free + 1)), free)


def _span(offset: int, crop: int, f: float, size: int) -> tuple[int, int, int]:
    """Source rows [r0, r1) and output offset k0 for output rows [offset, offset + crop) at scale f."""
    # the antialiasing filter reaches max(1, 1/f) source pixels from a sample's centre; one more for rounding
    reach = max(1.0, 1.0 / f) + 1.0
    start = offset / f  # the crop's first edge in source coordinates
    r0 = max(0, math.floor(start - reach))
    r1 = min(size, math.ceil((offset + crop) / f + reach))
    # Resampling source rows r0.. puts output row j at r0 * f + j of the full rescale: k0 = offset - r0 * f,
    # rounded (exact when r0 = 0, else within half a pixel of the rescaled image).
    return r0, r1, round((start - r0) * f)


@dataclass(frozen=True)
class CropWindow:
    """Where :func:`resized_crop` reads and resamples: source rows [y0, y1) and columns [x0, x1), resampled at
    scales (fy, fx), of which the crop starts at (ky, kx). It depends only on the image's size and the sample's
    :class:`AugParams`, so the GPU path's workers compute it from the file's header (:func:`crop_window`)."""

    y0: int
    y1: int
    x0: int
    x1: int
    ky: int
    kx: int
    fy: float
    fx: float


def crop_window(height: int, width: int, size: int, crop: int, top: float = 0.5, left: float = 0.5) -> CropWindow:
    """The :class:`CropWindow` of :func:`resized_crop` for a height x width image."""
    _, _, y, x = crop_offsets(height, width, AugParams(size, top, left), crop)
    nh, nw = rescaled_size(height, width, size)
    fy, fx = nh / height, nw / width
    y0, y1, ky = _span(y, crop, fy, height)
    x0, x1, kx = _span(x, crop, fx, width)
    return CropWindow(y0, y1, x0, x1, ky, kx, fy, fx)


def eval_rescale(img: torch.Tensor, size: int) -> torch.Tensor:
    """The test-time isotropic rescale to smaller side ``size``: uint8 stays uint8 on the CPU (torch's
    vectorised kernel); elsewhere it runs in float32 without rounding (the CUDA antialiased kernel takes
    floating point only, and rounding back to uint8 would only lose precision before the normalisation)."""
    return rescale(img if img.device.type == "cpu" or img.is_floating_point() else img.float(), size)


def resized_crop(img: torch.Tensor, size: int, crop: int | None, top: float = 0.5, left: float = 0.5) -> torch.Tensor:
    """The crop of an image isotropically rescaled to smaller side ``size``, at fractional position (top, left).

    Equal to ``rescale(img, size)`` followed by the crop at :func:`crop_offsets`, but resamples only the source
    region under the crop (plus the filter's reach), which for S in [256, 512] and a 224 crop is several times
    less work. The crop lies within half a rescaled pixel of the exact offset. ``crop=None`` returns the whole
    rescaled image.

    ``img`` is (3, H, W) or (N, 3, H, W), uint8 or floating point. On the CPU uint8 stays uint8 (torch's
    vectorised kernel); elsewhere the result is float32 on the 0-255 scale, not rounded.
    """
    h, w = img.shape[-2:]
    if crop is None:
        return eval_rescale(img, size)
    batched = img.dim() == 4
    out = resample_windows(img if batched else img[None], [crop_window(h, w, size, crop, top, left)], crop)
    return out if batched else out[0]


def resample_windows(images, windows: Sequence[CropWindow], crop: int) -> torch.Tensor:
    """The crops of :func:`resized_crop` for a batch: image i ((3, H_i, W_i), or a stack) through ``windows[i]``;
    (N, 3, crop, crop).

    Windows at one scale (images of one size at one S, common in fixed-scale training) are resampled in one
    call. Two facts make that exact: the scales are passed explicitly, so an output pixel does not depend on
    the output's size, and a window already covers its crop's filter support, so reading a few more source
    rows or columns (up to the group's largest window, where the image has them) changes no crop pixel. Each
    crop is then cut from the common output at its own (ky, kx).
    """
    by_scale: dict[tuple[float, float], list[int]] = {}
    for i, win in enumerate(windows):
        by_scale.setdefault((win.fy, win.fx), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(windows)
    for (fy, fx), members in by_scale.items():
        rh = max(windows[i].y1 - windows[i].y0 for i in members)
        rw = max(windows[i].x1 - windows[i].x0 for i in members)
        fits = [
            i
            for i in members
            if windows[i].y0 + rh <= images[i].shape[-2] and windows[i].x0 + rw <= images[i].shape[-1]
        ]
        rest = [i for i in members if i not in set(fits)]
        groups = [(fits, rh, rw)] if fits else []
        for i in rest:  # windows at the image's far edge cannot grow: one call each
            groups.append(([i], windows[i].y1 - windows[i].y0, windows[i].x1 - windows[i].x0))
        for idx, h, w in groups:
            wins = [windows[i] for i in idx]
            regions = [images[i][..., v.y0 : v.y0 + h, v.x0 : v.x0 + w] for i, v in zip(idx, wins)]
            region = torch.stack(regions) if len(regions) > 1 else regions[0][None]
            if not (region.is_floating_point() or region.device.type == "cpu"):
                region = region.float()  # the CUDA antialiased kernel takes floating point only
            oh, ow = max(v.ky for v in wins) + crop, max(v.kx for v in wins) + crop
            # torch's CPU kernel copies an axis whose output size equals its input size, whatever the scale:
            # one more output row (or column) keeps it resampling at fy (fx)
            oh += oh == h and fy != 1.0
            ow += ow == w and fx != 1.0
            res = _resample(region, [oh, ow], False, fy, fx)
            for j, (i, v) in enumerate(zip(idx, wins)):
                out[i] = res[j, :, v.ky : v.ky + crop, v.kx : v.kx + crop]
    return torch.stack(out) if len(out) > 1 else out[0][None]


def colour_shift(alpha: Sequence[float], eigval: Sequence[float], eigvec: Sequence[Sequence[float]]) -> list[float]:
    """AlexNet's RGB shift ``eigvec @ (alpha * eigval)``: the principal components (the columns of ``eigvec``)
    weighted by their eigenvalues times alpha. Plain float64 arithmetic: three numbers per image do not pay for
    tensor dispatch."""
    return [sum(eigvec[i][j] * alpha[j] * eigval[j] for j in range(3)) for i in range(3)]


class ImageTransform:
    """Shared part of the training and test transforms: resample, flip, colour shift and normalise.

    A transform is called as ``transform(path, generator)`` (what :class:`~vggnet.data.ImageDataset` does):
    it draws the sample's :class:`AugParams` with :meth:`sample`, decodes the file (at reduced size when S is
    much smaller than a JPEG), and returns :meth:`apply`'s float32 (3, H, W) tensor.
    """

    crop_size: int | None
    # decoded images by path, kept in memory when a dict (one per process: each loader worker fills its own);
    # None decodes every file at every use. For data sets that fit in memory, like the embedded ones, whose
    # decoding is most of a small net's epoch on the CPU (TrainConfig.cache_images).
    cache: dict[str, torch.Tensor] | None = None

    def __init__(self, stats: Stats | None, divide_std: bool, convention: Convention | None = None) -> None:
        self.stats = stats
        self.divide_std = divide_std
        # how pixels become the net's input (vggnet.convention); without one: stats' mean (and std), on [0, 1]
        if convention is None:
            mean = tuple(stats.mean) if stats else (0.0, 0.0, 0.0)
            convention = Convention(mean, tuple(stats.std) if stats and divide_std else (1.0, 1.0, 1.0))
        if convention.channel_order != "RGB":
            raise ValueError("training transforms feed RGB (Caffe's BGR weights are folded into conv1 when loaded)")
        self.convention = convention
        self.eigval = tuple(stats.eigval) if stats else (0.0, 0.0, 0.0)
        self.eigvec = tuple(stats.eigvec) if stats else ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
        # the convention's per-channel multiplier, applied in float32 to the uint8 pixels
        self._inv = torch.tensor(convention.scale)[:, None, None]

    def sample(self, generator: torch.Generator | None = None) -> AugParams:
        """The augmentation parameters of one sample (None: torch's global RNG)."""
        raise NotImplementedError

    def offset(self, alpha: Sequence[float] | Sequence[Sequence[float]] | torch.Tensor) -> torch.Tensor:
        """The float32 offset ``((colour_shift(alpha) * pixel_range - mean) / std`` of one alpha (3,) or of a batch
        (N, 3),
        shaped (3, 1, 1) or (N, 3, 1, 1) to broadcast over images."""
        a = alpha.tolist() if isinstance(alpha, torch.Tensor) else alpha
        single = len(a) > 0 and not isinstance(a[0], (Sequence, torch.Tensor))
        rows = [self.convention.shift_offset(colour_shift(r, self.eigval, self.eigvec)) for r in ([a] if single else a)]
        off = torch.tensor(rows, dtype=torch.float32).reshape(-1, 3, 1, 1)
        return off[0] if single else off

    def normalize(self, x: torch.Tensor, alpha) -> torch.Tensor:
        """The convention applied to ``x / 255 + colour_shift(alpha)`` in float32, for x (3, H, W) with one alpha
        (3,), or
        x (N, 3, H, W) with alphas (N, 3). x is uint8 (or float on the 0-255 scale); it is not modified."""
        inv, off = self._inv, self.offset(alpha)
        if x.device.type != "cpu":
            inv, off = inv.to(x.device, non_blocking=True), off.to(x.device, non_blocking=True)
        return x.to(torch.float32, copy=True).mul_(inv).add_(off)

    def resample(self, img: torch.Tensor, params: AugParams) -> torch.Tensor:
        """The rescaled (and cropped) image, before flip and normalisation: uint8 on the CPU."""
        return resized_crop(img, params.scale, self.crop_size, params.top, params.left)

    def window(self, height: int, width: int, params: AugParams) -> CropWindow | None:
        """Where :meth:`resample` reads a height x width image (see :func:`resample_windows`); None when it
        resamples the whole image (no crop, or the test transform's exact rescale-then-crop)."""
        if self.crop_size is None:
            return None
        return crop_window(height, width, params.scale, self.crop_size, params.top, params.left)

    def apply(self, img: torch.Tensor, params: AugParams) -> torch.Tensor:
        """Rescale, crop, flip, colour-shift and normalise one decoded (3, H, W) image."""
        x = self.resample(img, params)
        if params.flip:
            x = x.flip(-1)
        return self.normalize(x, params.alpha)

    def __call__(self, path: str | os.PathLike, generator: torch.Generator | None = None) -> torch.Tensor:
        params = self.sample(generator)
        return self.apply(self.decode(path, params.scale), params)

    def decode(self, path: str | os.PathLike, min_side: int | None = None) -> torch.Tensor:
        """The decoded uint8 image of ``path``: from :attr:`cache` when it is a dict (filled on first use, a
        JPEG then decoded at full size whatever ``min_side``), else from the file (at reduced size when a JPEG
        is much larger than ``min_side``)."""
        if self.cache is None:
            return load_image(path, min_side=min_side)
        key = os.fspath(path)
        img = self.cache.get(key)
        if img is None:
            img = self.cache[key] = load_image(path)
        return img


class TrainTransform(ImageTransform):
    """The paper's training augmentation (3.1).

    Rescale isotropically so the smaller side is S (fixed, or drawn per image uniformly from the integers of
    [Smin, Smax]: scale jittering), take a random ``crop_size`` crop, flip it horizontally with p = 1/2, add
    AlexNet's PCA colour shift (alpha_i ~ N(0, colour_std)), subtract the mean RGB, optionally divide by the std.

    Args:
        stats: the training set's statistics (mean RGB, std, PCA); None: no mean subtraction (pixels in [0, 1])
            and then ``colour_std`` must be 0.
        crop_size: side of the square crop (224 in the paper).
        scale: S, or (Smin, Smax) for scale jittering (256, 384 or (256, 512) in the paper).
        flip: random horizontal flips.
        colour_std: std of the colour-shift coefficients (0.1 as in AlexNet; 0 turns the shift off).
        divide_std: divide by the per-channel std (for torchvision-trained weights; the paper does not).
        convention: how pixels become the net's input (:class:`~vggnet.convention.Convention`), when it is
            not ``stats``' mean (and std) on [0, 1]: a run's (``Convention.of_run``); ``stats`` then gives the PCA.
    """

    def __init__(
        self,
        stats: Stats | None,
        crop_size: int = 224,
        scale: int | tuple[int, int] = 256,
        flip: bool = True,
        colour_std: float = 0.1,
        divide_std: bool = False,
        convention: Convention | None = None,
    ) -> None:
        super().__init__(stats, divide_std, convention)
        smin, smax = (scale, scale) if isinstance(scale, int) else (int(scale[0]), int(scale[1]))
        if not 0 < crop_size <= smin <= smax:
            raise ValueError(f"need 0 < crop_size <= Smin <= Smax, got crop_size {crop_size}, scale {scale}")
        if colour_std < 0 or (colour_std > 0 and stats is None):
            raise ValueError(
                "the colour shift needs the PCA of the training set: pass stats=compute_stats(...) or colour_std=0"
            )
        self.crop_size = crop_size
        self.scale = (smin, smax)
        self.flip = flip
        self.colour_std = colour_std

    def sample(self, generator: torch.Generator | None = None) -> AugParams:
        return draw_params(generator, self.scale, self.flip, self.colour_std)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale={self.scale}, flip={self.flip}, "
            f"colour_std={self.colour_std}, divide_std={self.divide_std})"
        )


class EvalTransform(ImageTransform):
    """The test-time transform (3.2): rescale isotropically to smaller side Q, then the whole image or a centre crop.

    Args:
        stats: the training set's statistics (its mean RGB is subtracted); None: pixels in [0, 1].
        size: Q.
        crop_size: None keeps the whole rescaled image (dense evaluation; sizes vary, so batch with
            :func:`~vggnet.data.collate_list`); an int takes the centre crop.
        divide_std: divide by the per-channel std.
        convention: as for :class:`TrainTransform`.
    """

    def __init__(
        self,
        stats: Stats | None,
        size: int = 256,
        crop_size: int | None = None,
        divide_std: bool = False,
        convention: Convention | None = None,
    ):
        super().__init__(stats, divide_std, convention)
        if size < 1 or (crop_size is not None and not 0 < crop_size <= size):
            raise ValueError(f"need 0 < crop_size <= size, got size {size}, crop_size {crop_size}")
        self.size = size
        self.crop_size = crop_size

    def sample(self, generator: torch.Generator | None = None) -> AugParams:
        return AugParams(self.size)  # centred, unflipped, no colour shift

    def window(self, height: int, width: int, params: AugParams) -> None:
        return None  # resample below rescales the whole image

    def resample(self, img: torch.Tensor, params: AugParams) -> torch.Tensor:
        # The whole rescale, then the crop: exact, unlike resized_crop's half-pixel rounding, and at test time
        # (one crop per image, no scale jitter) the saving of resampling only the crop is small.
        x = eval_rescale(img, params.scale)
        if self.crop_size is None:
            return x
        _, _, top, left = crop_offsets(img.shape[-2], img.shape[-1], params, self.crop_size)
        return x[..., top : top + self.crop_size, left : left + self.crop_size]

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, crop_size={self.crop_size}, divide_std={self.divide_std})"


# ---- the test-time protocols' preprocessing (vggnet.evaluation) -----------------------------------------------


def prepare_images(images: Sequence[torch.Tensor], q: int, convention: Convention) -> list[torch.Tensor]:
    """uint8 (3, H, W) images rescaled to smaller side Q (:func:`eval_rescale`) and put into the net's input by
    ``convention``, on the images' device: what every test-time protocol feeds a net (eval, predict, features,
    localisation).

    Images of one size are rescaled as one batch (few large kernels rather than many small ones).
    """
    out: list[torch.Tensor] = [None] * len(images)  # type: ignore[list-item]
    for idx in shape_groups(images).values():
        x = torch.stack([images[i] for i in idx])
        x = convention(eval_rescale(x, q))
        for i, xi in zip(idx, x):
            out[i] = xi
    return out


def shape_groups(images: Sequence[torch.Tensor]) -> dict[tuple[int, ...], list[int]]:
    """Indices of ``images`` grouped by shape, in first-seen order: images of one shape batch together."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        groups[tuple(img.shape)].append(i)
    return groups


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """(..., H, W) -> (..., crop, crop), the crop at offsets ((H - crop)//2, (W - crop)//2)."""
    top, left = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot take a {crop}-pixel centre crop of {tuple(x.shape[-2:])}")
    return x[..., top : top + crop, left : left + crop]
