"""The conv part alone, as a feature extractor (timm's ``features_only=True``): no FC layer is ever built.

``VGGFeatures`` holds the ``features.N`` layers of a config of Table 1 up to the deepest one asked for, under the
same names as in the full net (so state dicts load into it), and returns the maps of the chosen stages
(``out_indices``, timm's convention) or of the chosen layers by the paper's names (``layers``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .architectures import CONFIGS
from .model import FeatureInfo, feature_info, layer_names, make_features, run_layers


class VGGFeatures(nn.Module):
    """The conv layers of a VGG config as a feature extractor; ``forward(x)`` is a list of feature maps.

    Args:
        config: a config letter ("A", "A-LRN", "B", "C", "D", "E").
        width: as for ``VGG``.
        batch_norm: as for ``VGG``.
        in_chans: as for ``VGG``.
        out_indices: stages (``feature_info`` of the full net): 0-4 the last ReLU of blocks 1-5 (relu1_2,
            relu2_2, relu3_3, relu4_3, relu5_3 for D), 5 pool5. Default: (0, 1, 2, 3, 4).
        layers: instead of stages, the paper's layer names (conv3_1, relu4_2, pool2, ...; no FC layers).
        inplace_relu: as for ``VGG``.
    """

    def __init__(
        self,
        config: str = "D",
        width: float = 1.0,
        batch_norm: bool = False,
        in_chans: int = 3,
        out_indices: Sequence[int] | None = None,
        layers: Sequence[str] | None = None,
        inplace_relu: bool = True,
    ) -> None:
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"unknown config {config!r}; use one of {list(CONFIGS)}")
        full = make_features(config, width, batch_norm, in_chans, inplace_relu)
        names = layer_names(config, batch_norm)
        stages = feature_info(full, names)
        if layers is not None:
            layers = [layers] if isinstance(layers, str) else list(layers)
            unknown = [n for n in layers if n not in names]
            if unknown or not layers:
                raise ValueError(
                    f"unknown layer(s) {unknown} for the conv layers of {config}; they are {', '.join(names)}"
                )
            idx = [names.index(n) for n in layers]
        else:
            out_indices = tuple(range(5)) if out_indices is None else tuple(out_indices)
            bad = [i for i in out_indices if not -len(stages) <= i < len(stages)]
            if bad or not out_indices:
                raise ValueError(
                    f"out_indices {list(out_indices)}: stages are 0-{len(stages) - 1} "
                    f"({', '.join(s['name'] for s in stages)})"
                )
            idx = [stages[i]["index"] for i in out_indices]
            layers = [names[i] for i in idx]
        self.out_names = list(layers)
        self.layer_names = names[: max(idx) + 1]
        # only the layers up to the deepest output: keys stay features.0 ... features.K, as in the full net
        self.features = full[: max(idx) + 1]
        self.feature_info = FeatureInfo(_layer_info(full, names, i) for i in idx)
        self.arch: dict[str, Any] = dict(config=config, width=width, batch_norm=batch_norm, in_chans=in_chans)
        self.pretrained_cfg: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.arch["config"] + ("-BN" if self.arch["batch_norm"] else "")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps of the chosen stages or layers, in the order asked."""
        out: dict[str, torch.Tensor] = {}
        run_layers(self.features, self.layer_names, x, set(self.out_names), out)
        return [out[n] for n in self.out_names]

    def forward_intermediates(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{name: map}`` of the named conv layers (within the layers this extractor holds)."""
        layers = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in layers if n not in self.layer_names]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown}; this extractor holds {', '.join(self.layer_names)}")
        out: dict[str, torch.Tensor] = {}
        run_layers(self.features, self.layer_names, x, set(layers), out)
        return {n: out[n] for n in layers}


def _layer_info(features: nn.Sequential, names: Sequence[str], index: int) -> dict[str, Any]:
    """Channels and reduction (input side / map side) of the output of module ``index``, read off the modules."""
    channels, reduction = 0, 1
    for m in list(features)[: index + 1]:
        if isinstance(m, nn.Conv2d):
            channels = m.out_channels
        elif isinstance(m, nn.MaxPool2d):
            reduction *= 2
    return dict(name=names[index], module=f"features.{index}", index=index, num_chs=channels, reduction=reduction)
