"""One VGG module for all six configs of Table 1, with the paper's dense (fully convolutional) mode.

The layer names follow torchvision's VGG (``features.N`` and ``classifier.{0,3,6}``), so a torchvision state
dict is our layout too. The head is stored once, as Linear layers; dense mode views the same weights as
convolutions (FC1 as a (crop/32)x(crop/32) conv, FC2 and FC3 as 1x1 convs), so crop evaluation and dense
evaluation share one set of weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .configs import CONFIGS, parse_name, parse_token

# AlexNet's LRN: b = a / (k + alpha * sum(a^2))^beta over 5 channels. torch divides alpha by the window size
# (as Caffe does), so the AlexNet alpha of 1e-4 is passed multiplied by 5.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class VGG(nn.Module):
    """A VGG network of Table 1.

    Args:
        config: a config of Table 1, "A", "A-LRN", "B", "C", "D" or "E", or section 4.1's "B-5x5".
        num_classes: size of the last FC layer.
        width: multiplier on every conv's channel count (0.125 turns 64..512 into 8..64).
        fc_width: width of FC1 and FC2 (4096 in the paper).
        crop_size: the training crop (224 in the paper); FC1 sees (crop/32)^2 positions of the last conv map.
        dropout: dropout rate after FC1 and FC2.
        batch_norm: batch norm after each conv (torchvision's ``_bn`` nets; not in the paper).
        in_chans: input channels.
    """

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
    ) -> None:
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"unknown config {config!r}; use one of {list(CONFIGS)} or vggnet.create_model(name)")
        if crop_size % 32 or crop_size < 32:
            raise ValueError(f"crop_size must be a positive multiple of 32 (five 2x2 pools), got {crop_size}")
        if num_classes < 1 or fc_width < 1 or width <= 0:
            raise ValueError("num_classes, fc_width and width must be positive")
        self.arch: dict[str, Any] = dict(
            config=config, num_classes=num_classes, width=width, fc_width=fc_width, crop_size=crop_size,
            dropout=dropout, batch_norm=batch_norm, in_chans=in_chans,
        )  # fmt: skip
        self.num_classes = num_classes
        self.crop_size = crop_size
        self.positions = crop_size // 32  # side of the last conv map at the crop size: 7 for 224

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
                layers.append(nn.ReLU(inplace=True))
                channels = out
        self.features = nn.Sequential(*layers)
        self.feature_channels = channels
        self.classifier = nn.Sequential(
            nn.Linear(channels * self.positions**2, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc_width, num_classes),
        )
        from .init import init_weights

        init_weights(self, "paper")

    @property
    def name(self) -> str:
        return self.arch["config"] + ("-BN" if self.arch["batch_norm"] else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of crops of the training crop size (the FC head)."""
        f = self.features(x)
        if f.shape[-2:] != (self.positions, self.positions):
            raise ValueError(
                f"input {tuple(x.shape[-2:])} gives a {tuple(f.shape[-2:])} feature map, but the FC head expects "
                f"{self.positions}x{self.positions} (crop size {self.crop_size}); crop the input to "
                f"{self.crop_size}x{self.crop_size}, or use model.dense(x) for whole images of any size"
            )
        return self.classifier(torch.flatten(f, 1))

    def dense(self, x: torch.Tensor, head: bool = True) -> torch.Tensor:
        """The class score map (N, num_classes, h, w) of the net applied fully convolutionally.

        FC1 becomes a (crop/32)x(crop/32) convolution and FC2, FC3 1x1 convolutions, using the FC weights
        viewed in place. The 2x2 pools round up (Caffe's ceil mode), so an input of H x W >= the crop size gives
        h = ceil(H/32) - crop/32 + 1 (likewise w) and the map covers every pixel: 256x341 gives 2x5 at 224 crops.
        At a multiple of 32 each cell equals the FC head applied to the matching crop window (at stride 32); at
        other sizes the last row and column of windows reach past the image's edge onto the pools' rounded-up
        cells, which see only the pixels that are there. With ``head=False`` the map stops before the last
        layer: (N, fc_width, h, w), the paper's penultimate features (Appendix B).
        """
        # checked on the input, not the feature map: the rounded-up pools would give a full map from less
        if min(x.shape[-2:]) < 32 * self.positions:  # 32 * positions = the crop size
            raise ValueError(
                f"dense evaluation needs an input of at least {self.crop_size}x{self.crop_size}, got "
                f"{tuple(x.shape[-2:])}; rescale the image so that its smaller side is >= {self.crop_size}"
            )
        f = self.features(x)
        p = self.positions
        fc1, fc2, fc3 = self.classifier[0], self.classifier[3], self.classifier[6]
        y = F.conv2d(f, fc1.weight.view(fc1.out_features, self.feature_channels, p, p), fc1.bias)
        y = self.classifier[2](F.relu(y))
        y = self.classifier[5](F.relu(F.conv2d(y, fc2.weight[:, :, None, None], fc2.bias)))
        if not head:
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
        return [self.classifier[0], self.classifier[3], self.classifier[6]]

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


def create_model(name: str = "D", num_classes: int = 1000, **options: Any) -> VGG:
    """Build a VGG net by config ("A", "A-LRN", "B", "C", "D", "E", "B-5x5") or alias ("vgg16", "vgg16_bn", ...).

    Options: ``width``, ``fc_width``, ``crop_size``, ``dropout``, ``batch_norm`` (overrides the name's _bn),
    ``in_chans``, and ``init`` ("paper", the default: N(0, variance 1e-2) weights and zero biases; "glorot";
    "kaiming"), ``seed`` (an int: the init is drawn from torch.Generator seeded with it).
    """
    config, bn = parse_name(name)
    init = options.pop("init", "paper")
    seed = options.pop("seed", None)
    if options.get("batch_norm") is None:
        options["batch_norm"] = bn
    model = VGG(config, num_classes=num_classes, **options)
    if init != "paper" or seed is not None:
        from .init import init_weights

        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        init_weights(model, init, generator=gen)
    return model


def spatial_average(scores: torch.Tensor) -> torch.Tensor:
    """Average a dense score map (N, C, h, w) over its positions into class scores (N, C)."""
    return scores.mean(dim=(-2, -1))
