"""Decoded + augmented images per second per CPU core: vggnet's CPU path against torchvision's PIL pipeline.

Makes its own ImageNet-like JPEGs (500x375 and 375x500, quality 90: vggnet.data.synthetic) from the photos that
installed packages ship, or textures if none are found, then times in one process
with one thread (= per core), interleaving the pipelines, the median over repeats:

- torchvision: PIL decode, Resize(256), RandomCrop(224), RandomHorizontalFlip, ToTensor, Normalize;
- vggnet: the paper's training transform, S jittered in [256, 512], 224 crop, flip, PCA colour shift, mean
  (and std) normalisation, through ImageDataset with (index, seed) keys; and the same at fixed S = 256;
- decoding alone, for reference; and with CUDA, the GPU path in batches of 256 (images/s of the whole GPU).

    python benchmarks/data.py            # 200 images, 5 repeats, well under a minute on 2 cores
    python benchmarks/data.py --quick    # 64 images, 3 repeats
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image


def _rate(fn, items) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="number of JPEGs (default 200)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per pipeline; the median is shown")
    p.add_argument("--quick", action="store_true", help="64 images, 3 repeats")
    p.add_argument("--dir", type=Path, help="write (or reuse) the JPEGs here instead of a temporary folder")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 64, 3
    torch.set_num_threads(1)  # per core: DataLoader workers run one thread each as well

    from torchvision import transforms as T
    from torchvision.io import ImageReadMode, decode_jpeg

    from vggnet.data import IMAGENET_STATS, ImageDataset, TrainTransform
    from vggnet.data.synthetic import make_jpeg_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        paths = sorted(str(q) for q in folder.glob("*.jpg"))[: args.n]
        if len(paths) < args.n:
            paths = make_jpeg_folder(folder, args.n, classes=0)
        kb = sum(Path(q).stat().st_size for q in paths) / len(paths) / 1024

        tv = T.Compose(
            [
                T.Resize(256),
                T.RandomCrop(224),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(IMAGENET_STATS.mean, IMAGENET_STATS.std),
            ]
        )
        samples = [(q, 0) for q in paths]
        paper = ImageDataset(samples, TrainTransform(IMAGENET_STATS, 224, (256, 512), divide_std=True))
        fixed = ImageDataset(samples, TrainTransform(IMAGENET_STATS, 224, 256, divide_std=True))
        keys = [(i, 1000 + i) for i in range(len(paths))]
        rows = {
            "torchvision PIL: Resize(256) RandomCrop(224) Flip ToTensor Normalize": (
                lambda q: tv(Image.open(q).convert("RGB")),
                paths,
            ),
            "vggnet CPU: S in [256,512], crop 224, flip, colour shift, normalise": (paper.__getitem__, keys),
            "vggnet CPU: S = 256, crop 224, flip, colour shift, normalise": (fixed.__getitem__, keys),
            "decode only: Pillow": (lambda q: Image.open(q).convert("RGB"), paths),
            "decode only: torchvision.io.decode_jpeg": (
                lambda q: decode_jpeg(
                    torch.frombuffer(bytearray(Path(q).read_bytes()), dtype=torch.uint8), mode=ImageReadMode.RGB
                ),
                paths,
            ),
        }
        rates: dict[str, list[float]] = {name: [] for name in rows}
        for fn, items in rows.values():  # warm-up: page cache, lazy imports, allocator
            fn(items[0])
        for _ in range(args.repeats):
            for name, (fn, items) in rows.items():
                rates[name].append(_rate(fn, items))

        gpu_row = _gpu(paths) if torch.cuda.is_available() else None

    base = statistics.median(rates[next(iter(rows))])
    print(
        f"CPU data path, {len(paths)} JPEGs (500x375, quality 90, {kb:.0f} KB on average), one process, one "
        f"thread; median of {args.repeats} passes"
    )
    print(f"torch {torch.__version__}, Pillow {Image.__version__}, Python {sys.version.split()[0]}")
    print()
    print("| pipeline | images/s per core | ms/image | vs torchvision |")
    print("|---|---|---|---|")
    for name, rs in rates.items():
        r = statistics.median(rs)
        print(f"| {name} | {r:,.0f} | {1000 / r:.2f} | {r / base:.2f}x |")
    if gpu_row:
        print(
            f"| vggnet GPU ({torch.cuda.get_device_name()}): decode_jpeg on cuda + batched augmentation, "
            f"batches of 256 (whole GPU) | {gpu_row:,.0f} | - | - |"
        )
    return 0


def _gpu(paths: list[str]) -> float:
    """Images/s of the GPU path: nvJPEG batch decode + batched paper augmentation, bytes already in memory."""
    from vggnet.data import IMAGENET_STATS, TrainTransform
    from vggnet.data.gpu import augment_batch, decode_batch

    tf = TrainTransform(IMAGENET_STATS, 224, (256, 512), divide_std=True)
    datas = [torch.frombuffer(bytearray(Path(q).read_bytes()), dtype=torch.uint8) for q in paths]
    batch = (datas * (256 // len(datas) + 1))[:256]
    params = [tf.sample(torch.Generator().manual_seed(i)) for i in range(len(batch))]

    def step():
        return augment_batch(decode_batch(batch, "cuda"), params, tf)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0, reps = time.perf_counter(), 10
    for _ in range(reps):
        step()
    torch.cuda.synchronize()
    return reps * len(batch) / (time.perf_counter() - t0)


if __name__ == "__main__":
    sys.exit(main())
