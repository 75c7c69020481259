"""Fine-tuning: what ``--init-from``'s source decides about a new run (its net, its input convention, whether the
fine-tuning preset applies), which layers ``--freeze`` keeps fixed, and the optimizer's parameter groups
(``--head-lr-mult``). docs/finetune.md has the reasoning behind each choice.

Precedence when a config is resolved with a source (:func:`resolve_config`), lowest first: the paper's defaults <
the embedded data set's preset < what the source says (its net: config, batch norm, width, FC width, crop; its
training scale and input convention) < the fine-tuning preset (``config.FINETUNE_PRESET``) < a recipe < flags.
A flag that contradicts the source's net (``--arch vgg11`` with ``--init-from torchvision:vgg16``) is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .. import runs
from ..architectures import parse_name
from ..config import FINETUNE_PRESET, TrainConfig, explicit_values, from_dict, read_toml, resolve
from ..convention import IMAGENET_MEAN, IMAGENET_STD
from ..model import HEAD_NAMES, layer_names
from ..pretrained import SOURCES, arch_of_weights, canonical_source, imagenet_classes, resolve_weights
from ..runtime import is_main
from ..weights import PRETRAINED_CFG_KEY, read_state_dict, unwrap

_NET_KEYS = ("width", "fc_width", "crop_size")


@dataclass
class Source:
    """What ``--init-from``'s SOURCE says about the net it holds; None where it says nothing."""

    spec: str
    kind: str  # "run" (a run folder), "named" (torchvision:vgg16, ...), "file" (a weights file or URL)
    config: str  # the letter of Table 1
    batch_norm: bool
    net: dict[str, Any]  # width, fc_width, crop_size, as far as known
    num_classes: int | None = None
    scale: tuple[int, int] | None = None  # the training scale S (Smin, Smax)
    normalize: tuple[str, int] | None = None  # (--normalize, --pixel-range) that feed the net its input
    data: str | None = None  # a run's training data

    @property
    def name(self) -> str:
        return self.config + ("-BN" if self.batch_norm else "")


def describe_source(spec: str) -> Source:
    """Read ``--init-from``'s SOURCE: a run folder (its config.toml), a named source (its table entry; nothing
    is downloaded here), or a weights file / URL (its metadata, else the layout of its state dict)."""
    folder = Path(spec).expanduser()
    if folder.is_dir() and (folder / runs.CONFIG_FILE).is_file():
        cfg = from_dict(read_toml(folder / runs.CONFIG_FILE))
        config, bn = parse_name(cfg.arch)
        classes = _run_classes(folder)
        return Source(
            spec,
            "run",
            config,
            bn or cfg.batch_norm,
            dict(width=cfg.width, fc_width=cfg.fc_width, crop_size=cfg.crop_size),
            len(classes) if classes else None,
            (cfg.scale_min, cfg.scale_max),
            (cfg.normalize, cfg.pixel_range),
            cfg.data,
        )
    name = canonical_source(spec)
    if name is not None:
        config, bn = parse_name(SOURCES[name]["arch"])
        return Source(
            spec,
            "named",
            config,
            bn,
            dict(width=1.0, fc_width=4096, crop_size=224),
            len(imagenet_classes()),
            (256, 256),
            (SOURCES[name]["convention"], 1),
        )
    path, _ = resolve_weights(spec)
    sd, meta = read_state_dict(path)
    _, arch = arch_of_weights(None, sd, meta, None, path, {})
    cfg = json.loads(meta[PRETRAINED_CFG_KEY]) if PRETRAINED_CFG_KEY in meta else None
    crop = arch.get("crop_size", 224)
    resize = int(cfg.get("resize", 0)) if cfg else 0
    # a file without its training scale: the paper's (and torchvision's) ratio of scale to crop, 256 / 224
    scale = (resize, resize) if resize >= crop else (round(crop * 256 / 224),) * 2
    return Source(
        spec,
        "file",
        arch["config"],
        bool(arch.get("batch_norm")),
        {k: arch[k] for k in _NET_KEYS if k in arch},
        arch.get("num_classes"),
        scale,
        _normalize_of(cfg),
    )


def _run_classes(folder: Path) -> list[str] | None:
    try:
        return list(json.loads((folder / runs.CLASSES_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _normalize_of(cfg: dict[str, Any] | None) -> tuple[str, int] | None:
    """(--normalize, --pixel-range) that give the convention of a weights file's ``pretrained_cfg``: imagenet,
    or its mean pixel (``mean:R,G,B`` on [0, 1]) when it divides by no std; None when the file says nothing
    usable (then the run normalises with its own training set's mean)."""
    if not cfg or "mean" not in cfg or cfg.get("channel_order", "RGB") != "RGB":
        return None
    pr = int(cfg.get("pixel_range", 1))
    mean, std01 = [float(m) for m in cfg["mean"]], [float(s) for s in cfg.get("std", (1 / pr,) * 3)]
    std = [s * pr for s in std01]  # in the units of the pixel range: 1 for a mean-only convention
    if all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(mean + std01, IMAGENET_MEAN + IMAGENET_STD)):
        return "imagenet", 1
    if all(math.isclose(s, 1.0, abs_tol=1e-6) for s in std):
        return "mean:" + ",".join(f"{m:.6g}" for m in mean), pr
    return None


def _channels(width: float) -> int:
    return max(1, round(64 * width))  # conv1's channels: what a width is, as a state dict shows it


def check_net(src: Source, explicit: dict[str, Any]) -> None:
    """Refuse flags (or recipe keys) that contradict the net held by SOURCE, naming both and the fix. Net A
    into a deeper config is the paper's staged initialisation (section 3.1), not a contradiction."""
    where = f"--init-from {src.spec} holds net {src.name}"
    if "arch" in explicit or "batch_norm" in explicit:
        config, bn = parse_name(explicit.get("arch", src.config))
        bn = bn or bool(explicit.get("batch_norm", src.batch_norm if "arch" not in explicit else False))
        staged = src.config == "A" and not src.batch_norm and config != "A" and src.kind != "named"
        if (config, bn) != (src.config, src.batch_norm) and not staged:
            given = explicit.get("arch", src.config) + (" --batch-norm" if explicit.get("batch_norm") else "")
            raise ValueError(
                f"{where}, but --arch {given} asks for net {config + ('-BN' if bn else '')}: leave "
                f"--arch out (the net is taken from SOURCE) or pick weights of that net"
            )
    for key in _NET_KEYS:  # a named source's sizes are those of its table entry: its file checks them as it loads
        if key in explicit and key in src.net and src.kind != "named":
            mine, theirs = explicit[key], src.net[key]
            same = _channels(mine) == _channels(theirs) if key == "width" else mine == theirs
            if not same:
                flag = "--" + key.replace("_", "-")
                raise ValueError(
                    f"{where} of {key} {theirs}, but {flag} {mine} asks for another: its layers would "
                    f"not fit; leave {flag} out (it is taken from SOURCE)"
                )


def _same_data(a: str | None, b: str) -> bool:
    if a is None:
        return False
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def source_defaults(src: Source, explicit: dict[str, Any]) -> dict[str, Any]:
    """The values SOURCE gives the run where the recipe and flags give none: its net, its training scale
    (unless a scale is given) and its input convention (weights of unknown convention: pixels on [0, 1], the
    convention of every released VGG and of our runs with Glorot or He init)."""
    out: dict[str, Any] = dict(arch=src.config, batch_norm=src.batch_norm, **src.net)
    if src.scale is not None and not {"scale_min", "scale_max"} & set(explicit):
        out["scale_min"], out["scale_max"] = src.scale
    if src.normalize is not None:
        out["normalize"], out["pixel_range"] = src.normalize
    elif "pixel_range" not in explicit:
        out["pixel_range"] = 1
    return out


def resolve_config(overrides: dict[str, Any] | None = None, recipe: str | Path | None = None) -> TrainConfig:
    """``config.resolve`` with ``--init-from``'s source: the net and input convention come from SOURCE unless
    given, and the fine-tuning preset applies (``--finetune-preset auto``) when SOURCE's weights were trained on
    another label set: released weights, a weights file, or a run on other data; not for a
    run on the same data (the paper's staged initialisation of a deeper net from net A keeps the paper's recipe)."""
    explicit = explicit_values(overrides, recipe)
    if not explicit.get("init_from"):
        cfg = resolve(overrides, recipe)
        frozen_layers(cfg.arch, cfg.batch_norm, cfg.freeze)  # an unknown --freeze fails before the data are scanned
        return cfg
    src = describe_source(str(explicit["init_from"]))
    check_net(src, explicit)
    defaults = source_defaults(src, explicit)
    mode = explicit.get("finetune_preset", "auto")
    other = src.kind != "run" or not _same_data(src.data, str(explicit.get("data", TrainConfig.data)))
    on = mode == "on" or (mode == "auto" and other)
    if on:
        defaults.update(FINETUNE_PRESET)
    cfg = resolve(dict(overrides or {}, finetune_preset="on" if on else "off"), recipe, defaults=defaults)
    frozen_layers(cfg.arch, cfg.batch_norm, cfg.freeze)  # an unknown --freeze fails before the data are scanned
    if is_main():
        print(describe_plan(cfg, src), flush=True)
    return cfg


def describe_plan(cfg: TrainConfig, src: Source) -> str:
    """One line: what the run takes from SOURCE and, when on, the fine-tuning preset's values as resolved."""
    net = (
        f"net {src.name}, width {cfg.width:g}, fc {cfg.fc_width}, crop {cfg.crop_size}, "
        f"S [{cfg.scale_min}, {cfg.scale_max}]"
    )
    text = f"--init-from {src.spec}: {net}, input --normalize {cfg.normalize} --pixel-range {cfg.pixel_range}"
    if cfg.finetune_preset == "on":
        values = ", ".join(f"{k} {getattr(cfg, k):g}" for k in FINETUNE_PRESET)
        text += f"; fine-tuning preset (docs/finetune.md; flags override): {values}, freeze {cfg.freeze}"
    return text


# ---------------------------------------------------------------------------------------------------------------
# --freeze and --head-lr-mult


def frozen_layers(arch: str, batch_norm: bool, upto: str) -> list[str]:
    """The paper's names of the layers ``--freeze upto`` keeps fixed, in the net's order (convs, their batch norm
    and ReLUs, pools, then fc6 ... fc7): a conv's batch norm and ReLU go with it (conv4_2 freezes bn4_2);
    ``features`` is every conv layer, ``none`` nothing."""
    config, bn = parse_name(arch)
    names = layer_names(config, bn or batch_norm) + list(HEAD_NAMES)
    n_features = len(names) - len(HEAD_NAMES)
    if upto == "none":
        return []
    if upto == "features":
        return names[:n_features]
    if upto not in names[:-1]:
        convs = [n for n in names if n.startswith(("conv", "fc6", "fc7"))]
        raise ValueError(
            f"--freeze {upto}: net {config}{'-BN' if bn or batch_norm else ''} has no such layer below "
            f"fc8; use none, features, or one of {', '.join(convs)} (or a pool<b>)"
        )
    end = names.index(upto) + 1
    suffix = upto.lstrip("abcdefghijklmnopqrstuvwxyz")  # conv4_2 -> 4_2: its bn4_2 and relu4_2 go with it
    while end < len(names) - 1 and names[end].lstrip("abcdefghijklmnopqrstuvwxyz") == suffix:
        end += 1
    return names[:end]


class EvalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm of a frozen layer: it stays in eval mode (the running statistics of SOURCE normalise, and are
    not updated) when the net is put in training mode."""

    def train(self, mode: bool = True) -> EvalBatchNorm2d:
        return super().train(False)


def freeze(model: nn.Module, upto: str) -> list[str]:
    """Freeze the layers up to and including ``upto`` (:func:`frozen_layers`): their parameters get no gradient
    (and are left out of the optimizer by :func:`param_groups`); their batch norm stays in eval mode. Returns the
    names frozen. The state dict is unchanged, so checkpoints, weights and exports are those of any run."""
    net = unwrap(model)
    names = frozen_layers(net.arch["config"], net.arch["batch_norm"], upto)
    modules = [*net.features, *net.classifier]
    for m in modules[: len(names)]:
        for p in m.parameters():
            p.requires_grad_(False)
        if type(m) is nn.BatchNorm2d:
            m.__class__ = EvalBatchNorm2d  # the same module and tensors, with a train() that keeps eval mode
            m.eval()
    return names


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """SGD's parameter groups: the trainable parameters at ``lr``, and the last layer (fc8) at
    ``head_lr_mult * lr`` in a group of its own (one group when the multiplier is 1, as before it existed, so
    that older checkpoints resume). Each group's ``lr_mult`` is kept for the schedule: lr = rate * lr_mult."""
    net = unwrap(model)
    trainable = [p for p in net.parameters() if p.requires_grad]
    if cfg.head_lr_mult == 1.0:
        groups = [dict(params=trainable, lr=cfg.lr, lr_mult=1.0)] if trainable else []
    else:
        head = [p for p in net.get_classifier().parameters() if p.requires_grad]
        body = [p for p in trainable if all(p is not h for h in head)]
        groups = [dict(params=ps, lr=cfg.lr * m, lr_mult=m) for ps, m in ((body, 1.0), (head, cfg.head_lr_mult)) if ps]
    if not groups:
        raise ValueError(f"--freeze {cfg.freeze} leaves no layer to train")
    return groups


__all__ = [
    "EvalBatchNorm2d",
    "Source",
    "check_net",
    "describe_plan",
    "describe_source",
    "freeze",
    "frozen_layers",
    "param_groups",
    "resolve_config",
    "source_defaults",
]
