"""The labelled images an evaluation runs on: a run's own validation data, a class-folder tree, or given pairs.

Folders are scanned by ``vggnet.data`` (one implementation for training and evaluation); this module only
decides which folder, or which split of the training data, belongs to a net, and labels it by the net's classes.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from .. import data as data_pkg  # data_pkg.resolve_data is looked up when called (the tests replace it)
from ..data.folders import find_classes, folder_samples, read_class_names, wnid_labels
from ..data.io import Source
from ..pretrained import imagenet_classes
from ..runs import Run
from .nets import Net

EvalSample = tuple[Source, int]


def _split_root(folder: Path) -> Path:
    """A folder with a val/ subfolder means its validation split; otherwise the folder itself."""
    return folder / "val" if (folder / "val").is_dir() else folder


def _imagenet_net(net: Net) -> bool:
    """Whether the net's labels are ImageNet-1k's in the released order: 1,000 classes named as the released
    nets name them (or without names: a bare 1,000-class head is taken to be ImageNet's)."""
    return net.num_classes == 1000 and (not net.classes or net.classes == imagenet_classes())


def bare_folder_samples(folder: Path, net: Net) -> list[EvalSample]:
    """The labelled images of a class-folder tree for a net without a run. The folders are, in this order:
    named by the net's class names (any subset of them); ImageNet WordNet ids (n01440764 ..., any subset of
    ImageNet-1k) for a 1,000-class ImageNet net, each mapped to its index in the released order; or, when
    neither, as many folders as classes, taken in sorted order (torchvision's ImageFolder order)."""
    root = _split_root(folder)
    folders = find_classes(root)
    if net.classes and set(folders) <= set(net.classes):
        return folder_samples(root, net.classes)
    wnids = wnid_labels(folders) if _imagenet_net(net) else None
    if wnids is not None:
        classes = net.classes or [str(i) for i in range(net.num_classes)]
        return folder_samples(root, classes, {f: classes[i] for f, i in wnids.items()})
    if len(folders) != net.num_classes:
        shown = ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else "")
        names = ", ".join((net.classes or [])[:3]) + ", ..." if net.classes else "none"
        wnid_fix = " or ImageNet WordNet ids (n01440764 ...)" if _imagenet_net(net) else ""
        raise ValueError(
            f"{root}: its {len(folders)} class folders ({shown}) are neither the class names of {net.name} "
            f"({net.num_classes} classes; names: {names}){wnid_fix}, nor one folder per class; name the folders by "
            f"the net's class names{wnid_fix}, or give exactly {net.num_classes} folders (sorted order = labels)"
        )
    return folder_samples(root, folders)


def _run_folder_samples(run: Run, root: Path) -> list[EvalSample]:
    """A class-folder tree labelled with the run's classes: by folder name, or through the run's class-names
    file when the run's classes are display names (``class_names`` in its config, as in training)."""
    classes = list(run.classes)
    folders = find_classes(root)
    names_file = run.config.get("class_names")
    if names_file and not set(folders) <= set(classes) and Path(names_file).expanduser().is_file():
        try:  # the data package's two formats of a class-names file
            names = dict(zip(folders, read_class_names(names_file, folders)))
        except ValueError:
            names = {}  # a file that does not fit these folders: labelled by folder name (which then fails clearly)
        return folder_samples(root, classes, names)
    return folder_samples(root, classes)


def _relabel(val_samples: Sequence[EvalSample], data_classes: Sequence[str], run: Run, spec: str) -> list[EvalSample]:
    """Samples labelled by the data's class list, relabelled by name to the run's classes."""
    classes = list(run.classes)
    if list(data_classes) == classes:
        return list(val_samples)
    index = {c: i for i, c in enumerate(classes)}
    missing = [c for c in data_classes if c not in index]
    if missing:
        raise ValueError(f"data {spec!r} has classes {missing[:5]} that {run.path} was not trained on")
    return [(src, index[data_classes[y]]) for src, y in val_samples]


def resolve_eval_samples(run: Run, data: str | os.PathLike | None = None) -> list[EvalSample]:
    """The labelled images to evaluate ``run`` on.

    ``data``: a folder of class folders (``root/<class>/<image>``), a folder with a ``val/`` subfolder of
    them, or the name of an embedded data set ("mnist", ...). None: the run's own validation data, from its
    config.toml: ``val`` if set, else ``data``'s ``val/`` subfolder, else the validation split that
    ``vggnet.data.resolve_data`` draws from ``data`` exactly as training did (an embedded name's fixed split,
    or a held-out share of one class tree, with the run's ``val_fraction`` and ``seed``). Labels follow the
    run's classes.json, matched by class name.
    """
    cfg = run.config
    if data is not None:
        path = Path(data).expanduser()
        if path.is_dir():
            return _run_folder_samples(run, _split_root(path))
        if os.sep in str(data) or "/" in str(data) or path.suffix:
            raise FileNotFoundError(f"--data {data}: no such folder")
        spec = str(data)  # an embedded data set's name
    else:
        spec, val = cfg.get("data"), cfg.get("val")
        if val:
            if not Path(val).expanduser().is_dir():
                raise FileNotFoundError(f"{run.path}: the config's val folder {val} does not exist; pass --data DIR")
            return _run_folder_samples(run, Path(val).expanduser())
        if not spec:
            raise ValueError(f"{run.path}/config.toml names no data; pass --data DIR")
        if (Path(spec).expanduser() / "val").is_dir():
            return _run_folder_samples(run, Path(spec).expanduser() / "val")
    _, val_samples, data_classes = data_pkg.resolve_data(
        spec,
        val=None,
        val_fraction=cfg.get("val_fraction", 0.1),
        seed=cfg.get("seed", 0),
        class_names=cfg.get("class_names") or None,
        cache_dir=cfg.get("cache_dir") or None,
    )
    val_samples = _relabel(val_samples, data_classes, run, spec)
    if not val_samples:
        raise ValueError(f"data {spec!r} has no validation images (val_fraction 0?); pass --data DIR")
    return val_samples


def eval_samples(
    samples: Sequence[EvalSample] | str | os.PathLike | None, first: Net, limit: int | None = None
) -> tuple[list[EvalSample], str, list[int]]:
    """The samples ``evaluate`` runs on, how its report names them, and the classes the data has (the sorted
    labels of all its samples, before ``limit``: an ImageNet subset's classes among the net's 1,000).

    ``samples``: (image, label) pairs, a folder of class folders, or None for the first net's run's validation
    data. ``limit``: a fixed pseudo-random subset (seed 0) of this many samples, so that classes stay mixed.
    """
    data_name = ""
    if samples is None or isinstance(samples, (str, os.PathLike)):
        data_name = str(samples) if samples is not None else "the run's validation data"
        if first.run is not None:
            items: list[EvalSample] = resolve_eval_samples(first.run, samples)
            if samples is None:
                data_name = f"the validation data of {first.run.path} (data = {first.run.config.get('data')!r})"
        elif samples is None:
            raise ValueError("a bare model has no validation data of its own; pass samples (pairs or a folder)")
        else:
            items = bare_folder_samples(Path(samples), first)
    else:
        items = list(samples)
    if not items:
        raise ValueError("no samples to evaluate")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    present = sorted({int(y) for _, y in items})
    if limit is not None and limit < len(items):
        keep = sorted(random.Random(0).sample(range(len(items)), limit))
        items = [items[i] for i in keep]
    return items, data_name, present


__all__ = ["EvalSample", "bare_folder_samples", "eval_samples", "resolve_eval_samples"]
