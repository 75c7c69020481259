"""Training a localisation net (Appendix A): from a classification run of the same S (no scale jittering), at
learning rate 1e-3, fine-tuning all layers or only the FC layers, with a Euclidean loss on the box of the
image's class; resumable from its checkpoints like a training run.

A localisation run is a folder like a training run (config.toml, model.safetensors whose last layer has 4 or
4 x classes outputs, stats.json and classes.json copied from the classification run, metrics.jsonl, checkpoints/
for resume, eval/ for reports) plus ``localize.json`` naming the classification run and the regression.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import boxes as B
from .. import runs
from ..config import input_settings, toml_text
from ..data import EMBEDDED
from ..data.io import BadImageError, load_image
from ..data.stats import Stats
from ..data.transforms import EvalTransform, TrainTransform
from ..model import VGG
from ..pretrained import make_cfg
from ..runtime import pick_device
from ..training import BatchPlan, Logger, Plateau, latest_checkpoint, load_checkpoint, new_run_dir, save_checkpoint
from ..files import RunLock, atomic_write_text
from ..weights import save_weights
from .nets import IOU_THRESHOLD, LOC_FIELDS, LOC_FILE, LocConfig, box_loss, localisation_net, select_boxes


class BoxDataset(torch.utils.data.Dataset):
    """Crops of box samples through the paper's transforms, with the box as the regression target.

    ``dataset[(index, seed)]`` is (image, label, target, path): the target is the image's largest box of its class
    in the crop's coordinates (through the same rescale, crop and flip as the pixels), as (cx, cy, w, h) / crop.
    Images are decoded at full size: the boxes are in the original pixels.
    """

    def __init__(self, samples: list[B.BoxSample], transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), None)
        s = self.samples[index]
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        params = self.transform.sample(gen)
        try:
            img = load_image(s.path)
        except BadImageError:
            return None, s.label, None, s.path
        x = self.transform.apply(img, params)
        crop = self.transform.crop_size
        biggest = s.boxes[B.area(s.boxes).argmax()][None]
        box = B.augment_boxes(biggest, img.shape[-2], img.shape[-1], params, crop)[0]
        return x, s.label, B.to_cxcywh(box) / crop, s.path


def collate_boxes(batch):
    good = [b for b in batch if b[0] is not None]
    bad = [b[3] for b in batch if b[0] is None]
    if not good:
        return torch.empty(0, 3, 0, 0), torch.empty(0, dtype=torch.int64), torch.empty(0, 4), bad
    return (torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]), torch.stack([b[2] for b in good]),
            bad)  # fmt: skip


def _default_data(src: runs.Run) -> str:
    data = str(src.config.get("data", ""))
    return "mnist-scale" if data in EMBEDDED or not data else data


def _config(config: LocConfig | dict[str, Any], resume: str | os.PathLike | None) -> tuple[LocConfig, Path | None, Any]:
    """(config, run folder or None for a new numbered one, checkpoint to continue or None)."""
    if resume is None:
        cfg = config if isinstance(config, LocConfig) else LocConfig(**config)
        return cfg, (Path(cfg.out) if cfg.out else None), None
    run = Path(resume)
    found = latest_checkpoint(run)
    if found is None:
        raise FileNotFoundError(f"{run}/checkpoints has no checkpoint to resume from; start a new run instead")
    ckpt = load_checkpoint(found)
    given = config.to_dict() if isinstance(config, LocConfig) else dict(config or {})
    cfg = LocConfig(**{k: v for k, v in dict(ckpt["config"], **given).items() if k in LOC_FIELDS})
    return cfg, run, ckpt


def _adopt_source(cfg: LocConfig, src: runs.Run) -> None:
    """Fill in what the classification run decides: S (its smallest), crop, normalisation, data."""
    if src.model.arch["num_classes"] != len(src.classes):
        raise ValueError(f"{cfg.from_run}: its last layer does not match its classes; pass a classification run")
    (s_min, _), crop = src.scale_range, src.model.crop_size
    cfg.scale = cfg.scale or s_min
    cfg.crop_size, cfg.scale_min, cfg.scale_max = crop, cfg.scale, cfg.scale
    cfg.normalize, cfg.pixel_range = input_settings(src.config)  # the run's input convention, pixel range too
    cfg.data = cfg.data or _default_data(src)
    if cfg.scale < crop:
        raise ValueError(f"--scale {cfg.scale} is smaller than the crop {crop}")


def _datasets(cfg: LocConfig, src: runs.Run, run: Path) -> tuple[BoxDataset, BoxDataset, list, int]:
    """(train set, val set, classes, skipped samples) of the data with boxes; bad boxes go to bad_boxes.txt."""
    report = B.BoxReport()
    train_samples, classes = B.box_samples(cfg.data, "train", cfg.boxes or None, cfg.max_per_class, report)
    val_report = B.BoxReport()
    val_samples, _ = B.box_samples(cfg.data, "val", cfg.boxes or None, cfg.val_per_class, val_report)
    if list(classes) != list(src.classes) and [str(c) for c in classes] != [str(c) for c in src.classes]:
        raise ValueError(f"the classes of {cfg.data} differ from those of {cfg.from_run}; localise on the data the "
                         "classification run was trained on")  # fmt: skip
    both = B.BoxReport(report.skipped + val_report.skipped)
    both.write(run / "bad_boxes.txt")
    if not train_samples or not val_samples:
        raise ValueError(f"{cfg.data}: no usable boxes (train: {report.summary()}; val: {val_report.summary()}); "
                         f"see {run / 'bad_boxes.txt'}, and give boxes as a boxes.csv or VOC XML files")  # fmt: skip
    stats: Stats = src.stats
    conv, crop = src.convention, cfg.crop_size
    train_set = BoxDataset(train_samples, TrainTransform(stats, crop_size=crop, scale=cfg.scale, flip=cfg.flip,
                                                          colour_std=0.0, convention=conv))  # fmt: skip
    val_set = BoxDataset(val_samples, EvalTransform(stats, size=cfg.scale, crop_size=crop, convention=conv))
    return train_set, val_set, list(classes), len(both.skipped)


def _write_run_files(run: Path, cfg: LocConfig, src: runs.Run, num_classes: int) -> None:
    """config.toml, stats.json, classes.json and localize.json of a new localisation run."""
    atomic_write_text(run / runs.CONFIG_FILE, toml_text(cfg.to_dict()))
    src.stats.save(run / runs.STATS_FILE)
    atomic_write_text(run / runs.CLASSES_FILE, json.dumps(list(src.classes)))
    info = dict(from_run=str(Path(cfg.from_run).resolve()), regression=cfg.regression, finetune=cfg.finetune,
                num_classes=num_classes, scale=cfg.scale, crop_size=cfg.crop_size, data=cfg.data)  # fmt: skip
    atomic_write_text(run / LOC_FILE, json.dumps(info, indent=1) + "\n")


@dataclass
class _Loop:
    """What one localisation training run carries from step to step, and saves in its checkpoints."""

    run: Path
    cfg: LocConfig
    model: VGG
    optimizer: torch.optim.Optimizer
    plateau: Plateau
    device: torch.device
    log: Logger
    say: Callable[[str], None]
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0

    def save_ckpt(self) -> None:
        save_checkpoint(self.run, self.model, self.optimizer, self.plateau, self.cfg, self.epoch, self.step_in_epoch,
                        self.global_step, self.cfg.keep_checkpoints)  # fmt: skip

    def train_epoch(self, loader) -> tuple[float, int]:
        """One epoch's steps (or up to --max-steps): (summed box loss, steps)."""
        cfg = self.cfg
        self.model.train()
        if cfg.finetune == "fc":
            self.model.features.eval()
        total, n = 0.0, 0
        for images, labels, targets, _ in loader:
            if images.shape[0] == 0:
                continue
            images, labels, targets = images.to(self.device), labels.to(self.device), targets.to(self.device)
            loss = box_loss(select_boxes(self.model(images), labels, cfg.regression), targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if not math.isfinite(loss.item()):
                raise ValueError(f"non-finite box loss at step {self.global_step}: lower --lr")
            total, n = total + loss.item(), n + 1
            self.step_in_epoch, self.global_step = self.step_in_epoch + 1, self.global_step + 1
            if self.global_step % cfg.log_every == 0:
                self.log.record("step", epoch=self.epoch, step=self.global_step, loss=total / n, lr=self.plateau.lr)
            if cfg.max_steps and self.global_step >= cfg.max_steps:
                break
        return total, n

    def fit(self, plan: BatchPlan, loader, val_set: BoxDataset) -> None:
        """Epochs until --epochs or the plateau schedule ends; weights and a checkpoint after each."""
        cfg = self.cfg
        while self.epoch < cfg.epochs and not self.plateau.done:
            for group in self.optimizer.param_groups:
                group["lr"] = self.plateau.lr
            plan.set_epoch(self.epoch, self.step_in_epoch)
            t0 = time.perf_counter()
            total, n = self.train_epoch(loader)
            if self.step_in_epoch < plan.steps_per_epoch:  # stopped by max_steps inside the epoch
                self.save_ckpt()
                break
            metrics = validate_localisation(self.model, val_set, cfg.regression, self.device, cfg.batch_size)
            self.plateau.step(metrics["val_loc_err"])
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            record = dict(epoch=self.epoch, step=self.global_step, train_loss=total / max(n, 1),
                          lr=self.optimizer.param_groups[0]["lr"], epoch_time_s=time.perf_counter() - t0, **metrics)
            self.log.record("epoch", **record)
            self.say(f"epoch {self.epoch}/{cfg.epochs}: box loss {record['train_loss']:.4f}, val loss "
                     f"{metrics['val_loss']:.4f}, val loc. error (centre crop, true class) {metrics['val_loc_err']:.2%}"
                     f", {record['epoch_time_s']:.0f}s")  # fmt: skip
            save_weights(self.model, self.run / runs.MODEL_FILE)
            self.save_ckpt()


def train_localisation(config: LocConfig | dict[str, Any], resume: str | os.PathLike | None = None,
                       log_fn=None) -> Path:  # fmt: skip
    """Train a localisation net (the paper's Appendix A); return its run folder.

    ``resume``: a localisation run folder whose newest checkpoint is continued (keys of a ``config`` dict, for
    example a larger ``epochs``, override its saved config).
    """
    cfg, run, ckpt = _config(config, resume)
    src = runs.load_run(cfg.from_run)
    _adopt_source(cfg, src)
    run = run or new_run_dir(Path("runs") / "localize")
    if resume is None and (run / runs.CONFIG_FILE).exists():
        raise FileExistsError(f"{run} already holds a run; continue it with `vgg localize train --resume {run}`")
    run.mkdir(parents=True, exist_ok=True)
    _lock = RunLock(run, "vgg localize train")  # one writer per run folder; released when this call returns
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    log = Logger(run, True, False)
    say = log_fn or log.line
    train_set, val_set, classes, skipped = _datasets(cfg, src, run)

    model = localisation_net(src.model, cfg.regression, len(classes))
    model.pretrained_cfg = make_cfg(src.convention, source=str(run), num_classes=model.num_classes, resize=cfg.scale,
                                    crop=cfg.crop_size)  # fmt: skip
    if cfg.finetune == "fc":
        for p in model.features.parameters():
            p.requires_grad_(False)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loop = _Loop(run, cfg, model, optimizer, Plateau(cfg.lr, cfg.lr_patience, cfg.lr_threshold, cfg.lr_decays),
                 device, log, say)  # fmt: skip
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        loop.plateau.load_state_dict(ckpt["plateau"])
        loop.epoch, loop.step_in_epoch, loop.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        say(f"resuming {run} at epoch {loop.epoch + 1}, step {loop.step_in_epoch}")
    else:
        _write_run_files(run, cfg, src, len(classes))

    plan = BatchPlan(len(train_set), min(cfg.batch_size, len(train_set)), 1, 0, 1, cfg.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=plan, collate_fn=collate_boxes,
                                         num_workers=cfg.workers, generator=torch.Generator())  # fmt: skip
    trainable = sum(p.numel() for p in params)
    say(f"localisation run {run}: {cfg.regression.upper()} from {cfg.from_run} ({model.name}, fine-tuning "
        f"{cfg.finetune} layers: {trainable / 1e6:.2f}M parameters), {len(train_set)} train / {len(val_set)} val "
        f"images with boxes at S = {cfg.scale}, crop {cfg.crop_size}, lr {cfg.lr:g}"
        + (f"; skipped {skipped} (see bad_boxes.txt)" if skipped else ""))  # fmt: skip
    started = time.perf_counter()
    try:
        loop.fit(plan, loader, val_set)
    except KeyboardInterrupt:
        say(f"interrupted: saving a checkpoint; continue with `vgg localize train --resume {run}`")
        loop.save_ckpt()
        raise
    finally:
        log.close()
    if not (run / runs.MODEL_FILE).exists():
        save_weights(model, run / runs.MODEL_FILE)
    say(f"done in {time.perf_counter() - started:.0f}s: {run}")
    return run


@torch.inference_mode()
def validate_localisation(model: VGG, dataset: BoxDataset, regression: str, device, batch_size: int = 64):
    """Box loss and localisation error of the centre crop with the true class, in crop coordinates."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_boxes)
    loss_sum, wrong, n = 0.0, 0, 0
    for images, labels, targets, _ in loader:
        if images.shape[0] == 0:
            continue
        pred = select_boxes(model(images.to(device)), labels.to(device), regression).cpu().float()
        loss_sum += box_loss(pred, targets).item() * len(labels)
        overlap = B.iou(B.to_xyxy(pred), B.to_xyxy(targets)).diagonal()
        wrong += int((overlap <= IOU_THRESHOLD).sum())
        n += len(labels)
    return {"val_loss": loss_sum / max(n, 1), "val_loc_err": wrong / max(n, 1), "val_images": n}


__all__ = ["BoxDataset", "collate_boxes", "train_localisation", "validate_localisation"]
