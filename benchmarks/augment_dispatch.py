"""The GPU data path's main-process cost per batch, measured on the CPU (issue 16, item 4): before and after.

On the GPU the batched augmentation is launch-bound: each torch call costs some microseconds of Python and
dispatch in the main process's threads (which share the GIL with the training loop) whatever the image size.
This script measures exactly that part on the CPU, with images small enough (50x38, 10x smaller than
ImageNet's 500x375) that the kernels themselves take almost nothing, for a batch of 256:

- before: what the GPU path did until issue 16: the JPEG magic number read twice an image, the crop window
  worked out per image in the main process (crop_offsets, _span), one resampling call an image;
- after: the route and window come from the DataLoader workers (computed there from the header they already
  read), and crops at one scale share one resampling call (:func:`vggnet.data.transforms.resample_windows`).

Both end in the same batched flip, colour shift and normalisation. It prints the milliseconds a batch (the
median over repeats), the torch operations a batch (counted with a TorchDispatchMode: on a GPU, roughly the
kernel launches) and checks that both give the same tensor. Two augmentations: S jittered in [S, 2S] (the
paper's multi-scale training, where few crops share a scale) and S fixed (single-scale training).

    PYTHONPATH=src python benchmarks/augment_dispatch.py       # about 10 seconds on one core
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vggnet.data import TrainTransform
from vggnet.data.gpu import _is_jpeg, augment_batch, route, to_device
from vggnet.data.transforms import _resample, _span, crop_offsets, rescaled_size

JPEG_HEADER = torch.tensor([0xFF, 0xD8, 0xFF, 0xE0] + [0] * 60, dtype=torch.uint8)


def before(images, params, t: TrainTransform, datas) -> torch.Tensor:
    """The pre-issue-16 path: two magic-number checks, per-image window arithmetic and resampling."""
    jpegs = [i for i, d in enumerate(datas) if d is not None and _is_jpeg(d)]
    others = [i for i, d in enumerate(datas) if d is not None and not _is_jpeg(d)]
    assert len(jpegs) == len(images) and not others
    crop = t.crop_size
    crops = []
    for img, p in zip(images, params):
        h, w = img.shape[-2:]
        _, _, top, left = crop_offsets(h, w, p, crop)
        nh, nw = rescaled_size(h, w, p.scale)
        fy, fx = nh / h, nw / w
        y0, y1, ky = _span(top, crop, fy, h)
        x0, x1, kx = _span(left, crop, fx, w)
        region = img[..., y0:y1, x0:x1]
        oh, ow = ky + crop, kx + crop
        oh += oh == y1 - y0 and fy != 1.0  # the same output as after (the kernel's equal-size copy avoided)
        ow += ow == x1 - x0 and fx != 1.0
        out = _resample(region[None], [oh, ow], False, fy, fx)[0]
        crops.append(out[..., ky : ky + crop, kx : kx + crop])
    x = torch.stack(crops)
    flip = to_device(torch.tensor([p.flip for p in params]), x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return t.normalize(x, [p.alpha for p in params])


def after(images, params, t: TrainTransform, windows, routes) -> torch.Tensor:
    assert all(r == "gpu" for r in routes)  # the worker's route: no magic number read here
    return augment_batch(images, params, t, windows)


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def measure(fn, repeats: int) -> tuple[float, int, torch.Tensor]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    with CountOps() as c:
        fn()
    return 1000 * statistics.median(times), c.n, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    # ImageNet's two common shapes at 1/10 scale, as the decoder hands them over (float on the GPU: the
    # antialiased CUDA kernel takes floating point; float here too)
    shapes = [(38, 50) if i % 5 else (50, 38) for i in range(args.batch)]
    images = [torch.randint(0, 256, (3, h, w), generator=g).float() for h, w in shapes]
    datas = [JPEG_HEADER for _ in images]
    from vggnet.data import IMAGENET_STATS

    rows = []
    for name, scale in (("S jittered in [26, 51]", (26, 51)), ("S fixed at 26", (26, 26))):
        t = TrainTransform(IMAGENET_STATS, crop_size=22, scale=scale)
        params = [t.sample(torch.Generator().manual_seed(i)) for i in range(args.batch)]
        windows = [t.window(img.shape[-2], img.shape[-1], q) for img, q in zip(images, params)]  # the workers' part
        routes = [route("JPEG", "RGB") for _ in images]
        ms_b, ops_b, out_b = measure(lambda: before(images, params, t, datas), args.repeats)
        ms_a, ops_a, out_a = measure(lambda: after(images, params, t, windows, routes), args.repeats)
        assert torch.equal(out_a, out_b), "before and after differ"
        scales = len({(w.fy, w.fx) for w in windows})
        rows.append((name, ms_b, ops_b, ms_a, ops_a, scales))
    print(
        f"augment_dispatch: a batch of {args.batch} images of 50x38 / 38x50, 22 crops, float32, 1 CPU thread, "
        f"torch {torch.__version__}; median of {args.repeats}"
    )
    print()
    print("| augmentation | before: ms | before: torch ops | after: ms | after: torch ops | scales in the batch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ms_b, ops_b, ms_a, ops_a, scales in rows:
        print(f"| {name} | {ms_b:.1f} | {ops_b:,} | {ms_a:.1f} | {ops_a:,} | {scales} |")
    print()
    print("same output before and after: yes (torch.equal)")
    return 0 if all(math.isfinite(r[1]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
