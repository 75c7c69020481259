"""The VGG weights people already have: named sources, downloads on request, and the input convention of each.

``pretrained`` (in ``create_model``, ``--weights``, ``--init-from``) is one of

- a local file: our safetensors, or a torchvision / timm / Caffe-converted state dict (``.pth``, ``.safetensors``);
- a URL: downloaded by torch.hub's client into its cache (``torch.hub.get_dir()/checkpoints``), atomically, with
  the sha256 prefix that torchvision-style file names carry (``vgg16-397923af.pth``) checked;
- a named source (``SOURCES``): ``torchvision:vgg16`` (and vgg11, vgg13, vgg19, their ``_bn``), ``timm:vgg16.tv_in1k``
  (timm's files on the Hugging Face Hub, fetched by ``huggingface_hub`` into its cache) and ``caffe:vgg16`` /
  ``caffe:vgg19`` (the authors' Caffe weights as converted to a PyTorch state dict by Justin Johnson).

Nothing is downloaded unless asked for. A named source is also found offline at ``local_path(name)`` (the
file the error messages name). ``VGGNET_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) forbids the network.

Every model that loads weights gets ``model.pretrained_cfg``: the input convention of those weights, always in
one canonical form, RGB pixels on [0, 1], then ``(x - mean) / std``; with resize and crop sizes, interpolation
and class names. The authors' Caffe weights expect BGR pixels on [0, 255] minus the mean BGR
(103.939, 116.779, 123.68): the channel flip and the x255 are folded into conv1, so that they too take RGB on
[0, 1] minus the mean RGB / 255. The fold is exact, borders included: zero padding of a mean-subtracted input is
zero padding in both conventions.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import runs
from .architectures import parse_name
from .config import read_toml
from .convention import (
    CAFFE_MEAN_BGR,  # noqa: F401 - the authors' mean pixel, named here beside the Caffe source
    CAFFE_MEAN_RGB01,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Convention,
    parse_normalize,
)
from .data import Stats
from .downloads import WeightsError, download, hub_dir, offline
from .features import VGGFeatures
from .model import VGG, load_state, meta_model
from .weights import (
    ARCH_KEY,
    PRETRAINED_CFG_KEY,
    check_state_dict,
    convert_state_dict,
    from_caffe_names,
    infer_arch,
    infer_config,
    is_caffe_named,
    read_state_dict,
    unwrap,
)

# Where the named sources live; tests point these at a local server.
TORCHVISION_URL = "https://download.pytorch.org/models"
CAFFE_URL = "https://web.eecs.umich.edu/~justincj/models"
HF_ENDPOINT = "https://huggingface.co"

_TV_FILES = {
    "vgg11": "vgg11-8a719046.pth",
    "vgg13": "vgg13-19584684.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "vgg11_bn": "vgg11_bn-6002323d.pth",
    "vgg13_bn": "vgg13_bn-abd245e5.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "vgg19_bn": "vgg19_bn-c79401a0.pth",
}
_CAFFE_FILES = {"vgg16": "vgg16-00b39a1b.pth", "vgg19": "vgg19-d01eb7cb.pth"}


def _source(kind: str, arch: str, **extra: Any) -> dict[str, Any]:
    return dict(kind=kind, arch=arch, **extra)


# name -> how to fetch it and the convention of its weights ("imagenet": torchvision's; "caffe": the authors')
SOURCES: dict[str, dict[str, Any]] = {
    **{
        f"torchvision:{a}": _source("url", a, file=f, base="TORCHVISION_URL", convention="imagenet")
        for a, f in _TV_FILES.items()
    },
    **{
        f"timm:{a}.tv_in1k": _source("hf", a, repo=f"timm/{a}.tv_in1k", file="model.safetensors", convention="imagenet")
        for a in _TV_FILES
    },
    **{f"caffe:{a}": _source("url", a, file=f, base="CAFFE_URL", convention="caffe") for a, f in _CAFFE_FILES.items()},
}

# the --normalize forms that need no training set's statistics: those a weights file can be stated to expect
NORMALIZE_FORMS_OF_WEIGHTS = "imagenet|caffe|mean:R,G,B"
NORMALIZE_HELP = f"--normalize {NORMALIZE_FORMS_OF_WEIGHTS}"
# What every option that names weights takes (--weights, --init-from, localize's --from), through resolve_weights()
WEIGHTS_FORMS = (
    "a run folder, a weights file (ours, torchvision's, timm's or Caffe-named; .safetensors or "
    ".pth), a URL, torchvision:vgg16 (vgg11 ... vgg19_bn), timm:vgg16.tv_in1k or caffe:vgg16|vgg19"
)


# ---------------------------------------------------------------------------------------------------------------
# The input convention (pretrained_cfg)


def imagenet_classes() -> list[str]:
    """ImageNet's 1,000 class names in the label order of the released nets (shipped with the package)."""
    text = resources.files("vggnet.data").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]


def make_cfg(
    convention: Convention,
    *,
    source: str = "",
    num_classes: int | None = None,
    classes: list[str] | None = None,
    resize: int = 256,
    crop: int = 224,
    interpolation: str = "bilinear",
    original: str = "RGB, [0, 1]",
) -> dict[str, Any]:
    """A ``pretrained_cfg``: the input ``convention`` (:meth:`Convention.to_cfg`: mean and std on [0, 1], with
    the pixel range and channel order), resize and crop sizes, interpolation and class names.

    ``original`` records the convention the weights were trained with when it differed (folded into conv1).
    """
    return dict(
        source=source,
        **convention.to_cfg(),
        resize=resize,
        crop=crop,
        interpolation=interpolation,
        num_classes=num_classes,
        classes=classes,
        original=original,
    )


def convention_of(model: nn.Module) -> Convention | None:
    """The input convention the model's weights expect (its ``pretrained_cfg``); None when it carries none."""
    return Convention.from_cfg(getattr(unwrap(model), "pretrained_cfg", None))


def normalization_cfg(spec: str, source: str = "", crop: int = 224) -> tuple[dict[str, Any], bool]:
    """``--normalize`` of weights as ``(pretrained_cfg, fold_caffe)``: ``imagenet`` (torchvision's mean and std),
    ``caffe`` (BGR 0-255 minus the authors' mean: folded into conv1) or ``mean:R,G,B`` (a mean pixel to
    subtract, on [0, 255], or on [0, 1] when every value is <= 1)."""
    resize = round(crop * 256 / 224)
    if spec.strip().lower() == "caffe":
        return _caffe_cfg(source, resize, crop), True
    try:
        conv = parse_normalize(spec)
    except ValueError as e:
        raise WeightsError(str(e)) from None
    return make_cfg(conv, source=source, resize=resize, crop=crop), False


def _caffe_cfg(source: str, resize: int = 256, crop: int = 224) -> dict[str, Any]:
    return make_cfg(
        Convention(CAFFE_MEAN_RGB01),
        source=source,
        resize=resize,
        crop=crop,
        original="BGR, [0, 255], minus mean BGR (103.939, 116.779, 123.68); folded into conv1",
    )


def _source_cfg(name: str, src: dict[str, Any]) -> dict[str, Any]:
    cfg = (
        make_cfg(Convention(IMAGENET_MEAN, IMAGENET_STD), source=name)
        if src["convention"] == "imagenet"
        else _caffe_cfg(name)
    )
    return dict(cfg, num_classes=1000, classes=imagenet_classes())


def fold_caffe(model: nn.Module) -> nn.Module:
    """Fold Caffe's input convention into conv1, in place: weights that expect BGR on [0, 255] (minus the mean
    BGR) then take RGB on [0, 1] (minus the mean RGB / 255). conv1's input channels are reversed and scaled by
    255; nothing else changes."""
    conv1 = unwrap(model).features[0]
    if not isinstance(conv1, nn.Conv2d) or conv1.in_channels != 3:
        raise WeightsError("the Caffe fold needs a first conv layer with 3 input channels")
    with torch.no_grad():
        conv1.weight.copy_(conv1.weight.flip(1) * 255.0)
    return model


def transforms(model: nn.Module) -> Any:
    """The evaluation transform that the model's weights expect (torchvision v2): resize the smaller side,
    centre crop, to float on [0, 1], then the weights' input convention (:mod:`vggnet.convention`), as
    torchvision's ``Normalize`` of its canonical mean and std (RGB), or the convention itself (BGR). Refuses a
    model with no known input convention."""
    from torchvision.transforms import v2

    cfg = require_cfg(model)
    conv = Convention.from_cfg(cfg)
    interp = getattr(v2.InterpolationMode, cfg.get("interpolation", "bilinear").upper())
    canonical = conv.to_cfg()
    last = (
        v2.Normalize(canonical["mean"], canonical["std"]) if conv.channel_order == "RGB" else v2.Lambda(conv.from_unit)
    )
    return v2.Compose(
        [
            v2.Resize(cfg["resize"], interpolation=interp, antialias=True),
            v2.CenterCrop(cfg["crop"]),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            last,
        ]
    )


def require_cfg(model: nn.Module, what: str = "the model") -> dict[str, Any]:
    """The model's ``pretrained_cfg``, or an error saying how to state the normalisation (never a silent /255)."""
    cfg = getattr(unwrap(model), "pretrained_cfg", None)
    if not cfg:
        raise WeightsError(
            f"{what} has no known input normalisation; state it with {NORMALIZE_HELP} "
            f"(in Python: pretrained_cfg=vggnet.pretrained.normalization_cfg('imagenet')[0])"
        )
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Finding the file: local path, URL, named source


def local_path(name: str) -> Path:
    """Where the file of a named source or URL is looked for before any download (torch.hub's cache)."""
    if name in SOURCES and SOURCES[name]["kind"] == "hf":
        return hub_dir() / (SOURCES[name]["repo"].replace("/", "--") + ".safetensors")
    url = source_url(name) if name in SOURCES else name
    return hub_dir() / os.path.basename(url.split("?")[0])


def source_url(name: str) -> str:
    """The URL a named source is downloaded from."""
    src = SOURCES[name]
    if src["kind"] == "hf":
        endpoint = os.environ.get("HF_ENDPOINT", HF_ENDPOINT).rstrip("/")
        return f"{endpoint}/{src['repo']}/resolve/main/{src['file']}"
    base = globals()[src["base"]]  # the module attribute, read at call time: a mirror (or a test) can set it
    return f"{base.rstrip('/')}/{src['file']}"


def _hf_download(name: str) -> Path:
    src = SOURCES[name]
    fallback = local_path(name)
    if fallback.is_file():
        return fallback
    url = source_url(name)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError(
            f"{name} needs huggingface_hub (pip install huggingface_hub), or download {url} and place it at {fallback}"
        ) from None
    try:
        path = hf_hub_download(
            src["repo"],
            src["file"],
            endpoint=os.environ.get("HF_ENDPOINT", HF_ENDPOINT),
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
            local_files_only=offline(),
        )
    except Exception as e:  # noqa: BLE001 - the hub client's many error types all mean "not available"
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"cannot get {url} ({reason}); download it elsewhere and place it at {fallback}, or pass its local path"
        ) from None
    return Path(path)


def resolve_weights(pretrained: str | os.PathLike) -> tuple[Path, str | None]:
    """The one resolver of weights (:data:`WEIGHTS_FORMS`): the local file of ``pretrained`` (a run folder's
    weights; downloading a URL or named source if needed) and the named source it is, if any."""
    spec = str(pretrained)
    if Path(spec).expanduser().is_file():
        return Path(spec).expanduser(), None
    if Path(spec).expanduser().is_dir():
        if not runs.is_run(Path(spec).expanduser()):
            raise WeightsError(
                f"{spec} is a folder but not a run (no {runs.MODEL_FILE} and {runs.CONFIG_FILE}); pass {WEIGHTS_FORMS}"
            )
        return Path(spec).expanduser() / runs.MODEL_FILE, None
    if spec.startswith(("http://", "https://")):
        return download(spec, local_path(spec)), None
    name = canonical_source(spec)
    if name is None:
        if ":" in spec and os.path.sep not in spec.split(":", 1)[0]:
            known = ", ".join(SOURCES)
            raise WeightsError(f"unknown weights source {spec!r}; known: {known}")
        raise WeightsError(f"weights {spec!r}: no such file; pass {WEIGHTS_FORMS}")
    if SOURCES[name]["kind"] == "hf":
        return _hf_download(name), name
    return download(source_url(name), local_path(name)), name


def canonical_source(spec: str) -> str | None:
    """The named source ``spec`` spells (``torchvision:vgg16``, ``caffe:vgg19``, ..., any case), or None."""
    s = spec.strip().lower()
    if s in SOURCES:
        return s
    if s.startswith("timm:") and f"{s}.tv_in1k" in SOURCES:  # timm:vgg16 -> timm:vgg16.tv_in1k
        return f"{s}.tv_in1k"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Building a model from weights


def load_pretrained(
    name: str | None,
    pretrained: str | os.PathLike,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: Any = None,
    normalize: str | None = None,
    **options: Any,
) -> nn.Module:
    """``create_model(name, pretrained=...)``: build the net the weights fit, load them, attach the convention.

    The architecture comes from the file's metadata (our files), else from the tensors' shapes (the config too
    when ``name`` is None); ``options`` override it. A ``num_classes`` other than the weights' keeps every layer
    but the last (a new one).
    ``normalize`` states the convention of a file that does not carry one (``imagenet``, ``caffe``, ``mean:R,G,B``).
    With ``features_only`` only the conv layers are built and loaded (fc6 is never allocated).
    """
    layers = options.pop("layers", None)
    path, source = resolve_weights(pretrained)
    sd, meta = _read_weights(path)
    sd, arch = arch_of_weights(name, sd, meta, source, path, options)
    file_classes = arch.get("num_classes", 1000)
    cfg, fold = _convention_of(normalize, source, pretrained, meta, arch)
    if cfg is not None and cfg.get("num_classes") is None:
        cfg["num_classes"] = file_classes
    where = source or str(path)
    if features_only:
        model: nn.Module = meta_model(
            VGGFeatures,
            config=arch["config"],
            width=arch.get("width", 1.0),
            batch_norm=arch.get("batch_norm", False),
            in_chans=arch.get("in_chans", 3),
            out_indices=out_indices,
            layers=layers,
            inplace_relu=arch.get("inplace_relu", True),
        )
        own = model.state_dict()
        sd = {k: v for k, v in sd.items() if k in own}
    else:
        model = meta_model(VGG, **{k: v for k, v in arch.items() if k in _VGG_ARGS})  # no random init to overwrite
    check_state_dict(model, sd, where)
    load_state(model, sd)
    if fold:
        fold_caffe(model)
    if cfg is not None:
        cfg.setdefault("source", where)
    model.pretrained_cfg = cfg
    if not features_only and num_classes is not None and num_classes != file_classes:
        model.reset_classifier(num_classes)
    return model


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict and metadata of a weights file; a cached download that does not read is removed."""
    try:
        return read_state_dict(path)
    except (ValueError, RuntimeError) as e:
        if path.resolve().is_relative_to(hub_dir().resolve()):
            path.unlink(missing_ok=True)  # a cached file that does not read (truncated) must not stay
            raise WeightsError(
                f"{path} was not a readable weights file (truncated download?) and was removed; "
                f"run again to download it anew"
            ) from None
        raise WeightsError(str(e).splitlines()[0]) from None


def arch_of_weights(
    name: str | None,
    sd: dict[str, torch.Tensor],
    meta: dict[str, str],
    source: str | None,
    path: Path,
    options: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the state dict in our layout, the architecture it fits): from our file's metadata, the named source, or
    the tensors' shapes (the config too when ``name`` is None); ``options`` override it."""
    if source:
        config, bn = parse_name(SOURCES[source]["arch"])
    elif name is None and ARCH_KEY not in meta:
        found = infer_config(sd)
        if found is None:
            raise WeightsError(
                f"{path}: no VGG config of Table 1 has these layers (first key {next(iter(sd), None)}); "
                f"is it a VGG state dict?"
            )
        config, bn = found
    else:
        config, bn = parse_name(name or "D")
    arch: dict[str, Any] = dict(config=config, batch_norm=bn)
    if ARCH_KEY in meta:
        arch.update(json.loads(meta[ARCH_KEY]))
    if options.get("batch_norm") is not None:
        arch["batch_norm"] = options["batch_norm"]
    if is_caffe_named(sd):
        sd = from_caffe_names(sd, arch["config"], arch["batch_norm"])
    sd = convert_state_dict(sd, None)
    if ARCH_KEY not in meta:
        arch.update(infer_arch(sd))
    arch.update({k: v for k, v in options.items() if v is not None})
    return sd, arch


def _convention_of(
    normalize: str | None, source: str | None, pretrained: str | os.PathLike, meta: dict[str, str], arch: dict[str, Any]
) -> tuple[dict[str, Any] | None, bool]:
    """(the input convention of the weights, whether to fold Caffe's BGR 0-255 input into conv1): as stated by
    ``normalize``, by the named source, or by our file's metadata; None when nothing says."""
    if normalize:
        return normalization_cfg(normalize, source or str(pretrained), arch.get("crop_size", 224))
    if source:
        return _source_cfg(source, SOURCES[source]), SOURCES[source]["convention"] == "caffe"
    if PRETRAINED_CFG_KEY in meta:
        return json.loads(meta[PRETRAINED_CFG_KEY]), False  # our files carry their convention, already canonical
    folder = Path(pretrained).expanduser()
    if folder.is_dir():  # a run saved before its weights carried their convention: its config and stats say it
        conv = runs.run_convention(read_toml(folder / runs.CONFIG_FILE), Stats.load(folder / runs.STATS_FILE))
        return make_cfg(conv, source=str(folder), crop=arch.get("crop_size", 224)), False
    return None, False


_VGG_ARGS = (
    "config",
    "num_classes",
    "width",
    "fc_width",
    "crop_size",
    "dropout",
    "batch_norm",
    "in_chans",
    "inplace_relu",
)


def convention(spec: str | os.PathLike) -> str | None:
    """ "imagenet" or "caffe" for a named source (the convention its weights expect), None for files and URLs."""
    name = canonical_source(str(spec))
    return SOURCES[name]["convention"] if name else None


def init_from_pretrained(model: nn.Module, spec: str | os.PathLike) -> str:
    """Load released weights into ``model`` for fine-tuning (``vgg train --init-from torchvision:vgg16``): every
    layer, except a last layer of another number of classes, which is new: N(0, 0.01^2) weights and zero bias
    (``VGG.reset_classifier``), whatever init the model was made with. Caffe weights are folded (the model then
    takes RGB on [0, 1] minus the mean, like the paper's own runs). Returns a log line."""
    target = unwrap(model)
    path, source = resolve_weights(spec)
    sd, _ = read_state_dict(path)
    if is_caffe_named(sd):
        sd = from_caffe_names(sd, target.arch["config"], target.arch["batch_norm"])
    sd = convert_state_dict(sd, None)
    own = target.state_dict()
    new_head = "classifier.6.weight" in sd and sd["classifier.6.weight"].shape != own["classifier.6.weight"].shape
    if new_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.6.")}
        sd.update({k: v for k, v in own.items() if k.startswith("classifier.6.")})
    check_state_dict(target, sd, source or path)
    target.load_state_dict(sd)
    if source and SOURCES[source]["convention"] == "caffe":
        fold_caffe(target)
    if new_head:
        target.reset_classifier(target.num_classes)
    return f"init from {source or path}: " + ("all layers but the last (new classes)" if new_head else "all layers")
