"""Data: image folders, the embedded default data sets, the paper's transforms, statistics, loaders.

The usual path, from a data spec to batches::

    train, val, classes = resolve_data("mnist-scale")           # or "mnist", or a folder
    stats = compute_stats(train, max_images=2000)
    ds = ImageDataset(train, TrainTransform(stats, crop_size=32, scale=(32, 64)))
    loader = DataLoader(ds, batch_size=64, sampler=SeededSampler(len(ds), seed=0), collate_fn=collate)
    for images, labels, bad in loader: ...

(Training itself draws its (index, seed) keys from ``vggnet.training.BatchPlan``; ``SeededSampler`` gives keys of
the same kind to a plain DataLoader.) Pixels are floats on the [0, 1] scale minus the training set's mean RGB
(optionally divided by its std). :mod:`vggnet.data.gpu` holds the GPU path (nvJPEG decoding, batched
augmentation). The test-time protocols' preprocessing lives here too: ``folder_samples`` (a test folder
labelled by a net's class names), ``DecodedImages`` (decoding only), ``prepare_images`` (rescale to Q and
normalise, on the device) and ``center_crop``.
"""

from __future__ import annotations

from .dataset import DecodedImages, ImageDataset, SeededSampler, collate, collate_list, epoch_keys
from .embedded import EMBEDDED, data_cache_dir, materialise
from .folders import (
    IMAGE_EXTENSIONS,
    find_classes,
    folder_samples,
    imagenet_wnids,
    list_images,
    read_class_names,
    resolve_data,
    scan_folder,
    split_samples,
)
from .io import BadImageError, Source, decode_bytes, load_image, rescale, rescaled_size, to_image
from .stats import IMAGENET_STATS, Stats, compute_stats
from .transforms import (
    AugParams,
    EvalTransform,
    TrainTransform,
    center_crop,
    draw_params,
    eval_rescale,
    prepare_images,
    resized_crop,
    shape_groups,
)

__all__ = [
    "EMBEDDED",
    "IMAGENET_STATS",
    "IMAGE_EXTENSIONS",
    "AugParams",
    "BadImageError",
    "DecodedImages",
    "EvalTransform",
    "ImageDataset",
    "SeededSampler",
    "Source",
    "Stats",
    "TrainTransform",
    "center_crop",
    "collate",
    "collate_list",
    "epoch_keys",
    "compute_stats",
    "data_cache_dir",
    "decode_bytes",
    "draw_params",
    "eval_rescale",
    "find_classes",
    "folder_samples",
    "imagenet_wnids",
    "list_images",
    "load_image",
    "materialise",
    "prepare_images",
    "shape_groups",
    "read_class_names",
    "resized_crop",
    "rescale",
    "rescaled_size",
    "resolve_data",
    "scan_folder",
    "split_samples",
    "to_image",
]
