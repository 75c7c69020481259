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

from .config import input_settings, read_toml
from .convention import Convention
from .data import Stats
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
    convention: Convention  # how pixels become the net's input (vggnet.convention)
    stats: Any = None  # vggnet.data.Stats of the training set

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def mean(self) -> torch.Tensor:
        """(3,) on the [0, 1] pixel scale: the net sees ``(pixels / 255 - mean) / std`` (the canonical form)."""
        return self.convention.mean01

    @property
    def std(self) -> torch.Tensor:
        return self.convention.std01

    @property
    def scale_range(self) -> tuple[int, int]:
        """(Smin, Smax) of training; equal for a net trained at a fixed S."""
        return int(self.config["scale_min"]), int(self.config["scale_max"])


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
    return Run(path=path, model=model, config=config, classes=classes, convention=run_convention(config, stats),
               stats=stats)  # fmt: skip


def run_convention(config: dict[str, Any], stats: Any) -> Convention:
    """The input convention of a run from its config (normalize, pixel_range) and stats.json."""
    return Convention.of_run(stats, *input_settings(config))
