"""Weights on disk: our safetensors files, and torchvision / timm state dicts in and out.

Our layout is torchvision's (``features.N.*``, ``classifier.{0,3,6}.*``); timm keeps the same features but
stores FC1/FC2 as convolutions (``pre_logits.fc1``, ``pre_logits.fc2``) and FC3 as ``head.fc``; converting
is a reshape. Nothing here unpickles arbitrary objects: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .architectures import CONFIGS, parse_token
from .files import atomic_write
from .model import HEAD_NAMES, VGG, layer_names, load_state, meta_model

ARCH_KEY = "vggnet.arch"
PRETRAINED_CFG_KEY = "vggnet.pretrained_cfg"  # the input convention of the weights (vggnet.pretrained)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Save the model's weights as safetensors (atomically), with its architecture in the file's metadata."""
    model = unwrap(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = dict(metadata or {})
    if hasattr(model, "arch"):
        meta[ARCH_KEY] = json.dumps(model.arch)
    if getattr(model, "pretrained_cfg", None):
        meta[PRETRAINED_CFG_KEY] = json.dumps(model.pretrained_cfg)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a weights file: safetensors, or a torch.save'd state dict (read with weights_only=True).

    A state dict nested under "state_dict", "model" or "model_state_dict" (common checkpoint layouts) is
    unwrapped. Returns ``(state_dict, metadata)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass the path of a .safetensors or .pth file")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header. Checked first: a header length
    # whose low byte is 0x80 would otherwise read as a pickle's first byte (and the metadata be lost)
    safetensors = head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size
    if not safetensors and (head[:2] == b"PK" or head[:1] == b"\x80"):  # zip (torch.save) or legacy pickle
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - report any unpickling refusal with the file name
            raise ValueError(
                f"{path}: not a plain state dict that torch.load(weights_only=True) can read ({e}); "
                f"save it with torch.save(model.state_dict(), path) or as safetensors"
            ) from e
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
        # DDP-saved dicts prefix every key with "module."
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
        return obj, {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: neither a safetensors file nor a torch.save'd state dict ({e})") from e


def _is_timm(sd: dict[str, torch.Tensor]) -> bool:
    return "pre_logits.fc1.weight" in sd or "head.fc.weight" in sd


def from_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's VGG layout -> ours: FC1/FC2 convolutions flattened into Linear weights, head.fc -> classifier.6."""
    names = {"pre_logits.fc1": "classifier.0", "pre_logits.fc2": "classifier.3", "head.fc": "classifier.6"}
    out = {}
    for k, v in sd.items():
        for old, new in names.items():
            if k.startswith(old + "."):
                k = new + k[len(old) :]
                if k.endswith(".weight"):
                    v = v.reshape(v.shape[0], -1)
                break
        out[k] = v
    return out


def to_timm(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights in timm's VGG layout (FC1 as a p x p conv, FC2 as a 1x1 conv, FC3 as head.fc)."""
    model = unwrap(model)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fc1, fc2 = model.classifier[0], model.classifier[3]
    p = model.positions
    out = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    out["pre_logits.fc1.weight"] = sd["classifier.0.weight"].view(fc1.out_features, model.feature_channels, p, p)
    out["pre_logits.fc1.bias"] = sd["classifier.0.bias"]
    out["pre_logits.fc2.weight"] = sd["classifier.3.weight"].view(fc2.out_features, fc2.in_features, 1, 1)
    out["pre_logits.fc2.bias"] = sd["classifier.3.bias"]
    out["head.fc.weight"] = sd["classifier.6.weight"]
    out["head.fc.bias"] = sd["classifier.6.bias"]
    return out


def to_torchvision(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights in torchvision's VGG layout (the same keys; A-LRN and C have no torchvision counterpart)."""
    model = unwrap(model)
    if getattr(model, "arch", {}).get("config") in ("A-LRN", "C"):
        raise ValueError(f"torchvision has no VGG of config {model.arch['config']}; export it with save_weights")
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def export_weights(model: nn.Module, path: str | os.PathLike, layout: str = "torchvision") -> Path:
    """Write the weights for another library: ``layout`` "torchvision" or "timm" (a torch.save'd state dict)."""
    if layout not in ("torchvision", "timm"):
        raise ValueError(f"unknown layout {layout!r}; use 'torchvision' or 'timm'")
    sd = to_torchvision(model) if layout == "torchvision" else to_timm(model)
    return atomic_write(path, lambda tmp: torch.save(sd, tmp))


_CAFFE_NAME = re.compile(r"^(conv\d+_\d+|fc[678])\.(weight|bias)$")


def is_caffe_named(sd: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict names its layers as the authors' Caffe models do (conv1_1, ..., fc8)."""
    return "conv1_1.weight" in sd


def from_caffe_names(sd: dict[str, torch.Tensor], config: str, batch_norm: bool = False) -> dict[str, torch.Tensor]:
    """A state dict keyed by the authors' Caffe layer names (conv1_1 ... conv5_3, fc6, fc7, fc8) -> ours.

    fc6 and fc7 may be stored as convolutions (as in a fully convolutional conversion): they are flattened.
    """
    index = {n: f"features.{i}" for i, n in enumerate(layer_names(config, batch_norm))}
    index.update({n: f"classifier.{i}" for i, n in enumerate(HEAD_NAMES)})
    out = {}
    for k, v in sd.items():
        m = _CAFFE_NAME.match(k)
        if not m or m.group(1) not in index:
            out[k] = v  # left for the fit check to name
            continue
        if m.group(1).startswith("fc") and m.group(2) == "weight":
            v = v.reshape(v.shape[0], -1)
        out[f"{index[m.group(1)]}.{m.group(2)}"] = v
    return out


# The older torchvision head (Dropout before each FC layer: FC1, FC2 at classifier.1, classifier.4, FC3 at 6), the
# layout of the authors' Caffe weights as converted by J. Johnson (the caffe: files) -> ours (FC layers at 0, 3, 6).
_OLD_HEAD = {"classifier.1.": "classifier.0.", "classifier.4.": "classifier.3."}


def _is_old_head(sd: dict[str, torch.Tensor]) -> bool:
    return "classifier.1.weight" in sd and "classifier.4.weight" in sd and "classifier.0.weight" not in sd


def from_old_head(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FC1 and FC2 at ``classifier.1`` / ``classifier.4`` (the Caffe files' head) -> ``classifier.0`` / ``.3``."""
    out = {}
    for k, v in sd.items():
        old = next((o for o in _OLD_HEAD if k.startswith(o)), None)
        out[_OLD_HEAD[old] + k[len(old) :] if old else k] = v
    return out


def convert_state_dict(sd: dict[str, torch.Tensor], model: nn.Module | None) -> dict[str, torch.Tensor]:
    """Bring a state dict of any supported layout (ours, torchvision's, the Caffe files' older head at
    classifier.1/.4/.6, timm's, Caffe layer names) into ours; the layout is read off the keys.

    Caffe layer names need the config (from ``model.arch``); without a model they are left as they are.
    """
    if _is_timm(sd):
        return from_timm(sd)
    if _is_old_head(sd):
        return from_old_head(sd)
    arch = getattr(unwrap(model), "arch", None) if model is not None else None
    if is_caffe_named(sd) and arch:
        return from_caffe_names(sd, arch["config"], arch.get("batch_norm", False))
    return dict(sd)


def check_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], where: str | os.PathLike) -> None:
    """Raise a one-line error naming ``where``, the first layer that does not fit and the fix, unless ``sd`` has
    exactly the model's keys and shapes."""
    own = unwrap(model).state_dict()
    name = getattr(unwrap(model), "name", type(unwrap(model)).__name__)
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    if missing or extra:
        first = f"first missing key {missing[0]}" if missing else f"first unexpected key {extra[0]}"
        raise ValueError(
            f"{where}: the weights do not fit this {name} net ({first}; missing {missing[:4]}"
            f"{'...' if len(missing) > 4 else ''}, unexpected {extra[:4]}{'...' if len(extra) > 4 else ''}); "
            f"create the model with the config and batch_norm setting the weights were trained with"
        )
    for k in own:  # the model's order, so the first layer that differs is the one named
        v = sd[k]
        if v.shape != own[k].shape:
            hint = (
                "pass head=False to load all but the last layer (new classes), or create the model with "
                f"num_classes={v.shape[0]}"
                if k.startswith("classifier.6.")
                else "create the model with the width, fc_width and crop_size the weights were trained with"
            )
            raise ValueError(
                f"{where}: layer {k} has shape {tuple(v.shape)} in the file but {tuple(own[k].shape)} "
                f"in the model; {hint}"
            )


def load_weights(model: nn.Module, path: str | os.PathLike, head: bool = True) -> nn.Module:
    """Load weights into ``model`` from our safetensors, or a torchvision or timm state dict (.pth/.safetensors).

    With ``head=False`` the last FC layer is left as it is (fine-tuning on a new set of classes).
    A missing or extra layer or a shape mismatch raises an error naming the file, the layer and the fix.
    The input convention a file of ours carries becomes ``model.pretrained_cfg``.
    """
    target = unwrap(model)
    sd, meta = read_state_dict(path)
    sd = convert_state_dict(sd, target)
    own = target.state_dict()
    if not head:
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.6.")}
        sd.update({k: v for k, v in own.items() if k.startswith("classifier.6.")})
    check_state_dict(target, sd, path)
    load_state(target, sd)  # a net built by meta_model takes the file's tensors without a copy
    if PRETRAINED_CFG_KEY in meta and hasattr(target, "pretrained_cfg"):
        cfg = json.loads(meta[PRETRAINED_CFG_KEY])
        if not head:
            cfg = dict(cfg, num_classes=getattr(target, "num_classes", None), classes=None)
        target.pretrained_cfg = cfg
    return model


def load_model(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Build the net saved in one of our safetensors files (its architecture is in the metadata) and load it."""
    _, meta = read_state_dict(path)
    if ARCH_KEY not in meta:
        raise ValueError(f"{path}: no vggnet architecture in the file; create the model and call load_weights")
    arch = json.loads(meta[ARCH_KEY])
    arch.update(overrides)
    return load_weights(meta_model(VGG, **arch), path)  # no random init for the file's weights to overwrite


def init_from_net_a(model: nn.Module, net_a: nn.Module | dict[str, torch.Tensor]) -> list[str]:
    """Copy the paper's layers of a trained net A into a deeper net (section 3.1); return the names copied.

    The first four conv layers of A (block 1 conv 1, block 2 conv 1, block 3 convs 1-2) go to the layers at
    the same block and position of the deeper net, which have the same shapes in every config of Table 1;
    the three FC layers are copied whole. Every other layer keeps its (random) initialisation.

    A target without 3x3 convs has no layer of A's kind: B-5x5 (section 4.1), whose convs are all 5x5,
    takes only A's three FC layers ("FC-only" init from net A; its last conv map has A's
    shape, so the head fits). A shape mismatch otherwise (width, fc_width, crop size, classes) raises an
    error naming the layer.
    """
    if not isinstance(model, VGG):
        raise TypeError("init_from_net_a needs a vggnet VGG model")
    if isinstance(net_a, dict):
        arch = dict(model.arch, config="A", batch_norm=False)
        source = VGG(**arch)
        sd, own = convert_state_dict(net_a, source), source.state_dict()
        for key, value in sd.items():
            if key in own and value.shape != own[key].shape:
                raise ValueError(
                    f"init from net A: layer {key.rsplit('.', 1)[0]} has shape {tuple(own[key].shape)} here but "
                    f"{tuple(value.shape)} in net A; build both nets with the same width, fc_width, crop_size and "
                    f"num_classes (the paper's staged init copies A's last layer too)"
                )
        source.load_state_dict(sd, strict=False)
    else:
        source = net_a
    src_convs = source.conv_layers()[:4]
    dst_convs = {(b, p): m for b, p, m in model.conv_layers()}
    pairs: list[tuple[str, nn.Module, nn.Module]] = []
    names = {m: n for n, m in model.named_modules()}
    if not any(m.kernel_size == src_convs[0][2].kernel_size for m in dst_convs.values()):
        src_convs = []  # no 3x3 conv in the target (B-5x5): none of A's convs has a counterpart, only its FC layers
    for b, p, src in src_convs:
        dst = dst_convs.get((b, p))
        if dst is None:
            raise ValueError(f"init from net A: the target net has no conv at block {b + 1}, position {p + 1}")
        pairs.append((names[dst], src, dst))
    for src, dst in zip(source.fc_layers(), model.fc_layers()):
        pairs.append((names[dst], src, dst))
    for name, src, dst in pairs:
        if src.weight.shape != dst.weight.shape:
            raise ValueError(
                f"init from net A: layer {name} has shape {tuple(dst.weight.shape)} but net A's has "
                f"{tuple(src.weight.shape)}; build both nets with the same width, fc_width, crop_size and num_classes"
            )
    with torch.no_grad():
        for _, src, dst in pairs:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    return [name for name, _, _ in pairs]


# ---- what net a state dict fits (files without our metadata: torchvision's, timm's, Caffe-named) ----------


def infer_config(sd: dict[str, torch.Tensor]) -> tuple[str, bool] | None:
    """``(config, batch_norm)`` whose conv layers a state dict (ours, torchvision's, timm's or Caffe-named)
    has, from its conv keys and kernel sizes; None if none fits. A-LRN has A's keys: A is returned."""
    caffe = is_caffe_named(sd)
    for config in CONFIGS:
        for bn in (False, True):
            names = layer_names(config, bn)
            convs = [(n, f"features.{i}.weight") for i, n in enumerate(names) if n.startswith("conv")]
            kernels = [parse_token(t)[1] for t in CONFIGS[config] if parse_token(t)[0] == "conv"]
            keys = [n + ".weight" for n, _ in convs] if caffe else [k for _, k in convs]
            have = sorted(
                k
                for k, v in sd.items()
                if v.dim() == 4 and (k.startswith("conv") if caffe else k.startswith("features."))
            )
            if sorted(keys) != have or any(sd[k].shape[-1] != kk for k, kk in zip(keys, kernels)):
                continue
            if not caffe and bn != any(k.endswith("running_mean") for k in sd):
                continue
            return config, bn
    return None


def infer_arch(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Width, FC width, crop size and classes of a state dict in our layout (for files without our metadata)."""
    out: dict[str, Any] = {}
    convs = [k for k in sd if k.startswith("features.") and k.endswith(".weight") and sd[k].dim() == 4]
    if convs and "classifier.0.weight" in sd:
        first = min(convs, key=lambda k: int(k.split(".")[1]))
        last = max(convs, key=lambda k: int(k.split(".")[1]))
        out["width"] = sd[first].shape[0] / 64
        ch = sd[last].shape[0]
        fc1 = sd["classifier.0.weight"]
        out["fc_width"] = fc1.shape[0]
        p = round((fc1.shape[1] / ch) ** 0.5)
        if p * p * ch == fc1.shape[1]:
            out["crop_size"] = 32 * p
    if "classifier.6.weight" in sd:
        out["num_classes"] = sd["classifier.6.weight"].shape[0]
    return out
