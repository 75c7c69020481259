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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import LEGACY_PIXEL_RANGE, read_toml
from .data import IMAGENET_STATS, Stats
from .weights import load_model

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.toml"
STATS_FILE = "stats.json"
CLASSES_FILE = "classes.json"
METRICS_FILE = "metrics.jsonl"


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
    """Load a run folder's model (eval mode), config, class names and statistics."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist; pass a folder made by `vgg train`")
    for name in (MODEL_FILE, CONFIG_FILE, STATS_FILE, CLASSES_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} is missing: {path} is not a finished `vgg train` run "
                f"(an interrupted run can be continued with `vgg train --resume {path}`)"
            )
    config = read_toml(path / CONFIG_FILE)
    stats = Stats.load(path / STATS_FILE)
    classes = json.loads((path / CLASSES_FILE).read_text())
    model = load_model(path / MODEL_FILE).to(device).eval()
    norm, divide_std = normalization(stats, config.get("normalize", "mean"), config.get("pixel_range", LEGACY_PIXEL_RANGE))
    mean = torch.tensor(norm.mean, dtype=torch.float32)
    std = torch.tensor(norm.std if divide_std else (1.0, 1.0, 1.0), dtype=torch.float32)
    return Run(path=path, model=model, config=config, classes=classes, mean=mean, std=std, stats=stats)
