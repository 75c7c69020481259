"""VGG-16 (config D) on one GPU: the training step, training from JPEG files, dense evaluation. One table.

Rows:

- (a) our training step on synthetic batches already on the GPU: config D, 1000 classes, batch 256, 224 crops,
  bf16 autocast, channels-last, torch.compile, fused SGD (momentum 0.9, weight decay 5e-4), dropout 0.5. The
  step is ``vggnet.training.train_one_epoch`` itself, the loop ``vgg train`` runs.
- (b) torchvision's vgg16 through the same loop with the same settings (about 5,000 images/s: the reference
  measurements of docs/performance.md).
- (c) our training from a folder of JPEGs with the paper's augmentation (S jittered in [256, 512], random 224
  crop, flip, PCA colour shift, mean subtraction), the batches built by ``vggnet.training.make_train_loader`` as
  ``vgg train`` builds them: the GPU data path (``--loader gpu``: workers read the bytes, nvJPEG decodes, the
  augmentation runs batched on the GPU, both in background threads) and the CPU path (``--loader cpu``: decode
  and augment in worker processes). The target is >= 98% of (a). Rows (c0): each data path alone, without
  training: its own ceiling.
- (d) dense evaluation of square images at Q = 384 and Q = 256, one view an image (the whole image through the
  fully convolutional net, spatial average, soft-max): eager through ``vggnet.evaluation.dense_posteriors`` as
  ``vgg eval`` runs it, and the same computation under torch.compile.
- (e) with ``--variants``: (a) under the compile modes max-autotune-no-cudagraphs and reduce-overhead (CUDA
  graphs); max-autotune alone compiles for several minutes.

Preflight (first, on the GPU machine; ``--preflight`` alone): one table of the machine's problems before any
row fails on them: the device, /dev/shm against what the (c) rows' workers need, a one-line torch.compile on
the device (Triton, a C++ compiler, Python headers), bf16 autocast, a batched JPEG decode on the device (nvJPEG)
without fallback, and the test suite's GPU tests (``pytest -m gpu``). A failed check stops the run (exit status
1) unless ``--skip-preflight``.

Method: warm-up steps (compilation, cuDNN autotuning, worker start-up), then timed steps. A training row's
time runs from the GPU finishing its last warm-up step to the GPU finishing its last timed step: CUDA events
recorded as each batch is taken, so a data stall counts. FLOPs are counted per row with
torch.utils.flop_counter.FlopCounterMode (92.65 GFLOP per training image for D at 224; 99.1 GFLOP per dense
384x384 view); MFU is the achieved FLOP/s over ``--peak-tflops`` (783: the bf16 matrix rate measured on the
H200). The JPEGs are made first: ImageNet-like photos of 500x375 (one in five 375x500), quality 90, random
crops, flips and tints of the images shipped with scikit-image and matplotlib (textures synthesised with numpy
when neither is installed), in 16 class folders.

    PYTHONPATH=src python benchmarks/gpu.py              # the GPU machine: about 4 minutes
    PYTHONPATH=src python benchmarks/gpu.py --variants   # + compile modes (several minutes more)
    PYTHONPATH=src python benchmarks/gpu.py --preflight  # the preflight table alone (about a minute)
    PYTHONPATH=src python benchmarks/gpu.py --cpu        # smoke run on a CPU: tiny net and images, < 1 minute
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


@dataclass
class Setup:
    """Sizes and settings of a run: the paper's on a GPU, tiny ones for --cpu."""

    device: str = "cuda"
    width: float = 1.0  # conv width multiplier
    fc_width: int = 4096
    crop: int = 224
    scale: tuple[int, int] = (256, 512)  # S jittered in [Smin, Smax]
    classes: int = 1000
    batch: int = 256
    warmup: int = 3  # training steps before timing (synthetic rows)
    steps: int = 20  # timed training steps (synthetic rows)
    data_warmup: int = 10  # steps before timing, rows reading JPEGs (fills or drains the prefetch queues)
    data_steps: int = 40
    images: int = 2048  # JPEG files made
    image_size: tuple[int, int] = (500, 375)  # width, height
    folders: int = 16  # class folders
    dense_q: tuple[int, ...] = (384, 256)
    dense_batch: int = 64
    dense_steps: int = 20
    compile: bool = True
    amp: bool = True  # bf16 autocast
    channels_last: bool = True
    gpu_workers: int = 8  # processes reading files for the GPU data path
    cpu_workers: int = 16  # processes decoding and augmenting for the CPU data path
    peak_tflops: float | None = 783.0


def cpu_setup() -> Setup:
    """A smoke run on 2 CPU cores: net D at 1/16 width on 32-pixel crops, a few steps of each row."""
    return Setup(
        device="cpu",
        width=1 / 16,
        fc_width=64,
        crop=32,
        scale=(32, 48),
        classes=16,
        batch=16,
        warmup=1,
        steps=2,
        data_warmup=1,
        data_steps=2,
        images=48,
        image_size=(64, 48),
        folders=4,
        dense_q=(55, 37),
        dense_batch=8,
        dense_steps=2,
        compile=False,
        amp=False,
        channels_last=False,
        gpu_workers=1,
        cpu_workers=2,
        peak_tflops=None,
    )


# ---- the JPEG folder ------------------------------------------------------------------------------------------


def make_jpegs(root: Path, s: Setup, seed: int = 0) -> dict[str, Any]:
    """s.images JPEGs in s.folders class folders under root (kept when already there); a description."""
    from vggnet.data.synthetic import make_jpeg_folder, photo_sources

    names = [name for name, _ in photo_sources()]
    paths = make_jpeg_folder(
        root, s.images, classes=s.folders, size=s.image_size, seed=seed, processes=min(16, os.cpu_count() or 1)
    )
    sizes = [os.path.getsize(p) for p in paths]
    w, h = s.image_size
    return dict(
        images=len(paths),
        classes=s.folders,
        size=f"{w}x{h}",
        kb=sum(sizes) / len(sizes) / 1024,
        sources=names or ["numpy textures"],
    )


# ---- timing ---------------------------------------------------------------------------------------------------


class Clock:
    """Time marks: CUDA events on the current stream on a GPU (the GPU's time), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def seconds(self, a, b) -> float:
        if not self.cuda:
            return b - a
        b.synchronize()
        return a.elapsed_time(b) / 1000

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def train_rate(net: nn.Module, optimizer, batches: Iterable, warmup: int, steps: int, s: Setup) -> dict[str, float]:
    """Images/s of ``vggnet.training.train_one_epoch`` over ``steps`` batches after ``warmup`` batches."""
    from vggnet.config import TrainConfig
    from vggnet.training import BatchPlan, Logger, NonFiniteLoss, Progress, train_one_epoch

    device = torch.device(s.device)
    clock = Clock(device)
    marks, images = [], [0]

    def marked():
        # a mark as step i's batch is taken: on the GPU it completes when step i - 1 has finished
        for i, batch in enumerate(itertools.islice(iter(batches), warmup + steps)):
            if i >= warmup:
                marks.append(clock.mark())
                images[0] += batch[0].shape[0]
            yield batch

    cfg = TrainConfig(
        arch="D",
        crop_size=s.crop,
        scale_min=s.scale[0],
        scale_max=s.scale[1],
        batch_size=s.batch,
        log_every=10**9,
        amp=s.amp,
        channels_last=s.channels_last,
        compile=s.compile,
    )
    plan = BatchPlan(s.batch * (warmup + steps + 2), s.batch, 1, 0, 1, 0)  # only its length and world are read
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if s.amp else contextlib.nullcontext
    clock.sync()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            train_one_epoch(
                net,
                marked(),
                optimizer,
                cfg,
                plan,
                Progress(0, 0, 0),
                device,
                autocast,
                Logger(Path(tmp), False, False),
                set(),
                lambda: None,
            )
        except NonFiniteLoss:
            pass  # random data at a high learning rate may diverge; the time is still the time
    end = clock.mark()
    seconds = clock.seconds(marks[0], end)
    return dict(ips=images[0] / seconds, ms=1000 * seconds / steps)


def data_rate(batches: Iterable, warmup: int, steps: int, device: torch.device) -> dict[str, float]:
    """Images/s of a data path alone: batches taken and moved to the device, nothing computed on them."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    Clock(device).sync()
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        x, y, _ = next(it)
        x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n += x.shape[0]
    Clock(device).sync()
    seconds = time.perf_counter() - t0
    with contextlib.suppress(AttributeError):
        it.close()  # the GPU loader's generator: stops its threads
    return dict(ips=n / seconds, ms=1000 * seconds / steps)


def train_flops(model: nn.Module, s: Setup) -> float:
    """FLOPs of one training image: forward, loss and backward of a batch of 2, counted, halved."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, s.crop, s.crop, device=s.device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.tensor([0, 1], device=s.device)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def dense_flops(model, q: int, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.dense(torch.randn(1, 3, q, q, device=device))
    return counter.get_total_flops()


# ---- the nets -------------------------------------------------------------------------------------------------


def our_net(s: Setup) -> nn.Module:
    from vggnet import create_model

    with torch.device(s.device):  # initialised in place on the GPU
        model = create_model("D", num_classes=s.classes, width=s.width, fc_width=s.fc_width, crop_size=s.crop)
    return model.to(memory_format=torch.channels_last) if s.channels_last else model


def torchvision_net(s: Setup) -> nn.Module:
    """torchvision's vgg16; for --cpu the same class with the smoke run's widths."""
    from torchvision.models import vgg16
    from torchvision.models.vgg import VGG, cfgs, make_layers

    with torch.device(s.device):
        if (s.width, s.fc_width, s.crop) == (1.0, 4096, 224):
            model = vgg16(num_classes=s.classes)
        else:
            layers = [v if v == "M" else max(1, round(v * s.width)) for v in cfgs["D"]]
            model = VGG(make_layers(layers), num_classes=s.classes)
            p, c = s.crop // 32, layers[-2]
            model.avgpool = nn.AdaptiveAvgPool2d(p)
            model.classifier = nn.Sequential(
                nn.Linear(c * p * p, s.fc_width),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(s.fc_width, s.fc_width),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(s.fc_width, s.classes),
            )
    return model.to(memory_format=torch.channels_last) if s.channels_last else model


def sgd(model: nn.Module, s: Setup):
    # the paper's optimiser; the learning rate does not change the time of a step
    return torch.optim.SGD(
        model.parameters(),
        lr=1e-3,
        momentum=0.9,
        weight_decay=5e-4,
        fused=True if s.device.startswith("cuda") else None,
    )


def synthetic(s: Setup):
    g = torch.Generator(device=s.device).manual_seed(0)
    x = torch.randn(s.batch, 3, s.crop, s.crop, device=s.device, generator=g)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s.classes, (s.batch,), device=s.device, generator=g)
    return itertools.repeat((x, y, []))


# ---- the rows -------------------------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    what: str
    ips: float | None = None
    ms: float | None = None
    gflop: float | None = None
    mfu: float | None = None
    of_a: float | None = None
    seconds: float = 0.0
    note: str = ""


class Bench:
    def __init__(self, s: Setup, root: Path) -> None:
        self.s, self.root = s, root
        self.device = torch.device(s.device)
        self.rows: list[Row] = []
        self.failed = 0

    def row(self, key: str, what: str, fn: Callable[[], dict[str, float]], gflop: float | None) -> Row:
        """Run one measurement; a failure becomes a row that says why (the other rows still run)."""
        r = Row(key, what, gflop=gflop)
        t0 = time.perf_counter()
        try:
            r.ips, r.ms = (lambda m: (m["ips"], m["ms"]))(fn())
            if gflop and self.s.peak_tflops:
                r.mfu = r.ips * gflop / (1000 * self.s.peak_tflops)
        except Exception as e:  # noqa: BLE001 - reported in the table
            r.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            self.failed += 1
        r.seconds = time.perf_counter() - t0
        self.rows.append(r)
        print(
            f"  {key:5} {what}: {'-' if r.ips is None else f'{r.ips:,.0f} images/s'} ({r.seconds:.0f}s) {r.note}",
            file=sys.stderr,
            flush=True,
        )
        return r

    def compiled(self, model: nn.Module, mode: str | None = None) -> nn.Module:
        return torch.compile(model, mode=mode) if self.s.compile else model

    def run(self, rows: str, variants: bool) -> None:
        s = self.s
        model = our_net(s)
        optimizer = sgd(model, s)
        net = self.compiled(model)
        flop = train_flops(model, s) / 1e9
        if "a" in rows:
            self.row(
                "(a)",
                "ours: synthetic batches already on the device",
                lambda: train_rate(net, optimizer, synthetic(s), s.warmup, s.steps, s),
                flop,
            )
        if "b" in rows:
            self.torchvision_row()
        if "c" in rows:
            self.data_rows(net, optimizer, flop)
        if "d" in rows:
            self.dense_rows(model)
        if variants and s.compile:
            for mode in ("max-autotune-no-cudagraphs", "reduce-overhead"):
                torch._dynamo.reset()
                variant = self.compiled(model, mode)
                self.row(
                    "(e)",
                    f"(a) under torch.compile mode {mode}",
                    lambda: train_rate(variant, optimizer, synthetic(s), s.warmup, s.steps, s),
                    flop,
                )
        a = next((r.ips for r in self.rows if r.key == "(a)" and r.ips), None)
        for r in self.rows:
            if a and r.ips and not r.key.startswith("(d"):
                r.of_a = r.ips / a

    def torchvision_row(self) -> None:
        s = self.s
        tv = torchvision_net(s)
        tv_opt = sgd(tv, s)
        tv_net = self.compiled(tv)
        flop = train_flops(tv, s) / 1e9
        self.row(
            "(b)",
            "torchvision vgg16: the same loop, synthetic batches",
            lambda: train_rate(tv_net, tv_opt, synthetic(s), s.warmup, s.steps, s),
            flop,
        )
        tv = tv_opt = tv_net = None  # frees the memory (the timed lambda holds these names)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def loader(self, kind: str, n_batches: int):
        """(batches, description) as `vgg train --loader KIND` builds them, for n_batches batches of the plan."""
        from vggnet.config import TrainConfig
        from vggnet.data import IMAGENET_STATS, ImageDataset, TrainTransform, scan_folder
        from vggnet.training import BatchPlan, make_train_loader

        s = self.s
        files, _ = scan_folder(self.root)
        # the files repeated, so that one epoch of the plan covers every step: no epoch-start bubble in the timing
        samples = files * math.ceil(n_batches * s.batch / len(files))
        transform = TrainTransform(IMAGENET_STATS, crop_size=s.crop, scale=s.scale, flip=True, colour_std=0.1)
        plan = BatchPlan(len(samples), s.batch, world=1, rank=0, accum=1, seed=0)
        cfg = TrainConfig(
            loader=kind,
            crop_size=s.crop,
            scale_min=s.scale[0],
            scale_max=s.scale[1],
            batch_size=s.batch,
            channels_last=s.channels_last,
        )
        workers = s.gpu_workers if kind == "gpu" else s.cpu_workers
        loader, _ = make_train_loader(cfg, ImageDataset(samples, transform), plan, workers, self.device)
        return loader, min(workers, 8) if kind == "gpu" else workers

    def data_rows(self, net: nn.Module, optimizer, flop: float) -> None:
        s = self.s
        for kind in ("gpu", "cpu"):
            # the CPU path's workers each deliver a whole batch at once, all at about the same time: the warm-up
            # takes that first wave, so that the timed steps see the steady rate
            warm = s.data_warmup if kind == "gpu" else max(s.data_warmup, 2 * s.cpu_workers)
            n = warm + s.data_steps
            loader, workers = self.loader(kind, n)
            how = (
                f"{workers} readers, nvJPEG + batched augmentation in 2 threads"
                if kind == "gpu"
                else f"decode + augment in {workers} worker processes"
            )
            if kind == "gpu" and self.device.type != "cuda":
                how = f"{workers} reader, the batched path on the CPU"
            self.row(
                "(c0)",
                f"{kind} data path alone ({how})",
                lambda: data_rate(loader, warm, s.data_steps, self.device),
                None,
            )
            loader, _ = self.loader(kind, n)
            self.row(
                "(c)",
                f"ours from the JPEGs, paper augmentation, --loader {kind}",
                lambda: train_rate(net, optimizer, loader, warm, s.data_steps, s),
                flop,
            )
            loader = None  # frees the loader (the timed lambda holds the name)

    def dense_rows(self, model: nn.Module) -> None:
        from vggnet.evaluation import dense_posteriors
        from vggnet.model import spatial_average
        from vggnet.runtime import Runtime

        s = self.s
        rt = Runtime(self.device, amp=s.amp, channels_last=s.channels_last)
        model = rt.prepare(model)
        clock = Clock(self.device)

        def timed(fn: Callable[[], Any], n: int) -> dict[str, float]:
            with torch.inference_mode():
                for _ in range(2):
                    fn()
                clock.sync()
                t0 = clock.mark()
                for _ in range(s.dense_steps):
                    fn()
                seconds = clock.seconds(t0, clock.mark())
            return dict(ips=n * s.dense_steps / seconds, ms=1000 * seconds / s.dense_steps)

        def scores(x: torch.Tensor) -> torch.Tensor:
            with rt.autocast():
                return spatial_average(model.dense(x).float()).softmax(-1)

        for q in s.dense_q:
            xs = [torch.randn(3, q, q, device=self.device) for _ in range(s.dense_batch)]
            x = rt.input(torch.stack(xs))
            gflop = dense_flops(model, q, self.device) / 1e9
            self.row(
                "(d)",
                f"dense eval Q = {q}: eager, as `vgg eval` (evaluation.dense_posteriors)",
                lambda: timed(lambda: dense_posteriors(model, xs, flip=False, batch_size=len(xs), rt=rt), len(xs)),
                gflop,
            )
            if s.compile:
                fn = torch.compile(scores, dynamic=False)  # one static graph per Q
                self.row(
                    "(d)",
                    f"dense eval Q = {q}: the same under torch.compile",
                    lambda: timed(lambda: fn(x), len(xs)),
                    gflop,
                )


# ---- preflight: the machine's problems in one table, before any row ---------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Check:
    name: str
    status: str = "ok"  # ok, FAIL or skip
    detail: str = ""
    seconds: float = 0.0


def _check_device(s: Setup) -> str:
    dev = torch.device(s.device)
    x = torch.arange(8.0, device=dev)
    if float((x * 2).sum()) != 56.0:
        raise RuntimeError("a kernel on the device gave a wrong sum")
    if dev.type != "cuda":
        return f"CPU, {os.cpu_count()} cores, torch {torch.__version__}"
    p = torch.cuda.get_device_properties(dev)
    return (
        f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, CUDA "
        f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
        f"{torch.cuda.device_count()} GPU(s)"
    )


def _check_shm(s: Setup) -> str:
    """The (c) rows' DataLoader workers' batches against /dev/shm (as `vgg train` checks at start-up)."""
    from vggnet.data import shm

    cpu = shm.batches_in_flight(s.cpu_workers, 4) * s.batch * 3 * s.crop * s.crop * 4
    gpu = shm.batches_in_flight(min(s.gpu_workers, 8), 4) * s.batch * 64 * 1024  # ~40 KB files, with margin
    need = max(cpu, gpu)
    shm.check_shared_memory(need, f"the (c) rows' CPU path ({s.cpu_workers} workers, batch {s.batch})")
    try:
        free = shutil.disk_usage(shm.SHM).free / 2**30
    except OSError:
        return f"no {shm.SHM} on this machine: not checked"
    return f"{free:.1f} GiB free in {shm.SHM}; the (c) rows need about {need / 2**30:.1f} GiB"


def _check_compile(s: Setup, backend: str) -> str:
    """A one-line torch.compile on the device: inductor needs Triton (CUDA) or a C++ compiler (CPU) and Python's
    headers; a machine without them fails here in seconds rather than in row (a) after minutes."""
    torch._dynamo.reset()
    fn = torch.compile(lambda x: (x * 2).sum(), backend=backend)
    got = float(fn(torch.ones(8, device=s.device)))
    torch._dynamo.reset()
    if got != 16.0:
        raise RuntimeError(f"the compiled function returned {got}, not 16")
    return f"torch.compile(backend={backend!r}) of (x * 2).sum() on {s.device}"


def _check_bf16(s: Setup) -> str:
    a = torch.randn(64, 64, device=s.device)
    with torch.autocast(torch.device(s.device).type, dtype=torch.bfloat16):
        y = a @ a
    if y.dtype != torch.bfloat16 or not bool(torch.isfinite(y).all()):
        raise RuntimeError(f"autocast gave {y.dtype}")
    return "bf16 autocast matmul"


def _check_jpeg(s: Setup) -> str:
    """The GPU data path's decoder on the device: one batched call on baseline JPEGs, no fallback."""
    import io
    from collections import Counter

    from vggnet.data.gpu import decode_batch

    datas = []
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(np.full((30 + i, 40, 3), 50 * i, np.uint8)).save(buf, "JPEG", quality=90)
        datas.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    counts: Counter = Counter()
    out = decode_batch(datas, s.device, counts=counts)
    if counts or any(x is None or x.device.type != torch.device(s.device).type for x in out):
        raise RuntimeError(f"the batched decoder fell back: {dict(counts)}")
    return f"torchvision.io.decode_jpeg: 4 JPEGs in one batched call on {s.device}" + (
        " (nvJPEG)" if torch.device(s.device).type == "cuda" else ""
    )


def _check_gpu_tests(s: Setup) -> str:
    """The test suite's GPU tests (pytest -m gpu) in a subprocess; without CUDA they skip themselves."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / "tests")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    last = (proc.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    if "No module named pytest" in proc.stderr:
        raise _Skip("pytest is not installed (pip install pytest)")
    if proc.returncode not in (0, 5):  # 5: no tests collected
        failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        raise RuntimeError(f"{last}: {'; '.join(failed[:3]) or proc.stderr.strip()[-200:]}")
    if "passed" not in last:
        raise _Skip(last)
    return last


class _Skip(Exception):
    pass


def preflight(s: Setup, backend: str = "inductor", gpu_tests: bool = True) -> list[Check]:
    """Every check runs, whatever failed before it; a failure is a row that says why."""
    checks: list[tuple[str, Callable[[], str]]] = [
        ("device", lambda: _check_device(s)),
        ("/dev/shm", lambda: _check_shm(s)),
        ("compile", lambda: _check_compile(s, backend)),
        ("bf16", lambda: _check_bf16(s)),
        ("JPEG decode", lambda: _check_jpeg(s)),
    ]
    if gpu_tests:
        checks.append(("GPU tests", lambda: _check_gpu_tests(s)))
    out = []
    for name, fn in checks:
        c, t0 = Check(name), time.perf_counter()
        try:
            c.detail = fn()
        except _Skip as e:
            c.status, c.detail = "skip", str(e)
        except Exception as e:  # noqa: BLE001 - reported in the table
            c.status = "FAIL"
            c.detail = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        c.seconds = time.perf_counter() - t0
        print(f"  preflight {name}: {c.status} ({c.seconds:.0f}s) {c.detail}", file=sys.stderr, flush=True)
        out.append(c)
    return out


def preflight_table(checks: list[Check]) -> str:
    from vggnet.report import markdown_table

    return markdown_table(
        ["check", "status", "detail", "s"], [[c.name, c.status, c.detail, f"{c.seconds:.0f}"] for c in checks], "lllr"
    )


# ---- output ---------------------------------------------------------------------------------------------------


def provenance(s: Setup, data: dict[str, Any]) -> list[str]:
    """The benchmark's setup as lines: vggnet's one provenance record (date, versions, cores) and what was run."""
    from vggnet.report import provenance as record

    info = record(s.device)
    dev = torch.device(s.device)
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        hw = (
            f"{p.name} ({p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs), CUDA "
            f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    else:
        hw = f"CPU ({info['cpu']}), {torch.get_num_threads()} torch thread(s)"
    precision = "bf16 autocast, channels-last" if s.amp and s.channels_last else "float32"
    mfu = f"MFU: of {s.peak_tflops:g} TFLOP/s" if s.peak_tflops else "no MFU (no peak rate given)"
    return [
        f"benchmarks/gpu.py{' --cpu: a smoke run at tiny sizes, its numbers mean nothing' if dev.type == 'cpu' else ''}"
        f" ({info['date'][:16]})",
        f"hardware: {hw}; {info['cpu_count']} CPU cores",
        f"software: torch {info['torch']}, torchvision {info['torchvision']}, Python {info['python']}"
        + (f", vggnet {info['git']}" if info.get("git") else ""),
        f"training: config D at width {s.width:g}, FC {s.fc_width}, {s.classes} classes, {s.crop} crops, batch "
        f"{s.batch}, dropout 0.5, {precision}, {'torch.compile' if s.compile else 'eager'}, "
        f"{'fused ' if dev.type == 'cuda' else ''}SGD (momentum 0.9, weight decay 5e-4); "
        "vggnet.training.train_one_epoch",
        f"augmentation (c): S in [{s.scale[0]}, {s.scale[1]}], random {s.crop} crop, flip, PCA colour shift (std "
        f"0.1), mean RGB subtracted (ImageNet statistics)",
        f"timing: {s.steps} steps after {s.warmup} (a, b, e); {s.data_steps} after {s.data_warmup} (c, gpu) or after "
        f"max({s.data_warmup}, 2 x workers) (c, cpu); {s.dense_steps} batches of {s.dense_batch} after 2 (d); {mfu}",
        f"data: {data['images']} JPEGs of {data['size']} (1 in 5 portrait), quality 90, {data['kb']:.0f} KB on "
        f"average, {data['classes']} classes, from {', '.join(data['sources'])}",
    ]


def table(rows: list[Row]) -> str:
    from vggnet.report import markdown_table

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    def pct(v):
        return "-" if not v else f"{100 * v:.0f}%"

    body = [
        [
            r.key,
            r.what + (f" ({r.note})" if r.note else ""),
            num(r.ips, ",.0f"),
            num(r.ms, ".1f"),
            num(r.gflop, ".2f" if (r.gflop or 0) >= 1 else ".2g"),
            pct(r.mfu),
            pct(r.of_a),
            f"{r.seconds:.0f}",
        ]
        for r in rows
    ]
    return markdown_table(
        ["row", "what", "images/s", "ms/batch", "GFLOP/image", "MFU", "of (a)", "s"], body, "llrrrrrr"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cpu", action="store_true", help="smoke run on the CPU: tiny net, images and step counts")
    p.add_argument("--rows", default="abcd", help="which rows to run, letters of abcd (default all)")
    p.add_argument("--variants", action="store_true", help="also (e): compile modes max-autotune, reduce-overhead")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 matrix rate for MFU (783: H200)")
    p.add_argument("--steps", type=int, help="timed training steps of the synthetic rows")
    p.add_argument("--images", type=int, help="JPEG files to make")
    p.add_argument("--cpu-workers", type=int, help="worker processes of the CPU data path (default: all cores)")
    p.add_argument("--dir", type=Path, help="make (or reuse) the JPEG folder here instead of a temporary folder")
    p.add_argument("--json", type=Path, help="also write the results here as JSON")
    p.add_argument(
        "--preflight",
        action="store_true",
        help="only the preflight checks (with --cpu: on the CPU); a full GPU run starts with them",
    )
    p.add_argument("--skip-preflight", action="store_true", help="run the rows without the preflight checks")
    p.add_argument("--compile-backend", default="inductor", help="the preflight's compile check (default inductor)")
    p.add_argument("--no-gpu-tests", action="store_true", help="leave the GPU tests out of the preflight")
    args = p.parse_args(argv)

    if args.cpu:
        s = cpu_setup()
    elif not torch.cuda.is_available():
        p.error("no CUDA GPU: run on the GPU machine, or pass --cpu for a smoke run")
    else:
        s = Setup(cpu_workers=os.cpu_count() or 16)
    s.peak_tflops = args.peak_tflops or s.peak_tflops
    s.steps = args.steps or s.steps
    s.images = args.images or s.images
    s.cpu_workers = args.cpu_workers or s.cpu_workers
    torch.manual_seed(0)
    if args.cpu:
        torch.set_num_threads(1)  # tiny tensors: a second thread only adds spinning on a shared 2-core machine

    checks: list[Check] = []
    if args.preflight or not (args.cpu or args.skip_preflight):
        checks = preflight(s, args.compile_backend, not args.no_gpu_tests)
        print("preflight: the machine, before any row")
        print()
        print(preflight_table(checks))
        print()
        failed = [c.name for c in checks if c.status == "FAIL"]
        if args.preflight or failed:
            if failed:
                print(f"preflight failed ({', '.join(failed)}): fix these first, or pass --skip-preflight")
            if args.json:
                args.json.write_text(json.dumps(dict(preflight=[asdict(c) for c in checks]), indent=1) + "\n")
            return 1 if failed else 0

    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp) / "jpegs"
        t0 = time.perf_counter()
        data = make_jpegs(root, s)  # first: its worker processes fork before CUDA starts
        print(f"  made {data['images']} JPEGs in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        if s.device == "cuda":
            torch.backends.cudnn.benchmark = True  # as `vgg train` sets them
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        bench = Bench(s, root)
        bench.run(args.rows, args.variants)

    lines = provenance(s, data)
    print("\n".join(lines))
    print()
    print(table(bench.rows))
    print()
    print(
        "(a), (b), (c), (e): training images/s; (c0): images/s the data path delivers alone; (d): images/s of "
        "one dense view each; of (a): the share of the data-free step; s: seconds the row took, compilation "
        "included."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                dict(
                    provenance=lines,
                    setup=asdict(s),
                    data=data,
                    preflight=[asdict(c) for c in checks],
                    rows=[asdict(r) for r in bench.rows],
                ),
                indent=1,
            )
            + "\n"
        )
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
