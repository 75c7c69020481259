"""The GPU data path: JPEG decoding in batches on the GPU (nvJPEG through torchvision) and the paper's
augmentation as batched tensor operations on any device, overlapped with the training step.

DataLoader workers only read the files' bytes, check their headers (no decompression bombs reach the GPU;
CMYK/YCCK JPEGs and other formats are routed to the CPU decoder; each crop's resampling window is worked out
from the header's size) and draw each sample's :class:`~vggnet.data.transforms.AugParams` with the same
:meth:`~vggnet.data.transforms.ImageTransform.sample` as the CPU path; a batch leaves the workers as one
tensor of bytes (one shared-memory segment, not one per image). The main process decodes the batch on the
device and applies :func:`augment_batch`, which uses the CPU path's own ``transform.resample`` and
``transform.normalize``. A sample key (index, seed) therefore gives the same S, crop, flip and colour shift on both
paths; on the CPU the two give identical tensors (tested), on the GPU they differ only by the resampling
kernel's rounding (float there, uint8 on the CPU) and the JPEG decoder's IDCT. (The CPU path decodes a JPEG at
least twice as large as S at a reduced size in the DCT domain, so there such images differ a little more.)

Overlap (:class:`GPULoader`): decoding and augmentation run in two background threads, each on its own CUDA
stream, ``prefetch`` batches ahead of the training step. torchvision's batched nvJPEG call blocks its thread
until the batch is decoded (on the H100/H200 on the hardware JPEG engines, not the SMs), and the augmentation
is some 500 small kernel launches a batch (two an image); in threads both leave the main thread free to queue
the training step, and their GIL-free waits and kernel launches fill the time the main thread waits for the
GPU. Handing a batch over costs no host synchronisation: the consumer's stream waits on an event recorded after
the producer's work, and the batch's tensors are marked as used on the consumer's stream (``record_stream``) so
the caching allocator cannot give their memory back to the producer early.

Everything here runs on CPU tensors as well (``device="cpu"``), threads included, which is how it is tested
without a GPU.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .dataset import Sample
from .io import BadImageError, ImageReadMode, decode_bytes, decode_jpeg, header, read_bytes
from .transforms import AugParams, CropWindow, ImageTransform, resample_windows

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


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on ``device`` without a host synchronisation: on CUDA it is staged through pinned
    memory and copied asynchronously (``torch.tensor(..., device="cuda")`` waits for the stream's queued work)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# JPEGs nvJPEG decodes to RGB (Pillow's header modes): CMYK and YCCK ones (Pillow's "CMYK") go to the CPU decoder
NVJPEG_MODES = ("RGB", "L")


def route(fmt: str, mode: str) -> str:
    """ "gpu" for a JPEG the batched nvJPEG call takes, "cpu" for every other image (from the header alone)."""
    return "gpu" if fmt == "JPEG" and mode in NVJPEG_MODES else "cpu"


def decode_batch(
    datas: Sequence[torch.Tensor | None],
    device: str | torch.device = "cuda",
    paths: Sequence[str] | None = None,
    routes: Sequence[str] | None = None,
    counts: Counter | None = None,
) -> list[torch.Tensor | None]:
    """Decode encoded images (1-D uint8 CPU tensors) to (3, H, W) uint8 RGB tensors on ``device``.

    The JPEGs go to ``torchvision.io.decode_jpeg`` in one batched call (nvJPEG on CUDA). ``routes`` (from the
    workers' header probe, :func:`route`) sends CMYK/YCCK JPEGs and other formats straight to the CPU decoder
    :func:`~vggnet.data.io.decode_bytes`; without it the JPEG magic number decides. A batched call that fails
    fails as a whole: the batch is split in halves and each half retried, down to single images, which then
    go to the CPU decoder. A bad or missing (None) input gives None, logged by path.

    ``counts`` (a Counter) is increased by the fallbacks: ``cpu`` images decoded on the CPU by route,
    ``refused`` JPEGs the device decoder refused (then decoded on the CPU), ``splits`` failed batched calls.
    """
    if decode_jpeg is None:
        raise RuntimeError("the GPU data path needs torchvision.io.decode_jpeg (torchvision < 0.30)")
    device = torch.device(device)
    paths = list(paths) if paths is not None else [f"<batch item {i}>" for i in range(len(datas))]
    counts = Counter() if counts is None else counts
    if routes is None:
        routes = ["gpu" if d is not None and _is_jpeg(d) else "cpu" for d in datas]  # one check an image
    out: list[torch.Tensor | None] = [None] * len(datas)
    jpegs = [i for i, d in enumerate(datas) if d is not None and routes[i] == "gpu"]
    others = [i for i, d in enumerate(datas) if d is not None and routes[i] != "gpu"]
    if jpegs:
        _decode_jpegs(jpegs, datas, device, paths, out, counts)
    for i in others:
        counts["cpu"] += 1
        out[i] = _decode_cpu(datas[i], paths[i], device)
    return out


def _decode_jpegs(idx: list[int], datas, device, paths, out, counts: Counter) -> None:
    try:
        for i, img in zip(idx, decode_jpeg([datas[i] for i in idx], mode=ImageReadMode.RGB, device=device)):
            out[i] = img
    except RuntimeError as e:
        if len(idx) == 1:  # a truncated file, a flavour nvJPEG refuses, ...: the CPU decoder has the last word
            counts["refused"] += 1
            log.info("the batched JPEG decoder refused %s (%s): decoding it on the CPU", paths[idx[0]], e)
            out[idx[0]] = _decode_cpu(datas[idx[0]], paths[idx[0]], device)
            return
        counts["splits"] += 1  # halves: one bad file in 256 costs 2 log2(256) = 16 calls, not 256
        half = len(idx) // 2
        _decode_jpegs(idx[:half], datas, device, paths, out, counts)
        _decode_jpegs(idx[half:], datas, device, paths, out, counts)


def fallback_summary(counts: Counter) -> str:
    """One line on the GPU path's fallbacks, for the run's summary ("" when there were none)."""
    cpu, refused, splits = counts.get("cpu", 0), counts.get("refused", 0), counts.get("splits", 0)
    if not (cpu or refused):
        return ""
    return (
        f"{cpu + refused} images decoded on the CPU ({cpu} not RGB or grey JPEGs, {refused} refused by the "
        f"device decoder after {splits} failed batched calls)"
    )


def augment_batch(
    images: Sequence[torch.Tensor],
    params: Sequence[AugParams],
    transform: ImageTransform,
    windows: Sequence[CropWindow | None] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Apply ``transform``'s rescale, crop, flip, colour shift and normalisation to a batch of decoded images.

    Images may differ in size and live on any device. A training crop's resampling window (``windows``, from
    the workers, or computed here from the images' sizes) lets images of one size at one S share a resampling
    call (:func:`~vggnet.data.transforms.resample_windows`); the test transform resamples per image. Flips,
    colour shifts and normalisation run once on the stacked (N, 3, crop, crop) batch. With
    ``transform.crop_size`` None (whole images for dense evaluation) the result is a list of tensors.
    """
    if len(images) != len(params):
        raise ValueError(f"{len(images)} images but {len(params)} parameter sets")
    alpha = [p.alpha for p in params]
    if transform.crop_size is None:
        crops = [transform.resample(img, p) for img, p in zip(images, params)]
        return [transform.normalize(x.flip(-1) if p.flip else x, a) for x, p, a in zip(crops, params, alpha)]
    if not images:
        return torch.empty(0, 3, transform.crop_size, transform.crop_size)
    if windows is None:
        windows = [transform.window(img.shape[-2], img.shape[-1], p) for img, p in zip(images, params)]
    if all(w is not None for w in windows):
        x = resample_windows(images, windows, transform.crop_size)
    else:
        x = torch.stack([transform.resample(img, p) for img, p in zip(images, params)])
    flip = to_device(torch.tensor([p.flip for p in params]), x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return transform.normalize(x, alpha)


@dataclass(frozen=True)
class Header:
    """What a worker learns from a file's header: the decoder it needs (:func:`route`) and the crop's
    resampling window (None: the transform resamples the whole image)."""

    route: str
    window: CropWindow | None


class EncodedDataset(Dataset):
    """The worker side of the GPU path: ``dataset[key] -> (bytes tensor or None, label, path, AugParams, Header)``.

    Keys are indices or (index, seed) pairs, as for :class:`~vggnet.data.ImageDataset`; the parameters come
    from ``transform.sample`` with the same generator, so they equal the CPU path's. Files that cannot be read,
    or whose header is not an image Pillow accepts (including decompression bombs), give None. The header also
    gives the decoder route and the resampling window (:class:`Header`).
    """

    def __init__(self, samples: Sequence[Sample], transform: ImageTransform) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, int, str, AugParams, Header]:
        if isinstance(key, (tuple, list)):
            index, generator = int(key[0]), torch.Generator().manual_seed(int(key[1]))
        else:
            index, generator = int(key), None
        path, label = self.samples[index]
        params = self.transform.sample(generator)
        try:
            data = read_bytes(path)
            head = header(data, path)
        except BadImageError as e:
            log.warning("skipping bad image %s: %s", path, e.reason)
            return None, int(label), str(path), params, Header("cpu", None)
        # the per-image arithmetic here, in the worker processes, rather than in the main process's threads
        info = Header(route(head.format, head.mode), self.transform.window(head.height, head.width, params))
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), int(label), str(path), params, info


@dataclass
class EncodedBatch:
    """A batch of encoded images as it leaves the DataLoader workers: the files' bytes end to end in one tensor
    (passing 256 small tensors between processes costs a shared-memory segment and a file descriptor each)."""

    data: torch.Tensor  # uint8, every readable file's bytes, concatenated
    sizes: list[int]  # bytes of each file; 0 for a file that could not be read
    labels: torch.Tensor  # int64 (N,)
    paths: list[str]
    params: list[AugParams]
    headers: list[Header] | None = None

    def datas(self) -> list[torch.Tensor | None]:
        """Each file's bytes (a view into ``data``), None where the file could not be read."""
        out, pos = [], 0
        for n in self.sizes:
            out.append(self.data[pos : pos + n] if n else None)
            pos += n
        return out


def collate_encoded(batch) -> EncodedBatch:
    """Pack a batch of :class:`EncodedDataset` items into one :class:`EncodedBatch`."""
    datas, labels, paths, params, headers = zip(*batch)
    sizes = [0 if d is None else d.numel() for d in datas]
    present = [d for d in datas if d is not None]
    data = torch.cat(present) if present else torch.empty(0, dtype=torch.uint8)
    return EncodedBatch(data, sizes, torch.tensor(labels, dtype=torch.int64), list(paths), list(params), list(headers))


# ---- running a stage ahead in a thread ----------------------------------------------------------------------

_ITEM, _END, _ERROR = range(3)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)


def new_stream(device: torch.device):
    """A CUDA stream on ``device``; None elsewhere."""
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def _produce(source: Iterable, fn: Callable[[Any], Any], device: torch.device, stream, put) -> None:
    """The thread of :func:`background`: ``put`` each ``fn(item)`` (with an event after its work on CUDA), then
    the end, or the exception; stops when ``put`` fails (the consumer left) and closes an upstream stage."""
    cuda = device.type == "cuda"
    try:
        with ExitStack() as ctx:
            if cuda:  # the current device and stream are per thread
                ctx.enter_context(torch.cuda.device(device))
                ctx.enter_context(torch.cuda.stream(stream))
            for item in source:
                out = fn(item)
                event = None
                if cuda:
                    event = torch.cuda.Event()
                    event.record(stream)
                if not put((_ITEM, out, event)):
                    return
        put((_END, None, None))
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
        put((_ERROR, e, None))
    finally:
        close = getattr(source, "close", None)
        if close is not None:  # an upstream stage: stop its thread too
            close()


def background(
    source: Iterable, fn: Callable[[Any], Any], depth: int, device: torch.device, stream=None
) -> Iterator[Any]:
    """``fn(item)`` for each item of ``source``, in order, computed up to ``depth`` items ahead in a thread.

    On CUDA the thread runs ``fn`` on its own stream. Each result is handed over without a host sync: the
    consumer's current stream waits on an event recorded after ``fn``'s work, and the result's tensors (also
    inside lists and tuples) are marked as used on the consumer's stream. An exception in the thread is raised
    in the consumer. Closing the generator (the consumer breaks out of its loop or raises) stops the thread and
    waits for it, so ``source`` is never read by two threads at once. ``stream``: the thread's CUDA stream (a
    new one when None).
    """
    # One function, a little over 60 lines: the producer thread (work) and the consumer (the loop below) share
    # the queue, the stop flag and the stream through closures; split apart they would need a class for no gain.
    cuda = device.type == "cuda"
    if cuda and stream is None:
        stream = new_stream(device)
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(message: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(message, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    thread = threading.Thread(target=_produce, args=(source, fn, device, stream, put), name="vggnet-data", daemon=True)
    thread.start()
    try:
        while True:
            kind, out, event = q.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise out
            if cuda:
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                for t in _tensors(out):
                    if t.is_cuda:
                        t.record_stream(current)
            yield out
    finally:
        stop.set()
        thread.join()


class GPULoader:
    """Batches of augmented images decoded on ``device``: yields (images [N, 3, c, c], labels [N], bad paths).

    Batches come in the sampler's order, ``prefetch`` batches decoded and augmented ahead of the consumer in
    two background threads (see the module docstring); ``prefetch=0`` does everything in the caller's thread.

    Args:
        samples: (path, class index) pairs.
        transform: a TrainTransform (or an EvalTransform with a crop size).
        sampler: yields the keys, e.g. a :class:`~vggnet.data.SeededSampler` (indices or (index, seed) pairs);
            batched ``batch_size`` at a time. None: indices in order.
        batch_size: images per batch (before dropping bad files).
        device: where to decode and augment ("cuda", or "cpu" for tests).
        num_workers: processes reading files and drawing parameters.
        drop_last: drop the last incomplete batch.
        batch_sampler: instead of ``sampler`` and ``batch_size``: yields lists of keys, one list a batch (the
            training loop's :class:`~vggnet.training.BatchPlan`).
        channels_last: return the images in channels-last memory format (the layout the net runs in on CUDA).
        prefetch: batches prepared ahead, per stage; at least 1 on CUDA.

    ``counts`` adds up the decoding fallbacks over the loader's life (see :func:`decode_batch`,
    :func:`fallback_summary`).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: ImageTransform,
        sampler: Iterable | None = None,
        batch_size: int | None = None,
        device: str | torch.device = "cuda",
        num_workers: int = 4,
        drop_last: bool = False,
        *,
        batch_sampler: Iterable | None = None,
        channels_last: bool = False,
        prefetch: int = 2,
    ) -> None:
        if transform.crop_size is None:
            raise ValueError("GPULoader stacks crops; use a transform with a crop size")
        device = torch.device(device)
        if device.type == "cuda" and prefetch <= 0:
            # in the caller's thread nvJPEG would decode on the default stream behind the queued training step,
            # and its hardware engine does not wait for queued work (torchvision's notes on decode_jpeg)
            raise ValueError("GPULoader needs prefetch >= 1 on CUDA (decoding runs on its own stream in a thread)")
        if batch_sampler is not None:
            if sampler is not None or batch_size is not None:
                raise ValueError("pass either batch_sampler, or sampler and batch_size")
            batching: dict[str, Any] = dict(batch_sampler=batch_sampler)
        elif batch_size:
            batching = dict(sampler=sampler, batch_size=batch_size, drop_last=drop_last)
        else:
            raise ValueError("pass a batch_size (with a sampler, or None for indices in order) or a batch_sampler")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # the threads must not fall back to GPU 0
        self.transform, self.device = transform, device
        self.channels_last, self.prefetch = channels_last, prefetch
        self.counts: Counter = Counter()
        self._streams: tuple | None = None  # (decode, augment): made once, not per epoch
        self.loader = DataLoader(
            EncodedDataset(samples, transform),
            num_workers=num_workers,
            collate_fn=collate_encoded,
            persistent_workers=num_workers > 0,
            prefetch_factor=4 if num_workers > 0 else None,
            **batching,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def decode(self, batch: EncodedBatch) -> tuple[list[torch.Tensor | None], EncodedBatch]:
        """Stage 1: the batch's images decoded on the device (None for bad files)."""
        routes = [h.route for h in batch.headers] if batch.headers else None
        return decode_batch(batch.datas(), self.device, batch.paths, routes, self.counts), batch

    def augment(self, decoded: tuple[list[torch.Tensor | None], EncodedBatch]):
        """Stage 2: (images [N, 3, c, c], labels [N], bad paths), bad files dropped."""
        images, batch = decoded
        keep = [i for i, img in enumerate(images) if img is not None]
        bad = [batch.paths[i] for i, img in enumerate(images) if img is None]
        windows = [batch.headers[i].window for i in keep] if batch.headers else None
        x = augment_batch([images[i] for i in keep], [batch.params[i] for i in keep], self.transform, windows)
        x = x.to(self.device)  # an empty batch is made on the CPU
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, to_device(batch.labels[keep], self.device), bad

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        batches = iter(self.loader)  # in the caller's thread: worker processes start (or are reset) here
        if self.prefetch <= 0:
            for batch in batches:
                yield self.augment(self.decode(batch))
            return
        if self._streams is None:
            self._streams = (new_stream(self.device), new_stream(self.device))
        decoded = background(batches, self.decode, self.prefetch, self.device, self._streams[0])
        yield from background(decoded, self.augment, self.prefetch, self.device, self._streams[1])
