"""One VGG module for all six configs of Table 1, with the paper's dense (fully convolutional) mode.

The layer names follow torchvision's VGG (``features.N`` and ``classifier.{0,3,6}``), so a torchvision state
dict is our layout too. The head is stored once, as Linear layers; dense mode views the same weights as
convolutions (FC1 as a (crop/32)x(crop/32) conv, FC2 and FC3 as 1x1 convs), so crop evaluation and dense
evaluation share one set of weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from .architectures import CONFIGS, parse_token
from .init import init_weights

# AlexNet's LRN: b = a / (k + alpha * sum(a^2))^beta over 5 channels. torch divides alpha by the window size
# (as Caffe does), so the AlexNet alpha of 1e-4 is passed multiplied by 5.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0

# Dense mode gathers the FC1 windows of a chunk of images into one matrix of at most this many elements
# (64M: 256 MB in float32, about 40 images of Q = 384 for net D); more images go in several chunks.
DENSE_WINDOW_ELEMENTS = 1 << 26


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


# The head's modules in ``classifier`` order, named as in the authors' Caffe model (fc6 is FC1 of Table 1).
HEAD_NAMES = ("fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8")


def make_features(
    config: str, width: float = 1.0, batch_norm: bool = False, in_chans: int = 3, inplace_relu: bool = True
) -> nn.Sequential:
    """The conv part of a config of Table 1 (convs, ReLUs, LRN, max-pools) as one ``nn.Sequential``.

    Its indices are torchvision's ``features.N``, so the state dicts of the released nets fit it.
    """
    layers: list[nn.Module] = []
    channels = in_chans
    for token in CONFIGS[config]:
        kind, k, out = parse_token(token)
        if kind == "pool":
            # ceil mode, as Caffe (the authors' code) pools: a map of odd side keeps its last row and column,
            # so dense evaluation at any Q covers the whole image; identical to floor mode at multiples of 32
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        elif kind == "lrn":
            layers.append(nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K))
        else:
            out = _scaled(out, width)
            layers.append(nn.Conv2d(channels, out, k, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=inplace_relu))
            channels = out
    return nn.Sequential(*layers)


def layer_names(config: str, batch_norm: bool = False) -> list[str]:
    """The paper's name of each module of ``make_features(config)``, in order.

    Convs are ``conv<block>_<position>`` counted from 1 as in the authors' Caffe model (conv3_3 of config C
    is its 1x1 conv), each followed by ``bn<b>_<i>`` (batch-norm nets) and ``relu<b>_<i>``; the LRN of A-LRN is
    ``lrn1``; block b ends in ``pool<b>``.
    """
    names, block, pos = [], 1, 0
    for token in CONFIGS[config]:
        kind = parse_token(token)[0]
        if kind == "pool":
            names.append(f"pool{block}")
            block, pos = block + 1, 0
        elif kind == "lrn":
            names.append(f"lrn{block}")
        else:
            pos += 1
            names += [f"conv{block}_{pos}"] + ([f"bn{block}_{pos}"] if batch_norm else []) + [f"relu{block}_{pos}"]
    return names


class FeatureInfo(list):
    """timm's ``feature_info``: one dict per stage (``name``, ``module``, ``num_chs``, ``reduction``), with
    timm's accessors. Stage b < 5 is the last ReLU of block b+1 (before its pool: relu1_2, relu2_2, relu3_3,
    relu4_3, relu5_3 for D, the usual perceptual-loss layers); stage 5 is pool5."""

    def channels(self) -> list[int]:
        return [s["num_chs"] for s in self]

    def reduction(self) -> list[int]:
        return [s["reduction"] for s in self]

    def module_name(self) -> list[str]:
        return [s["module"] for s in self]


def feature_info(features: nn.Sequential, names: Sequence[str]) -> FeatureInfo:
    """The six stages of a conv stack (``FeatureInfo``), read off its modules without running them."""
    stages, channels, reduction = [], 0, 1
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            channels = m.out_channels
        elif isinstance(m, nn.MaxPool2d):
            j = i - 1  # the module before the pool: the block's last ReLU
            stages.append(dict(name=names[j], module=f"features.{j}", index=j, num_chs=channels, reduction=reduction))
            reduction *= 2
    j = len(features) - 1
    stages.append(dict(name=names[j], module=f"features.{j}", index=j, num_chs=channels, reduction=reduction))
    return FeatureInfo(stages)


def _tracing() -> bool:
    """Whether a graph is being captured (jit trace, torch.fx, torch.compile / torch.export): the friendly
    shape checks, Python branches on shapes, stay out of such graphs (the ops fail on bad shapes anyway)."""
    return (
        torch.jit.is_tracing()
        or is_fx_symbolic_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def run_layers(
    modules: Sequence[nn.Module], names: Sequence[str], x: torch.Tensor, wanted: set[str], out: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Run ``modules`` in order, keeping the outputs named in ``wanted`` in ``out``; returns the last output.

    An output that the next module (an in-place ReLU) would overwrite is cloned, so a conv's output is its
    true pre-activation.
    """
    for i, (m, name) in enumerate(zip(modules, names)):
        x = m(x)
        if name in wanted:
            nxt = modules[i + 1] if i + 1 < len(modules) else None
            out[name] = x.clone() if isinstance(nxt, nn.ReLU) and nxt.inplace else x
            if len(out) == len(wanted):
                break
    return x


class VGG(nn.Module):
    """A VGG network of Table 1.

    Args:
        config: a config of Table 1, "A", "A-LRN", "B", "C", "D" or "E", or section 4.1's "B-5x5".
        num_classes: size of the last FC layer; 0 (timm's habit) leaves it out: ``forward`` then returns the
            pooled pre-logits, fc7's (N, fc_width) features, and ``dense`` their map.
        width: multiplier on every conv's channel count (0.125 turns 64..512 into 8..64).
        fc_width: width of FC1 and FC2 (4096 in the paper).
        crop_size: the training crop (224 in the paper); FC1 sees (crop/32)^2 positions of the last conv map.
        dropout: dropout rate after FC1 and FC2.
        batch_norm: batch norm after each conv (torchvision's ``_bn`` nets; not in the paper).
        in_chans: input channels.
        inplace_relu: in-place ReLUs (the default, saves memory); False lets forward hooks on a conv see its
            true output rather than the ReLU's.

    Besides ``forward`` (crops) and ``dense`` (whole images), the timm / torchvision habits:
    ``forward_features``, ``forward_head(x, pre_logits=...)``, ``get_classifier``, ``reset_classifier``,
    ``feature_info`` and ``forward_intermediates(x, layers=[...])`` with the paper's layer names
    (``layer_names``). ``pretrained_cfg`` holds the input convention of loaded weights (vggnet.pretrained).
    """

    __jit_unused_properties__ = ["name"]  # torch.jit.script compiles forward only

    def __init__(
        self,
        config: str = "D",
        num_classes: int = 1000,
        width: float = 1.0,
        fc_width: int = 4096,
        crop_size: int = 224,
        dropout: float = 0.5,
        batch_norm: bool = False,
        in_chans: int = 3,
        inplace_relu: bool = True,
    ) -> None:
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"unknown config {config!r}; use one of {list(CONFIGS)} or vggnet.create_model(name)")
        if crop_size % 32 or crop_size < 32:
            raise ValueError(f"crop_size must be a positive multiple of 32 (five 2x2 pools), got {crop_size}")
        if num_classes < 0 or fc_width < 1 or width <= 0:
            raise ValueError("num_classes must be 0 (no last layer: pre-logits) or more; fc_width and width positive")
        # the constructor's arguments (saved with the weights); unannotated: torch.jit.script skips it
        self.arch = dict(
            config=config,
            num_classes=num_classes,
            width=width,
            fc_width=fc_width,
            crop_size=crop_size,
            dropout=dropout,
            batch_norm=batch_norm,
            in_chans=in_chans,
        )
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.positions = crop_size // 32  # side of the last conv map at the crop size: 7 for 224
        # the input convention of loaded weights (a dict, vggnet.pretrained); unannotated: torch.jit.script skips it
        self.pretrained_cfg = None

        self.features = make_features(config, width, batch_norm, in_chans, inplace_relu)
        self.layer_names = layer_names(config, batch_norm) + list(HEAD_NAMES)
        self.feature_info = feature_info(self.features, self.layer_names)
        channels = self.feature_info[-1]["num_chs"]
        self.feature_channels = channels
        self.classifier = nn.Sequential(
            nn.Linear(channels * self.positions**2, fc_width),
            nn.ReLU(inplace=inplace_relu),
            nn.Dropout(dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=inplace_relu),
            nn.Dropout(dropout),
            nn.Linear(fc_width, num_classes) if num_classes else nn.Identity(),
        )
        if self.classifier[0].weight.device.type != "meta":  # a net built to load weights into is not drawn
            init_weights(self, "paper")

    @property
    def name(self) -> str:
        return self.arch["config"] + ("-BN" if self.arch["batch_norm"] else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of crops of the training crop size (the FC head)."""
        f = self.features(x)
        if not torch.jit.is_scripting():  # no shape branches in scripted or traced graphs
            if not _tracing():
                self._check_crop(x, f)
        return self.forward_head(f)

    @torch.jit.unused
    def _check_crop(self, x: torch.Tensor, f: torch.Tensor) -> None:
        if f.shape[-2:] != (self.positions, self.positions):
            raise ValueError(
                f"input {tuple(x.shape[-2:])} gives a {tuple(f.shape[-2:])} feature map, but the FC head expects "
                f"{self.positions}x{self.positions} (crop size {self.crop_size}); crop the input to "
                f"{self.crop_size}x{self.crop_size}, or use model.dense(x) for whole images of any size"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv part: the pool5 map (N, C, H/32, W/32) of an input of any size."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The FC head on a pool5 map of the crop size: logits, or with ``pre_logits`` the fc7 features
        (after its ReLU and dropout; (N, fc_width))."""
        x = torch.flatten(x, 1)
        x = self.classifier[2](self.classifier[1](self.classifier[0](x)))
        x = self.classifier[5](self.classifier[4](self.classifier[3](x)))
        if pre_logits:
            return x
        return self.classifier[6](x)

    def get_classifier(self) -> nn.Module:
        """The last FC layer (fc8; ``nn.Identity`` when built with ``num_classes=0``)."""
        return self.classifier[6]

    def reset_classifier(self, num_classes: int) -> None:
        """A new last layer for ``num_classes`` classes (fine-tuning); every other layer is kept.

        The new layer gets torchvision's head init, N(0, 0.01^2) and zero bias: small logits on top of
        pretrained fc7 features. ``num_classes=0`` removes it (timm's habit): the net then returns pre-logits.
        """
        if num_classes < 0:
            raise ValueError(f"num_classes must be 0 (pre-logits) or more, got {num_classes}")
        fc7 = self.classifier[3]
        if num_classes == 0:
            new: nn.Module = nn.Identity()
        else:
            new = nn.Linear(fc7.out_features, num_classes, device=fc7.weight.device, dtype=fc7.weight.dtype)
            with torch.no_grad():
                new.weight.normal_(0.0, 0.01)
                new.bias.zero_()
        self.classifier[6] = new
        self.num_classes = self.arch["num_classes"] = num_classes
        if self.pretrained_cfg is not None:
            self.pretrained_cfg = dict(self.pretrained_cfg, num_classes=num_classes, classes=None)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        layers: Sequence[str] | str | None = None,
        *,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> Any:
        """The outputs of inner layers, by the paper's names or, as timm's VGG does, by stage index.

        ``layers`` (the paper's names, ``model.layer_names``; default pool5): ``{name: tensor}`` in the order
        asked, running only as far as needed. Names: conv1_1 (a conv's output), bn1_1, relu1_1 (after the
        ReLU), lrn1, pool1, ... pool5, then fc6, relu6, drop6, fc7, relu7, drop7, fc8. Conv layers take any
        input size; the FC layers need crops of the crop size (use ``dense`` for whole images).

        ``indices`` (timm's form): stages of ``feature_info`` (the five blocks' last ReLUs, then pool5), an int n
        for the last n of them or a list of indices (negative ones count from the end). Returns ``(final,
        [stage outputs])`` where ``final`` is ``forward_features(x)``, or the list alone with
        ``intermediates_only``; ``stop_early`` runs only up to the last stage asked (``final`` is then its output).
        """
        if indices is not None:
            if layers is not None:
                raise ValueError("give layers (the paper's names) or indices (timm's stages), not both")
            return self._stage_intermediates(x, indices, stop_early, intermediates_only)
        layers = ("pool5",) if layers is None else layers
        layers = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in layers if n not in self.layer_names]
        if unknown or not layers:
            raise ValueError(
                f"unknown layer(s) {unknown} for net {self.name}; its layers are {', '.join(self.layer_names)}"
            )
        out: dict[str, torch.Tensor] = {}
        wanted = set(layers)
        n_conv = len(self.features)
        f = run_layers(self.features, self.layer_names[:n_conv], x, wanted, out)
        if len(out) < len(wanted):
            self._check_crop(x, f)
            run_layers(self.classifier, HEAD_NAMES, torch.flatten(f, 1), wanted, out)
        return {n: out[n] for n in layers}

    def _stage_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int], stop_early: bool, intermediates_only: bool
    ) -> Any:
        """``forward_intermediates`` by stage index (timm's form)."""
        n = len(self.feature_info)
        picked = list(range(n - indices, n)) if isinstance(indices, int) else [i + n if i < 0 else i for i in indices]
        if (isinstance(indices, int) and not 0 < indices <= n) or not all(0 <= i < n for i in picked):
            raise ValueError(f"indices {indices!r} out of range: net {self.name} has {n} stages (feature_info)")
        at = {self.feature_info[i]["index"] for i in picked}
        last = max(at) if stop_early or intermediates_only else len(self.features) - 1
        kept: dict[int, torch.Tensor] = {}
        for j, m in enumerate(self.features[: last + 1]):
            x = m(x)
            if j in at:
                nxt = self.features[j + 1] if j + 1 < len(self.features) else None
                kept[j] = x.clone() if isinstance(nxt, nn.ReLU) and nxt.inplace else x
        stages = [kept[self.feature_info[i]["index"]] for i in picked]
        return stages if intermediates_only else (x, stages)

    def dense(self, x: torch.Tensor, head: bool = True) -> torch.Tensor:
        """The class score map (N, num_classes, h, w) of the net applied fully convolutionally.

        FC1 acts as a (crop/32)x(crop/32) convolution and FC2, FC3 as 1x1 convolutions, computed from the stored
        Linear weights (``dense_head``: one matrix product over the windows, no copy of the weights). The 2x2 pools
        round up (Caffe's ceil mode), so an input of H x W >= the crop size gives
        h = ceil(H/32) - crop/32 + 1 (likewise w) and the map covers every pixel: 256x341 gives 2x5 at 224 crops.
        At a multiple of 32 each cell equals the FC head applied to the matching crop window (at stride 32); at
        other sizes the last row and column of windows reach past the image's edge onto the pools' rounded-up
        cells, which see only the pixels that are there. With ``head=False`` the map stops before the last
        layer: (N, fc_width, h, w), the paper's penultimate features (Appendix B).
        """
        p = self.positions
        # checked on the input, not the feature map: the rounded-up pools would give a full map from less
        if not _tracing() and min(x.shape[-2:]) < 32 * p:  # 32 * positions = the crop size
            raise ValueError(
                f"dense evaluation needs an input of at least {self.crop_size}x{self.crop_size}, got "
                f"{tuple(x.shape[-2:])}; rescale the image so that its smaller side is >= {self.crop_size}"
            )
        f = self.features(x)
        if torch.jit.is_tracing() or is_fx_symbolic_tracing() or torch.compiler.is_exporting():
            return self._dense_head_conv(f, head)  # graph exporters (ONNX, torch.export) get plain convolutions
        return self.dense_head(f, head)

    def dense_head(self, f: torch.Tensor, head: bool = True) -> torch.Tensor:
        """The FC head applied to every (crop/32)x(crop/32) window of a pool5 map ``f`` (N, C, H, W), at stride 1:
        the score map (N, num_classes, H - p + 1, W - p + 1), or (N, fc_width, ...) with ``head=False``.

        Each window is gathered as one row of a matrix in the Linear layout (channel, row, column) and FC1 is one
        matrix product with the stored Linear weight; FC2 and FC3 are matrix products on the same rows. Viewing
        FC1's weight as a conv weight instead made oneDNN convert the 411 MB weight to the channels-last input's
        layout on every call (issue 26: the window matmul was 4x faster than that conv on the CPU, measured in
        docs/performance.md). Nothing is cached: the stored weights are used as they are, so training steps and
        weight loads are seen at once. Images go in chunks so that the window matrix stays under
        ``DENSE_WINDOW_ELEMENTS`` elements.
        """
        p = self.positions
        n, c, h, w = f.shape
        hh, ww = h - p + 1, w - p + 1
        per_image = hh * ww * c * p * p
        step = n if _tracing() else max(1, DENSE_WINDOW_ELEMENTS // max(1, per_image))
        outs = []
        for i in range(0, n, step):
            # (n, C, hh, ww, p, p) windows as a view; the reshape is the one copy, into Linear's (C, p, p) order
            rows = f[i : i + step].unfold(2, p, 1).unfold(3, p, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * p * p)
            y = self.classifier[2](self.classifier[1](self.classifier[0](rows)))
            y = self.classifier[5](self.classifier[4](self.classifier[3](y)))
            if head:
                y = self.classifier[6](y)
            outs.append(y)
        y = outs[0] if len(outs) == 1 else torch.cat(outs)
        return y.view(n, hh, ww, -1).permute(0, 3, 1, 2)  # (N, C, hh, ww) in channels-last memory

    def _dense_head_conv(self, f: torch.Tensor, head: bool = True) -> torch.Tensor:
        """``dense_head`` as convolutions on the FC weights viewed in place (for graph export: no Python loop)."""
        p = self.positions
        fc1, fc2, fc3 = self.classifier[0], self.classifier[3], self.classifier[6]
        y = F.conv2d(f, fc1.weight.view(fc1.out_features, f.shape[1], p, p), fc1.bias)
        y = self.classifier[2](F.relu(y))
        y = self.classifier[5](F.relu(F.conv2d(y, fc2.weight[:, :, None, None], fc2.bias)))
        if not head or not isinstance(fc3, nn.Linear):
            return y
        return F.conv2d(y, fc3.weight[:, :, None, None], fc3.bias)

    def conv_layers(self) -> list[tuple[int, int, nn.Conv2d]]:
        """The conv layers as (block, position in block, module), blocks and positions counted from 0."""
        out, block, pos = [], 0, 0
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                block, pos = block + 1, 0
            elif isinstance(m, nn.Conv2d):
                out.append((block, pos, m))
                pos += 1
        return out

    def fc_layers(self) -> list[nn.Linear]:
        """FC6, FC7 and FC8 (FC6 and FC7 only in a net built with ``num_classes=0``)."""
        return [m for m in (self.classifier[0], self.classifier[3], self.classifier[6]) if isinstance(m, nn.Linear)]

    def macs(self, height: int | None = None, width: int | None = None) -> int:
        """Multiply-accumulates of one forward pass (conv and FC layers) at the given input size.

        At the crop size this is the FC-head forward; above it, the dense forward (map sides rounded up at each
        pool, as the ceil-mode pools do).
        """
        h = height or self.crop_size
        w = width or h
        total = 0
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                h, w = -(-h // 2), -(-w // 2)
            elif isinstance(m, nn.Conv2d):
                k = m.kernel_size[0]
                total += h * w * m.out_channels * m.in_channels * k * k
        hh, ww = h - self.positions + 1, w - self.positions + 1
        for fc in self.fc_layers():
            total += hh * ww * fc.in_features * fc.out_features
        return total


def meta_model(cls: type[nn.Module] | None = None, **arch: Any) -> nn.Module:
    """``cls(**arch)`` (default ``VGG``) built on the meta device, to load weights into with ``load_state``: no
    memory is allocated and no random weight is drawn (a random init that the loaded weights then overwrite cost
    about a second for net D, issue 26)."""
    with torch.device("meta"):
        return (cls or VGG)(**arch)


def load_state(model: nn.Module, sd: dict[str, torch.Tensor]) -> nn.Module:
    """``model.load_state_dict(sd)`` (strict). Into a net built by ``meta_model`` the tensors are taken as they
    are (``assign=True``; cast to the net's dtype where they differ) rather than copied: ``sd`` must then be the
    caller's own tensors (read from a file), not another live net's, which would share them."""
    meta = [t.is_meta for t in itertools.chain(model.parameters(), model.buffers())]
    if not any(meta):
        model.load_state_dict(sd)
        return model
    own = model.state_dict()
    cast = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(cast, assign=True)
    left = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:  # cannot happen after a strict load of every key; a net half on the meta device must not escape
        raise ValueError(f"layers {left[:4]} were not loaded; load every layer into a net built by meta_model")
    return model


STRIDE = 32  # the input pixels between neighbouring windows of a dense map: five 2x2 pools


def window_mask(
    image_size: tuple[int, int], map_size: tuple[int, int], crop: int, stride: int = STRIDE
) -> torch.Tensor:
    """Which windows of a dense map count, as an (h, w) float mask: those whose centre lies inside the image.

    Window (i, j) of the map sees input rows [stride * i, stride * i + crop) (columns likewise). The ceil-mode
    pools give a last row and column of windows that reach past the image's edge by up to stride - 1 pixels;
    such a window's centre lies outside the image, so that it sees more padding than image, only when that
    overhang reaches crop / 2: never at crops of 64 pixels or more (the paper's 224, the small grid's 64), at
    any size, and so never at the paper's geometry. With 32-pixel crops at Q = 38 the windows of the second
    row and column see 6 pixels of image and 26 of padding: they do not count.
    """
    h, w = map_size
    rows = torch.arange(h) * stride + crop / 2 <= image_size[0]
    cols = torch.arange(w) * stride + crop / 2 <= image_size[1]
    return (rows[:, None] & cols[None, :]).float()


def spatial_average(
    scores: torch.Tensor, image_size: tuple[int, int] | None = None, crop: int | None = None, stride: int = STRIDE
) -> torch.Tensor:
    """Average a dense map (N, C, h, w) over its positions into (N, C): class scores, or penultimate features.

    With ``image_size`` (the input's H, W) and ``crop`` (the net's), only the windows of :func:`window_mask`
    count (all of them at the paper's geometry); without, every position does."""
    if image_size is None or crop is None:
        return scores.mean(dim=(-2, -1))
    m = window_mask(tuple(image_size), tuple(scores.shape[-2:]), crop, stride).to(scores.device, scores.dtype)
    return (scores * m).sum(dim=(-2, -1)) / m.sum()
