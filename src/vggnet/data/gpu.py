"""The GPU data path: JPEG decoding in batches on the GPU (nvJPEG through torchvision) and the paper's
augmentation as batched tensor operations on any device.

DataLoader workers only read the files' bytes, check their headers (no decompression bombs reach the GPU)
and draw each sample's :class:`~vggnet.data.transforms.AugParams` with the same
:meth:`~vggnet.data.transforms.ImageTransform.sample` as the CPU path; the main process decodes the batch on
the device and applies :func:`augment_batch`, which uses the CPU path's own ``transform.resample`` and
``transform.normalize``. A sample key (index, seed) therefore gives the same S, crop, flip and colour shift on both
paths; on the CPU the two give identical tensors (tested), on the GPU they differ only by the resampling
kernel's rounding (float there, uint8 on the CPU).

Everything here runs on CPU tensors as well (``device="cpu"``), which is how it is tested without a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .dataset import Sample
from .io import BadImageError, ImageReadMode, decode_bytes, decode_jpeg, probe, read_bytes
from .transforms import AugParams, ImageTransform

log = logging.getLogger(__name__)

_JPEG_MAGIC = (0xFF, 0xD8, 0xFF)


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 3 and tuple(data[:3].tolist()) == _JPEG_MAGIC


def _decode_cpu(data: torch.Tensor, path: str, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_bytes(data.numpy().tobytes(), path).to(device)
    except BadImageError as e:
        log.warning("skipping bad image %s: %s", path, e.reason)
        return None


def decode_batch(
    datas: Sequence[torch.Tensor | None], device: str | torch.device = "cuda", paths: Sequence[str] | None = None
) -> list[torch.Tensor | None]:
    """Decode encoded images (1-D uint8 CPU tensors) to (3, H, W) uint8 RGB tensors on ``device``.

    The JPEGs go to ``torchvision.io.decode_jpeg`` in one batched call (nvJPEG on CUDA). Other formats, and
    JPEGs the batched call refuses (it fails as a whole: then each is retried alone), go through the CPU
    decoder :func:`~vggnet.data.io.decode_bytes`. A bad or missing (None) input gives None, logged by path.
    """
    if decode_jpeg is None:
        raise RuntimeError("the GPU data path needs torchvision.io.decode_jpeg (torchvision < 0.30)")
    device = torch.device(device)
    paths = list(paths) if paths is not None else [f"<batch item {i}>" for i in range(len(datas))]
    out: list[torch.Tensor | None] = [None] * len(datas)
    jpegs = [i for i, d in enumerate(datas) if d is not None and _is_jpeg(d)]
    others = [i for i, d in enumerate(datas) if d is not None and not _is_jpeg(d)]
    if jpegs:
        try:
            decoded = decode_jpeg([datas[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, img in zip(jpegs, decoded):
                out[i] = img
        except RuntimeError:
            for i in jpegs:
                try:
                    out[i] = decode_jpeg(datas[i], mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    out[i] = _decode_cpu(datas[i], paths[i], device)  # CMYK on nvJPEG, truncated files, ...
    for i in others:
        out[i] = _decode_cpu(datas[i], paths[i], device)
    return out


def augment_batch(
    images: Sequence[torch.Tensor], params: Sequence[AugParams], transform: ImageTransform
) -> torch.Tensor | list[torch.Tensor]:
    """Apply ``transform``'s rescale, crop, flip, colour shift and normalisation to a batch of decoded images.

    Images may differ in size and live on any device. The resampling runs per image (each has its own size and
    scale S); flips, colour shifts and normalisation run once on the stacked (N, 3, crop, crop) batch. With
    ``transform.crop_size`` None (whole images for dense evaluation) the result is a list of tensors.
    """
    if len(images) != len(params):
        raise ValueError(f"{len(images)} images but {len(params)} parameter sets")
    crops = [transform.resample(img, p) for img, p in zip(images, params)]
    alpha = [p.alpha for p in params]
    if transform.crop_size is None:
        return [transform.normalize(x.flip(-1) if p.flip else x, a) for x, p, a in zip(crops, params, alpha)]
    if not crops:
        return torch.empty(0, 3, transform.crop_size, transform.crop_size)
    x = torch.stack(crops)
    flip = torch.tensor([p.flip for p in params], device=x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return transform.normalize(x, alpha)


class EncodedDataset(Dataset):
    """The worker side of the GPU path: ``dataset[key] -> (bytes tensor or None, label, path, AugParams)``.

    Keys are indices or (index, seed) pairs, as for :class:`~vggnet.data.ImageDataset`; the parameters come
    from ``transform.sample`` with the same generator, so they equal the CPU path's. Files that cannot be read,
    or whose header is not an image Pillow accepts (including decompression bombs), give None.
    """

    def __init__(self, samples: Sequence[Sample], transform: ImageTransform) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, int, str, AugParams]:
        if isinstance(key, (tuple, list)):
            index, generator = int(key[0]), torch.Generator().manual_seed(int(key[1]))
        else:
            index, generator = int(key), None
        path, label = self.samples[index]
        params = self.transform.sample(generator)
        try:
            data = read_bytes(path)
            probe(data, path)
        except BadImageError as e:
            log.warning("skipping bad image %s: %s", path, e.reason)
            return None, int(label), str(path), params
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), int(label), str(path), params


def collate_encoded(batch):
    """Keep a batch of :class:`EncodedDataset` items as lists (the byte strings differ in length)."""
    datas, labels, paths, params = zip(*batch)
    return list(datas), torch.tensor(labels, dtype=torch.int64), list(paths), list(params)


class GPULoader:
    """Batches of augmented images decoded on ``device``: yields (images [N, 3, c, c], labels [N], bad paths).

    Args:
        samples: (path, class index) pairs.
        transform: a TrainTransform (or an EvalTransform with a crop size).
        sampler: yields the keys, e.g. a :class:`~vggnet.data.SeededSampler` (indices or (index, seed) pairs).
        batch_size: images per batch (before dropping bad files).
        device: where to decode and augment ("cuda", or "cpu" for tests).
        num_workers: processes reading files and drawing parameters.
        drop_last: drop the last incomplete batch.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: ImageTransform,
        sampler: Iterable,
        batch_size: int,
        device: str | torch.device = "cuda",
        num_workers: int = 4,
        drop_last: bool = False,
    ) -> None:
        if transform.crop_size is None:
            raise ValueError("GPULoader stacks crops; use a transform with a crop size")
        self.transform, self.device = transform, torch.device(device)
        self.loader = DataLoader(
            EncodedDataset(samples, transform), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
            collate_fn=collate_encoded, drop_last=drop_last, persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        for datas, labels, paths, params in self.loader:
            images = decode_batch(datas, self.device, paths)
            keep = [i for i, img in enumerate(images) if img is not None]
            bad = [paths[i] for i in range(len(paths)) if images[i] is None]
            x = augment_batch([images[i] for i in keep], [params[i] for i in keep], self.transform)
            yield x, labels[keep].to(self.device, non_blocking=True), bad
