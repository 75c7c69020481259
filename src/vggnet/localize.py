"""Object localisation (the paper's Appendix A): box-regression nets, their training, both test protocols.

A localisation net is a classification net whose last FC layer predicts a box, (centre x, centre y, width,
height) as fractions of the crop side, instead of class scores: 4 numbers (single-class regression, SCR: one box
shared by all classes) or 4 per class (per-class regression, PCR). It is trained with a Euclidean loss on the
box of the image's class, initialised from a classification run of the same S (no scale jittering), at learning
rate 1e-3, fine-tuning all layers or only the FC layers (the last one initialised at random).

A localisation run is a folder like a training run (config.toml, model.safetensors whose last layer has 4 or
4 x classes outputs, stats.json and classes.json copied from the classification run, metrics.jsonl, checkpoints/
for resume, eval/ for reports) plus ``localize.json`` naming the classification run and the regression.

Testing (``evaluate_localisation``):

- ``center``: one centre crop at Q, the box of the ground-truth class (the paper's comparison of the variants,
  its Table 8; with several Q, their boxes are averaged);
- ``dense``: the localisation net applied densely to the whole image rescaled to each Q; every location's box
  (the window at stride 32 that the location sees) is rated by the classification net's soft-max score of the
  class at the same location; the boxes of all scales are merged greedily (:func:`merge_boxes`, OverFeat's
  procedure) class by class, and each of the top-5 classes of the classification net (its posteriors averaged
  over locations and scales) gets its best merged box.

A prediction (class, box) is correct when the class is the image's and the box overlaps one of the image's
ground-truth boxes of that class with IoU > 0.5; the top-5 localisation error counts an image as an error when
none of its 5 predictions is correct (ILSVRC); top-1 uses the first prediction only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import boxes as B
from . import runs
from .data.transforms import AugParams, crop_offsets
from .model import VGG
from .training import BatchPlan, Logger, Plateau, latest_checkpoint, load_checkpoint, save_checkpoint
from .weights import atomic_write, save_weights

REGRESSIONS = ("scr", "pcr")
FINETUNE = ("all", "fc")
LOC_FILE = "localize.json"
IOU_THRESHOLD = 0.5  # ILSVRC: a box is right when IoU > 0.5
MERGE_IOU = 0.5  # greedy merging joins two boxes that overlap by more than this


# ---- the config -------------------------------------------------------------------------------------------------


@dataclass
class LocConfig:
    from_run: str  # the classification run the net starts from (its S, stats and classes)
    regression: str = "pcr"  # scr: one box for all classes; pcr: one box per class
    finetune: str = "all"  # all: every layer; fc: the FC layers only (the conv layers frozen)
    # data with boxes: an embedded set or a folder with a boxes.csv / VOC XML files; default: mnist-scale when
    # the run's data is an embedded set, else the run's data
    data: str = ""
    boxes: str = ""  # a box CSV (default: boxes.csv at the data's root, or VOC XML beside the images)
    scale: int = 0  # training scale S; 0: the classification run's smallest S (the paper: the same S, no jittering)
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3  # the paper's
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_patience: int = 1
    lr_threshold: float = 1e-3
    lr_decays: int = 1
    max_per_class: int = 0  # train on the first N images of each class (0: all)
    val_per_class: int = 0  # validate on the first N images of each class (0: all)
    flip: bool = False  # random horizontal flips (off for digits)
    workers: int = 0
    device: str = "auto"
    seed: int = 0
    out: str = ""
    log_every: int = 50
    keep_checkpoints: int = 2
    max_steps: int = 0  # stop after this many steps in all (0: no limit)
    # the classification run's preprocessing, recorded so that `vgg eval` style loaders can read this folder
    crop_size: int = 0
    scale_min: int = 0
    scale_max: int = 0
    normalize: str = "mean"

    def __post_init__(self) -> None:
        if self.regression not in REGRESSIONS:
            raise ValueError(f"--regression must be scr or pcr, got {self.regression!r}")
        if self.finetune not in FINETUNE:
            raise ValueError(f"--finetune must be all or fc, got {self.finetune!r}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("--batch-size and --epochs must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_LOC_FIELDS = {f.name for f in fields(LocConfig)}


# ---- the nets ---------------------------------------------------------------------------------------------------


def box_outputs(regression: str, num_classes: int) -> int:
    """Size of the last FC layer: 4 (SCR) or 4 per class (PCR; 4000 for ImageNet's 1000 classes)."""
    return 4 if regression == "scr" else 4 * num_classes


def localisation_net(classifier: VGG, regression: str, num_classes: int | None = None) -> VGG:
    """A localisation net from a classification net: the same layers, all weights copied but the last layer's,
    which predicts 4 (SCR) or 4 x classes (PCR) numbers and is initialised at random."""
    num_classes = num_classes or classifier.num_classes
    net = VGG(**dict(classifier.arch, num_classes=box_outputs(regression, num_classes)))
    own = net.state_dict()
    sd = {k: v for k, v in classifier.state_dict().items() if not k.startswith("classifier.6.")}
    sd.update({k: v for k, v in own.items() if k.startswith("classifier.6.")})
    net.load_state_dict(sd)
    # The new last layer: small random weights (std 0.01) around a bias that predicts the centred half-size box,
    # so that the first steps at lr 1e-3 refine a box instead of first pulling the outputs of a random layer back
    # into [0, 1] (with the classification init's random last layer, one epoch of the quick grid ended with
    # every validation box wrong).
    last = net.classifier[6]
    with torch.no_grad():
        last.weight.normal_(0.0, 0.01)
        last.bias.fill_(0.5)
    return net


def select_boxes(out: torch.Tensor, labels: torch.Tensor | None, regression: str) -> torch.Tensor:
    """The (N, 4, ...) boxes of ``labels`` from a net's (N, 4 or 4C, ...) output (SCR: its only box)."""
    if regression == "scr":
        return out
    n, k = out.shape[:2]
    per_class = out.reshape(n, k // 4, 4, *out.shape[2:])
    idx = labels.view(n, 1, 1, *([1] * (out.dim() - 2))).expand(n, 1, 4, *out.shape[2:])
    return per_class.gather(1, idx)[:, 0]


def box_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The Euclidean loss: half the squared distance between predicted and true box parameters, batch mean."""
    return 0.5 * (pred - target).pow(2).sum(1).mean()


# ---- data -------------------------------------------------------------------------------------------------------


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
        from .data.io import BadImageError, load_image

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


# ---- training ---------------------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def _default_data(src: runs.Run) -> str:
    from .data import EMBEDDED

    data = str(src.config.get("data", ""))
    return "mnist-scale" if data in EMBEDDED or not data else data


def load_loc_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[runs.Run, dict[str, Any]]:
    """A finished localisation run (as a :class:`~vggnet.runs.Run` of its box net) and its localize.json."""
    path = Path(path)
    if not (path / LOC_FILE).is_file():
        if (path / runs.CONFIG_FILE).is_file():
            raise ValueError(f"{path} is not a localisation run (no {LOC_FILE}); make one with "
                             f"`vgg localize train --from {path}`")  # fmt: skip
        raise FileNotFoundError(f"{path}: no localisation run here; make one with `vgg localize train --from RUN`")
    info = json.loads((path / LOC_FILE).read_text())
    return runs.load_run(path, device), info


def train_localisation(config: LocConfig | dict[str, Any], resume: str | os.PathLike | None = None,
                       log_fn=None) -> Path:  # fmt: skip
    """Train a localisation net (the paper's Appendix A); return its run folder.

    ``resume``: a localisation run folder whose newest checkpoint is continued (keys of a ``config`` dict, for
    example a larger ``epochs``, override its saved config).
    """
    from .data import EvalTransform, TrainTransform
    from .data.stats import Stats

    ckpt = None
    if resume is not None:
        run = Path(resume)
        found = latest_checkpoint(run)
        if found is None:
            raise FileNotFoundError(f"{run}/checkpoints has no checkpoint to resume from; start a new run instead")
        ckpt = load_checkpoint(found)
        given = config.to_dict() if isinstance(config, LocConfig) else dict(config or {})
        cfg = LocConfig(**{k: v for k, v in dict(ckpt["config"], **given).items() if k in _LOC_FIELDS})
    else:
        cfg = config if isinstance(config, LocConfig) else LocConfig(**config)
        run = Path(cfg.out) if cfg.out else None
    src = runs.load_run(cfg.from_run)
    if src.model.arch["num_classes"] != len(src.classes):
        raise ValueError(f"{cfg.from_run}: its last layer does not match its classes; pass a classification run")
    (s_min, s_max), crop = src.scale_range, src.model.crop_size
    cfg.scale = cfg.scale or s_min
    cfg.crop_size, cfg.scale_min, cfg.scale_max = crop, cfg.scale, cfg.scale
    cfg.normalize = src.config.get("normalize", "mean")
    cfg.data = cfg.data or _default_data(src)
    if cfg.scale < crop:
        raise ValueError(f"--scale {cfg.scale} is smaller than the crop {crop}")
    if run is None:
        from .training import new_run_dir

        run = new_run_dir(Path("runs") / "localize")
    if resume is None and (run / runs.CONFIG_FILE).exists():
        raise FileExistsError(f"{run} already holds a run; continue it with `vgg localize train --resume {run}`")
    run.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    log = Logger(run, True, False)
    say = log_fn or log.line

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
    norm, divide_std = runs.normalization(stats, cfg.normalize)
    train_set = BoxDataset(train_samples, TrainTransform(norm, crop_size=crop, scale=cfg.scale, flip=cfg.flip,
                                                          colour_std=0.0, divide_std=divide_std))  # fmt: skip
    val_set = BoxDataset(val_samples, EvalTransform(norm, size=cfg.scale, crop_size=crop, divide_std=divide_std))

    model = localisation_net(src.model, cfg.regression, len(classes))
    if cfg.finetune == "fc":
        for p in model.features.parameters():
            p.requires_grad_(False)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    plateau = Plateau(cfg.lr, cfg.lr_patience, cfg.lr_threshold, cfg.lr_decays)
    epoch, step_in_epoch, global_step = 0, 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        plateau.load_state_dict(ckpt["plateau"])
        epoch, step_in_epoch, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        say(f"resuming {run} at epoch {epoch + 1}, step {step_in_epoch}")
    else:
        import tomli_w

        atomic_write(run / runs.CONFIG_FILE, lambda tmp: Path(tmp).write_text(tomli_w.dumps(cfg.to_dict())))
        stats.save(run / runs.STATS_FILE)
        atomic_write(run / runs.CLASSES_FILE, lambda tmp: Path(tmp).write_text(json.dumps(list(src.classes))))
        info = dict(from_run=str(Path(cfg.from_run).resolve()), regression=cfg.regression, finetune=cfg.finetune,
                    num_classes=len(classes), scale=cfg.scale, crop_size=crop, data=cfg.data)  # fmt: skip
        atomic_write(run / LOC_FILE, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1) + "\n"))

    plan = BatchPlan(len(train_set), min(cfg.batch_size, len(train_set)), 1, 0, 1, cfg.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=plan, collate_fn=collate_boxes,
                                         num_workers=cfg.workers, generator=torch.Generator())  # fmt: skip

    def save_ckpt() -> None:
        save_checkpoint(run, model, optimizer, plateau, cfg, epoch, step_in_epoch, global_step, cfg.keep_checkpoints)

    trainable = sum(p.numel() for p in params)
    say(f"localisation run {run}: {cfg.regression.upper()} from {cfg.from_run} ({model.name}, fine-tuning "
        f"{cfg.finetune} layers: {trainable / 1e6:.2f}M parameters), {len(train_set)} train / {len(val_set)} val "
        f"images with boxes at S = {cfg.scale}, crop {crop}, lr {cfg.lr:g}"
        + (f"; skipped {len(both.skipped)} (see bad_boxes.txt)" if both.skipped else ""))  # fmt: skip
    started = time.perf_counter()
    try:
        while epoch < cfg.epochs and not plateau.done:
            for group in optimizer.param_groups:
                group["lr"] = plateau.lr
            plan.set_epoch(epoch, step_in_epoch)
            model.train()
            if cfg.finetune == "fc":
                model.features.eval()
            t0, total, n = time.perf_counter(), 0.0, 0
            for images, labels, targets, _ in loader:
                if images.shape[0] == 0:
                    continue
                images, labels, targets = images.to(device), labels.to(device), targets.to(device)
                loss = box_loss(select_boxes(model(images), labels, cfg.regression), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if not math.isfinite(loss.item()):
                    raise ValueError(f"non-finite box loss at step {global_step}: lower --lr")
                total, n = total + loss.item(), n + 1
                step_in_epoch, global_step = step_in_epoch + 1, global_step + 1
                if global_step % cfg.log_every == 0:
                    log.record("step", epoch=epoch, step=global_step, loss=total / n, lr=plateau.lr)
                if cfg.max_steps and global_step >= cfg.max_steps:
                    break
            if step_in_epoch < plan.steps_per_epoch:  # stopped by max_steps inside the epoch
                save_ckpt()
                break
            metrics = validate_localisation(model, val_set, cfg.regression, device, cfg.batch_size)
            plateau.step(metrics["val_loc_err"])
            epoch, step_in_epoch = epoch + 1, 0
            record = dict(epoch=epoch, step=global_step, train_loss=total / max(n, 1),
                          lr=optimizer.param_groups[0]["lr"], epoch_time_s=time.perf_counter() - t0, **metrics)
            log.record("epoch", **record)
            say(f"epoch {epoch}/{cfg.epochs}: box loss {record['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
                f"val loc. error (centre crop, true class) {metrics['val_loc_err']:.2%}, {record['epoch_time_s']:.0f}s")
            save_weights(model, run / runs.MODEL_FILE)
            save_ckpt()
    except KeyboardInterrupt:
        say(f"interrupted: saving a checkpoint; continue with `vgg localize train --resume {run}`")
        save_ckpt()
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


# ---- greedy merging (OverFeat) ----------------------------------------------------------------------------------


def merge_boxes(boxes: torch.Tensor, scores: torch.Tensor,
                threshold: float = MERGE_IOU) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """OverFeat's greedy merging: repeatedly join the two closest boxes until no two are close.

    Two boxes are close when their IoU exceeds ``threshold``; the closest pair (highest IoU) is joined first. A
    joined box is the average of the coordinates of all the boxes it took in, and its score the sum of their
    scores (OverFeat accumulates the class outputs of the windows that predicted it), so a box that many windows
    agree on outranks a lone confident one. Returns the merged (K, 4) boxes and scores, best first.
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4), scores.reshape(0)
    sums = boxes.double().clone()  # coordinate sums of each cluster
    counts = torch.ones(len(boxes), dtype=torch.float64)
    total = scores.double().clone()
    alive = torch.ones(len(boxes), dtype=torch.bool)
    mean = sums / counts[:, None]
    overlap = B.iou(mean, mean)
    overlap.fill_diagonal_(-1)
    while True:
        masked = overlap.masked_fill(~(alive[:, None] & alive[None, :]), -1)
        best = int(masked.argmax())
        i, j = divmod(best, len(boxes))
        if masked[i, j] <= threshold:
            break
        sums[i] += sums[j]
        counts[i] += counts[j]
        total[i] += total[j]
        alive[j] = False
        mean[i] = sums[i] / counts[i]
        row = B.iou(mean[i : i + 1], mean)[0]
        row[i] = -1
        overlap[i], overlap[:, i] = row, row
    keep = alive.nonzero()[:, 0]
    order = total[keep].argsort(descending=True)
    keep = keep[order]
    return mean[keep].float(), total[keep].float()


# ---- test protocols ---------------------------------------------------------------------------------------------


def _stride(model: VGG) -> int:
    return 2 ** sum(isinstance(m, nn.MaxPool2d) for m in model.features)


def window_boxes(box_map: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """(4, h, w) box parameters of a dense map (fractions of each location's window) -> (h, w, 4) xyxy boxes in
    the input's pixels: location (i, j) sees the window at (stride * i, stride * j)."""
    _, h, w = box_map.shape
    b = B.to_xyxy(box_map.permute(1, 2, 0).float() * crop)
    ys = torch.arange(h, dtype=b.dtype)[:, None] * stride
    xs = torch.arange(w, dtype=b.dtype)[None, :] * stride
    return b + torch.stack([xs.expand(h, w), ys.expand(h, w), xs.expand(h, w), ys.expand(h, w)], -1)


@dataclass
class LocResult:
    """The localisation errors of one (run, protocol, scales), over ``images`` images."""

    run: str
    regression: str
    finetune: str
    protocol: str
    scales: list[int]
    images: int
    top1_loc_err: float
    top5_loc_err: float
    top1_cls_err: float | None = None  # the classification net's own error (dense protocol)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.inference_mode()
def evaluate_localisation(loc_run: str | os.PathLike, protocol: str = "dense", scales: list[int] | None = None,
                          classifier: str | os.PathLike | None = None, data: str | None = None,
                          max_per_class: int = 0, boxes_csv: str | None = None, device: str = "auto",
                          merge_iou: float = MERGE_IOU) -> LocResult:  # fmt: skip
    """Localisation errors of a localisation run on the validation images with boxes (module doc)."""
    from .data import EvalTransform
    from .data.io import BadImageError, load_image

    if protocol not in ("center", "dense"):
        raise ValueError(f"unknown localisation protocol {protocol!r}; use center or dense")
    dev = _device(device)
    loc, info = load_loc_run(loc_run, dev)
    regression, crop = info["regression"], loc.model.crop_size
    scales = list(scales or [int(info["scale"])])
    if min(scales) < crop:
        raise ValueError(f"test scales {scales} must be >= the crop size {crop}")
    report = B.BoxReport()
    samples, classes = B.box_samples(data or info["data"], "val", boxes_csv, max_per_class, report)
    if not samples:
        raise ValueError(f"{data or info['data']}: no validation images with boxes ({report.summary()})")
    cls = None
    if protocol == "dense":
        cls = runs.load_run(classifier or info["from_run"], dev)
        if cls.model.num_classes != len(classes):
            raise ValueError(f"the classification net {cls.path} has {cls.model.num_classes} classes, the data "
                             f"{len(classes)}; pass the run the localisation net was made from (--classifier)")  # fmt: skip
        cls.model.eval()
    loc.model.eval()
    norm, divide_std = runs.normalization(loc.stats, loc.config.get("normalize", "mean"))
    stride = _stride(loc.model)
    t0 = time.perf_counter()
    top1 = top5 = cls_right = n = 0
    chunk_size = 32  # images decoded and run together: batched forward passes, bounded memory
    for first in range(0, len(samples), chunk_size):
        chunk = []
        for s in samples[first : first + chunk_size]:
            with contextlib.suppress(BadImageError):  # an unreadable image is left out of the count
                chunk.append((s, load_image(s.path)))
        if not chunk:
            continue
        if protocol == "center":
            found: list[list[torch.Tensor]] = [[] for _ in chunk]
            labels = torch.tensor([s.label for s, _ in chunk], device=dev)
            for q in scales:
                tf = EvalTransform(norm, size=q, crop_size=crop, divide_std=divide_std)
                x = torch.stack([tf.apply(img, tf.sample()) for _, img in chunk]).to(dev)
                pred = select_boxes(loc.model(x), labels, regression).cpu().float()
                for k, (_, img) in enumerate(chunk):
                    h, w = img.shape[-2:]
                    nh, nw, top, left = crop_offsets(h, w, AugParams(q), crop)
                    box = B.to_xyxy(pred[k] * crop) + torch.tensor([left, top, left, top], dtype=torch.float32)
                    found[k].append(B.rescale_boxes(box[None], (nh, nw), (h, w)))
            for k, (s, _) in enumerate(chunk):
                box = torch.cat(found[k]).mean(0, keepdim=True)  # several Q: their boxes averaged, in the image's pixels
                right = bool((B.iou(box, s.boxes) > IOU_THRESHOLD).any())
                top1, top5, n = top1 + right, top5 + right, n + 1
            continue
        maps: list[list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]] = [[] for _ in chunk]
        for q in scales:
            tf = EvalTransform(norm, size=q, crop_size=None, divide_std=divide_std)
            views = [tf.apply(img, tf.sample()) for _, img in chunk]
            groups: dict[tuple[int, ...], list[int]] = {}
            for k, v in enumerate(views):
                groups.setdefault(tuple(v.shape), []).append(k)
            for idx in groups.values():  # images of one rescaled size run as one batch
                x = torch.stack([views[k] for k in idx]).to(dev)
                scores = F.softmax(cls.model.dense(x).float(), 1).cpu()  # (B, C, h, w)
                box_map = loc.model.dense(x).float().cpu()  # (B, 4 or 4C, h, w)
                for j, k in enumerate(idx):
                    maps[k].append((scores[j], box_map[j], tuple(x.shape[-2:])))
        for k, (s, img) in enumerate(chunk):
            h, w = img.shape[-2:]
            all_boxes, all_scores, posteriors = [], [], []
            for scores, box_map, (nh, nw) in maps[k]:
                posteriors.append(scores.mean((1, 2)))
                c = scores.shape[0]
                if regression == "scr":
                    wb = window_boxes(box_map, crop, stride)  # (h, w, 4)
                    per_class = wb[None].expand(c, *wb.shape)
                else:
                    per_class = torch.stack([window_boxes(box_map[4 * i : 4 * i + 4], crop, stride) for i in range(c)])
                per_class = B.rescale_boxes(per_class, (nh, nw), (h, w))  # back to the image's pixels
                all_boxes.append(per_class.flatten(1, 2))  # (C, h*w, 4)
                all_scores.append(scores.flatten(1))  # (C, h*w)
            boxes_c, scores_c = torch.cat(all_boxes, 1), torch.cat(all_scores, 1)
            ranked = torch.stack(posteriors).mean(0).argsort(descending=True)[:5].tolist()
            cls_right += ranked[0] == s.label
            correct = []
            for c in ranked:
                merged, _ = merge_boxes(boxes_c[c], scores_c[c], merge_iou)
                correct.append(c == s.label and bool((B.iou(merged[:1], s.boxes) > IOU_THRESHOLD).any()))
            top1, top5, n = top1 + correct[0], top5 + any(correct), n + 1
    n = max(n, 1)
    return LocResult(
        run=str(loc_run), regression=regression, finetune=info.get("finetune", "?"), protocol=protocol,
        scales=scales, images=n, top1_loc_err=1 - top1 / n, top5_loc_err=1 - top5 / n,
        top1_cls_err=(1 - cls_right / n) if protocol == "dense" else None, seconds=time.perf_counter() - t0,
    )  # fmt: skip


# ---- the report (Tables 8 and 9 of the paper) -------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def markdown_tables(results: list[LocResult]) -> str:
    """The paper's Table 8 (centre crop, true class: SCR vs PCR, all layers vs FC only) and Table 9 (dense vs
    centre, test scales) of these results."""
    from .report import markdown_table

    lines = []
    center = [r for r in results if r.protocol == "center"]
    if center:
        rows = [(r.regression.upper(), "all layers" if r.finetune == "all" else "1st and 2nd FC", _scales(r),
                 _pct(r.top5_loc_err), Path(r.run).name) for r in center]  # fmt: skip
        lines += ["## Table 8 (localisation): regression and fine-tuning, one centre crop with the true class", "",
                  markdown_table(["regression", "fine-tuned layers", "Q", "loc. error %", "run"], rows, "lllrl"), ""]
    if results:
        rows = [(r.regression.upper(), r.finetune, "dense (whole image, merged)" if r.protocol == "dense" else
                 "centre crop, true class", _scales(r), _pct(r.top1_loc_err), _pct(r.top5_loc_err),
                 _pct(r.top1_cls_err), r.images) for r in results]  # fmt: skip
        lines += ["## Table 9 (localisation): test protocols, top-1 / top-5 localisation error", "",
                  markdown_table(["regression", "fine-tuned", "protocol", "Q", "top-1 loc. err %", "top-5 loc. err %",
                                  "top-1 class err %", "images"], rows, "llllrrrr"),  # fmt: skip
                  "", "A prediction is right when its class is the image's and its box overlaps a true box with "
                  "IoU > 0.5; the centre crop uses the true class, so its top-1 and top-5 errors are equal. The "
                  "class error is the classification net's own (dense, averaged over locations and scales), a "
                  "floor under the top-1 localisation error.", ""]
    return "\n".join(lines)


def _scales(r: LocResult) -> str:
    return ",".join(map(str, r.scales))


# ---- laptop-scale tables for `vgg reproduce` --------------------------------------------------------------------

# (epochs, training images per class, validation images per class) of the localisation nets of each grid
_REPRODUCE = {"quick": (1, 20, 5), "small": (4, 200, 50)}


def reproduce_localisation(plan, report: Path, log=print) -> str | None:
    """Localisation at laptop scale inside `vgg reproduce`: four nets (SCR / PCR, all layers / FC only) from the
    plan's net D at the small fixed scale, tested on a centre crop and densely; the tables go into OUT/localize/
    and are appended to REPORT.md. Returns the Markdown, or None when the plan has no such run or no boxes."""
    from .data import EMBEDDED
    from .report import write_report

    settings = _REPRODUCE.get(plan.grid)
    source = next((r for r in plan.runs if r.arch == "D" and r.label == "256"), None)
    if settings is None or source is None or not (source.folder / runs.MODEL_FILE).exists():
        return None
    data = str(plan.subset[0] if plan.subset else source.config().data)  # the full data set, not the quick subset
    if data not in EMBEDDED and not (Path(data) / B.BOXES_FILE).is_file():
        log(f"localisation tables skipped: {data} has no {B.BOXES_FILE}")
        return None
    epochs, per_class, val_per_class = settings
    out = plan.out / "localize"
    folders = [out / f"{regression}-{finetune}" for regression in REGRESSIONS for finetune in FINETUNE]
    threads = torch.get_num_threads()
    if plan.device == "cpu":
        torch.set_num_threads(1)  # small nets: one thread, as the plan's jobs (threads spinning on 2 shared cores)
    try:
        cached = out / "localize.json"
        if cached.is_file() and all((f / "done.json").is_file() for f in folders):  # nothing retrained: reuse
            saved = json.loads(cached.read_text())
            results, seconds = [LocResult(**r) for r in saved["results"]], saved["seconds"]
        else:
            t0 = time.perf_counter()
            results = []
            for folder in folders:
                regression, finetune = folder.name.split("-")
                if not (folder / "done.json").exists():
                    _rmtree(folder)
                    train_localisation(LocConfig(from_run=str(source.folder), regression=regression, finetune=finetune,
                                                 data=data, epochs=epochs, max_per_class=per_class,
                                                 val_per_class=val_per_class, device=plan.device, out=str(folder),
                                                 batch_size=32), log_fn=_quiet)  # fmt: skip
                    (folder / "done.json").write_text("{}\n")
                results.append(evaluate_localisation(folder, "center", data=data, max_per_class=val_per_class,
                                                     device=plan.device))  # fmt: skip
            best = out / "pcr-all"
            s = int(json.loads((best / LOC_FILE).read_text())["scale"])
            for scales in ([s], [s, s + s // 2, 2 * s]):
                results.append(evaluate_localisation(best, "dense", scales=scales, data=data,
                                                     max_per_class=val_per_class, device=plan.device))  # fmt: skip
            seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    s = results[0].scales[0]
    text = markdown_tables(results)
    intro = (f"Localisation (Appendix A) at laptop scale: net D of `{source.name}` (S = {s}) turned into box "
             f"regressors, {epochs} epoch(s) at lr 1e-3 on {per_class} images a class of {data}, tested on "
             f"{val_per_class} validation images a class; {seconds:.0f} s in all (training and evaluation).")
    write_report(out, "localize", intro + "\n\n" + text, {"results": [r.to_dict() for r in results],
                                                          "seconds": seconds})  # fmt: skip
    with open(report, "a") as f:
        f.write("\n" + intro + "\n\n" + text)
    log(f"localisation tables: {out / 'localize.md'}")
    return text


def _quiet(_: str) -> None:
    pass


def _rmtree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


# ---- the command line -------------------------------------------------------------------------------------------


def add_localize_arguments(parser: argparse.ArgumentParser) -> None:
    """`vgg localize train ...` and `vgg localize eval ...`."""
    sub = parser.add_subparsers(dest="localize_command", metavar="train|eval")
    p = sub.add_parser("train", help="train a box-regression net from a classification run (resumable)")
    p.add_argument("--from", dest="from_run", metavar="RUN", help="the classification run to start from")
    p.add_argument("--regression", choices=REGRESSIONS, default=None, help="scr: one box; pcr: a box per class "
                   "(default pcr)")  # fmt: skip
    p.add_argument("--finetune", choices=FINETUNE, default=None, help="all layers, or the FC layers only (default all)")
    for name in ("data", "boxes", "scale", "epochs", "batch_size", "lr", "max_per_class", "val_per_class", "workers",
                 "device", "seed", "out", "max_steps"):  # fmt: skip
        f = next(f for f in fields(LocConfig) if f.name == name)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=type(f.default), default=None,
                       help=f"(default {f.default!r})")  # fmt: skip
    p.add_argument("--resume", metavar="LOCRUN", help="continue a localisation run from its newest checkpoint")
    p.set_defaults(func=run_localize_train_cli)
    p = sub.add_parser("eval", help="localisation errors (Tables 8/9 of the paper): centre crop or dense + merging")
    p.add_argument("runs", nargs="+", metavar="LOCRUN", help="localisation run folders")
    p.add_argument("--protocol", default="center,dense", help="center, dense, or both comma-separated")
    p.add_argument("--scales", help="test scales Q, comma-separated (default: the run's S)")
    p.add_argument("--classifier", metavar="RUN", help="the classification run that rates the boxes (default: the "
                   "one the localisation net was made from)")  # fmt: skip
    p.add_argument("--data", help="data with boxes (default: the localisation run's)")
    p.add_argument("--boxes", help="a box CSV (default: the data's boxes.csv or VOC XML)")
    p.add_argument("--max-per-class", type=int, default=0, help="test on the first N images of each class")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="report folder (default: the first run's eval/)")
    p.set_defaults(func=run_localize_eval_cli)
    parser.set_defaults(func=lambda args: parser.print_help() or 0)


def run_localize_train_cli(args: argparse.Namespace) -> int:
    given = {k: getattr(args, k) for k in ("regression", "finetune", "data", "boxes", "scale", "epochs", "batch_size",
                                           "lr", "max_per_class", "val_per_class", "workers", "device", "seed", "out",
                                           "max_steps")}  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if args.resume:
        run = train_localisation(given, resume=args.resume)
    else:
        if not args.from_run:
            raise ValueError("vgg localize train needs --from RUN (a classification run) or --resume LOCRUN")
        run = train_localisation(LocConfig(from_run=args.from_run, **given))
    print(f"localisation run: {run}")
    print(f"evaluate it with: vgg localize eval {run} --protocol center,dense")
    return 0


def run_localize_eval_cli(args: argparse.Namespace) -> int:
    from .report import write_report

    protocols = [p.strip().replace("centre", "center") for p in args.protocol.split(",") if p.strip()]
    for p in protocols:
        if p not in ("center", "dense"):
            raise ValueError(f"--protocol: unknown protocol {p!r}; use center, dense or center,dense")
    scales = None
    if args.scales:
        try:
            scales = [int(v) for v in args.scales.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--scales takes comma-separated integers, got {args.scales!r}") from None
    results = [evaluate_localisation(run, p, scales, args.classifier, args.data, args.max_per_class, args.boxes,
                                     args.device) for run in args.runs for p in protocols]  # fmt: skip
    text = markdown_tables(results)
    out = Path(args.out) if args.out else Path(args.runs[0]) / "eval"
    md, _ = write_report(out, "localize", text, {"results": [r.to_dict() for r in results]})
    print(text)
    print(f"report: {md}")
    return 0


__all__ = [
    "FINETUNE", "LocConfig", "LocResult", "REGRESSIONS", "box_loss", "box_outputs", "evaluate_localisation",
    "localisation_net", "markdown_tables", "merge_boxes", "reproduce_localisation", "select_boxes",
    "train_localisation", "window_boxes",
]  # fmt: skip
