"""Localisation nets (Appendix A): a classification net whose last FC layer predicts boxes, its config and run.

A box is (centre x, centre y, width, height) as fractions of the crop side: 4 numbers (single-class regression,
SCR: one box shared by all classes) or 4 per class (per-class regression, PCR). The loss is Euclidean, on the
box of the image's class.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import runs
from ..config import TrainConfig, read_toml
from ..convention import Convention
from ..data import Stats
from ..evaluation.nets import weights_net
from ..model import VGG

REGRESSIONS = ("scr", "pcr")
FINETUNE = ("all", "fc")
LOC_FILE = "localize.json"
IOU_THRESHOLD = 0.5  # ILSVRC: a box is right when IoU > 0.5
MERGE_IOU = 0.5  # greedy merging joins two boxes that overlap by more than this


@dataclass
class LocConfig(TrainConfig):
    """A localisation run's config: the training engine's options (`vgg train`'s, with Appendix A's defaults
    below) and the box regression's. The net's shape, crop, S and input convention are the classification run's,
    filled in when the run starts (:func:`vggnet.localisation.training.adopt_source`)."""

    from_run: str = ""  # the classification run the net starts from (its S, stats and classes)
    regression: str = "pcr"  # scr: one box for all classes; pcr: one box per class
    finetune: str = "all"  # all: every layer; fc: the FC layers only (the conv layers frozen)
    boxes: str = ""  # a box CSV (default: boxes.csv at the data's root, or VOC XML beside the images)
    scale: int = 0  # training scale S; 0: the classification run's smallest S (the paper: the same S, no jittering)
    max_per_class: int = 0  # train on the first N images of each class (0: all)
    val_per_class: int = 0  # validate on the first N images of each class (0: all)
    # the input convention of --from weights that carry none (imagenet|caffe|mean:R,G,B; a run carries its own)
    source_normalize: str = ""
    # the engine's options whose defaults differ for localisation
    # data with boxes: an embedded set or a folder with a boxes.csv / VOC XML files; default: mnist-scale when
    # the run's data is an embedded set, else the run's data
    data: str = ""
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3  # the paper's
    lr_patience: int = 1
    lr_decays: int = 1
    flip: bool = False  # random horizontal flips (off for digits)
    colour_shift: float = 0.0  # the box targets are learnt on the images as they are
    workers: int = 0
    loader: str = "cpu"  # the GPU data path carries no boxes
    pixel_range: int = 1  # set from the classification run
    tensorboard: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.regression not in REGRESSIONS:
            raise ValueError(f"--regression must be scr or pcr, got {self.regression!r}")
        if self.finetune not in FINETUNE:
            raise ValueError(f"--finetune must be all or fc, got {self.finetune!r}")
        if self.loader != "cpu":
            raise ValueError("localisation trains on the CPU data path (the GPU path carries no boxes): --loader cpu")


LOC_FIELDS = frozenset(f.name for f in fields(LocConfig))


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


def stride(model: VGG) -> int:
    """The stride of the net's dense output in input pixels: 2 per max-pooling layer (32 for the paper's nets)."""
    return 2 ** sum(isinstance(m, nn.MaxPool2d) for m in model.features)


def load_source(spec: str | os.PathLike, device: str | torch.device = "cpu", normalize: str | None = None) -> runs.Run:
    """The classification net that localisation starts from (`vgg localize train --from`) or rates its boxes with
    (`vgg localize eval --classifier`): a run folder, or weights in any of the forms of
    :data:`vggnet.pretrained.WEIGHTS_FORMS`, loaded by the one loader (``evaluation.weights_net``) with the input
    convention they carry (or ``normalize``) and their classes; their S is the side they are resized to."""
    if runs.is_run(spec):
        return runs.load_run(spec, device)
    net = weights_net(str(spec), normalize or None)
    conv = net.convention
    if conv.channel_order != "RGB":
        raise ValueError(f"{spec}: weights that take {conv.channel_order} input cannot start a localisation net")
    cfg = getattr(net.model, "pretrained_cfg", None) or {}
    side = int(cfg.get("resize") or round(net.crop_size * 256 / 224))
    # the convention as a training set's statistics on [0, 1] with "standardize": exact for any RGB convention
    unit = float(conv.pixel_range)
    stats = Stats(
        tuple(m / unit for m in conv.mean),
        tuple(v / unit for v in conv.std),
        (0.0, 0.0, 0.0),
        ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    )
    config = dict(scale_min=side, scale_max=side, data="", normalize="standardize", pixel_range=1)
    classes = list(net.classes or [str(i) for i in range(net.num_classes)])
    return runs.Run(
        path=Path(str(spec)),
        model=net.model.to(device).eval(),
        config=config,
        classes=classes,
        convention=Convention.of_run(stats, "standardize", 1),
        stats=stats,
    )


def load_loc_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[runs.Run, dict[str, Any]]:
    """A finished localisation run (as a :class:`~vggnet.runs.Run` of its box net) and its localize.json."""
    path = Path(path)
    if not (path / LOC_FILE).is_file():
        if (path / runs.CONFIG_FILE).is_file():
            raise ValueError(
                f"{path} is not a localisation run (no {LOC_FILE}); make one with `vgg localize train --from {path}`"
            )
        raise FileNotFoundError(f"{path}: no localisation run here; make one with `vgg localize train --from RUN`")
    info = json.loads((path / LOC_FILE).read_text())
    run = runs.load_run(path, device)
    if "pixel_range" not in run.config and Path(info.get("from_run", "")).is_dir():
        # made before localisation recorded the pixel range: the classification run's convention is the one
        src = Path(info["from_run"])
        run.convention = runs.run_convention(read_toml(src / runs.CONFIG_FILE), Stats.load(src / runs.STATS_FILE))
    return run, info


__all__ = [
    "FINETUNE",
    "IOU_THRESHOLD",
    "LOC_FIELDS",
    "LOC_FILE",
    "MERGE_IOU",
    "REGRESSIONS",
    "LocConfig",
    "box_loss",
    "box_outputs",
    "load_loc_run",
    "load_source",
    "localisation_net",
    "select_boxes",
    "stride",
]
