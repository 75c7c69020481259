"""Initialisation: the paper's N(0, 0.01^2), Glorot, Kaiming, and the paper's init of deeper nets from net A.

Which reading of "zero mean and 10^-2 variance" (section 3.1) is the default, and why (issue 10; measured in
docs/paper-check.md): the authors trained with Caffe, whose Gaussian filler takes a standard deviation and whose
VGG prototxts use std 0.01, on pixels of the 0-255 scale minus the mean RGB. That pair, ``"paper"`` with the
default ``pixel_range = 255`` of the training config, trains net A at full width from random weights at lr 1e-2.
The literal reading, variance 1e-2 = std 0.1, stays available as ``"paper-literal"``: with ReLU and fan-ins up to
25,088 it multiplies the activations' scale by about 1.7-11 per layer, and net A's first loss is ~10^5-10^8.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEMES = ("paper", "paper-literal", "glorot", "kaiming")

# Standard deviations of the two readings of the paper's "variance 10^-2" (module doc).
PAPER_STD = 0.01
PAPER_LITERAL_STD = 0.1


def init_weights(model: nn.Module, scheme: str = "paper", generator: torch.Generator | None = None) -> nn.Module:
    """Initialise every conv and FC layer of ``model`` in place; biases are set to 0, batch norm to identity.

    - ``paper``: weights from N(0, 0.01^2), standard deviation 0.01, as the authors' Caffe filler (module doc);
      meant for inputs on the 0-255 pixel scale minus the mean RGB, as the authors fed them.
    - ``paper-literal``: N(0, 1e-2) read as a variance, standard deviation 0.1 (diverges at full width).
    - ``glorot``: Glorot & Bengio's normalised init (uniform, gain 1), which the authors note trains the deep
      nets without pre-training from net A.
    - ``kaiming``: He et al.'s normal init, variance 2 / fan-in (1 / fan-in for the last layer), which keeps
      the activations' scale through the ReLU layers of any width: the quickest start for narrow nets.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(SCHEMES)}")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
            with torch.no_grad():
                if scheme in ("paper", "paper-literal"):
                    w.normal_(0.0, PAPER_STD if scheme == "paper" else PAPER_LITERAL_STD, generator=generator)
                elif scheme == "glorot":
                    a = math.sqrt(6.0 / (fan_in + fan_out))
                    w.uniform_(-a, a, generator=generator)
                else:  # He: variance 2 / fan_in before a ReLU; the last layer (no ReLU after it) gets 1 / fan_in
                    gain = 1.0 if m is layers[-1] else 2.0
                    w.normal_(0.0, math.sqrt(gain / fan_in), generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


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
    from .model import VGG

    if not isinstance(model, VGG):
        raise TypeError("init_from_net_a needs a vggnet VGG model")
    if isinstance(net_a, dict):
        arch = dict(model.arch, config="A", batch_norm=False)
        source = VGG(**arch)
        from .weights import convert_state_dict

        source.load_state_dict(convert_state_dict(net_a, source), strict=False)
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
