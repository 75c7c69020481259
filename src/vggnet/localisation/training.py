"""Training a localisation net (Appendix A): from a classification run of the same S (no scale jittering), at
learning rate 1e-3, fine-tuning all layers or only the FC layers, with a Euclidean loss on the box of the
image's class.

It trains through the one training engine (:func:`vggnet.training.train`) as the task :class:`Localisation`: its
data (images with boxes), net (the classification net with a box head), loss and validation plug in; the run
folder, the lock, resume from the newest valid checkpoint (RNG states included, a torn checkpoint skipped),
progress lines, DDP under torchrun and the plateau schedule are the engine's, as for `vgg train`.

A localisation run is a folder like a training run (config.toml, model.safetensors whose last layer has 4 or
4 x classes outputs, stats.json and classes.json copied from the classification run, metrics.jsonl, checkpoints/
for resume, eval/ for reports) plus ``localize.json`` naming the classification run and the regression.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .. import boxes as B
from .. import runs
from ..config import TrainConfig, input_settings, read_toml, refuse_unsafe_changes
from ..convention import Convention
from ..data import EMBEDDED
from ..data.io import BadImageError, load_image
from ..data.stats import Stats
from ..data.transforms import EvalTransform, TrainTransform
from ..files import atomic_write_text
from ..pretrained import make_cfg
from ..runtime import Dist, is_main
from ..training import BatchPlan, Logger, train
from ..training.task import Classification
from ..weights import unwrap
from .nets import (
    IOU_THRESHOLD,
    LOC_FIELDS,
    LOC_FILE,
    LocConfig,
    box_loss,
    load_source,
    localisation_net,
    select_boxes,
)

BAD_BOXES_FILE = "bad_boxes.txt"


class BoxDataset(torch.utils.data.Dataset):
    """Crops of box samples through the paper's transforms, with the box as the regression target.

    ``dataset[(index, seed)]`` is (image, target, path): the target is (label, cx, cy, w, h), the image's class and
    its largest box of that class in the crop's coordinates (through the same rescale, crop and flip as the
    pixels) as fractions of the crop side. Images are decoded at full size: the boxes are in the original pixels.
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
            return None, None, s.path
        x = self.transform.apply(img, params)
        crop = self.transform.crop_size
        biggest = s.boxes[B.area(s.boxes).argmax()][None]
        box = B.augment_boxes(biggest, img.shape[-2], img.shape[-1], params, crop)[0]
        return x, torch.cat([torch.tensor([float(s.label)]), (B.to_cxcywh(box) / crop).float()]), s.path


def collate_boxes(batch):
    """(images (N, 3, crop, crop), targets (N, 5): label and box, paths of unreadable images)."""
    good = [b for b in batch if b[0] is not None]
    bad = [b[2] for b in batch if b[0] is None]
    if not good:
        return torch.empty(0, 3, 0, 0), torch.empty(0, 5), bad
    return torch.stack([b[0] for b in good]), torch.stack([b[1] for b in good]), bad


def _default_data(src: runs.Run) -> str:
    data = str(src.config.get("data", ""))
    return "mnist-scale" if data in EMBEDDED or not data else data


def adopt_source(cfg: LocConfig, src: runs.Run) -> None:
    """Fill in what the classification run decides: the net's shape, S (its smallest), crop, input convention
    (pixel range too) and data."""
    if src.model.arch["num_classes"] != len(src.classes):
        raise ValueError(f"{cfg.from_run}: its last layer does not match its classes; pass a classification run")
    if not runs.is_run(cfg.from_run) and not cfg.data:
        raise ValueError(
            f"--from {cfg.from_run}: weights without a run folder name no data; pass --data (images "
            f"with boxes of their {len(src.classes)} classes, in their label order)"
        )
    arch = src.model.arch
    cfg.arch, cfg.batch_norm = arch["config"], bool(arch["batch_norm"])
    cfg.width, cfg.fc_width, cfg.dropout = float(arch["width"]), int(arch["fc_width"]), float(arch["dropout"])
    (s_min, _), crop = src.scale_range, src.model.crop_size
    cfg.scale = cfg.scale or s_min
    cfg.crop_size, cfg.scale_min, cfg.scale_max = crop, cfg.scale, cfg.scale
    cfg.normalize, cfg.pixel_range = input_settings(src.config)  # the run's input convention, pixel range too
    cfg.data = cfg.data or _default_data(src)
    if cfg.scale < crop:
        raise ValueError(f"--scale {cfg.scale} is smaller than the crop {crop}")


class Localisation(Classification):
    """The box regression of Appendix A as a task of the training engine (see :mod:`vggnet.training.task`)."""

    command = "vgg localize train"
    metric = "val_loc_err"  # the plateau schedule steps on the localisation error of the centre crop
    collate = staticmethod(collate_boxes)
    failure_files = (BAD_BOXES_FILE,)  # a run that finds no usable box keeps the list of what it skipped
    runs_root = Path("runs") / "localize"

    def __init__(self) -> None:
        self._sources: dict[str, runs.Run] = {}

    def source(self, cfg: LocConfig) -> runs.Run:
        """The classification run (loaded once)."""
        if not cfg.from_run:
            raise ValueError(
                "vgg localize train needs --from SOURCE (a classification run or weights) or --resume LOCRUN"
            )
        if cfg.from_run not in self._sources:
            self._sources[cfg.from_run] = load_source(cfg.from_run, normalize=cfg.source_normalize)
        return self._sources[cfg.from_run]

    def resolve(self, config: LocConfig | dict[str, Any] | None) -> LocConfig:
        cfg = config if isinstance(config, LocConfig) else LocConfig(**(config or {}))
        adopt_source(cfg, self.source(cfg))
        return cfg

    def from_dict(self, d: dict[str, Any]) -> LocConfig:
        d = {k: v for k, v in d.items() if k in LOC_FIELDS}
        d["normalize"], d["pixel_range"] = input_settings(d)
        return LocConfig(**d)

    def read_config(self, path: Path) -> dict[str, Any]:
        values = read_toml(path)
        unknown = sorted(set(values) - LOC_FIELDS)
        if unknown:
            raise ValueError(
                f"{path}: unknown key(s) {unknown}; the keys are the `vgg localize train` options "
                f"(fix or delete those lines)"
            )
        return values

    def build_data(self, cfg: LocConfig, d: Dist, stats: Stats | None, run: Path):
        """(train set, val set, classes, statistics) of the data with boxes; bad boxes go to bad_boxes.txt."""
        src = self.source(cfg)
        stats = stats if stats is not None else src.stats
        report, val_report = B.BoxReport(), B.BoxReport()
        train_samples, classes = B.box_samples(cfg.data, "train", cfg.boxes or None, cfg.max_per_class, report)
        val_samples, _ = B.box_samples(cfg.data, "val", cfg.boxes or None, cfg.val_per_class, val_report)
        # released weights name their classes in words (ImageNet's), the data by folder (n01440764): in label order
        same = [str(c) for c in classes] == [str(c) for c in src.classes] or (
            not runs.is_run(cfg.from_run) and len(classes) == len(src.classes)
        )
        if not same:
            raise ValueError(
                f"the classes of {cfg.data} differ from those of {cfg.from_run}; localise on the data "
                "the classification net was trained on"
            )
        if d.main:
            B.BoxReport(report.skipped + val_report.skipped).write(run / BAD_BOXES_FILE)
        if not train_samples or not val_samples:
            raise ValueError(
                f"{cfg.data}: no usable boxes (train: {report.summary()}; val: {val_report.summary()}); "
                f"see {run / BAD_BOXES_FILE}, and give boxes as a boxes.csv or VOC XML files"
            )
        self.skipped = len(report.skipped) + len(val_report.skipped)
        conv, crop = Convention.of_run(stats, cfg.normalize, cfg.pixel_range), cfg.crop_size
        train_set = BoxDataset(
            train_samples,
            TrainTransform(stats, crop_size=crop, scale=cfg.scale, flip=cfg.flip, colour_std=0.0, convention=conv),
        )
        val_set = BoxDataset(val_samples, EvalTransform(stats, size=cfg.scale, crop_size=crop, convention=conv))
        return train_set, val_set, list(classes), stats

    def plan(self, cfg: LocConfig, n: int, d: Dist) -> BatchPlan:
        """The engine's plan, with the batch cut to the training set when it holds fewer boxes than a batch."""
        unit = d.world * cfg.accum_steps
        batch = cfg.batch_size if n >= cfg.batch_size else max(unit, n // unit * unit)
        return BatchPlan(n, batch, d.world, d.rank, cfg.accum_steps, cfg.seed)

    def make_model(
        self, cfg: LocConfig, classes: list[str], stats: Stats, run: Path, d: Dist, log: Logger, fresh: bool
    ):
        """The classification net with a box head (its last layer random; a resumed run's weights replace it)."""
        model = localisation_net(self.source(cfg).model, cfg.regression, len(classes))
        conv = Convention.of_run(stats, cfg.normalize, cfg.pixel_range)
        model.pretrained_cfg = make_cfg(
            conv, source=str(run), num_classes=model.num_classes, resize=cfg.scale, crop=cfg.crop_size
        )
        if cfg.finetune == "fc":
            for p in model.features.parameters():
                p.requires_grad_(False)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        skipped = getattr(self, "skipped", 0)
        log.line(
            f"localisation: {cfg.regression.upper()} from {cfg.from_run}, fine-tuning {cfg.finetune} layers "
            f"({trainable / 1e6:.2f}M parameters), boxes at S = {cfg.scale}"
            + (f"; skipped {skipped} box(es), see {BAD_BOXES_FILE}" if skipped else "")
        )
        return model

    def write_files(self, run: Path, cfg: LocConfig, classes: list[str], stats: Stats) -> None:
        super().write_files(run, cfg, classes, stats)
        local = Path(cfg.from_run).expanduser()
        info = dict(
            from_run=str(local.resolve()) if local.exists() else cfg.from_run,
            regression=cfg.regression,
            finetune=cfg.finetune,
            num_classes=len(classes),
            scale=cfg.scale,
            crop_size=cfg.crop_size,
            data=cfg.data,
            source_normalize=cfg.source_normalize,
        )
        atomic_write_text(run / LOC_FILE, json.dumps(info, indent=1) + "\n")

    def train_mode(self, model, cfg: LocConfig) -> None:
        model.train()
        if cfg.finetune == "fc":  # frozen conv layers keep their batch-norm statistics too
            unwrap(model).features.eval()

    @staticmethod
    def loss(out: torch.Tensor, targets: torch.Tensor, cfg: LocConfig, reduction: str = "mean") -> torch.Tensor:
        """The Euclidean loss on the box of the image's class (``reduction="none"``: one per image)."""
        pred = select_boxes(out.float(), targets[:, 0].long(), cfg.regression)
        if reduction == "mean":
            return box_loss(pred, targets[:, 1:])
        return 0.5 * (pred - targets[:, 1:]).pow(2).sum(1)

    def validate(
        self, model, dataset, cfg: LocConfig, device, autocast, d: Dist, bad_files: set[str], loader=None
    ) -> dict[str, float]:
        return validate_localisation(model, dataset, cfg, device, autocast, d, bad_files, loader)

    def epoch_text(self, metrics: dict[str, float]) -> str:
        return (
            f"val box loss {metrics['val_loss']:.4f}, val loc. error (centre crop, true class) "
            f"{metrics['val_loc_err']:.2%}"
        )


@torch.inference_mode()
def validate_localisation(
    model,
    dataset: BoxDataset,
    cfg: LocConfig,
    device,
    autocast=contextlib.nullcontext,
    d: Dist | None = None,
    bad_files: set[str] | None = None,
    loader=None,
) -> dict[str, float]:
    """Box loss and localisation error (IoU <= 0.5) of the centre crop with the true class, in crop coordinates;
    summed over the processes."""
    model.eval()
    if loader is None:
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collate_boxes)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # images, summed box loss, wrong boxes
    for images, targets, bad in loader:
        if bad_files is not None:
            bad_files.update(bad)
        if images.shape[0] == 0:
            continue
        images, targets = images.to(device), targets.to(device)
        with autocast():
            out = model(images)
        pred = select_boxes(out.float(), targets[:, 0].long(), cfg.regression)
        counts[0] += len(targets)
        counts[1] += Localisation.loss(out, targets, cfg, "none").sum()
        overlap = B.iou(B.to_xyxy(pred), B.to_xyxy(targets[:, 1:])).diagonal()
        counts[2] += (overlap <= IOU_THRESHOLD).sum()
    if d is not None and d.world > 1:
        dist.all_reduce(counts)
    n, loss_sum, wrong = counts.tolist()
    return {"val_loss": loss_sum / max(n, 1), "val_loc_err": wrong / max(n, 1), "val_images": int(n)}


class _Lines(io.TextIOBase):
    """A text stream that hands each complete line to ``fn`` (``log_fn`` of :func:`train_localisation`)."""

    def __init__(self, fn) -> None:
        self.fn, self.pending = fn, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self.fn(line)
        return len(text)


def _refuse_box_changes(config: LocConfig | dict[str, Any] | None, run: Path) -> None:
    """--resume with another regression, source, boxes, ... (what the engine's own check does not know): refused by
    name, as `vgg train --resume` refuses a changed data set."""
    given = config.to_dict() if isinstance(config, LocConfig) else dict(config or {})
    saved = read_toml(run / runs.CONFIG_FILE) if (run / runs.CONFIG_FILE).is_file() else {}
    own = LOC_FIELDS - {f.name for f in fields(TrainConfig)}
    refuse_unsafe_changes(
        {k: (saved[k], v) for k, v in given.items() if k in own and k in saved and saved[k] != v},
        "--resume with these options",
        run,
    )


def train_localisation(
    config: LocConfig | dict[str, Any], resume: str | os.PathLike | None = None, log_fn=None
) -> Path:
    """Train a localisation net (the paper's Appendix A); return its run folder.

    ``resume``: a localisation run folder whose newest valid checkpoint is continued exactly (keys of a ``config``
    dict, for example a larger ``epochs``, apply over its saved config where `vgg train --resume` would take them).
    ``log_fn``: where the progress lines go (default: printed).
    """
    task = Localisation()
    if resume is not None:
        _refuse_box_changes(config, Path(resume))
    if resume is None:
        config = task.resolve(config)
        # rank 0 alone: under torchrun the other processes would find the config.toml it has just written
        if config.out and is_main() and (Path(config.out) / runs.CONFIG_FILE).exists():
            raise FileExistsError(
                f"{config.out} already holds a run; continue it with `vgg localize train --resume {config.out}`"
            )
    with contextlib.redirect_stdout(_Lines(log_fn)) if log_fn else contextlib.nullcontext():
        return train(config, resume, task)


__all__ = [
    "BAD_BOXES_FILE",
    "BoxDataset",
    "Localisation",
    "adopt_source",
    "collate_boxes",
    "train_localisation",
    "validate_localisation",
]
