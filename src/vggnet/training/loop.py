"""One epoch of SGD and one validation pass: the inner loops of the paper's recipe (section 3.1).

Host synchronisations: only every ``log_every`` steps, at the end of the epoch and at checkpoints (the loss
read back, the finiteness check). A terminal's progress bar in between is redrawn about once a second from a loss
copied asynchronously (:class:`~vggnet.training.progress.HostCopy`), so a run on a terminal syncs no more than a
redirected one.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..metrics import topk_correct
from ..runtime import Dist, cuda_path
from .loaders import loader_workers, make_val_loader
from .progress import HostCopy, Logger, Progress
from .schedule import BatchPlan

# A terminal's progress bar is redrawn about this often (seconds), from a loss copied to the host without waiting.
PROGRESS_SECONDS = 1.0


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite; the message says what to change and where to continue from."""


def pad_batch(images: torch.Tensor, labels: torch.Tensor, size: int, crop: int):
    """A micro-batch of exactly ``size`` images: the n readable ones, then copies of them (zeros when none is
    readable), and a mask of the n real ones; (images, labels, mask). ``labels`` are the task's targets, one
    row per image (class labels, or a localisation net's label and box).

    Dropped unreadable files shrink a batch; a fixed shape keeps a compiled step from recompiling (forward and
    backward, tens of seconds on a GPU), and a forward on placeholders keeps a process whose micro-batch was
    all unreadable in DDP's all-reduce (without one, the other processes wait until the watchdog kills the
    job). The placeholders' loss weighs 0. Copies rather than zeros, so that a batch-norm net's batch statistics
    stay close to those of the real images. No host synchronisation.
    """
    n, device = images.shape[0], images.device
    if n == 0:
        images = torch.zeros(size, 3, crop, crop, device=device)
        labels = torch.zeros(size, *labels.shape[1:], dtype=labels.dtype, device=device)
    else:
        idx = torch.arange(size, device=device) % n
        images, labels = images[idx], labels[idx]
    return images, labels, torch.arange(size, device=device) < n


def cross_entropy_loss(out: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, reduction: str = "mean"):
    """Classification's loss: the soft-max cross-entropy (with ``--label-smoothing``); "none": one per image."""
    return F.cross_entropy(out, labels, label_smoothing=cfg.label_smoothing, reduction=reduction)


def forward_backward(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    plan: BatchPlan,
    device,
    autocast,
    last_micro: bool,
    loss_fn=cross_entropy_loss,
) -> torch.Tensor:
    """One micro-batch: forward, loss, backward (gradients summed over the accumulation steps); returns the loss.

    ``loss_fn(output, labels, cfg, reduction)``: the task's loss (:mod:`.task`), classification's by default.

    DDP averages the gradients only on the last micro-batch of an optimizer step. A micro-batch short of
    unreadable files is padded back to the batch shape (:func:`pad_batch`); one with none readable leaves a
    batch-norm net's running statistics as they were.
    """
    n = images.shape[0]
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    mask = None
    if n < plan.micro:  # unreadable files were dropped: pad back to the batch shape (see pad_batch)
        images, labels, mask = pad_batch(images, labels, plan.micro, cfg.crop_size)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    sync = model.no_sync() if (hasattr(model, "no_sync") and not last_micro) else contextlib.nullcontext()
    # a forward on placeholders alone must not move a batch-norm net's running statistics
    saved = [b.clone() for b in model.buffers()] if n == 0 else None
    with sync:
        with autocast():
            out = model(images)
            if mask is None:
                loss = loss_fn(out, labels, cfg)
            else:  # the mean over the readable images; the placeholders weigh 0 (0 when there are none)
                loss = torch.where(mask, loss_fn(out, labels, cfg, "none"), 0.0).sum() / max(n, 1)
        (loss / cfg.accum_steps).backward()
    if saved is not None:
        with torch.no_grad():
            for b, v in zip(model.buffers(), saved):
                b.copy_(v)
    return loss.detach()


class _Window:
    """The steps since the last log line: their summed loss (on the device), count, images and start time."""

    def __init__(self, device) -> None:
        self.loss = torch.zeros((), device=device)
        self.steps, self.images, self.t0 = 0, 0, time.perf_counter()

    def reset(self) -> None:
        self.loss.zero_()
        self.steps, self.images, self.t0 = 0, 0, time.perf_counter()

    def rates(self, world: int, steps_left: int) -> tuple[float, float]:
        """(images/s over all processes, seconds left in the epoch at this pace)."""
        elapsed = time.perf_counter() - self.t0
        return self.images * world / max(elapsed, 1e-9), steps_left * elapsed / max(self.steps, 1)


def train_one_epoch(
    model,
    loader,
    optimizer,
    cfg: TrainConfig,
    plan: BatchPlan,
    prog: Progress,
    device,
    autocast,
    log: Logger,
    bad_files: set[str],
    save_ckpt,
    stop=None,
    task=None,
) -> float:
    """Run the rest of one epoch; return the mean training loss of the steps run.

    ``task`` (:mod:`.task`; classification when None) gives the loss and what train mode means for its net.

    The steps' losses are added to ``prog``'s running sums of the epoch (``epoch_loss_sum``, ``epoch_loss_steps``)
    before each mid-epoch checkpoint and at the end, so that a checkpoint carries them and a resumed epoch logs
    the loss of all its steps, as an uninterrupted one does.
    ``stop()`` is asked after every optimizer step: True (Ctrl-C or SIGTERM arrived) ends the epoch there, at a
    step boundary, so a checkpoint holds exactly the state of an uninterrupted run after that step.
    """
    loss_fn = _enter_training(model, cfg, task)
    loss_sum = torch.zeros((), device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    window = _Window(device)
    steps_run, micro, total = 0, 0, plan.steps_per_epoch
    banked, start_sum = 0, prog.epoch_loss_sum  # steps of this call already in prog's sums; the sum before them
    readout = HostCopy(device) if log.tty else None
    redraw_at = window.t0 + PROGRESS_SECONDS
    for images, labels, bad in loader:
        bad_files.update(bad)
        last_micro = (micro + 1) % cfg.accum_steps == 0
        loss = forward_backward(model, images, labels, cfg, plan, device, autocast, last_micro, loss_fn)
        finite &= torch.isfinite(loss)
        window.loss += loss / cfg.accum_steps
        loss_sum += loss / cfg.accum_steps
        window.images += images.shape[0]
        micro += 1
        if not last_micro:
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps_run += 1
        window.steps += 1
        prog.step_in_epoch += 1
        prog.global_step += 1
        if window.steps >= cfg.log_every or prog.step_in_epoch == total:
            _log_window(window, finite, optimizer, plan, prog, log)  # the only host syncs of the loop
            redraw_at = window.t0 + PROGRESS_SECONDS
        elif readout is not None and time.perf_counter() >= redraw_at:
            redraw_at = _redraw(readout, window, optimizer, plan, prog, log)
        if cfg.checkpoint_every and prog.global_step % cfg.checkpoint_every == 0 and prog.step_in_epoch < total:
            _check_finite(finite, prog)
            _bank(prog, loss_sum, steps_run - banked)
            banked = steps_run
            save_ckpt()
        if stop is not None and stop():
            break
        if cfg.max_steps and prog.global_step >= cfg.max_steps:
            break
    _check_finite(finite, prog)
    _bank(prog, loss_sum, steps_run - banked)
    return (prog.epoch_loss_sum - start_sum) / max(steps_run, 1)


def _enter_training(model, cfg: TrainConfig, task) -> Any:
    """Put the net in train mode as its task wants (frozen batch norm stays in eval mode); return the task's loss."""
    if task is None:
        model.train()
        return cross_entropy_loss
    task.train_mode(model, cfg)
    return task.loss


def _redraw(readout: HostCopy, window: _Window, optimizer, plan: BatchPlan, prog: Progress, log: Logger) -> float:
    """A terminal's progress bar: the loss copied a redraw ago (no wait), then a new copy queued; returns the
    time of the next redraw."""
    shown = readout.poll()
    readout.request(window.loss / window.steps)
    ips, eta = window.rates(plan.world, plan.steps_per_epoch - prog.step_in_epoch)
    log.progress(prog, plan.steps_per_epoch, shown, optimizer.param_groups[0]["lr"], ips, eta)
    return time.perf_counter() + PROGRESS_SECONDS


def _bank(prog: Progress, loss_sum: torch.Tensor, steps: int) -> None:
    """Move the device-side loss sum of ``steps`` steps into the epoch's running sums (a host sync)."""
    prog.epoch_loss_sum += loss_sum.item()
    prog.epoch_loss_steps += steps
    loss_sum.zero_()


def _check_finite(finite: torch.Tensor, prog: Progress) -> None:
    if not bool(finite):  # a host sync: only at log steps, checkpoints and the end of the epoch
        raise NonFiniteLoss(f"non-finite loss at step {prog.global_step}")


def _log_window(window: _Window, finite: torch.Tensor, optimizer, plan: BatchPlan, prog: Progress, log: Logger) -> None:
    """A log step: check the loss is finite, record the window's mean loss, rate and lr, start a new window."""
    _check_finite(finite, prog)
    mean_loss = window.loss.item() / window.steps
    lr = optimizer.param_groups[0]["lr"]
    ips, eta = window.rates(plan.world, plan.steps_per_epoch - prog.step_in_epoch)
    log.record("step", epoch=prog.epoch, step=prog.global_step, loss=mean_loss, lr=lr, images_per_s=ips)
    log.progress(prog, plan.steps_per_epoch, mean_loss, lr, ips, eta)
    window.reset()


@torch.inference_mode()
def validate(
    model, dataset, cfg: TrainConfig, device, autocast, d: Dist, bad_files: set[str], loader=None
) -> dict[str, float]:
    """Top-1 / top-5 error of one centre crop per validation image; shared across processes.

    ``model`` should be the uncompiled module: a compiled one would compile again for eval mode under
    inference_mode and again for the smaller last batch, for a few seconds of validation. ``loader``: from
    :func:`make_val_loader` (made here, on the CPU path, when None).
    """
    model.eval()
    if loader is None:
        loader = make_val_loader(cfg, dataset, d, min(loader_workers(cfg, d), 4), device)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # images, top-1 correct, top-5 correct
    for images, labels, bad in loader:
        bad_files.update(bad)
        if images.shape[0] == 0:
            continue
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if cfg.channels_last:
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


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: the CUDA allocator's peak on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


__all__ = [
    "NonFiniteLoss",
    "PROGRESS_SECONDS",
    "compile_model",
    "cross_entropy_loss",
    "forward_backward",
    "pad_batch",
    "peak_memory_mb",
    "setup_backends",
    "train_one_epoch",
    "validate",
]
