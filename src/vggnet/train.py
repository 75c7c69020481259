"""The training loop: the paper's recipe (section 3.1) on one CPU, one GPU, or many through DDP.

Plain functions that read top to bottom: ``train(config)`` sets up (device, data, model, optimizer, run
folder, resume), then loops ``train_one_epoch`` and ``validate`` under the plateau schedule.

Exactness: the data order and every image's augmentation come from (seed, epoch, position), never from
worker or global RNG state, and a checkpoint stores the position inside the epoch with the optimizer,
schedule and RNG states; so a run resumed mid-epoch ends with the same weights as an uninterrupted one,
and N processes with batch B/N each make the same updates as one process with batch B.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections import Counter
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import runs
from .config import TrainConfig, config_changes, from_dict, read_toml, refuse_unsafe_changes, resolve
from .factory import create_model
from .pretrained import make_cfg
from .runtime import Dist, cuda_path, is_main, pick_device, setup_distributed
from .weights import atomic_write, read_state_dict, save_weights, unwrap


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the message says what to change and where to continue from."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was saved; ``signum`` is the signal's number."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


# ---- the batch plan: which images each process sees at each step --------------------------------------------


class BatchPlan:
    """Yields the micro-batches of one epoch for one process: lists of (index, augmentation seed).

    The global order is a permutation drawn from (seed, epoch). Each global batch of ``batch_size`` images
    is cut into ``world`` equal shares, and a process's share into ``accum`` micro-batches. The last
    incomplete global batch is dropped (fixed batch size, as in the paper). ``start_step`` skips the first
    optimizer steps of the epoch (resume).
    """

    def __init__(self, n: int, batch_size: int, world: int, rank: int, accum: int, seed: int) -> None:
        if batch_size % (world * accum):
            raise ValueError(f"batch_size {batch_size} is not divisible by processes x accum_steps = {world * accum}")
        if n < batch_size:
            raise ValueError(f"the training set has {n} images, fewer than one batch of {batch_size}; lower --batch-size")
        self.n, self.batch_size, self.world, self.rank, self.accum, self.seed = n, batch_size, world, rank, accum, seed
        self.micro = batch_size // (world * accum)
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        share = self.batch_size // self.world
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * self.batch_size + self.rank * share
            for a in range(self.accum):
                idx = range(lo + a * self.micro, lo + (a + 1) * self.micro)
                yield [(order[i], seeds[i]) for i in idx]


# ---- the plateau schedule ---------------------------------------------------------------------------------


@dataclass
class Plateau:
    """lr /= 10 when the validation top-1 error has not improved by ``threshold`` for more than ``patience``
    epochs, at most ``max_decays`` times; after the last decrease, the next plateau ends training."""

    lr: float
    patience: int
    threshold: float
    max_decays: int
    best: float = math.inf
    bad_epochs: int = 0
    decays: int = 0
    done: bool = False

    def step(self, error: float) -> None:
        if error < self.best - self.threshold:
            self.best, self.bad_epochs = error, 0
            return
        self.best = min(self.best, error)
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            if self.decays < self.max_decays:
                self.lr /= 10
                self.decays += 1
                self.bad_epochs = 0
            else:
                self.done = True

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, d: dict[str, Any]) -> None:
        vars(self).update(d)


# ---- checkpoints --------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        # a checkpoint from a machine with more GPUs (set_rng_state_all would fail): the GPUs this one has
        for i, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)


def save_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, plateau: Plateau,
                    cfg: TrainConfig, epoch: int, step_in_epoch: int, global_step: int, keep: int,
                    rng: dict[str, Any] | None = None, epoch_loss: tuple[float, int] = (0.0, 0)) -> Path:
    """Write checkpoints/ckpt-<step>.pt atomically, then drop all but the newest ``keep``.

    ``rng``: the RNG states to store (default: the current ones); ``epoch_loss``: (sum, steps) of the training
    loss of the epoch so far, so that a resumed epoch logs the loss of all its steps.
    """
    state = {
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "plateau": plateau.state_dict(),
        "config": cfg.to_dict(),
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": global_step,
        "rng": rng if rng is not None else _rng_state(),
        "epoch_loss": [float(epoch_loss[0]), int(epoch_loss[1])],
    }
    folder = run / "checkpoints"
    path = atomic_write(folder / f"ckpt-{global_step:09d}.pt", lambda tmp: torch.save(state, tmp))
    for old in sorted(folder.glob("ckpt-*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(run: Path) -> Path | None:
    found = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint holds tensors, numbers, strings, lists and dicts; nothing is unpickled
    return torch.load(path, map_location="cpu", weights_only=True)


def newest_valid_checkpoint(run: Path, rename_bad: bool = True) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint of ``run`` that loads, and its contents; (None, None) when there is none.

    A checkpoint that does not load (truncated by a full disk or a killed copy, or refused by
    ``weights_only``) is renamed to ``*.pt.unreadable`` (when ``rename_bad``; kept for inspection, never
    loaded again) and the next older one is tried.
    """
    for path in sorted((run / "checkpoints").glob("ckpt-*.pt"), reverse=True):
        try:
            with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: the refusal says enough
                warnings.simplefilter("ignore", UserWarning)
                ckpt = load_checkpoint(path)
            if not isinstance(ckpt, dict) or not {"model", "optimizer", "config", "global_step"} <= set(ckpt):
                raise ValueError("not a vggnet training checkpoint")
            return path, ckpt
        except Exception as e:  # noqa: BLE001 - any unreadable file: fall back to the previous checkpoint
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            note = ""
            if rename_bad:
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(path.name + ".unreadable"))
                    note = f" (renamed to {path.name}.unreadable)"
            print(f"warning: checkpoint {path} is unreadable{note}: {reason}; trying the previous one",
                  file=sys.stderr, flush=True)  # fmt: skip
    return None, None


def remove_stale_temporaries(run: Path) -> None:
    """Delete the hidden ``.NAME.XXXX.tmp`` files of writes that a kill interrupted (see ``atomic_write``)."""
    for folder in (run, run / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _trim_metrics(run: Path, global_step: int) -> None:
    """Drop metrics.jsonl rows logged after ``global_step`` (the steps a resumed run does again), and a torn
    last line of a killed write."""
    path = run / runs.METRICS_FILE
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("step", 0) <= global_step:
            keep.append(line)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(k + "\n" for k in keep)))


# ---- data ---------------------------------------------------------------------------------------------------


def build_data(cfg: TrainConfig, d: Dist, stats=None):
    """Resolve the data sets, compute the statistics (unless resuming with saved ones), build the datasets."""
    from . import data

    train_samples, val_samples, classes = data.resolve_data(
        cfg.data, val=cfg.val or None, val_fraction=cfg.val_fraction, seed=cfg.seed,
        class_names=cfg.class_names or None,
    )  # fmt: skip
    if not val_samples:
        raise ValueError(f"{cfg.data}: no validation images; the plateau schedule needs some (--val-fraction > 0)")
    if len(classes) < 2:
        raise ValueError(f"{cfg.data}: one class ({classes[0]!r}); a classifier needs at least two class folders, "
                         f"one per class (<root>/<class>/<image>)")  # fmt: skip
    if stats is None:
        # the mean RGB and PCA at the training scale; decoding at reduced size keeps this pass short on ImageNet
        stats = data.compute_stats(train_samples, max_images=cfg.stats_images, seed=cfg.seed, side=cfg.scale_min,
                                   num_workers=min(_workers(cfg, d), 8))  # fmt: skip
    norm, divide_std = runs.normalization(stats, cfg.normalize, cfg.pixel_range)
    train_tf = data.TrainTransform(norm, crop_size=cfg.crop_size, scale=(cfg.scale_min, cfg.scale_max),
                                   flip=cfg.flip, colour_std=cfg.colour_shift, divide_std=divide_std)  # fmt: skip
    # Validation during training: one centre crop at the single test scale of the paper's Table 3
    # (Q = S, or Q = (Smin + Smax) / 2 for a jittered net); the full protocols live in `vgg eval`.
    q = (cfg.scale_min + cfg.scale_max) // 2
    val_tf = data.EvalTransform(norm, size=q, crop_size=cfg.crop_size, divide_std=divide_std)
    # the loop reports bad files itself, once per run (loader workers are separate processes, some per epoch)
    train_set = data.ImageDataset(train_samples, train_tf, warn=False)
    return train_set, data.ImageDataset(val_samples, val_tf, warn=False), classes, stats


def make_loader(dataset, batch_sampler, workers: int, device: torch.device):
    from .data import collate

    kw: dict[str, Any] = {}
    if workers > 0:
        kw = dict(num_workers=workers, persistent_workers=True, prefetch_factor=4, worker_init_fn=ignore_stop_signals)
    # A private generator: the loader must not draw from the global RNG (dropout's), or resume would drift.
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batch_sampler, collate_fn=collate, pin_memory=device.type == "cuda",
        generator=torch.Generator(), **kw,
    )  # fmt: skip


def pick_loader(name: str, device: torch.device, samples) -> str:
    """The training data path: "gpu" (nvJPEG decode + batched augmentation on the device) or "cpu" (decode and
    augment in worker processes). "auto" takes the GPU path on CUDA when most of the images are JPEGs: the CPU
    path needs about one core per 250 images/s, a fraction of what one GPU trains on."""
    from .data.io import decode_jpeg

    if name == "auto":
        head = samples[:1000]
        jpegs = sum(os.path.splitext(str(p))[1].lower() in (".jpg", ".jpeg", ".jpe", ".jfif") for p, _ in head)
        name = "gpu" if device.type == "cuda" and decode_jpeg is not None and 2 * jpegs > len(head) else "cpu"
    if name == "gpu" and decode_jpeg is None:
        raise RuntimeError("--loader gpu needs torchvision.io.decode_jpeg (torchvision < 0.30); use --loader cpu")
    return name


def make_train_loader(cfg: TrainConfig, train_set, plan, workers: int, device: torch.device):
    """The training batches in ``plan``'s order and with its (index, seed) keys, from either data path: the same
    keys give the same S, crop, flip and colour shift on both. Returns (loader, "cpu" or "gpu")."""
    kind = pick_loader(cfg.loader, device, train_set.samples)
    check_loader_memory(kind, train_set.samples, plan.micro, cfg.crop_size, workers)
    if kind == "cpu":
        return make_loader(train_set, plan, workers, device), kind
    from .data.gpu import GPULoader

    # the workers only read files and draw parameters; a few keep ahead of nvJPEG
    loader = GPULoader(train_set.samples, train_set.transform, batch_sampler=plan, device=device,
                       num_workers=min(workers, 8), channels_last=cfg.channels_last and device.type == "cuda")  # fmt: skip
    return loader, kind


def check_loader_memory(kind: str, samples, micro: int, crop: int, workers: int, folder: str | None = None) -> None:
    """Refuse to start when the training loader's workers would outgrow /dev/shm (see :mod:`vggnet.data.shm`):
    the CPU path's float32 crops, or the GPU path's encoded files (workers capped at 8), 4 batches a worker."""
    from .data import shm

    if kind == "gpu":
        workers = min(workers, 8)
    if workers <= 0:
        return  # batches stay in the main process
    per_image = 3 * crop * crop * 4 if kind == "cpu" else shm.mean_file_bytes([p for p, _ in samples])
    need = shm.batches_in_flight(workers, 4) * micro * per_image
    shm.check_shared_memory(need, f"--loader {kind} with {workers} workers and batches of {micro}",
                            folder or shm.SHM)  # fmt: skip


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """In data-loader worker processes: leave Ctrl-C and SIGTERM to the main process, which stops at the next
    step and saves a checkpoint. (A terminal's Ctrl-C and torchrun's killpg reach the whole process group; a
    worker killed by them would fail the main process's next batch.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_workers(loader) -> None:
    """Shut a loader's persistent worker processes down now rather than at interpreter exit, where
    multiprocessing ends them with SIGTERM, which they ignore (see :func:`ignore_stop_signals`)."""
    it = getattr(loader, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
        loader._iterator = None


def _workers(cfg: TrainConfig, d: Dist) -> int:
    if cfg.workers >= 0:
        return cfg.workers
    return max(1, min(8, (os.cpu_count() or 2) // max(1, torch.cuda.device_count() if d.world > 1 else 1)))


# ---- one epoch ------------------------------------------------------------------------------------------------


class Logger:
    """metrics.jsonl, console lines (a progress line on a terminal), TensorBoard when installed; rank 0 only."""

    def __init__(self, run: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stdout.isatty()
        self.open_line = False
        self.file = open(run / runs.METRICS_FILE, "a") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            with contextlib.suppress(Exception):
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tensorboard"))

    def record(self, kind: str, **values: Any) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"kind": kind, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{kind}/{k}", v, values.get("step", 0))

    def line(self, text: str, progress: bool = False) -> None:
        """Print a log line; on a terminal, progress lines overwrite each other (a progress bar)."""
        if not self.enabled:
            return
        if self.tty and progress:
            width = shutil.get_terminal_size().columns - 1
            print("\r" + text[:width].ljust(min(width, 100)), end="", flush=True)
            self.open_line = True
            return
        if self.open_line:
            print()
            self.open_line = False
        print(text, flush=True)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


@dataclass
class Progress:
    epoch: int
    step_in_epoch: int
    global_step: int
    epoch_loss_sum: float = 0.0  # the training loss summed over the epoch's steps so far (across a resume)
    epoch_loss_steps: int = 0


# A terminal's progress line is redrawn about this often (seconds), from a loss copied to the host without waiting.
PROGRESS_SECONDS = 1.0


class HostCopy:
    """The latest value of a device scalar on the host, copied without a host synchronisation.

    :meth:`request` queues an asynchronous copy into pinned memory behind the work already on the stream;
    :meth:`poll` returns the newest copy that has completed (NaN before the first), never waiting for the
    device. On the CPU the copy completes at once. The training loop's progress line reads the loss this way.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.host = torch.zeros((), pin_memory=self.cuda)
        self.view = self.host.numpy()  # shares the host tensor's memory: reading it is no tensor operation
        self.event = torch.cuda.Event() if self.cuda else None
        self.pending = False
        self.value = math.nan

    def request(self, t: torch.Tensor) -> None:
        self.poll()
        if self.pending:
            return  # the previous copy is still in flight: it will do
        self.host.copy_(t.detach(), non_blocking=True)
        if self.cuda:
            self.event.record()
            self.pending = True
        else:
            self.value = float(self.view)

    def poll(self) -> float:
        if self.pending and self.event.query():
            self.value, self.pending = float(self.view), False
        return self.value


def pad_batch(images: torch.Tensor, labels: torch.Tensor, size: int, crop: int):
    """A micro-batch of exactly ``size`` images: the n readable ones, then copies of them (zeros when none is
    readable), and a mask of the n real ones; (images, labels, mask).

    Dropped unreadable files shrink a batch; a fixed shape keeps a compiled step from recompiling (forward and
    backward, tens of seconds on a GPU), and a forward on placeholders keeps a process whose micro-batch was
    all unreadable in DDP's all-reduce (without one, the other processes wait until the watchdog kills the
    job). The placeholders' loss weighs 0. Copies rather than zeros, so that a batch-norm net's batch statistics
    stay close to those of the real images. No host synchronisation.
    """
    n, device = images.shape[0], images.device
    if n == 0:
        images = torch.zeros(size, 3, crop, crop, device=device)
        labels = torch.zeros(size, dtype=torch.int64, device=device)
    else:
        idx = torch.arange(size, device=device) % n
        images, labels = images[idx], labels[idx]
    return images, labels, torch.arange(size, device=device) < n


def train_one_epoch(model, loader, optimizer, cfg: TrainConfig, plan: BatchPlan, prog: Progress, device,
                    autocast, log: Logger, bad_files: set[str], save_ckpt, stop=None) -> float:
    """Run the rest of one epoch; return the mean training loss of the steps run.

    Host synchronisations: only every ``cfg.log_every`` steps, at the end of the epoch and at checkpoints
    (the loss read back, the finiteness check). A terminal's progress line in between is redrawn about once a
    second from a loss copied asynchronously (:class:`HostCopy`), so a run on a terminal syncs no more than a
    redirected one.

    ``stop()`` is asked after every optimizer step: True (Ctrl-C or SIGTERM arrived) ends the epoch there, at a
    step boundary, so a checkpoint holds exactly the state of an uninterrupted run after that step.
    """
    model.train()
    accum = cfg.accum_steps
    loss_sum = torch.zeros((), device=device)
    window_loss = torch.zeros((), device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    steps_run, window, t0 = 0, 0, time.perf_counter()
    images_in_window = 0
    total = plan.steps_per_epoch
    micro = 0
    readout = HostCopy(device) if log.tty else None
    redraw_at = t0 + PROGRESS_SECONDS
    for images, labels, bad in loader:
        bad_files.update(bad)
        n = images.shape[0]
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        mask = None
        if n < plan.micro:  # unreadable files were dropped: pad back to the batch shape (see pad_batch)
            images, labels, mask = pad_batch(images, labels, plan.micro, cfg.crop_size)
        if cfg.channels_last and cuda_path(device):
            images = images.contiguous(memory_format=torch.channels_last)
        last_micro = (micro + 1) % accum == 0
        # DDP: average gradients only on the last micro-batch of an accumulated step
        sync = model.no_sync() if (hasattr(model, "no_sync") and not last_micro) else contextlib.nullcontext()
        # a forward on placeholders alone must not move a batch-norm net's running statistics
        saved = [b.clone() for b in model.buffers()] if n == 0 else None
        with sync:
            with autocast():
                logits = model(images)
                if mask is None:
                    loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
                else:  # the mean over the readable images; the placeholders weigh 0 (0 when there are none)
                    per = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing, reduction="none")
                    loss = torch.where(mask, per, 0.0).sum() / max(n, 1)
            (loss / accum).backward()
        if saved is not None:
            with torch.no_grad():
                for b, v in zip(model.buffers(), saved):
                    b.copy_(v)
        loss = loss.detach()
        finite &= torch.isfinite(loss)
        window_loss += loss / accum
        loss_sum += loss / accum
        images_in_window += n
        micro += 1
        if not last_micro:
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps_run += 1
        window += 1
        prog.step_in_epoch += 1
        prog.global_step += 1
        if window >= cfg.log_every or prog.step_in_epoch == total:
            # the only host syncs of the loop: at log time
            if not bool(finite):
                raise NonFiniteLoss(f"non-finite loss at step {prog.global_step}")
            elapsed = time.perf_counter() - t0
            mean_loss = window_loss.item() / window
            lr = optimizer.param_groups[0]["lr"]
            ips = images_in_window * plan.world / max(elapsed, 1e-9)
            log.record("step", epoch=prog.epoch, step=prog.global_step, loss=mean_loss, lr=lr, images_per_s=ips)
            log.line(_progress_text(prog, total, mean_loss, lr, ips, (total - prog.step_in_epoch) * elapsed / window),
                     progress=True)  # fmt: skip
            window_loss.zero_()
            window, images_in_window, t0 = 0, 0, time.perf_counter()
            redraw_at = t0 + PROGRESS_SECONDS
        elif readout is not None and time.perf_counter() >= redraw_at:
            # a terminal's progress line: the loss copied a redraw ago (no wait), then a new copy queued
            now = time.perf_counter()
            redraw_at = now + PROGRESS_SECONDS
            shown = readout.poll()
            readout.request(window_loss / window)
            elapsed = now - t0
            ips = images_in_window * plan.world / max(elapsed, 1e-9)
            lr = optimizer.param_groups[0]["lr"]
            log.line(_progress_text(prog, total, shown, lr, ips, (total - prog.step_in_epoch) * elapsed / window),
                     progress=True)  # fmt: skip
        if cfg.checkpoint_every and prog.global_step % cfg.checkpoint_every == 0 and prog.step_in_epoch < total:
            if not bool(finite):
                raise NonFiniteLoss(f"non-finite loss at step {prog.global_step}")
            save_ckpt()
        if stop is not None and stop():
            break
        if cfg.max_steps and prog.global_step >= cfg.max_steps:
            break
    if not bool(finite):
        raise NonFiniteLoss(f"non-finite loss at step {prog.global_step}")
    return loss_sum.item() / max(steps_run, 1)


def _progress_text(prog: Progress, total: int, loss: float, lr: float, ips: float, eta: float) -> str:
    return (f"epoch {prog.epoch + 1} step {prog.step_in_epoch}/{total} loss {loss:.4f} lr {lr:.2e} "
            f"{ips:,.0f} img/s ETA {eta:.0f}s")  # fmt: skip


def make_val_loader(cfg: TrainConfig, dataset, d: Dist, workers: int, device: torch.device, kind: str = "cpu"):
    """The validation batches (this process's share, in order, fixed size but the last), made once per run.

    ``kind`` "gpu" (the training data path's choice, on CUDA): :class:`~vggnet.data.gpu.GPULoader` with the
    centre-crop transform, decoded by nvJPEG; "cpu": worker processes, pinned memory on CUDA.
    """
    n = len(dataset)
    idx = list(range(d.rank, n, d.world))
    bs = max(1, cfg.batch_size // (d.world * cfg.accum_steps))
    batches = [idx[i : i + bs] for i in range(0, len(idx), bs)]
    if kind == "gpu":
        from .data.gpu import GPULoader

        return GPULoader(dataset.samples, dataset.transform, batch_sampler=batches, device=device,
                         num_workers=min(workers, 8),
                         channels_last=cfg.channels_last and cuda_path(device))  # fmt: skip
    from .data import collate

    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
                                       pin_memory=device.type == "cuda",
                                       worker_init_fn=ignore_stop_signals if workers else None)  # fmt: skip


@torch.inference_mode()
def validate(model, dataset, cfg: TrainConfig, device, autocast, d: Dist, bad_files: set[str],
             loader=None) -> dict[str, float]:
    """Top-1 / top-5 error of one centre crop per validation image; shared across processes.

    ``model`` should be the uncompiled module: a compiled one would compile again for eval mode under
    inference_mode and again for the smaller last batch, for a few seconds of validation. ``loader``: from
    :func:`make_val_loader` (made here, on the CPU path, when None).
    """
    from .metrics import topk_correct

    model.eval()
    if loader is None:
        loader = make_val_loader(cfg, dataset, d, min(_workers(cfg, d), 4), device)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # images, top-1 correct, top-5 correct
    for images, labels, bad in loader:
        bad_files.update(bad)
        if images.shape[0] == 0:
            continue
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if cfg.channels_last and cuda_path(device):
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            scores = model(images).float()
        counts[0] += labels.numel()
        counts[1] += topk_correct(scores, labels, 1).sum()
        counts[2] += topk_correct(scores, labels, 5).sum()  # top-min(5, classes)
    if d.world > 1:
        dist.all_reduce(counts)
    total, c1, c5 = counts.tolist()
    total = max(total, 1.0)
    return {"val_top1_err": 1 - c1 / total, "val_top5_err": 1 - c5 / total, "val_images": int(total)}


def compile_model(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The training step's module: torch.compile'd on the CUDA path (``cfg.compile``; see :func:`cuda_path`), the
    module itself elsewhere.
    Only the training step runs it, always at one batch shape (see :func:`pad_batch`): one graph a run."""
    return torch.compile(model) if cuda_path(device) and cfg.compile else model


def setup_backends(cfg: TrainConfig, device_kind: str) -> None:
    """Determinism and the CUDA math settings; before any CUDA work."""
    cuda = device_kind == "cuda"
    if cfg.deterministic:
        if cuda:  # cuBLAS is deterministic only with a fixed workspace; torch refuses CUDA matmuls without one
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if cuda:
        torch.backends.cudnn.benchmark = not cfg.deterministic  # autotuning may pick another algorithm each run
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# ---- the run ------------------------------------------------------------------------------------------------


def new_run_dir(root: Path = Path("runs")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    return root / f"{max(taken, default=0) + 1:03d}"


def _broadcast_path(path: Path | None, d: Dist) -> Path:
    if d.world == 1:
        return path
    box = [str(path) if d.main else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def _check_same_input(src: Path, cfg: TrainConfig) -> None:
    """--init-from a run: the new run must feed its net the same kind of input (normalisation and pixel range)."""
    source = from_dict(read_toml(src / runs.CONFIG_FILE))  # a run saved before pixel_range reads as [0, 1]
    mine = {"normalize": cfg.normalize, "pixel_range": cfg.pixel_range}
    theirs = {"normalize": source.normalize, "pixel_range": source.pixel_range}
    if mine["normalize"] != theirs["normalize"] or (mine["normalize"] == "mean" and mine != theirs):
        raise ValueError(
            f"--init-from {src}: that run fed its net {theirs} but this one would feed {mine}; the weights expect "
            f"their own input, so pass --normalize {theirs['normalize']} --pixel-range {theirs['pixel_range']}"
        )


def _input_for_released_weights(cfg: TrainConfig) -> TrainConfig:
    """--init-from a named source: feed the net what those weights expect (decided before config.toml is
    written, so that a restart and `vgg eval` see it). torchvision's and timm's nets take ImageNet's mean and
    std; the authors' Caffe weights are folded to take [0, 1] pixels minus the mean (vggnet.pretrained)."""
    from .pretrained import convention

    kind = convention(cfg.init_from)
    if kind == "imagenet" and cfg.normalize != "imagenet":
        print(f"--init-from {cfg.init_from}: normalising with ImageNet's mean and std, as those weights expect")
        return dataclasses.replace(cfg, normalize="imagenet")
    if kind == "caffe" and (cfg.normalize, cfg.pixel_range) != ("mean", 1):
        print(f"--init-from {cfg.init_from}: the folded Caffe weights take [0, 1] pixels minus the mean RGB")
        return dataclasses.replace(cfg, normalize="mean", pixel_range=1)
    return cfg


def _init_from(model: nn.Module, source: str, log: Logger, cfg: TrainConfig) -> None:
    """--init-from: net A's four convs + three FCs into a deeper net (the paper), or the whole net (fine-tune)."""
    from .weights import init_from_net_a
    from .weights import load_weights

    src = Path(source)
    if not src.exists():  # a URL or a named source (torchvision:vgg16, timm:..., caffe:vgg16)
        from .pretrained import init_from_pretrained

        log.line(init_from_pretrained(model, source))
        return
    weights = src / runs.MODEL_FILE if src.is_dir() else src
    if src.is_dir() and (src / runs.CONFIG_FILE).is_file():
        _check_same_input(src, cfg)
    sd, meta = read_state_dict(weights)
    src_config = json.loads(meta["vggnet.arch"])["config"] if "vggnet.arch" in meta else None
    ours = unwrap(model)
    if src_config == "A" and ours.arch["config"] != "A":
        copied = init_from_net_a(ours, sd)
        log.line(f"init from net A ({weights}): copied {', '.join(copied)}")
    else:
        load_weights(ours, weights)
        log.line(f"init from {weights}: all layers")


def _plan(config: TrainConfig | dict[str, Any] | None, resume: str | os.PathLike | None):
    """Which run folder, with which config, from which checkpoint: (cfg, run or None, ckpt, explicit lr, restart).

    ``--resume RUN`` continues the newest valid checkpoint, or starts RUN again from step 0 with its
    config.toml when it has none yet. A new run's command pointing (``--out``) at a folder that already holds a
    run does the same, so one command line restarts a pre-empted job wherever it died. Either way a changed
    key that a resumed run cannot take (see ``config.SAFE_ON_RESUME``) is refused, naming the keys.
    """
    rank0 = is_main()
    if resume is not None:
        run = Path(resume)
        if not run.is_dir():
            raise FileNotFoundError(f"--resume {run}: no such run folder")
        given = config.to_dict() if isinstance(config, TrainConfig) else dict(config or {})
        what = "--resume with these options"
    else:
        cfg = config if isinstance(config, TrainConfig) else resolve(config)
        run = Path(cfg.out) if cfg.out else None
        if run is None or not (run / runs.CONFIG_FILE).is_file():
            return cfg, run, None, False, False
        given = cfg.to_dict()
        what = "this command"
    toml_path = run / runs.CONFIG_FILE
    file_cfg = from_dict(read_toml(toml_path)).to_dict() if toml_path.is_file() else None
    found, ckpt = newest_valid_checkpoint(run, rename_bad=rank0)
    if ckpt is not None:
        saved = from_dict(ckpt["config"]).to_dict()
        if file_cfg is not None:  # config.toml edited by hand since the checkpoint: the same rules as flags
            edits = config_changes(saved, file_cfg)
            refuse_unsafe_changes(edits, f"{toml_path} (edited since the checkpoint)", run)
            saved.update({k: new for k, (_, new) in edits.items()})
    elif file_cfg is not None:
        saved = file_cfg
    else:
        raise FileNotFoundError(
            f"{run} holds no run to resume (no config.toml, no checkpoint); start it with `vgg train --out {run}`"
        )
    changes = config_changes(saved, given)
    changes.pop("out", None)
    refuse_unsafe_changes(changes, what, run)
    explicit = given if resume is not None else {k: new for k, (_, new) in changes.items()}
    explicit.pop("out", None)
    cfg = from_dict(dict(saved, **explicit, out=str(run)))
    return cfg, run, ckpt, "lr" in explicit, ckpt is None


class _StopRequest:
    """Ctrl-C / SIGTERM during training: remembered, and acted on at the next optimizer step (or at once
    during a one-process validation, which changes no state); a second signal stops at once."""

    def __init__(self) -> None:
        self.signum = 0
        self.immediate = False

    def __call__(self, signum, _frame) -> None:
        again = bool(self.signum)
        self.signum = self.signum or signum
        if again or self.immediate:
            raise KeyboardInterrupt


def train(config: TrainConfig | dict[str, Any], resume: str | os.PathLike | None = None) -> Path:
    """Train a VGG net with the paper's recipe; return the run folder.

    ``config`` is a TrainConfig or a dict of its fields (resolved with the data set's preset).
    ``resume``: a run folder whose newest valid checkpoint is continued exactly (or which starts again from
    step 0 when it has none yet); its saved config is used, with the keys of a ``config`` dict (for example a
    larger ``epochs``) applied over it when they are safe to change (``config.SAFE_ON_RESUME``).
    A new run whose ``out`` folder already holds a run with the same config continues it the same way.

    Raises:
        Interrupted: Ctrl-C or SIGTERM stopped training, after saving a checkpoint.
        NonFiniteLoss: the loss became NaN or infinite; the message names the checkpoint to continue from.
    """
    cfg, run, ckpt, explicit_lr, restart = _plan(config, resume)

    if cfg.init_from and ckpt is None and not restart:
        cfg = _input_for_released_weights(cfg)
    device_kind = "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    setup_backends(cfg, device_kind)
    d = setup_distributed(device_kind)
    device = pick_device(cfg.device, d)
    if run is None:
        run = new_run_dir() if d.main else None
    run = _broadcast_path(run, d)
    created = d.main and not run.exists()
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run)
        _trim_metrics(run, ckpt["global_step"] if ckpt is not None else 0)
        import tomli_w  # the resolved config first: a run killed in its statistics pass restarts from it

        atomic_write(run / runs.CONFIG_FILE, lambda tmp: Path(tmp).write_text(tomli_w.dumps(cfg.to_dict())))
    if d.world > 1:
        dist.barrier()
    started: list[bool] = []
    try:
        return _train(cfg, run, ckpt, explicit_lr, restart, d, device, started)
    except BaseException:
        if created and not started:  # a start that failed (bad data, no memory, ...) leaves no runs/NNN behind
            shutil.rmtree(run, ignore_errors=True)
        raise


def _train(cfg: TrainConfig, run: Path, ckpt, explicit_lr: bool, restart: bool, d: Dist, device,
           started: list[bool]) -> Path:
    torch.manual_seed(cfg.seed + d.rank)  # per-rank seed offset: dropout masks differ across processes
    np.random.seed((cfg.seed + d.rank) % 2**32)
    random.seed(cfg.seed + d.rank)
    cuda = device.type == "cuda"
    log = Logger(run, d.main, cfg.tensorboard)
    try:
        from .data import Stats

        stats = Stats.load(run / runs.STATS_FILE) if ckpt is not None else None
        train_set, val_set, classes, stats = build_data(cfg, d, stats)

        model = create_model(
            cfg.arch, num_classes=len(classes), width=cfg.width, fc_width=cfg.fc_width, crop_size=cfg.crop_size,
            dropout=cfg.dropout, batch_norm=cfg.batch_norm or None,  # None: as the name says (vgg16_bn)
            init=cfg.init, seed=cfg.seed,
        )  # fmt: skip
        if cfg.init_from and ckpt is None:
            if d.world > 1 and not Path(cfg.init_from).exists():
                # a download: rank 0 fetches it first, so that ranks sharing its cache read that file rather than
                # all downloading at once (downloads are atomic either way)
                from .pretrained import resolve as resolve_weights

                if d.main:
                    resolve_weights(cfg.init_from)
                dist.barrier()
            _init_from(model, cfg.init_from, log, cfg)
        # the weights file carries the input convention it was trained with (vggnet.pretrained): `vgg eval
        # --weights` and create_model(pretrained=...) then need no run folder
        norm, divide_std = runs.normalization(stats, cfg.normalize, cfg.pixel_range)
        model.pretrained_cfg = make_cfg(
            tuple(norm.mean), tuple(norm.std) if divide_std else (1.0, 1.0, 1.0), source=str(run),
            num_classes=len(classes), classes=list(classes), resize=(cfg.scale_min + cfg.scale_max) // 2,
            crop=cfg.crop_size,
        )  # fmt: skip
        model.to(device)
        if cuda_path(device) and cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        fused = cuda_path(device) and cfg.fused
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, fused=fused or None)  # fmt: skip
        plateau = Plateau(cfg.lr, cfg.lr_patience, cfg.lr_threshold, cfg.lr_decays)
        start_epoch, prog = 0, Progress(0, 0, 0)
        if ckpt is not None:
            unwrap(model).load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            plateau.load_state_dict(ckpt["plateau"])
            # the schedule's knobs may change on resume; an explicit learning rate replaces its current one
            plateau.patience, plateau.threshold, plateau.max_decays = cfg.lr_patience, cfg.lr_threshold, cfg.lr_decays
            if explicit_lr:
                plateau.lr = cfg.lr
            prog = Progress(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"],
                            *ckpt.get("epoch_loss", (0.0, 0)))  # fmt: skip
            start_epoch = ckpt["epoch"]
            _set_rng_state(ckpt["rng"])
            log.line(f"resuming {run} at epoch {prog.epoch + 1}, step {prog.step_in_epoch} ({prog.global_step} in all)")
        else:
            if restart:
                log.line(f"{run} has no checkpoint yet: starting it again from step 0")
            if d.main:
                stats.save(run / runs.STATS_FILE)
                atomic_write(run / runs.CLASSES_FILE, lambda tmp: Path(tmp).write_text(json.dumps(classes)))
    except BaseException:
        log.close()
        raise

    net = compile_model(model, cfg, device)  # before DDP wrapping; checkpoints save the unwrapped module
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    amp = cuda_path(device) and cfg.amp

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    plan = BatchPlan(len(train_set), cfg.batch_size, d.world, d.rank, cfg.accum_steps, cfg.seed)
    loader, loader_kind = make_train_loader(cfg, train_set, plan, _workers(cfg, d), device)
    val_loader = make_val_loader(cfg, val_set, d, _workers(cfg, d), device, loader_kind)
    bad_files: set[str] = set()
    reported: set[str] = set()

    def save_ckpt(rng: dict[str, Any] | None = None) -> Path | None:
        if not d.main:
            return None
        path = save_checkpoint(run, model, optimizer, plateau, cfg, prog.epoch, prog.step_in_epoch, prog.global_step,
                               cfg.keep_checkpoints, rng=rng,
                               epoch_loss=(prog.epoch_loss_sum, prog.epoch_loss_steps))  # fmt: skip
        _write_bad_files(run, bad_files)
        return path

    request = _StopRequest()
    # the processes agree on stopping (a max over them) so they stop at the same step; a CPU flag, over gloo
    stop_group = None
    if d.world > 1:
        stop_group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def stop() -> bool:
        flag = torch.tensor([request.signum], dtype=torch.int64)
        if d.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=stop_group)
            request.signum = request.signum or int(flag)
        return bool(flag)

    n_params = sum(p.numel() for p in model.parameters())
    log.line(
        f"run {run}: {unwrap(model).name} ({n_params / 1e6:.2f}M parameters, {len(classes)} classes), "
        f"{len(train_set)} train / {len(val_set)} val images, S in [{cfg.scale_min}, {cfg.scale_max}], "
        f"crop {cfg.crop_size}, batch {cfg.batch_size} on {d.world} x {device}"
        + (" (bf16, channels-last, compiled)" if cuda_path(device) and cfg.amp and cfg.compile else "")
        + f", {loader_kind} data path"
    )
    started.append(True)
    t_start = time.perf_counter()
    saved_at: Path | None = None
    interrupted = False
    # Ctrl-C and SIGTERM (Slurm's pre-emption, torchrun's shutdown): finish the optimizer step under way, save
    # a checkpoint of that exact state, then exit; resuming gives the same weights as an uninterrupted run
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if stop():  # a signal during the previous epoch's bookkeeping
                saved_at, interrupted = save_ckpt(), True
                break
            if plateau.done or (cfg.max_steps and prog.global_step >= cfg.max_steps):
                break
            if prog.epoch != epoch:
                prog.epoch, prog.step_in_epoch = epoch, 0
                prog.epoch_loss_sum, prog.epoch_loss_steps = 0.0, 0
            for group in optimizer.param_groups:
                group["lr"] = plateau.lr
            plan.set_epoch(epoch, prog.step_in_epoch)
            t_epoch = time.perf_counter()
            first = prog.step_in_epoch
            train_loss = train_one_epoch(net, loader, optimizer, cfg, plan, prog, device, autocast, log, bad_files,
                                         save_ckpt, stop)  # fmt: skip
            prog.epoch_loss_sum += train_loss * (prog.step_in_epoch - first)
            prog.epoch_loss_steps += prog.step_in_epoch - first
            if stop():  # asked again: every process must take the same branch
                saved_at, interrupted = save_ckpt(), True
                break
            if prog.step_in_epoch < plan.steps_per_epoch:  # stopped by max_steps inside the epoch
                save_ckpt()
                break
            # a one-process validation changes no state: a signal stops it at once, and the checkpoint takes
            # the RNG state from before it (validation's loader draws its seed from the global RNG)
            rng_before = _rng_state()
            request.immediate = d.world == 1
            try:
                metrics = validate(model, val_set, cfg, device, autocast, d, bad_files, val_loader)  # uncompiled
            except KeyboardInterrupt:
                request.signum = request.signum or signal.SIGINT
                saved_at, interrupted = save_ckpt(rng=rng_before), True
                break
            finally:
                request.immediate = False
            plateau.step(metrics["val_top1_err"])
            if bad_files - reported:
                new = sorted(bad_files - reported)
                reported.update(new)
                log.line(f"skipped {len(new)} unreadable image(s), listed in {run / 'bad_files.txt'}: "
                         f"{', '.join(new[:3])}{' ...' if len(new) > 3 else ''}")  # fmt: skip
            train_loss = prog.epoch_loss_sum / max(prog.epoch_loss_steps, 1)
            prog.epoch, prog.step_in_epoch = epoch + 1, 0
            prog.epoch_loss_sum, prog.epoch_loss_steps = 0.0, 0
            record = dict(epoch=epoch + 1, step=prog.global_step, train_loss=train_loss, lr=optimizer.param_groups[0]["lr"],
                          epoch_time_s=time.perf_counter() - t_epoch, peak_mem_mb=peak_memory_mb(device),
                          **metrics)  # fmt: skip
            log.record("epoch", **record)
            log.line(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}, val top-1 err "
                f"{metrics['val_top1_err']:.2%}, lr {record['lr']:.1e}, {record['epoch_time_s']:.0f}s"
                + (f", lr -> {plateau.lr:.1e}" if plateau.lr != record["lr"] else "")
            )
            if d.main:
                save_weights(model, run / runs.MODEL_FILE)
                save_ckpt()
                from .plots import plot_run

                with contextlib.suppress(Exception):  # a plotting problem never stops training
                    plot_run(run)
    except KeyboardInterrupt:  # a second signal: stop at once, without a checkpoint of this moment
        request.signum = request.signum or signal.SIGINT
        saved_at, interrupted = None, True
    except NonFiniteLoss as e:
        last = latest_checkpoint(run)
        lr = optimizer.param_groups[0]["lr"]
        where = (f"nothing after the last good checkpoint {last} was kept" if last is not None
                 else "no checkpoint had been written yet")  # fmt: skip
        raise NonFiniteLoss(
            f"{e} (epoch {prog.epoch + 1}): training stopped and {where}. The learning rate {lr:g} is too high "
            f"for this net and data (or --init draws too large weights): continue with a lower one, "
            f"`vgg train --resume {run} --lr {lr / 10:g}`{' (it starts again from step 0)' if last is None else ''}, "
            f"or check the images"
        ) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_workers(loader)
        log.close()
        if d.main:
            _write_bad_files(run, bad_files)
    if interrupted:
        name = signal.Signals(request.signum).name
        if saved_at is not None or not d.main:
            msg = (f"{name}: stopped at step {prog.global_step} and saved {saved_at or 'a checkpoint'}; "
                   f"continue with `vgg train --resume {run}`")  # fmt: skip
        else:
            last = latest_checkpoint(run)
            msg = (f"{name} twice: stopped without saving this step; `vgg train --resume {run}` continues from "
                   f"{last if last is not None else 'step 0 (no checkpoint yet)'}")  # fmt: skip
        raise Interrupted(msg, request.signum)
    if d.main:
        log.line(f"done in {time.perf_counter() - t_start:.0f}s: {run}" + _fallbacks(loader, val_loader))
    return run


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: the CUDA allocator's peak on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _fallbacks(*loaders) -> str:
    """The GPU data path's decoding fallbacks over the run (this process's share), for the summary line."""
    from .data.gpu import fallback_summary

    counts = sum((getattr(loader, "counts", Counter()) for loader in loaders), Counter())
    text = fallback_summary(counts)
    return f"; GPU data path: {text}" if text else ""


def _write_bad_files(run: Path, bad: set[str]) -> None:
    if bad:
        atomic_write(run / "bad_files.txt", lambda tmp: Path(tmp).write_text("\n".join(sorted(bad)) + "\n"))
