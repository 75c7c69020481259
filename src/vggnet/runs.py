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
from .config import input_settings, read_toml
from .convention import Convention, ConventionTensors
from .data import Stats
from .weights import load_model

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.toml"
STATS_FILE = "stats.json"
CLASSES_FILE = "classes.json"
METRICS_FILE = "metrics.jsonl"
LOC_INFO_FILE = "localize.json"  # in a localisation run (vggnet.localisation.nets.LOC_FILE)


@dataclass
class Run(ConventionTensors):
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
    def scale_range(self) -> tuple[int, int]:
        """(Smin, Smax) of training; equal for a net trained at a fixed S."""
        return int(self.config["scale_min"]), int(self.config["scale_max"])


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
    try:
        convention = run_convention(config, stats)
    except ValueError as e:
        raise ValueError(
            f"{path / STATS_FILE} or {path / CONFIG_FILE} gives no usable input convention ({e}); "
            f"restore them from a copy of the run"
        ) from None
    check_run(path, config, classes, model, convention)
    return Run(path=path, model=model, config=config, classes=classes, convention=convention, stats=stats)


def run_convention(config: dict[str, Any], stats: Any) -> Convention:
    """The input convention of a run from its config (normalize, pixel_range) and stats.json."""
    return Convention.of_run(stats, *input_settings(config))


def _missing(path: Path, name: str) -> str:
    command = "vgg localize train" if (path / LOC_INFO_FILE).is_file() else "vgg train"
    if (path / "checkpoints").is_dir() and name == MODEL_FILE:
        return (
            f"{path / name} is missing: {path} has not finished an epoch yet (or its weights were moved); "
            f"continue it with `{command} --resume {path}`"
        )
    return (
        f"{path / name} is missing: {path} is not a finished `{command}` run; restore {name} from a copy of "
        f"the run (`{command} --resume {path}` continues an interrupted run)"
    )


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


def check_run(path: Path, config: dict[str, Any], classes: list[str], model: nn.Module, convention: Convention) -> None:
    """A run's files agree: classes.json with the weights (count and order), config.toml's architecture with
    the weights', stats.json finite and equal to the input convention the weights record."""
    outputs = getattr(model, "num_classes", len(classes))
    recorded = _recorded_classes(model)
    box_net = (path / LOC_INFO_FILE).is_file()  # a localisation run's net outputs boxes, not one score a class
    if len(classes) != outputs and not box_net:
        raise ValueError(
            f"{path / CLASSES_FILE} lists {len(classes)} classes but {path / MODEL_FILE} has {outputs} "
            f"outputs; {_restore_hint(recorded)}"
        )
    if recorded is not None and [str(c) for c in recorded] != [str(c) for c in classes]:
        raise ValueError(
            f"{path / CLASSES_FILE} disagrees with the class order recorded in {path / MODEL_FILE}; "
            f"{_restore_hint(recorded)}"
        )
    arch = getattr(model, "arch", {})
    if "arch" in config and arch.get("config"):
        letter, bn = parse_name(str(config["arch"]))
        if letter != arch["config"] or (config.get("batch_norm", False) or bn) != bool(arch.get("batch_norm")):
            raise ValueError(
                f"{path / CONFIG_FILE} says arch {config['arch']!r} but {path / MODEL_FILE} holds net "
                f"{arch['config']}{' with batch norm' if arch.get('batch_norm') else ''}; restore the "
                f"run's own weights or config.toml from a copy of the run"
            )
    values = list(convention.mean) + list(convention.std)
    if not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"{path / STATS_FILE} holds a mean {list(convention.mean)} / std {list(convention.std)} "
            f"that is not finite; restore it from a copy of the run"
        )
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean01 = convention.to_cfg()["mean"]
    if cfg.get("mean") and not torch.allclose(
        torch.tensor(cfg["mean"], dtype=torch.float64), torch.tensor(mean01, dtype=torch.float64), atol=1e-5
    ):
        raise ValueError(
            f"{path / STATS_FILE}'s mean RGB {mean01} differs from the {cfg['mean']} that "
            f"{path / MODEL_FILE} was trained with; restore stats.json from a copy of the run"
        )
