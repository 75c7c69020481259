"""ImageNet-like JPEG folders made on the spot, for benchmarks and checks: nothing is downloaded.

Each image is a random crop of a photo that an installed package ships (scikit-image's sample images, when it
is installed; matplotlib's ``grace_hopper.jpg``; scikit-learn's two sample photos), at 60-100% of the largest box
of the target aspect, flipped half the time and tinted by 0.8-1.2 per channel; or, without any of those packages,
smooth colour fields plus fine texture (which compress like a photo, unlike white noise). ImageNet's typical
500x375, one image in five portrait (375x500), JPEG quality 90. Image ``i`` of seed ``s`` is the same on every
machine that has the same source packages.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image

# sample images inside the scikit-image wheel (nothing is downloaded)
_SKIMAGE = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
    "coins",
    "brick",
    "grass",
)


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = np.clip(a * (255 if a.max() <= 1 else 1), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


@functools.cache
def photo_sources() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, RGB uint8 array) of every photo the installed packages ship; empty when there is none."""
    found: list[tuple[str, np.ndarray]] = []
    with contextlib.suppress(ImportError):
        import skimage.data  # optional: only its bundled sample images are read

        for name in _SKIMAGE:
            with contextlib.suppress(Exception):
                found.append((f"skimage.data.{name}", _rgb(getattr(skimage.data, name)())))
    with contextlib.suppress(Exception):
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            found.append(("matplotlib grace_hopper.jpg", _rgb(np.asarray(Image.open(f).convert("RGB")))))
    with contextlib.suppress(Exception):
        import sklearn.datasets  # optional: its two bundled sample photos

        for name, a in zip(("china.jpg", "flower.jpg"), sklearn.datasets.load_sample_images().images):
            found.append((f"scikit-learn {name}", _rgb(a)))
    return tuple(found)


def photo_like(i: int, w: int, h: int, seed: int = 0, sources: tuple | None = None) -> np.ndarray:
    """Image ``i`` of ``seed`` as an (h, w, 3) uint8 array: a crop of a shipped photo, or a texture."""
    rng = np.random.default_rng([seed, i])
    sources = photo_sources() if sources is None else sources
    if sources:
        src = Image.fromarray(sources[i % len(sources)][1])
        k = rng.uniform(0.6, 1.0) * min(src.width / w, src.height / h)  # the largest box of the target aspect
        bw, bh = max(1, int(w * k)), max(1, int(h * k))
        x, y = int(rng.integers(0, src.width - bw + 1)), int(rng.integers(0, src.height - bh + 1))
        im = src.resize((w, h), Image.BILINEAR, box=(x, y, x + bw, y + bh))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        a = np.asarray(im, np.float32) * rng.uniform(0.8, 1.2, 3)
    else:  # smooth colour fields plus fine texture: compresses like a photo, unlike white noise
        low = Image.fromarray(rng.integers(0, 256, (max(2, h // 25), max(2, w // 25), 3), dtype=np.uint8))
        a = np.asarray(low.resize((w, h), Image.BICUBIC), np.float32)
        a = a + rng.normal(0, 18, (h, w, 1)) * np.sin(np.arange(w) / rng.uniform(2, 9))[None, :, None]
    return np.clip(a, 0, 255).astype(np.uint8)


def write_jpeg(
    path: str | os.PathLike, i: int, size: tuple[int, int] = (500, 375), seed: int = 0, sources: tuple | None = None
) -> int:
    """Write image ``i`` (landscape ``size``, portrait when ``i % 5 == 4``) as a JPEG; returns its bytes."""
    w, h = size
    if i % 5 == 4:
        w, h = h, w  # one in five is portrait
    Image.fromarray(photo_like(i, w, h, seed, sources)).save(path, "JPEG", quality=90)
    return os.path.getsize(path)


def _write_job(job: tuple[str, int, tuple[int, int], int, tuple]) -> int:
    return write_jpeg(*job)


def make_jpeg_folder(
    root: str | os.PathLike,
    n: int,
    classes: int = 1,
    size: tuple[int, int] = (500, 375),
    seed: int = 0,
    processes: int = 0,
    sources: tuple | None = None,
) -> list[str]:
    """``n`` JPEGs in ``classes`` class folders ``root/class000/000000.jpg`` (``classes=0``: straight in ``root``),
    image ``i`` in folder ``i % classes``; files already there are kept. ``processes`` > 1 writes in parallel
    (forked: call it before any CUDA work). Returns the paths in order."""
    root = Path(root)
    # the photos are found once here (a forked pool inherits them); a job names them only when there are none
    sources = photo_sources() if sources is None else sources
    passed = None if sources else ()
    jobs = []
    for i in range(n):
        folder = root / f"class{i % classes:03d}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(folder / f"{i:06d}.jpg"), i, size, seed, passed))
    todo = [j for j in jobs if not os.path.exists(j[0])]
    if processes > 1 and len(todo) > 200:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.map(_write_job, todo, chunksize=16)
    else:
        for job in todo:
            _write_job(job)
    return [j[0] for j in jobs]


__all__ = ["make_jpeg_folder", "photo_like", "photo_sources", "write_jpeg"]
