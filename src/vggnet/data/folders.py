"""Image folders in torchvision's ImageFolder layout, ``root/<class>/<image>``, and the data resolver.

Class indices follow the sorted class-folder names, as in torchvision's ImageFolder, so ImageNet's WordNet-id
folders (n01440764, ...) get the usual indices 0..999. Images are found recursively under each class folder;
hidden files and folders (.DS_Store, .ipynb_checkpoints) and files without an image extension are ignored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path

import torch

from .dataset import Sample
from .embedded import EMBEDDED, materialise

log = logging.getLogger(__name__)

# Extensions of the formats Pillow decodes (case-insensitive). A file's content, not its extension, decides
# the decoder, so ImageNet's few PNG and CMYK files named .JPEG load correctly.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .dib .gif .webp .tif .tiff .ppm .pgm .pbm .pnm .tga .avif".split()
)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def is_image_file(name: str) -> bool:
    """Whether a file name counts as an image: not hidden, with an image extension."""
    return _visible(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def find_classes(root: str | os.PathLike) -> list[str]:
    """The sorted names of the class folders (visible subfolders) of ``root``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} does not exist; pass a folder laid out as <root>/<class>/<image>")
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; pass a folder laid out as <root>/<class>/<image>")
    with os.scandir(root) as it:
        entries = list(it)
    classes = sorted(e.name for e in entries if _visible(e.name) and e.is_dir())
    if not classes:
        loose = sum(1 for e in entries if e.is_file() and is_image_file(e.name))
        hint = f"it holds {loose} images directly; move them into one subfolder per class" if loose else "it is empty"
        raise ValueError(f"no class folders in {root} ({hint}): images must be laid out as {root}/<class>/<image>")
    return classes


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _images_under(folder: Path, others: Sequence[str] = ()) -> list[str]:
    """The images under ``folder``, following symbolic links, each real folder and file once.

    A linked folder is skipped, with a warning, when it loops (leads back to a folder already walked, or to an
    ancestor of ``folder``) or leads into ``others`` (the real paths of the other class folders): its images
    would be counted many times, or labelled with this class.
    """
    found = []
    top = os.path.realpath(folder)
    seen_dirs, seen_files = {top}, set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(d for d in dirnames if _visible(d)):  # prunes hidden folders; sorted walk order
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen_dirs or _inside(top, real):
                log.warning("skipping %s: a symbolic link loop (it leads back to %s)", os.path.join(dirpath, d), real)
            elif any(_inside(real, o) for o in others):
                log.warning(
                    "skipping %s: a symbolic link into another class folder (%s)", os.path.join(dirpath, d), real
                )
            else:
                seen_dirs.add(real)
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            if is_image_file(f):
                path = os.path.join(dirpath, f)
                real = os.path.realpath(path)
                if real not in seen_files:  # two links to one image count once
                    seen_files.add(real)
                    found.append(path)
    return found


def scan_folder(root: str | os.PathLike, classes: Sequence[str] | None = None) -> tuple[list[Sample], list[str]]:
    """All images of a class-folder tree as (path, class index) samples, and the class names.

    Args:
        root: the folder, laid out as ``root/<class>/<image>`` (images may sit deeper inside a class folder).
        classes: the classes it must have (e.g. the training set's, when scanning its validation set); the
            indices then follow this list.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no class folders, a class folder without images, or classes other than ``classes``.
    """
    root = Path(root).expanduser()
    found = find_classes(root)
    if classes is not None and list(found) != sorted(classes):
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise ValueError(
            f"the class folders of {root} differ from the training set's: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected {extra[:10]}{' ...' if len(extra) > 10 else ''}; "
            "validation and training folders need the same class subfolders"
        )
    classes = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    for c, paths in _class_images(root, found).items():
        if not paths:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            raise ValueError(f"class folder {root / c} has no images (extensions: {exts}); add images or remove it")
        samples.extend((p, index[c]) for p in paths)
    samples.sort(key=lambda s: s[1])  # stable: by class index, files in walk order within a class
    return samples, classes


def _class_images(root: Path, folders: Sequence[str]) -> dict[str, list[str]]:
    """The images under each class folder of ``root``, in the folders' order (see :func:`_images_under`)."""
    reals = {c: os.path.realpath(root / c) for c in folders}
    return {c: _images_under(root / c, [r for k, r in reals.items() if k != c and r != reals[c]]) for c in folders}


def list_images(folder: str | os.PathLike) -> list[str]:
    """Every image under ``folder``, recursively, in sorted walk order: hidden files and folders and files
    without an image extension are skipped, each real file counts once (e.g. the images given to `vgg predict`)."""
    return _images_under(Path(folder).expanduser())


def folder_samples(
    root: str | os.PathLike, classes: Sequence[str], names: dict[str, str] | None = None
) -> list[Sample]:
    """(path, label) of every image under ``root/<class>/``, labelled by ``classes.index(<class>)``: the
    evaluation side of :func:`scan_folder`, which labels a test folder by the names of a net's classes.

    ``names`` maps folder names to class names where they differ (ImageNet's n01440764 -> "tench, ...").
    A class folder that is not among ``classes`` is an error (the net cannot score a class it does not have);
    classes without a folder, and class folders without images, are fine, as long as there is one image.
    Samples come folder by folder in sorted folder order.
    """
    root = Path(root).expanduser()
    folders = find_classes(root)
    names = names or {}
    index = {c: i for i, c in enumerate(classes)}
    unknown = [f for f in folders if names.get(f, f) not in index]
    if unknown:
        shown = ", ".join(list(classes)[:8]) + (", ..." if len(classes) > 8 else "")
        raise ValueError(
            f"{root}: class folder(s) {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} are not among the "
            f"net's {len(classes)} classes ({shown}); folder names must match the run's classes.json"
        )
    samples = [(p, index[names.get(f, f)]) for f, paths in _class_images(root, folders).items() for p in paths]
    if not samples:
        raise ValueError(f"{root}: the class folders hold no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return samples


@cache
def _imagenet_wnids() -> tuple[str, ...]:
    text = resources.files("vggnet.data").joinpath("imagenet_wnids.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def imagenet_wnids() -> list[str]:
    """ImageNet's 1,000 WordNet ids (n01440764 ...) in the label order of the released nets: sorted, as
    torchvision's ImageFolder orders ImageNet's class folders, line by line beside the names of
    ``vggnet.pretrained.imagenet_classes()`` (tench is 0, n01440764; goldfish 1, n01443537). Shipped with the
    package: copied from timm's ``timm/data/_info/imagenet_synsets.txt``, its order checked against the names."""
    return list(_imagenet_wnids())


def wnid_labels(folders: Sequence[str]) -> dict[str, int] | None:
    """Each folder's label among ImageNet's 1,000 classes when every folder is named by a WordNet id of
    ImageNet-1k (a subset of ImageNet, in any number of classes); None otherwise."""
    index = {w: i for i, w in enumerate(_imagenet_wnids())}
    if not folders or any(f not in index for f in folders):
        return None
    return {f: index[f] for f in folders}


def split_samples(samples: Sequence[Sample], val_fraction: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """A seeded, stratified held-out split: ``round(n_c * val_fraction)`` random images of each class go to val.

    Every class keeps at least one training image. Both parts keep the input's order.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(i)
    g = torch.Generator().manual_seed(seed)
    held = set()
    for label in sorted(by_class):
        idx = by_class[label]
        n_val = min(round(len(idx) * val_fraction), len(idx) - 1)
        perm = torch.randperm(len(idx), generator=g).tolist()
        held.update(idx[j] for j in perm[:n_val])
    train = [s for i, s in enumerate(samples) if i not in held]
    val = [s for i, s in enumerate(samples) if i in held]
    return train, val


def read_class_names(path: str | os.PathLike, classes: Sequence[str]) -> list[str]:
    """Display names for ``classes`` (the class-folder names) from a text file, in class-index order.

    Two formats: "<folder> <name>" per line (e.g. ImageNet's "n01440764 tench, Tinca tinca"; it may list more
    classes than there are folders), recognised when every class folder starts a line; or one name per line,
    in the sorted order of the folders, exactly one line per class. Blank lines are ignored.
    """
    path = Path(path).expanduser()
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"class-names file {path} does not exist") from None
    known = set(classes)
    pairs = [ln.split(maxsplit=1) for ln in lines]
    firsts = {p[0] for p in pairs}
    if known <= firsts:
        names = {p[0]: (p[1] if len(p) > 1 else p[0]) for p in pairs}
        return [names[c] for c in classes]
    if len(lines) == len(classes) and not (known & firsts):
        return lines
    missing = sorted(known - firsts)
    raise ValueError(
        f"class-names file {path} does not fit the {len(classes)} class folders: it has {len(lines)} lines, and "
        f"no '<folder> <name>' line for {missing[:5]}{' ...' if len(missing) > 5 else ''}; give one name per class "
        "in the sorted order of the folders, or a '<folder> <name>' line for every folder"
    )


def resolve_data(
    spec: str | os.PathLike,
    val: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    class_names: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[list[Sample], list[Sample], list[str]]:
    """Training and validation samples, and the class names, for a data spec.

    Args:
        spec: an embedded data set ("mnist", "mnist-scale": materialised once into the cache, fixed split); a
            folder with ``train/`` and ``val/`` class-folder trees (e.g. ImageNet); or one class-folder tree,
            of which a seeded stratified ``val_fraction`` is held out for validation.
        val: a separate validation class-folder tree (overrides the held-out split and a ``val/`` subfolder).
        val_fraction: the held-out fraction per class when there is no validation folder (0: no validation).
        seed: seed of the held-out split.
        class_names: a text file of display names (see :func:`read_class_names`); default: the folder names.
        cache_dir: where embedded data sets are materialised (default ``$VGGNET_CACHE/data`` or
            ``~/.cache/vggnet/data``).

    Returns:
        (train samples, val samples, class names), samples being (path, class index) pairs.
    """
    spec_s = str(spec)
    if spec_s in EMBEDDED:
        if val is not None:
            raise ValueError(f"the embedded data set {spec_s!r} has a fixed train/val split; drop the val folder")
        root = materialise(spec_s, cache_dir)
        train_dir, val_dir = root / "train", root / "val"
    else:
        root = Path(spec).expanduser()
        if not root.exists():
            raise FileNotFoundError(
                f"data {spec_s!r} is neither an embedded data set ({', '.join(EMBEDDED)}) nor an existing folder"
            )
        subdirs = {e.name for e in os.scandir(root) if e.is_dir()} if root.is_dir() else set()
        if {"train", "val"} <= subdirs:
            train_dir, val_dir = root / "train", root / "val"
        elif {d for d in subdirs if _visible(d)} == {"train"}:
            train_dir, val_dir = root / "train", None
        else:
            train_dir, val_dir = root, None
    if val is not None:
        val_dir = Path(val).expanduser()
    train, classes = scan_folder(train_dir)
    if val_dir is not None:
        val_samples, _ = scan_folder(val_dir, classes=classes)
    else:
        train, val_samples = split_samples(train, val_fraction, seed)
    names = read_class_names(class_names, classes) if class_names else classes
    return train, val_samples, names
