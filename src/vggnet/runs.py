"""A run is a folder: everything needed to resume, evaluate, predict or fuse lives in it.

    RUN/
      config.toml          the resolved training config (TrainConfig fields)
      model.safetensors    the latest weights, with the architecture in the file's metadata
      stats.json           mean RGB, std and PCA of the training set (the only preprocessing is the mean)
      classes.json         class names, in label order
      metrics.jsonl        one JSON object per logged step and per epoch
      checkpoints/         training state for resume (newest K kept)
      bad_files.txt        images that could not be read and were skipped
      eval/                evaluation reports (Markdown and JSON)
      plots/               learning curves (PNG)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .architectures import parse_name
from .config import LEGACY_PIXEL_RANGE, read_toml
from .data import IMAGENET_STATS, Stats
from .weights import load_model

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.toml"
STATS_FILE = "stats.json"
CLASSES_FILE = "classes.json"
METRICS_FILE = "metrics.jsonl"
LOC_INFO_FILE = "localize.json"  # in a localisation run (vggnet.localisation.nets.LOC_FILE)


@dataclass
class Run:
    """A trained run loaded from its folder."""

    path: Path
    model: nn.Module
    config: dict[str, Any]
    classes: list[str]
    mean: torch.Tensor  # (3,) on the [0, 1] pixel scale
    std: torch.Tensor  # (3,) ones unless the run divides by a std
    stats: Any = None  # vggnet.data.Stats of the training set

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def scale_range(self) -> tuple[int, int]:
        """(Smin, Smax) of training; equal for a net trained at a fixed S."""
        return int(self.config["scale_min"]), int(self.config["scale_max"])


def normalization(stats, mode: str, pixel_range: int = 1):
    """The statistics a run normalises with, and whether to divide by their std.

    ``mode`` "mean" (the paper): subtract the training set's mean RGB only; with ``pixel_range`` 255 the pixels
    stay on the 0-255 scale, as the authors' Caffe fed them (returned as a std of 1/255 to divide by, so every
    consumer computes ``(pixels / 255 - mean) / std`` = ``pixels - 255 * mean``); with 1 they are in [0, 1].
    With a std to divide by, the pixel range cancels out and is ignored. "standardize": subtract the mean
    and divide by the per-channel std of the training set (inputs of unit variance). "imagenet": torchvision's ImageNet
    mean and std (for weights trained that way); the PCA for the colour shift stays the training set's.
    """
    if mode == "mean":
        if pixel_range == 255:
            return Stats(stats.mean, (1 / 255,) * 3, stats.eigval, stats.eigvec, stats.images, stats.pixels), True
        if pixel_range != 1:
            raise ValueError(f"pixel_range must be 255 or 1, got {pixel_range}")
        return stats, False
    if mode == "standardize":
        return stats, True
    if mode == "imagenet":
        return Stats(IMAGENET_STATS.mean, IMAGENET_STATS.std, stats.eigval, stats.eigvec, stats.images, stats.pixels), True
    raise ValueError(f"unknown normalisation {mode!r}; use 'mean', 'standardize' or 'imagenet'")


def is_run(path: str | os.PathLike) -> bool:
    return (Path(path) / MODEL_FILE).is_file() and (Path(path) / CONFIG_FILE).is_file()


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> Run:
    """Load a run folder's model (eval mode), config, class names and statistics.

    The files are checked against each other (:func:`check_run`): a disagreement stops with one line naming
    the file and how to restore it, never a silently wrong label or error rate.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist; pass a folder made by `vgg train`")
    for name in (MODEL_FILE, CONFIG_FILE, STATS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(_missing(path, name))
    config = read_toml(path / CONFIG_FILE)
    stats = Stats.load(path / STATS_FILE)
    model = load_model(path / MODEL_FILE).to(device).eval()
    classes = _read_classes(path, model)
    norm, divide_std = normalization(stats, config.get("normalize", "mean"), config.get("pixel_range", LEGACY_PIXEL_RANGE))
    check_run(path, config, classes, model, norm, divide_std)
    mean = torch.tensor(norm.mean, dtype=torch.float32)
    std = torch.tensor(norm.std if divide_std else (1.0, 1.0, 1.0), dtype=torch.float32)
    return Run(path=path, model=model, config=config, classes=classes, mean=mean, std=std, stats=stats)


def _missing(path: Path, name: str) -> str:
    if (path / "checkpoints").is_dir() and name == MODEL_FILE:
        return (f"{path / name} is missing: {path} has not finished an epoch yet (or its weights were moved); "
                f"continue it with `vgg train --resume {path}`")  # fmt: skip
    return (f"{path / name} is missing: {path} is not a finished `vgg train` run; restore {name} from a copy of "
            f"the run (`vgg train --resume {path}` continues an interrupted run)")  # fmt: skip


def _recorded_classes(model: nn.Module) -> list[str] | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return list(cfg["classes"]) if cfg.get("classes") else None


def _restore_hint(recorded: list[str] | None) -> str:
    if recorded is None:
        return "restore it from a copy of the run"
    shown = json.dumps(recorded) if len(recorded) <= 20 else f"{json.dumps(recorded[:5])[:-1]}, ...]"
    return f"{MODEL_FILE} records its {len(recorded)} classes in label order: write {shown} back into it"


def _read_classes(path: Path, model: nn.Module) -> list[str]:
    """classes.json: a JSON list of names in label order; a missing or damaged one names what restores it."""
    file = path / CLASSES_FILE
    recorded = _recorded_classes(model)
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing; {_restore_hint(recorded)}")
    try:
        classes = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); {_restore_hint(recorded)}") from None
    if not isinstance(classes, list) or not all(isinstance(c, (str, int)) for c in classes):
        raise ValueError(f"{file} is not a JSON list of class names; {_restore_hint(recorded)}")
    return [str(c) if not isinstance(c, str) else c for c in classes]


def check_run(path: Path, config: dict[str, Any], classes: list[str], model: nn.Module, norm, divide_std: bool) -> None:
    """A run's files agree: classes.json with the weights (count and order), config.toml's architecture with
    the weights', stats.json finite and equal to the input convention the weights record."""
    outputs = getattr(model, "num_classes", len(classes))
    recorded = _recorded_classes(model)
    box_net = (path / LOC_INFO_FILE).is_file()  # a localisation run's net outputs boxes, not one score a class
    if len(classes) != outputs and not box_net:
        raise ValueError(f"{path / CLASSES_FILE} lists {len(classes)} classes but {path / MODEL_FILE} has {outputs} "
                         f"outputs; {_restore_hint(recorded)}")  # fmt: skip
    if recorded is not None and [str(c) for c in recorded] != [str(c) for c in classes]:
        raise ValueError(f"{path / CLASSES_FILE} disagrees with the class order recorded in {path / MODEL_FILE}; "
                         f"{_restore_hint(recorded)}")  # fmt: skip
    arch = getattr(model, "arch", {})
    if "arch" in config and arch.get("config"):
        letter, bn = parse_name(str(config["arch"]))
        if letter != arch["config"] or (config.get("batch_norm", False) or bn) != bool(arch.get("batch_norm")):
            raise ValueError(f"{path / CONFIG_FILE} says arch {config['arch']!r} but {path / MODEL_FILE} holds net "
                             f"{arch['config']}{' with batch norm' if arch.get('batch_norm') else ''}; restore the "
                             f"run's own weights or config.toml from a copy of the run")  # fmt: skip
    values = list(norm.mean) + list(norm.std if divide_std else ())
    if not all(math.isfinite(v) for v in values) or (divide_std and min(norm.std) <= 0):
        raise ValueError(f"{path / STATS_FILE} holds a mean {list(norm.mean)} / std {list(norm.std)} that is not "
                         f"finite (or a std <= 0); restore it from a copy of the run")  # fmt: skip
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("mean") and not torch.allclose(torch.tensor(cfg["mean"], dtype=torch.float64),
                                             torch.tensor(list(norm.mean), dtype=torch.float64), atol=1e-5):  # fmt: skip
        raise ValueError(f"{path / STATS_FILE}'s mean RGB {list(norm.mean)} differs from the {cfg['mean']} that "
                         f"{path / MODEL_FILE} was trained with; restore stats.json from a copy of the run")  # fmt: skip
