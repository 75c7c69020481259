"""A training run: its folder, its config, where it starts from, and the epoch loop under the plateau schedule.

``train(config)`` decides the run (:func:`plan_run`: a new folder, or the same folder continued from its newest
valid checkpoint), sets up the device and the process group, builds the data, the net and the optimizer
(:func:`_build`), then runs epochs (:func:`_epochs`) until the schedule's last plateau, ``epochs`` or
``max_steps``. Ctrl-C and SIGTERM finish the optimizer step under way and save a checkpoint of that state.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import runs
from ..config import (
    TrainConfig,
)
from ..data import Stats
from ..files import RunInUse, RunLock
from ..plots import plot_run
from ..runtime import Dist, cuda_path, is_main, pick_device, setup_distributed
from ..weights import save_weights, unwrap
from .checkpoints import (
    latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_bad_files,
)
from .finetune import param_groups
from .loaders import fallback_note, loader_workers, make_train_loader, make_val_loader, stop_workers
from .loop import NonFiniteLoss, compile_model, peak_memory_mb, setup_backends, train_one_epoch
from .progress import Logger, Progress
from .schedule import BatchPlan, Plateau
from .setup import (
    broadcast_path,
    check_out_apart,
    claim_run_dir,
    epochs_logged,
    folder_entries,
    input_for_released_weights,
    named_folder,
    open_folder,
    plan_run,
    restore_folder,
    trained_without_checkpoint,
)
from .task import CLASSIFICATION, Classification


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was saved; ``signum`` is the signal's number."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


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


def train(
    config: TrainConfig | dict[str, Any], resume: str | os.PathLike | None = None, task: Classification | None = None
) -> Path:
    """Train a VGG net with the paper's recipe; return the run folder.

    ``config`` is a TrainConfig or a dict of its fields (resolved with the data set's preset).
    ``resume``: a run folder whose newest valid checkpoint is continued exactly (or which starts again from
    step 0 when it has none yet); its saved config is used, with the keys of a ``config`` dict (for example a
    larger ``epochs``) applied over it when they are safe to change (``config.SAFE_ON_RESUME``).
    A new run whose ``out`` folder already holds a run with the same config continues it the same way.
    ``task``: what is trained (:mod:`.task`): classification by default; localisation plugs in its own data,
    net, loss and validation and gets the same run folder, resume, progress and DDP.

    Raises:
        Interrupted: Ctrl-C or SIGTERM stopped training, after saving a checkpoint.
        NonFiniteLoss: the loss became NaN or infinite; the message names the checkpoint to continue from.
    """
    task = task or CLASSIFICATION
    named = named_folder(config, resume)
    before = folder_entries(named)  # what a pre-existing folder held: a failed start leaves it so
    # one writer per run folder, taken before anything in it is read: a second `vgg train` is refused at once
    lock = RunLock(named, task.command) if is_main() and named is not None and named.is_dir() else None
    started: list[bool] = []
    run = named
    try:
        cfg, run, ckpt, explicit_lr, restart = plan_run(config, resume, task)
        if run is not None:
            check_out_apart(cfg, run)
        if restart and run is not None and (run / runs.MODEL_FILE).is_file() and trained_without_checkpoint(run, cfg):
            if is_main():
                print(
                    f"{run} is finished ({epochs_logged(run)} epochs) and has no checkpoint: nothing to train; its "
                    f"weights are kept as they are",
                    flush=True,
                )
            return run
        if cfg.init_from and ckpt is None and not restart:
            cfg = input_for_released_weights(cfg)
        device_kind = (
            "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        )
        setup_backends(cfg, device_kind)
        d = setup_distributed(device_kind)
        device = pick_device(cfg.device, d)
        if run is None:
            run = claim_run_dir(task.runs_root) if d.main else None
        run = broadcast_path(run, d)
        if d.main:
            check_out_apart(cfg, run)
            lock = lock or RunLock(run, task.command)
            open_folder(run, cfg, ckpt)
        if d.world > 1:
            dist.barrier()
        r = _build(cfg, task, run, ckpt, explicit_lr, restart, d, device)
        _start(r)
        started.append(True)
        return _epochs(r)
    except BaseException as e:
        if not started and is_main() and run is not None and not isinstance(e, RunInUse):
            # a failed start leaves no trace but the task's account of why (localisation's bad_boxes.txt)
            restore_folder(run, before if run == named else None, task.failure_files)
        raise
    finally:
        if lock is not None:
            lock.release()


@dataclass
class _Run:
    """Everything the epoch loop of one run works with."""

    cfg: TrainConfig
    task: Classification
    run: Path
    d: Dist
    device: torch.device
    log: Logger
    model: nn.Module  # the plain module: checkpoints, weights and validation use it
    optimizer: torch.optim.Optimizer
    plateau: Plateau
    prog: Progress
    start_epoch: int
    train_set: Any
    val_set: Any
    classes: list[str]
    net: nn.Module | None = None  # what the training step runs: compiled and DDP-wrapped as configured
    plan: BatchPlan | None = None
    loader: Any = None
    val_loader: Any = None
    loader_kind: str = "cpu"
    bad_files: set[str] = field(default_factory=set)
    reported: set[str] = field(default_factory=set)
    request: _StopRequest = field(default_factory=_StopRequest)
    stop_group: Any = None
    saved_at: Path | None = None  # the checkpoint written when a signal stopped the run

    def autocast(self) -> Any:
        amp = cuda_path(self.device) and self.cfg.amp
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()

    def save_ckpt(self, rng: dict[str, Any] | None = None) -> Path | None:
        if not self.d.main:
            return None
        p = self.prog
        path = save_checkpoint(
            self.run,
            self.model,
            self.optimizer,
            self.plateau,
            self.cfg,
            p.epoch,
            p.step_in_epoch,
            p.global_step,
            self.cfg.keep_checkpoints,
            rng=rng,
            epoch_loss=(p.epoch_loss_sum, p.epoch_loss_steps),
        )
        write_bad_files(self.run, self.bad_files)
        return path

    def stop(self) -> bool:
        """Whether a stop signal arrived, agreed over the processes (a max) so they stop at the same step."""
        flag = torch.tensor([self.request.signum], dtype=torch.int64)
        if self.d.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.stop_group)
            self.request.signum = self.request.signum or int(flag)
        return bool(flag)


def _build(
    cfg: TrainConfig,
    task: Classification,
    run: Path,
    ckpt,
    explicit_lr: bool,
    restart: bool,
    d: Dist,
    device,
) -> _Run:
    """The data, the net (initialised, or from the checkpoint), the optimizer and the schedule of a run, and its
    log (closed again if the build fails)."""
    torch.manual_seed(cfg.seed + d.rank)  # per-rank seed offset: dropout masks differ across processes
    np.random.seed((cfg.seed + d.rank) % 2**32)
    random.seed(cfg.seed + d.rank)
    log = Logger(run, d.main, cfg.tensorboard)
    try:
        return _build_run(cfg, task, run, ckpt, explicit_lr, restart, d, device, log)
    except BaseException:
        log.close()
        raise


def _build_run(cfg, task, run, ckpt, explicit_lr, restart, d, device, log: Logger) -> _Run:
    """_build's work once the log is open: the arguments are _build's."""
    stats = Stats.load(run / runs.STATS_FILE) if ckpt is not None else None
    if stats is not None and not all(math.isfinite(v) for v in (*stats.mean, *stats.std)):
        raise ValueError(
            f"{run / runs.STATS_FILE} holds a mean {list(stats.mean)} / std {list(stats.std)} that is not "
            f"finite; restore it from a copy of the run (it is the training set's statistics)"
        )
    train_set, val_set, classes, stats = task.build_data(cfg, d, stats, run)
    model = task.make_model(cfg, classes, stats, run, d, log, fresh=ckpt is None)
    model.to(device)
    if cfg.channels_last:  # on the CPU too: oneDNN's convs are faster on it (half the time of net E at 1/16 width)
        model = model.to(memory_format=torch.channels_last)
    # frozen layers (--freeze) are not in the optimizer; fc8 has its own group at --head-lr-mult x lr
    fused = (cuda_path(device) and cfg.fused) or None
    optimizer = torch.optim.SGD(
        param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
    )
    plateau = Plateau(cfg.lr, cfg.lr_patience, cfg.lr_threshold, cfg.lr_decays, cfg.plateau, cfg.lr_window)
    r = _Run(
        cfg, task, run, d, device, log, model, optimizer, plateau, Progress(0, 0, 0), 0, train_set, val_set, classes
    )
    if ckpt is not None:
        _restore(r, ckpt, explicit_lr)
        log.line(
            f"resuming {run} at epoch {r.prog.epoch + 1}, step {r.prog.step_in_epoch} ({r.prog.global_step} in all)"
        )
    else:
        if restart:
            log.line(f"{run} has no checkpoint yet: starting it again from step 0")
        if d.main:
            task.write_files(run, cfg, classes, stats)
    return r


def _restore(r: _Run, ckpt: dict[str, Any], explicit_lr: bool) -> None:
    """Continue from a checkpoint: weights, momentum, schedule, position and RNG states."""
    cfg = r.cfg
    unwrap(r.model).load_state_dict(ckpt["model"])
    r.optimizer.load_state_dict(ckpt["optimizer"])
    r.plateau.load_state_dict(ckpt["plateau"])
    # the schedule's knobs may change on resume; an explicit learning rate replaces its current one
    r.plateau.patience, r.plateau.threshold, r.plateau.max_decays = cfg.lr_patience, cfg.lr_threshold, cfg.lr_decays
    r.plateau.rule, r.plateau.window = cfg.plateau, cfg.lr_window
    if explicit_lr:
        r.plateau.lr = cfg.lr
    r.prog = Progress(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"], *ckpt.get("epoch_loss", (0.0, 0)))
    r.start_epoch = ckpt["epoch"]
    set_rng_state(ckpt["rng"])


def _start(r: _Run) -> None:
    """The training step's module (compiled, DDP-wrapped), the loaders and the stop agreement; one summary line."""
    cfg, d, device = r.cfg, r.d, r.device
    r.net = compile_model(r.model, cfg, device)  # before DDP wrapping; checkpoints save the unwrapped module
    if d.world > 1:
        r.net = nn.parallel.DistributedDataParallel(r.net, device_ids=[device.index] if device.type == "cuda" else None)
        # the processes agree on stopping over a CPU flag, through gloo
        r.stop_group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    r.plan = r.task.plan(cfg, len(r.train_set), d)
    collate_fn = r.task.collate
    r.loader, r.loader_kind = make_train_loader(cfg, r.train_set, r.plan, loader_workers(cfg, d), device, collate_fn)
    r.val_loader = make_val_loader(cfg, r.val_set, d, loader_workers(cfg, d), device, r.loader_kind, collate_fn)
    n_params = sum(p.numel() for p in r.model.parameters())
    r.log.line(
        f"run {r.run}: {unwrap(r.model).name} ({n_params / 1e6:.2f}M parameters, {len(r.classes)} classes)"
        f", {len(r.train_set)} train / {len(r.val_set)} val images, S in [{cfg.scale_min}, "
        f"{cfg.scale_max}], crop {cfg.crop_size}, batch {cfg.batch_size} on {d.world} x {device}"
        + (" (bf16, channels-last, compiled)" if cuda_path(device) and cfg.amp and cfg.compile else "")
        + f", {r.loader_kind} data path"
    )


def _epochs(r: _Run) -> Path:
    """The epoch loop, under Ctrl-C / SIGTERM handlers that stop at a step boundary with a checkpoint."""
    t_start = time.perf_counter()
    saved_at: Path | None = None
    interrupted = False
    # Ctrl-C and SIGTERM (Slurm's pre-emption, torchrun's shutdown): finish the optimizer step under way, save
    # a checkpoint of that exact state, then exit; resuming gives the same weights as an uninterrupted run
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = {sig: signal.signal(sig, r.request) for sig in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        for epoch in range(r.start_epoch, r.cfg.epochs):
            outcome = _one_epoch(r, epoch)
            if outcome == "interrupted":
                saved_at, interrupted = r.saved_at, True
            if outcome != "next":
                break
    except KeyboardInterrupt:  # a second signal: stop at once, without a checkpoint of this moment
        r.request.signum = r.request.signum or signal.SIGINT
        saved_at, interrupted = None, True
    except NonFiniteLoss as e:
        raise NonFiniteLoss(_non_finite_message(e, r)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_workers(r.loader)
        r.log.close()
        if r.d.main:
            write_bad_files(r.run, r.bad_files)
    if interrupted:
        raise Interrupted(_interrupted_message(r, saved_at), r.request.signum)
    if r.d.main:
        r.log.line(f"done in {time.perf_counter() - t_start:.0f}s: {r.run}" + fallback_note(r.loader, r.val_loader))
    return r.run


def _one_epoch(r: _Run, epoch: int) -> str:
    """Train and validate one epoch: "next", "done" (schedule, max_steps) or "interrupted" (r.saved_at set)."""
    cfg, prog = r.cfg, r.prog
    if r.stop():  # a signal during the previous epoch's bookkeeping
        r.saved_at = r.save_ckpt()
        return "interrupted"
    if r.plateau.done or (cfg.max_steps and prog.global_step >= cfg.max_steps):
        return "done"
    if prog.epoch != epoch:
        prog.epoch, prog.step_in_epoch = epoch, 0
        prog.epoch_loss_sum, prog.epoch_loss_steps = 0.0, 0
    for group in r.optimizer.param_groups:
        group["lr"] = r.plateau.lr * group.get("lr_mult", 1.0)
    r.plan.set_epoch(epoch, prog.step_in_epoch)
    t_epoch = time.perf_counter()
    # the epoch's loss sums are kept in prog (and in mid-epoch checkpoints) by train_one_epoch
    train_one_epoch(
        r.net,
        r.loader,
        r.optimizer,
        cfg,
        r.plan,
        prog,
        r.device,
        r.autocast,
        r.log,
        r.bad_files,
        r.save_ckpt,
        r.stop,
        r.task,
    )
    if r.stop():  # asked again: every process must take the same branch
        r.saved_at = r.save_ckpt()
        return "interrupted"
    if prog.step_in_epoch < r.plan.steps_per_epoch:  # stopped by max_steps inside the epoch
        r.save_ckpt()
        return "done"
    # a one-process validation changes no state: a signal stops it at once, and the checkpoint takes the RNG
    # state from before it (validation's loader draws its seed from the global RNG)
    rng_before = rng_state()
    r.request.immediate = r.d.world == 1
    try:
        metrics = r.task.validate(
            r.model, r.val_set, cfg, r.device, r.autocast, r.d, r.bad_files, r.val_loader
        )  # the uncompiled module
    except KeyboardInterrupt:
        r.request.signum = r.request.signum or signal.SIGINT
        r.saved_at = r.save_ckpt(rng=rng_before)
        return "interrupted"
    finally:
        r.request.immediate = False
    _end_epoch(r, epoch, metrics, time.perf_counter() - t_epoch)
    return "next"


def _end_epoch(r: _Run, epoch: int, metrics: dict[str, float], seconds: float) -> None:
    """The schedule steps on the validation error; the epoch is logged; weights, checkpoint and plots written."""
    prog = r.prog
    r.plateau.step(metrics[r.task.metric])
    if r.bad_files - r.reported:
        new = sorted(r.bad_files - r.reported)
        r.reported.update(new)
        r.log.line(
            f"skipped {len(new)} unreadable image(s), listed in {r.run / 'bad_files.txt'}: "
            f"{', '.join(new[:3])}{' ...' if len(new) > 3 else ''}"
        )
    train_loss = prog.epoch_loss_sum / max(prog.epoch_loss_steps, 1)
    prog.epoch, prog.step_in_epoch = epoch + 1, 0
    prog.epoch_loss_sum, prog.epoch_loss_steps = 0.0, 0
    first = r.optimizer.param_groups[0]
    lr = first["lr"] / first.get("lr_mult", 1.0)  # the schedule's rate (fc8 may learn at a multiple of it)
    record = dict(
        epoch=epoch + 1,
        step=prog.global_step,
        train_loss=train_loss,
        lr=lr,
        epoch_time_s=seconds,
        peak_mem_mb=peak_memory_mb(r.device),
        **metrics,
    )
    r.log.record("epoch", **record)
    r.log.line(
        f"epoch {epoch + 1}/{r.cfg.epochs}: train loss {train_loss:.4f}, {r.task.epoch_text(metrics)}, lr {lr:.1e}, "
        f"{seconds:.0f}s" + (f", lr -> {r.plateau.lr:.1e}" if r.plateau.lr != lr else "")
    )
    if r.d.main:
        # the checkpoint first: a kill between the two writes leaves a checkpoint to resume from, never weights
        # without one (which a resume must refuse to overwrite, as the weights of a finished run)
        r.save_ckpt()
        save_weights(r.model, r.run / runs.MODEL_FILE)
        with contextlib.suppress(Exception):  # a plotting problem never stops training
            plot_run(r.run)


def _non_finite_message(e: NonFiniteLoss, r: _Run) -> str:
    """What went wrong, what was kept, and the command that continues with a lower learning rate."""
    last = latest_checkpoint(r.run)
    lr = r.optimizer.param_groups[0]["lr"]
    where = (
        f"nothing after the last good checkpoint {last} was kept"
        if last is not None
        else "no checkpoint had been written yet"
    )
    return (
        f"{e} (epoch {r.prog.epoch + 1}): training stopped and {where}. The learning rate {lr:g} is too high "
        f"for this net and data (or --init draws too large weights): continue with a lower one, "
        f"`{r.task.command} --resume {r.run} --lr {lr / 10:g}`"
        f"{' (it starts again from step 0)' if last is None else ''}, "
        f"or check the images"
    )


def _interrupted_message(r: _Run, saved_at: Path | None) -> str:
    name = signal.Signals(r.request.signum).name
    if saved_at is not None or not r.d.main:
        return (
            f"{name}: stopped at step {r.prog.global_step} and saved {saved_at or 'a checkpoint'}; "
            f"continue with `{r.task.command} --resume {r.run}`"
        )
    last = latest_checkpoint(r.run)
    return (
        f"{name} twice: stopped without saving this step; `{r.task.command} --resume {r.run}` continues from "
        f"{last if last is not None else 'step 0 (no checkpoint yet)'}"
    )


__all__ = ["Interrupted", "train"]
