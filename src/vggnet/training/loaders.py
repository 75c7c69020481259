"""The training and validation data: data sets, statistics and transforms from the config, and the loaders of
both data paths (worker processes on the CPU, or nvJPEG decoding and batched augmentation on the GPU).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Any

import torch

from .. import data
from ..config import TrainConfig
from ..convention import Convention
from ..data import collate, shm
from ..data.gpu import GPULoader, fallback_summary
from ..data.io import decode_jpeg
from ..resources import cap_workers, die_with_parent, usable_cores
from ..runtime import Dist, cuda_path


def build_data(cfg: TrainConfig, d: Dist, stats=None):
    """Resolve the data sets, compute the statistics (unless resuming with saved ones), build the datasets."""
    train_samples, val_samples, classes = data.resolve_data(
        cfg.data,
        val=cfg.val or None,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        class_names=cfg.class_names or None,
    )
    if not val_samples:
        raise ValueError(f"{cfg.data}: no validation images; the plateau schedule needs some (--val-fraction > 0)")
    if len(classes) < 2:
        raise ValueError(
            f"{cfg.data}: one class ({classes[0]!r}); a classifier needs at least two class folders, "
            f"one per class (<root>/<class>/<image>)"
        )
    if stats is None:
        # the mean RGB and PCA at the training scale; decoding at reduced size keeps this pass short on ImageNet
        stats = data.compute_stats(
            train_samples,
            max_images=cfg.stats_images,
            seed=cfg.seed,
            side=cfg.scale_min,
            num_workers=min(loader_workers(cfg, d), 8),
        )
    conv = Convention.of_run(stats, cfg.normalize, cfg.pixel_range)
    train_tf = data.TrainTransform(
        stats,
        crop_size=cfg.crop_size,
        scale=(cfg.scale_min, cfg.scale_max),
        flip=cfg.flip,
        colour_std=cfg.colour_shift,
        convention=conv,
    )
    # Validation during training: one centre crop at the single test scale of the paper's Table 3
    # (Q = S, or Q = (Smin + Smax) / 2 for a jittered net); the full protocols live in `vgg eval`.
    q = (cfg.scale_min + cfg.scale_max) // 2
    val_tf = data.EvalTransform(stats, size=q, crop_size=cfg.crop_size, convention=conv)
    if cfg.cache_images:
        train_tf.cache, val_tf.cache = {}, {}
    # the loop reports bad files itself, once per run (loader workers are separate processes, some per epoch)
    train_set = data.ImageDataset(train_samples, train_tf, warn=False)
    return train_set, data.ImageDataset(val_samples, val_tf, warn=False), classes, stats


def make_loader(dataset, batch_sampler, workers: int, device: torch.device, collate_fn=collate):
    kw: dict[str, Any] = {}
    if workers > 0:
        kw = dict(num_workers=workers, persistent_workers=True, prefetch_factor=4, worker_init_fn=ignore_stop_signals)
    # A private generator: the loader must not draw from the global RNG (dropout's), or resume would drift.
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),
        **kw,
    )


def pick_loader(name: str, device: torch.device, samples) -> str:
    """The training data path: "gpu" (nvJPEG decode + batched augmentation on the device) or "cpu" (decode and
    augment in worker processes). "auto" takes the GPU path on CUDA when most of the images are JPEGs: the CPU
    path needs about one core per 250 images/s, a fraction of what one GPU trains on."""
    if name == "auto":
        head = samples[:1000]
        jpegs = sum(os.path.splitext(str(p))[1].lower() in (".jpg", ".jpeg", ".jpe", ".jfif") for p, _ in head)
        name = "gpu" if device.type == "cuda" and decode_jpeg is not None and 2 * jpegs > len(head) else "cpu"
    if name == "gpu" and decode_jpeg is None:
        raise RuntimeError("--loader gpu needs torchvision.io.decode_jpeg (torchvision < 0.30); use --loader cpu")
    return name


def make_train_loader(cfg: TrainConfig, train_set, plan, workers: int, device: torch.device, collate_fn=collate):
    """The training batches in ``plan``'s order and with its (index, seed) keys, from either data path: the same
    keys give the same S, crop, flip and colour shift on both. Returns (loader, "cpu" or "gpu").
    ``collate_fn``: the task's (items to (images, targets, bad files)) on the CPU path."""
    kind = pick_loader(cfg.loader, device, train_set.samples)
    check_loader_memory(kind, train_set.samples, plan.micro, cfg.crop_size, workers)
    if kind == "cpu":
        return make_loader(train_set, plan, workers, device, collate_fn), kind
    # the workers only read files and draw parameters; a few keep ahead of nvJPEG
    loader = GPULoader(
        train_set.samples,
        train_set.transform,
        batch_sampler=plan,
        device=device,
        num_workers=min(workers, 8),
        channels_last=cfg.channels_last and device.type == "cuda",
    )
    return loader, kind


def make_val_loader(
    cfg: TrainConfig, dataset, d: Dist, workers: int, device: torch.device, kind: str = "cpu", collate_fn=collate
):
    """The validation batches (this process's share, in order, fixed size but the last), made once per run.

    ``kind`` "gpu" (the training data path's choice, on CUDA): :class:`~vggnet.data.gpu.GPULoader` with the
    centre-crop transform, decoded by nvJPEG; "cpu": worker processes, pinned memory on CUDA.
    """
    n = len(dataset)
    idx = list(range(d.rank, n, d.world))
    bs = max(1, cfg.batch_size // (d.world * cfg.accum_steps))
    batches = [idx[i : i + bs] for i in range(0, len(idx), bs)]
    if kind == "gpu":
        return GPULoader(
            dataset.samples,
            dataset.transform,
            batch_sampler=batches,
            device=device,
            num_workers=min(workers, 8),
            channels_last=cfg.channels_last and cuda_path(device),
        )
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate_fn,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_stop_signals if workers else None,
    )


def check_loader_memory(kind: str, samples, micro: int, crop: int, workers: int, folder: str | None = None) -> None:
    """Refuse to start when the training loader's workers would outgrow /dev/shm (see :mod:`vggnet.data.shm`):
    the CPU path's float32 crops, or the GPU path's encoded files (workers capped at 8), 4 batches a worker."""
    if kind == "gpu":
        workers = min(workers, 8)
    if workers <= 0:
        return  # batches stay in the main process
    per_image = 3 * crop * crop * 4 if kind == "cpu" else shm.mean_file_bytes([p for p, _ in samples])
    need = shm.batches_in_flight(workers, 4) * micro * per_image
    shm.check_shared_memory(need, f"--loader {kind} with {workers} workers and batches of {micro}", folder or shm.SHM)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """In data-loader worker processes: leave Ctrl-C and SIGTERM to the main process, which stops at the next
    step and saves a checkpoint. (A terminal's Ctrl-C and torchrun's killpg reach the whole process group; a
    worker killed by them would fail the main process's next batch.) Since a worker ignores them, it is tied to
    its parent instead: it dies with it (:func:`die_with_parent`), whatever killed the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()


def stop_workers(loader) -> None:
    """Shut a loader's persistent worker processes down now rather than at interpreter exit, where
    multiprocessing ends them with SIGTERM, which they ignore (see :func:`ignore_stop_signals`)."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
        loader._iterator = None


def loader_workers(cfg: TrainConfig, d: Dist) -> int:
    """--workers, with -1 resolved to one per CPU core (shared by the GPUs of a machine), at most 8; any number
    asked is capped by the cores and the memory this process may use (:func:`cap_workers`)."""
    if cfg.workers >= 0:
        return cap_workers(cfg.workers, d.main)
    return max(1, min(8, usable_cores() // max(1, torch.cuda.device_count() if d.world > 1 else 1)))


def fallback_note(*loaders) -> str:
    """The GPU data path's decoding fallbacks over the run (this process's share), for the summary line."""
    counts = sum((getattr(loader, "counts", Counter()) for loader in loaders), Counter())
    text = fallback_summary(counts)
    return f"; GPU data path: {text}" if text else ""


__all__ = [
    "build_data",
    "check_loader_memory",
    "fallback_note",
    "ignore_stop_signals",
    "loader_workers",
    "make_loader",
    "make_train_loader",
    "make_val_loader",
    "pick_loader",
    "stop_workers",
]
