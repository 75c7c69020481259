"""Data: image folders, the embedded default data sets, the paper's transforms, statistics, loaders.

The usual path, from a data spec to batches::

    train, val, classes = resolve_data("mnist-scale")           # or "mnist", or a folder
    stats = compute_stats(train, max_images=2000)
    ds = ImageDataset(train, TrainTransform(stats, crop_size=32, scale=(32, 64)))
    loader = DataLoader(ds, batch_size=64, sampler=SeededSampler(len(ds), seed=0), collate_fn=collate)
    for images, labels, bad in loader: ...

Pixels are floats on the [0, 1] scale minus the training set's mean RGB (optionally divided by its std).
:mod:`vggnet.data.gpu` holds the GPU path (nvJPEG decoding, batched augmentation).
"""

from __future__ import annotations

from .dataset import ImageDataset, SeededSampler, collate, collate_list, sample_seed
from .embedded import EMBEDDED, data_cache_dir, materialise
from .folders import IMAGE_EXTENSIONS, find_classes, read_class_names, resolve_data, scan_folder, split_samples
from .io import BadImageError, decode_bytes, load_image, rescale, rescaled_size
from .stats import IMAGENET_STATS, Stats, compute_stats
from .transforms import AugParams, EvalTransform, TrainTransform, draw_params, resized_crop

__all__ = [
    "EMBEDDED",
    "IMAGENET_STATS",
    "IMAGE_EXTENSIONS",
    "AugParams",
    "BadImageError",
    "EvalTransform",
    "ImageDataset",
    "SeededSampler",
    "Stats",
    "TrainTransform",
    "collate",
    "collate_list",
    "compute_stats",
    "data_cache_dir",
    "decode_bytes",
    "draw_params",
    "find_classes",
    "load_image",
    "materialise",
    "read_class_names",
    "resized_crop",
    "rescale",
    "rescaled_size",
    "resolve_data",
    "sample_seed",
    "scan_folder",
    "split_samples",
]
