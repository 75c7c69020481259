"""The training config: one typed dataclass, overlaid by a data set's preset, a TOML recipe and flags.

Precedence, lowest first: the paper's defaults (the dataclass) < the embedded data set's preset (a small net
for ``mnist`` / ``mnist-scale`` when no recipe or flag says otherwise) < the recipe file < command-line flags.
The resolved config is written into the run folder (config.toml) and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .architectures import parse_name
from .convention import NORMALIZE_HELP, check_normalize


def option(default: Any, help: str) -> Any:
    """A TrainConfig field with its command-line help beside it (``vgg train --help`` reads it from here)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # --- model
    arch: str = option("A", "config letter (A, A-LRN, B, C, D, E) or alias (vgg16, vgg16_bn, ...)")
    width: float = option(1.0, "multiplier on conv channels (1/4 turns 64..512 into 16..128)")
    fc_width: int = option(4096, "width of FC1 and FC2")
    crop_size: int = option(224, "training crop; a multiple of 32")
    dropout: float = option(0.5, "dropout ratio after FC1 and FC2")
    batch_norm: bool = option(False, "not in the paper; torchvision's _bn nets")
    init: str = option(
        "paper",
        "paper: N(0, 0.01^2) as the authors' Caffe filler; paper-literal: std 0.1; glorot; kaiming",
    )
    init_from: str = option(
        "",
        "SOURCE: a run folder (net A -> the paper's transfer to a deeper net; the same net "
        "-> all its weights), a weights file of any layout, a URL, torchvision:vgg16, "
        "timm:vgg16.tv_in1k or caffe:vgg16 (fine-tuning); the net (--arch, width, crop) and "
        "its input convention come from SOURCE unless given (docs/finetune.md)",
    )
    finetune_preset: str = option(
        "auto",
        "the fine-tuning preset under --init-from (docs/finetune.md: lr 1e-3, 20 epochs, new layer at 10x lr, ...; "
        "flags override each value): auto: on when SOURCE was trained on another label set (released weights, a "
        "weights file, a run on other data), off for a run on the same data (the paper's staged init); on; off. "
        "The run records on or off",
    )
    freeze: str = option(
        "none",
        "train nothing up to and including this layer of the paper's naming: conv5_3, "
        "conv4_3, pool4, ... (the names of the net's own config), fc6, fc7, "
        "features (every conv: train the classifier only) or none; frozen batch norm stays in eval "
        "mode",
    )
    head_lr_mult: float = option(
        1.0, "the last layer (fc8, new when the classes differ from SOURCE's) learns at this multiple of --lr"
    )
    # --- data
    data: str = option(
        "mnist",
        "an embedded set (mnist, mnist-scale, mnist-clutter, uci-digits) or a folder (train/ and val/, or one "
        "class tree)",
    )
    val: str = option("", "a separate validation folder")
    val_fraction: float = option(0.1, "held-out share when data is one class tree")
    class_names: str = option("", "optional file of class names")
    scale_min: int = option(256, "training scale S (smallest side) is drawn from [scale_min, scale_max]")
    scale_max: int = option(256, "equal to scale_min for single-scale training")
    flip: bool = option(True, "random horizontal flips")
    colour_shift: float = option(0.1, "std of AlexNet's PCA colour shift alphas; 0 turns it off")
    normalize: str = option("mean", NORMALIZE_HELP)
    pixel_range: int = option(
        0,
        "with normalize=mean: 255 feeds pixels 0-255 minus the mean RGB (the authors' Caffe); 1: [0, 1]; 0: "
        "255 for the paper's init, 1 for glorot/kaiming",
    )
    stats_images: int = option(10000, "images sampled for the mean RGB / PCA statistics")
    workers: int = option(-1, "data loader processes; -1: one per CPU core, up to 8")
    cache_images: bool = option(
        False,
        "keep the decoded images in memory (in each loader process) after their first use: for data sets that "
        "fit, like the embedded ones (whose presets turn it on); JPEGs are then decoded at full size",
    )
    # --- optimisation (section 3.1)
    epochs: int = option(74, "the most epochs to run; the plateau schedule usually stops earlier (the paper: 74)")
    batch_size: int = option(256, "the global batch: summed over processes and accumulation steps")
    accum_steps: int = option(1, "gradient accumulation: micro-batch = batch_size / (processes * accum_steps)")
    lr: float = option(1e-2, "initial learning rate of SGD (the paper: 1e-2, divided by 10 at each plateau)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "L2 penalty multiplier (the paper: 5e-4)")
    plateau: str = option(
        "trend",
        "how 'the val top-1 error stopped improving' is decided (docs/plateau.md): trend: the least-squares line "
        "through the last --lr-window epochs at this lr does not fall; best: no new best for more than "
        "--lr-patience epochs (fires on validation noise)",
    )
    lr_window: int = option(5, "trend rule: epochs at one lr whose fitted line decides a plateau (at least 2)")
    lr_patience: int = option(2, "best rule: epochs without a new best val top-1 error before lr /= 10")
    lr_threshold: float = option(1e-3, "a fall of the val top-1 error (absolute) smaller than this does not count")
    lr_decays: int = option(3, "at most this many decreases; training stops at the plateau after the last")
    label_smoothing: float = option(0.0, "not in the paper; 0 turns it off")
    # --- system
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    amp: bool = option(True, "bf16 autocast (CUDA only)")
    channels_last: bool = option(True, "channels-last memory format (faster on CUDA and, through oneDNN, on the CPU)")
    compile: bool = option(True, "torch.compile (CUDA only)")
    fused: bool = option(True, "fused SGD kernel (CUDA only)")
    loader: str = option(
        "auto",
        "auto: gpu on CUDA with JPEG data, else cpu; cpu: decode + augment in worker processes; gpu: nvJPEG "
        "decode + batched augmentation on the device",
    )
    seed: int = option(0, "seeds the init, the data order and every augmentation (runs are reproducible)")
    out: str = option("", "run folder; default: a new numbered folder under ./runs")
    log_every: int = option(50, "optimizer steps between log lines")
    checkpoint_every: int = option(0, "optimizer steps between checkpoints (0: at epoch ends only)")
    keep_checkpoints: int = option(2, "the newest K checkpoints are kept")
    max_steps: int = option(0, "stop after this many optimizer steps in all (0: no limit)")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms (slower)")
    tensorboard: bool = option(True, "log to RUN/tensorboard (says once when tensorboard is not installed)")

    def __post_init__(self) -> None:
        if self.scale_max < self.scale_min:
            raise ValueError(f"scale_max ({self.scale_max}) < scale_min ({self.scale_min})")
        if self.scale_min < self.crop_size:
            raise ValueError(
                f"training scale S={self.scale_min} is smaller than the crop {self.crop_size}; the paper needs "
                f"S >= crop (set --scale to at least {self.crop_size})"
            )
        if self.batch_size < 1 or self.accum_steps < 1 or self.batch_size % self.accum_steps:
            raise ValueError(
                f"batch_size {self.batch_size} must be a positive multiple of accum_steps {self.accum_steps}"
            )
        if self.loader not in ("auto", "cpu", "gpu"):
            raise ValueError(f"loader must be 'auto', 'cpu' or 'gpu', got {self.loader!r}")
        if self.pixel_range == 0:
            # The paper's N(0, 0.01^2) was made for the authors' 0-255 pixels; Glorot and He keep the scale of
            # their input through the net, so they want inputs of unit scale (init.py's module doc).
            self.pixel_range = 255 if self.init.startswith("paper") else 1
        if self.pixel_range not in (1, 255):
            raise ValueError(
                f"pixel_range must be 255 (the authors' 0-255 pixels) or 1 ([0, 1]), got {self.pixel_range}"
            )
        check_normalize(self.normalize)
        try:
            parse_name(self.arch)  # an unknown --arch fails here, before the data are scanned
        except ValueError as e:
            raise ValueError(f"--arch: {e}") from None
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.keep_checkpoints < 1:
            raise ValueError(
                f"--keep-checkpoints must be at least 1 (the newest is needed to resume), got {self.keep_checkpoints}"
            )
        for name in ("checkpoint_every", "max_steps", "stats_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"--log-every must be at least 1, got {self.log_every}")
        if self.workers < -1:
            raise ValueError(f"--workers must be -1 (one per core) or 0 or more, got {self.workers}")
        if self.plateau not in ("trend", "best"):
            raise ValueError(f"--plateau must be trend or best, got {self.plateau!r}")
        if self.lr_window < 2:
            raise ValueError(f"--lr-window must be at least 2 epochs, got {self.lr_window}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if not (self.head_lr_mult > 0 and math.isfinite(self.head_lr_mult)):
            raise ValueError(f"--head-lr-mult must be a positive number, got {self.head_lr_mult}")
        if self.finetune_preset not in ("auto", "on", "off"):
            raise ValueError(f"--finetune-preset must be auto, on or off, got {self.finetune_preset!r}")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Values outside what SGD and the data split can use: one line naming the flag."""
        for name, low, high, text in (
            ("momentum", 0, 1, "0 <= m < 1"),
            ("dropout", 0, 1, "0 <= p < 1"),
            ("label_smoothing", 0, 1, "0 <= e < 1"),
            ("val_fraction", 0, 1, "0 <= f < 1"),
            ("weight_decay", 0, math.inf, "0 or more"),
            ("colour_shift", 0, math.inf, "0 or more"),
            ("lr_threshold", 0, math.inf, "0 or more"),
        ):
            v = getattr(self, name)
            if not (low <= v < high or v == high == math.inf):  # NaN fails both; inf is allowed where unbounded
                raise ValueError(f"--{name.replace('_', '-')} must be {text}, got {v}")
        for name in ("width", "fc_width", "lr_patience", "lr_decays"):
            if not getattr(self, name) > 0 and not (name in ("lr_patience", "lr_decays") and getattr(self, name) == 0):
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Presets of the embedded data sets: a net and a schedule sized for 2 CPU cores (flips are off: digits
# are not mirror-symmetric). They apply only to fields that neither a recipe nor a flag sets. The demo's
# (mnist): S up to 44 (shifts of up to 12 px: the one augmentation digits get), dropout 0.5 and label smoothing
# 0.1 for its 4,000 digits; the paper's net A, no batch norm; docs/demo.md has the experiments.
PRESETS: dict[str, dict[str, Any]] = {
    "mnist": dict(
        arch="A",
        width=0.25,
        fc_width=256,
        crop_size=32,
        scale_min=32,
        scale_max=44,
        flip=False,
        init="kaiming",
        epochs=18,
        batch_size=64,
        lr=0.02,
        lr_decays=2,
        stats_images=2000,
        log_every=20,
        dropout=0.5,
        label_smoothing=0.1,
        workers=1,
        cache_images=True,
    ),
    "mnist-scale": dict(
        arch="A",
        width=0.25,
        fc_width=256,
        crop_size=32,
        scale_min=32,
        scale_max=64,
        flip=False,
        init="kaiming",
        epochs=10,
        batch_size=64,
        lr=0.02,
        lr_decays=2,
        stats_images=2000,
        log_every=20,
        dropout=0.3,
        workers=1,
        cache_images=True,
    ),
    "mnist-clutter": dict(  # the small reproduction grid's nets: 64 crops, block 5's convs on 4x4 maps
        arch="A",
        width=0.0625,
        fc_width=128,
        crop_size=64,
        scale_min=64,
        scale_max=128,
        flip=False,
        init="kaiming",
        epochs=40,
        batch_size=32,
        lr=0.01,
        lr_decays=2,
        stats_images=1000,
        log_every=50,
        dropout=0.0,
        workers=1,
        cache_images=True,
    ),
}

# The fine-tuning preset (docs/finetune.md has the reasoning): applied under --init-from when SOURCE's weights were
# trained on another label set, over the data set's preset and under a recipe and flags.
# - lr 1e-3: the paper's own rate for starting from trained weights (S = 384 from S = 256; localisation from the
#   classifier); the from-scratch 1e-2 would move pretrained filters far in the first steps.
# - head_lr_mult 10: the last layer, new and random, learns at 1e-2 (Caffe's fine-tuning example, the
#   authors' framework: base_lr 1e-3 and lr_mult 10 on the new fc8), so it catches up with the trained layers.
# - epochs 20, lr_decays 2: the same plateau rule (trend over 5 epochs) with room for two decreases; starting
#   from trained features, a small set is fitted in a few epochs, not 74.
# - dropout 0.5, weight decay 5e-4, momentum 0.9: as the released nets were trained; the pretrained FC layers
#   were fitted with dropout and a small target set needs its regularisation more, not less. At lr 1e-3 the
#   decay shrinks a weight by 5e-7 a step: it does not pull the pretrained filters to zero.
# - the scale: the source's training scale (set with the architecture, not here), so that the filters see
#   objects at the size they learned them.
FINETUNE_PRESET: dict[str, Any] = dict(
    lr=1e-3,
    head_lr_mult=10.0,
    epochs=20,
    lr_decays=2,
    dropout=0.5,
    weight_decay=5e-4,
    momentum=0.9,
)

_FIELDS = {f.name: f for f in fields(TrainConfig)}


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a TOML recipe: top-level keys (or keys in any [table], flattened) named like TrainConfig fields.

    A key set twice (in two tables, or at the top and in a table) is refused, naming both places: which one
    wins would be a guess.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist; see the recipes/ folder for examples")
    raw = read_toml(path)
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}
    for table, items in [("", {k: v for k, v in raw.items() if not isinstance(v, dict)})] + [
        (f"[{k}]", v) for k, v in raw.items() if isinstance(v, dict)
    ]:
        for k, v in items.items():
            key = k.replace("-", "_")
            if isinstance(v, dict):
                raise ValueError(f"{path}: [{table.strip('[]')}.{k}] nests a table; a recipe has one level of tables")
            if key in flat:
                first, second = where[key] or "the top level", table or "the top level"
                raise ValueError(f"{path}: {key} is set in {first} and in {second}; set it once")
            flat[key], where[key] = v, table
    unknown = sorted(set(flat) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown recipe keys {unknown}; valid keys are the `vgg train` options")
    return flat


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a syntax error becomes a ValueError naming the file and the line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        # a byte-order mark (some Windows editors write one) is not TOML, but it is only a marker: skip it
        return tomllib.loads(data.decode("utf-8").removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}; fix the file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a UTF-8 text file (TOML); fix the file") from None


def read_run_config(path: str | Path) -> dict[str, Any]:
    """A run's config.toml, as read to continue it: a key that is no option (a typo in a hand edit) is refused,
    naming the file, rather than dropped."""
    values = read_toml(path)
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {unknown}; the keys are the `vgg train` options with _ for - "
            f"(fix or delete those lines)"
        )
    return values


def toml_text(values: dict[str, Any]) -> str:
    """A flat dict of strings, numbers and booleans as TOML (what config.toml holds; read back by read_toml)."""
    lines = []
    for k, v in values.items():
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, (int, float)):
            text = repr(v)  # Python's int and float forms are TOML's (1e-05, inf, nan included)
        elif isinstance(v, str):
            text = json.dumps(_readable(k, v))  # JSON's string escapes are valid in TOML's basic strings
        else:
            raise TypeError(f"config key {k}: cannot write a {type(v).__name__} as a TOML value")
        lines.append(f"{k} = {text}")
    return "\n".join(lines) + "\n"


def _readable(key: str, v: str) -> str:
    """A string as Unicode every reader can decode: a path that a non-UTF-8 locale (LC_ALL=C) decoded with
    surrogate escapes is turned back into its UTF-8 text, or refused naming the key."""
    try:
        v.encode("utf-8")
        return v
    except UnicodeEncodeError:
        pass
    try:
        return v.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        raise ValueError(
            f"{key} {v!r} holds bytes that are not UTF-8 text; use a UTF-8 name (or PYTHONUTF8=1)"
        ) from None


# Keys that say how a run executes and logs, never what it computes (beyond the order of floating-point sums):
# the device, precision and memory format, the loader, logging, checkpoints and the output folder. A reproduction
# reuses a finished run whose config differs from its plan only in these (and in where its init came from).
HOW_IT_RUNS = frozenset(
    "device amp channels_last compile fused loader workers cache_images log_every checkpoint_every keep_checkpoints "
    "tensorboard deterministic out".split()
)
# Keys a resumed run may change: how and how long it runs, never what it learns from or into. ``lr`` given on
# resume replaces the schedule's current rate; the schedule's knobs apply from the resumed epoch on.
SAFE_ON_RESUME = HOW_IT_RUNS | frozenset(
    "epochs max_steps lr plateau lr_window lr_patience lr_threshold lr_decays stats_images".split()
)


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The keys of ``new`` whose value differs from ``saved``: {key: (saved value, new value)}."""
    return {k: (saved[k], v) for k, v in new.items() if k in _FIELDS and k in saved and saved[k] != v}


def refuse_unsafe_changes(changes: dict[str, tuple[Any, Any]], where: str, run: Path | str) -> None:
    """Raise a ValueError naming every key of ``changes`` that a resumed run cannot take."""
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_ON_RESUME}
    if not unsafe:
        return
    named = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in sorted(unsafe.items()))
    raise ValueError(
        f"{where} changes {named} of the run in {run}, which cannot change in the middle of a run; keep them, "
        f"or start a new run with another --out. Safe to change on resume: {', '.join(sorted(SAFE_ON_RESUME))}"
    )


def explicit_values(overrides: dict[str, Any] | None = None, recipe: str | Path | None = None) -> dict[str, Any]:
    """The values a recipe and flags set (flags over the recipe; None values are not set)."""
    values: dict[str, Any] = {}
    if recipe:
        values.update(read_recipe(recipe))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown training options {unknown}")
    return values


def resolve(
    overrides: dict[str, Any] | None = None, recipe: str | Path | None = None, defaults: dict[str, Any] | None = None
) -> TrainConfig:
    """Build the config: paper defaults < data preset < ``defaults`` < recipe < overrides (None values are
    ignored). ``defaults``: what --init-from's source sets (its net and the fine-tuning preset,
    vggnet.training.finetune)."""
    values = explicit_values(overrides, recipe)
    data = values.get("data", TrainConfig.data)
    preset = {k: v for k, v in PRESETS.get(data, {}).items() if k not in values}
    merged = {**preset, **(defaults or {}), **values}
    return TrainConfig(**{k: _coerce(k, v) for k, v in merged.items()})


def _coerce(name: str, value: Any) -> Any:
    kind = type(_FIELDS[name].default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind):
        raise ValueError(f"option {name} must be {kind.__name__}, got {value!r}")
    return value


def from_dict(d: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a saved dict (config.toml or a checkpoint), ignoring keys of other versions."""
    d = {k: v for k, v in d.items() if k in _FIELDS}
    d["normalize"], d["pixel_range"] = input_settings(d)
    return TrainConfig(**d)


def input_settings(d: dict[str, Any]) -> tuple[str, int]:
    """(normalize, pixel_range) of a saved config; a run saved before the pixel_range option fed [0, 1]."""
    return str(d.get("normalize", "mean")), int(d.get("pixel_range", 1))


def field_help() -> dict[str, str]:
    """Each option's help text, from its field's metadata."""
    return {f.name: f.metadata.get("help", "") for f in fields(TrainConfig)}


__all__ = [
    "FINETUNE_PRESET",
    "HOW_IT_RUNS",
    "PRESETS",
    "SAFE_ON_RESUME",
    "TrainConfig",
    "config_changes",
    "explicit_values",
    "field_help",
    "from_dict",
    "read_recipe",
    "read_run_config",
    "read_toml",
    "refuse_unsafe_changes",
    "resolve",
    "toml_text",
]
