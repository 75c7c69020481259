"""Random initialisation: the paper's N(0, 0.01^2), Glorot, Kaiming. (The paper's init of deeper nets from net A
copies trained layers: :func:`vggnet.weights.init_from_net_a`.)

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
                    # (a net without a last layer, num_classes=0, ends in FC7 and its ReLU: gain 2 there too)
                    gain = 1.0 if m is layers[-1] and getattr(model, "num_classes", 1) else 2.0
                    w.normal_(0.0, math.sqrt(gain / fan_in), generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
