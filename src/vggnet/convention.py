"""The input convention: how decoded pixels become a net's input. Written once; every command and the Python API
normalise through it (training's transforms, evaluation, localisation, features, export's metadata).

A :class:`Convention` says, for uint8 RGB pixels ``p`` on [0, 255] as decoded::

    x = (reorder(p) * pixel_range / 255 - mean) / std

``channel_order`` ("RGB" or "BGR") is the order the net takes its channels in; ``pixel_range`` is the scale the
pixels are put on (1: [0, 1], torchvision's; 255: [0, 255], the authors' Caffe); ``mean`` and ``std`` are in the
units of that range and in the net's channel order. The paper's runs subtract the training set's mean RGB on the
0-255 scale (``Convention((123.7, 116.8, 103.9), pixel_range=255)``); torchvision's weights take
``Convention(IMAGENET_MEAN, IMAGENET_STD)``; the authors' Caffe files take BGR on [0, 255] minus the mean BGR.

It is read from a run's config and stats (:meth:`Convention.of_run`), from weights' ``pretrained_cfg``
(:meth:`Convention.from_cfg`) or from the one ``--normalize`` vocabulary (:func:`parse_normalize`), and written into
``pretrained_cfg`` (:meth:`Convention.to_cfg`) of every run's weights and every export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # the authors' mean pixel, on [0, 255]
CAFFE_MEAN_RGB01 = tuple(round(v / 255, 6) for v in reversed(CAFFE_MEAN_BGR))

# The one --normalize vocabulary of `vgg train` and of the commands that read weights. "mean" and "standardize"
# use a training set's statistics (a run has them; weights alone do not).
NORMALIZE_FORMS = "mean|standardize|imagenet|caffe|mean:R,G,B"
NORMALIZE_HELP = (
    "how pixels become the net's input: mean (subtract the training set's mean RGB: the paper), standardize "
    "(also divide by its std), imagenet (torchvision's mean and std), caffe (the authors' mean pixel; weights "
    "files: BGR 0-255, folded into conv1), mean:R,G,B (a mean pixel on 0-255)"
)
_STATS_FORMS = ("mean", "standardize")


def _triple(values: Sequence[float], what: str) -> tuple[float, float, float]:
    out = tuple(float(v) for v in values)
    if len(out) != 3:
        raise ValueError(f"the input convention's {what} needs 3 values (one a channel), got {list(values)}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Convention:
    """How pixels become the net's input (module doc): ``x = (reorder(p) * pixel_range / 255 - mean) / std``."""

    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in units of pixel_range, in channel_order
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # in units of pixel_range, in channel_order
    pixel_range: int = 1  # 1: pixels on [0, 1]; 255: on [0, 255]
    channel_order: str = "RGB"  # the net's channel order
    # (scale, offset) tensors per device, made once: a small host-to-device copy per batch would wait for the GPU
    _on: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        object.__setattr__(self, "std", _triple(self.std, "std"))
        if self.pixel_range not in (1, 255):
            raise ValueError(f"pixel_range must be 255 or 1, got {self.pixel_range}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive to divide by it, got {self.std}")

    # ---- the arithmetic: x = reorder(p) * scale + offset, per channel ------------------------------------------

    @property
    def scale(self) -> tuple[float, float, float]:
        """Per channel, what a 0-255 pixel is multiplied by."""
        return tuple(self.pixel_range / (255.0 * s) for s in self.std)  # type: ignore[return-value]

    @property
    def offset(self) -> tuple[float, float, float]:
        """Per channel, what is added after the multiplication."""
        return tuple(-m / s for m, s in zip(self.mean, self.std))  # type: ignore[return-value]

    def shift_offset(self, shift: Sequence[float]) -> tuple[float, ...]:
        """The offset with a colour shift added to the pixels first (``shift`` on the [0, 1] scale, as AlexNet's
        PCA shift of training): ``((p / 255 + shift) * pixel_range - mean) / std = p * scale + this``."""
        return tuple((d * self.pixel_range - m) / s for d, m, s in zip(shift, self.mean, self.std))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) RGB pixels on [0, 255] (uint8, or float on that scale) -> the net's float32 input."""
        import torch  # here: the config (and `vgg train --help`) reads the vocabulary without loading torch

        x = pixels.to(torch.float32)
        if self.channel_order == "BGR":
            x = x.flip(-3)
        if x.device not in self._on:
            self._on[x.device] = tuple(
                torch.tensor(v, dtype=torch.float32, device=x.device)[:, None, None] for v in (self.scale, self.offset)
            )
        scale, offset = self._on[x.device]
        return x * scale + offset

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """As calling it, for RGB pixels on [0, 1] (torchvision's ``ToDtype(float32, scale=True)``)."""
        return self(x * 255.0)

    # ---- the canonical form of pretrained_cfg (RGB on [0, 1], then (x - mean) / std) --------------------------

    @property
    def mean01(self) -> torch.Tensor:
        """The mean on the [0, 1] scale, (3,) float32 (the canonical form: ``(p / 255 - mean01) / std01``)."""
        import torch

        return torch.tensor([m / self.pixel_range for m in self.mean], dtype=torch.float32)

    @property
    def std01(self) -> torch.Tensor:
        import torch

        return torch.tensor([s / self.pixel_range for s in self.std], dtype=torch.float32)

    def to_cfg(self) -> dict[str, Any]:
        """The convention's keys of ``pretrained_cfg``: mean and std on the [0, 1] scale (torchvision's habit,
        what ``Normalize`` takes), with the pixel range and channel order that make them exact."""
        return dict(
            channel_order=self.channel_order,
            value_range=[0, 1],
            pixel_range=self.pixel_range,
            mean=[m / self.pixel_range for m in self.mean],
            std=[s / self.pixel_range for s in self.std],
        )

    @classmethod
    def from_cfg(cls, cfg: dict[str, Any] | None) -> Convention | None:
        """The convention of weights' ``pretrained_cfg``; None when they carry none."""
        if not cfg or "mean" not in cfg:
            return None
        pr = int(cfg.get("pixel_range", 1))
        return cls(
            tuple(m * pr for m in cfg["mean"]),
            tuple(s * pr for s in cfg.get("std", (1.0, 1.0, 1.0))),
            pr,
            str(cfg.get("channel_order", "RGB")),
        )

    @classmethod
    def of_run(cls, stats: Any, normalize: str, pixel_range: int = 1) -> Convention:
        """The convention a training run feeds its net: ``normalize`` (:data:`NORMALIZE_FORMS`) with the
        training set's ``stats`` (mean, std on [0, 1]) and the run's pixel range. With a std to divide by
        (standardize, imagenet) the pixel range cancels out and is not used."""
        return parse_normalize(normalize, stats, pixel_range)

    def describe(self) -> str:
        m = ", ".join(f"{v:.4g}" for v in self.mean)
        s = "" if self.std == (1.0, 1.0, 1.0) else " / (" + ", ".join(f"{v:.4g}" for v in self.std) + ")"
        return f"{self.channel_order} on [0, {self.pixel_range}] minus ({m}){s}"


def parse_normalize(spec: str, stats: Any = None, pixel_range: int = 1) -> Convention:
    """The one ``--normalize`` vocabulary (:data:`NORMALIZE_FORMS`) as a :class:`Convention` of RGB input.

    ``mean`` / ``standardize`` need the training set's ``stats``; ``caffe`` is the authors' mean pixel (as RGB:
    Caffe's BGR order is folded into conv1 where weights are loaded); ``mean:R,G,B`` a mean pixel on 0-255 (on
    [0, 1] when every value is <= 1). A mean-only convention puts the pixels on ``pixel_range``.
    """
    s = str(spec).strip().lower()
    if s in _STATS_FORMS and stats is None:
        raise ValueError(
            f"--normalize {s} uses a training set's statistics, which weights alone do not have; "
            f"use imagenet, caffe or mean:R,G,B"
        )
    if s == "mean":
        return Convention(tuple(m * pixel_range for m in stats.mean), pixel_range=pixel_range)
    if s == "standardize":
        return Convention(tuple(stats.mean), tuple(stats.std))
    if s == "imagenet":
        return Convention(IMAGENET_MEAN, IMAGENET_STD)
    if s == "caffe":
        return Convention(tuple(m * pixel_range for m in CAFFE_MEAN_RGB01), pixel_range=pixel_range)
    if s.startswith("mean:"):
        try:
            vals = [float(v) for v in s[5:].split(",")]
        except ValueError:
            vals = []
        if len(vals) == 3:
            vals01 = vals if all(v <= 1 for v in vals) else [v / 255 for v in vals]
            return Convention(tuple(v * pixel_range for v in vals01), pixel_range=pixel_range)
    raise ValueError(
        f"unknown normalisation {spec!r}; use --normalize {NORMALIZE_FORMS} (e.g. mean:123.68,116.78,103.94)"
    )


def check_normalize(spec: str) -> str:
    """``spec`` if it is of the vocabulary (the config's check, without statistics), else a ValueError."""
    parse_normalize(spec, stats=_UNIT, pixel_range=1)
    return spec


class _Unit:
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)


_UNIT = _Unit()

__all__ = [
    "CAFFE_MEAN_BGR",
    "CAFFE_MEAN_RGB01",
    "Convention",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZE_FORMS",
    "NORMALIZE_HELP",
    "check_normalize",
    "parse_normalize",
]


class ConventionTensors:
    """``mean`` and ``std`` tensors of an object's ``convention``, on the [0, 1] pixel scale (the canonical form:
    the net sees ``(pixels / 255 - mean) / std``); shared by runs and evaluation's nets."""

    convention: Convention

    @property
    def mean(self) -> torch.Tensor:
        return self.convention.mean01

    @property
    def std(self) -> torch.Tensor:
        return self.convention.std01
