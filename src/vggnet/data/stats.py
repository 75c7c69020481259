"""The training set's RGB statistics: mean (the paper's only preprocessing), std, and the PCA of the RGB
covariance (AlexNet's colour shift). All on the [0, 1] pixel scale, accumulated in float64."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..files import atomic_write_text
from .folders import scan_folder
from .io import BadImageError, load_image, rescale

log = logging.getLogger(__name__)

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Stats:
    """Per-pixel RGB statistics of a training set, on the [0, 1] pixel scale.

    Attributes:
        mean: mean R, G, B over all pixels.
        std: per-channel standard deviation over all pixels.
        eigval: eigenvalues of the 3x3 RGB covariance, largest first.
        eigvec: the matching eigenvectors as the COLUMNS of a 3x3 matrix (stored as its 3 rows), so that the
            colour shift of :func:`vggnet.data.transforms.colour_shift` is ``eigvec @ (alpha * eigval)``.
        images: how many images the statistics were computed from (0 for a preset).
        pixels: how many pixels.
    """

    mean: Vec3
    std: Vec3
    eigval: Vec3
    eigvec: tuple[Vec3, Vec3, Vec3]
    images: int = 0
    pixels: int = 0

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics as JSON (atomically: a reader never sees half a file)."""
        atomic_write_text(path, json.dumps({"pixel_scale": "[0, 1]", **asdict(self)}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Stats:
        """Read statistics written by :meth:`save`."""
        try:
            d = json.loads(Path(path).read_text())
            return cls(
                mean=_vec3(d["mean"]),
                std=_vec3(d["std"]),
                eigval=_vec3(d["eigval"]),
                eigvec=tuple(_vec3(r) for r in d["eigvec"]),
                images=int(d.get("images", 0)),
                pixels=int(d.get("pixels", 0)),
            )
        except FileNotFoundError:
            raise FileNotFoundError(f"no statistics file {path}; compute it with vggnet.data.compute_stats") from None
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path} is not a statistics file written by Stats.save ({e})") from e


def _vec3(v: Sequence[float]) -> Vec3:
    if len(v) != 3:
        raise ValueError(f"expected 3 values, got {len(v)}")
    return (float(v[0]), float(v[1]), float(v[2]))


# ImageNet presets, for weights trained by torchvision or timm on ImageNet with these numbers. mean/std are
# torchvision's. The PCA values are the ImageNet "lighting" constants of fb.resnet.torch (AlexNet's, from 0-255
# pixel statistics divided by 255): they are not eigenvalues of the [0, 1] covariance (which sum to about
# 0.15), so with them the colour shift is about 4x stronger than with compute_stats' eigenvalues.
IMAGENET_STATS = Stats(
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    eigval=(0.2175, 0.0188, 0.0045),
    eigvec=((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203)),
)


class _Moments(Dataset):
    """Per-image pixel count, mean and centred scatter matrix (float64): what the streaming merge needs."""

    def __init__(self, paths: Sequence[str], side: int | None) -> None:
        self.paths, self.side = paths, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor] | str:
        try:
            x = load_image(self.paths[i], min_side=self.side)
        except BadImageError as e:
            log.warning("skipping bad image %s: %s", e.path, e.reason)
            return self.paths[i]
        if self.side:
            x = rescale(x, self.side)
        v = x.reshape(3, -1).double().div_(255)
        m = v.mean(1)
        c = v - m[:, None]
        return v.shape[1], m, c @ c.T


def _identity(x):
    return x


def _paths(source) -> list[str]:
    samples = getattr(source, "samples", source)  # an ImageDataset, or anything holding .samples
    if isinstance(samples, (str, os.PathLike)):
        samples, _ = scan_folder(samples)
    return [str(s[0]) if isinstance(s, (tuple, list)) else str(s) for s in samples]


def compute_stats(
    source,
    max_images: int | None = 10_000,
    seed: int = 0,
    side: int | None = None,
    num_workers: int = 0,
) -> Stats:
    """Mean RGB, per-channel std and the PCA of the RGB covariance of a seeded sample of images.

    A single streaming pass: each image contributes its pixel count, mean and centred scatter matrix, merged in
    float64 with Chan et al.'s pairwise update, so memory stays constant and the sums stay accurate. Every pixel
    counts once (a large image weighs more than a small one), on the [0, 1] scale. Bad files are skipped with
    a warning.

    Args:
        source (ImageDataset | list | str | Path): an ImageDataset (its samples), a list of (path, label) samples,
            a list of paths, or a
            class-folder directory.
        max_images: use a seeded random sample of at most this many images (None: all).
        seed: seed of that sample.
        side: if set, rescale each image so its smaller side is ``side`` first (decoding large JPEGs at reduced
            size, much faster); None uses the pixels as stored.
        num_workers: DataLoader worker processes for decoding.
    """
    paths = _paths(source)
    if not paths:
        raise ValueError("compute_stats got no images")
    if max_images is not None and len(paths) > max_images:
        pick = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:max_images]
        paths = [paths[i] for i in sorted(pick.tolist())]
    loader = DataLoader(_Moments(paths, side), batch_size=None, collate_fn=_identity, num_workers=num_workers)
    n, mean, m2, images = 0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64), 0
    for item in loader:
        if isinstance(item, str):
            continue
        nb, mb, m2b = item
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + torch.outer(delta, delta) * (n * nb / total)
        n, images = total, images + 1
    if not images:
        raise ValueError(f"compute_stats: none of the {len(paths)} images could be read (see the warnings)")
    cov = m2 / n
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending, columns are eigenvectors
    eigval, eigvec = eigval.flip(0).clamp_(min=0), eigvec.flip(1)
    # eigenvectors have no sign; fix one (largest component positive) so saved files are reproducible
    sign = torch.sign(eigvec.gather(0, eigvec.abs().argmax(0, keepdim=True)))
    eigvec = eigvec * torch.where(sign == 0, 1.0, sign)
    return Stats(
        mean=_vec3(mean.tolist()),
        std=_vec3([math.sqrt(max(v, 0.0)) for v in cov.diagonal().tolist()]),
        eigval=_vec3(eigval.tolist()),
        eigvec=tuple(_vec3(r) for r in eigvec.tolist()),
        images=images,
        pixels=n,
    )
