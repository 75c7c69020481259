"""Table 1 of the paper as data: the only place where the layers of the networks are listed (the six of Table 1
and the control net of section 4.1, B-5x5).

A config is a list of layer tokens, read left to right:

- ``"conv3-64"``: a 3x3 convolution with 64 output channels (stride 1, padding 1), followed by ReLU;
- ``"conv1-256"``: a 1x1 convolution (config C), followed by ReLU;
- ``"conv5-128"``: a 5x5 convolution (stride 1, padding 2; the control net B-5x5), followed by ReLU;
- ``"LRN"``: AlexNet's local response normalisation (config A-LRN);
- ``"M"``: a 2x2 max-pool with stride 2 (every block ends in one).
"""

from __future__ import annotations

import re

_BLOCKS = (64, 128, 256, 512, 512)


def _stack(per_block: list[list[str]]) -> list[str]:
    tokens: list[str] = []
    for layers in per_block:
        tokens += layers + ["M"]
    return tokens


def _plain(counts: tuple[int, ...]) -> list[str]:
    return _stack([[f"conv3-{c}"] * n for c, n in zip(_BLOCKS, counts)])


CONFIGS: dict[str, list[str]] = {
    "A": _plain((1, 1, 2, 2, 2)),
    "A-LRN": _stack([["conv3-64", "LRN"], ["conv3-128"], ["conv3-256"] * 2, ["conv3-512"] * 2, ["conv3-512"] * 2]),
    "B": _plain((2, 2, 2, 2, 2)),
    "C": _stack(
        [
            ["conv3-64"] * 2,
            ["conv3-128"] * 2,
            ["conv3-256"] * 2 + ["conv1-256"],
            ["conv3-512"] * 2 + ["conv1-512"],
            ["conv3-512"] * 2 + ["conv1-512"],
        ]
    ),
    "D": _plain((2, 2, 3, 3, 3)),
    "E": _plain((2, 2, 4, 4, 4)),
    # Section 4.1's control experiment: B with each pair of 3x3 convs replaced by one 5x5 conv (the same
    # receptive field, 5x5, from one layer instead of two): 8 weight layers. The paper finds it 7% worse in
    # top-1 error than B: a deep net of small filters beats a shallow net of larger ones.
    "B-5x5": _stack([[f"conv5-{c}"] for c in _BLOCKS]),
}
TABLE1 = ("A", "A-LRN", "B", "C", "D", "E")  # the configs of Table 1 (B-5x5 is section 4.1's control)

# torchvision's names for the four nets it has; any name may also end in "_bn" (batch norm after each conv).
ALIASES: dict[str, str] = {"vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16_c": "C", "vgg16": "D", "vgg19": "E"}

TORCHVISION_NAMES = ("vgg11", "vgg13", "vgg16", "vgg19")

_CONV = re.compile(r"^conv([135])-(\d+)$")


def parse_name(name: str) -> tuple[str, bool]:
    """Return ``(config letter, batch_norm)`` for a config letter or an alias.

    Accepted: ``A``, ``A-LRN``, ``B``, ``C``, ``D``, ``E``, ``B-5x5`` (any case), torchvision's ``vgg11``, ``vgg13``,
    ``vgg16``, ``vgg19``, ``vgg11_lrn``, ``vgg16_c``, each optionally with a ``_bn`` or ``-BN`` suffix.
    """
    raw = name.strip()
    key = raw.lower().replace("-bn", "_bn")
    bn = key.endswith("_bn")
    if bn:
        key = key[: -len("_bn")]
    for letter in CONFIGS:
        if key == letter.lower():
            return letter, bn
    if key in ALIASES:
        return ALIASES[key], bn
    known = ", ".join(list_models())
    raise ValueError(f"unknown VGG model {name!r}; known names: {known} (any of them with a _bn suffix)")


def list_models(aliases: bool = True, pretrained: bool = False) -> list[str]:
    """The registered model names: the six configs of Table 1 and B-5x5, then every alias (torchvision's names,
    ``vgg11_lrn``, ``vgg16_c``) and its _bn variant. ``pretrained=True`` (timm's filter): the names that have
    default released weights (``create_model(name, pretrained=True)``): torchvision's and their _bn."""
    if pretrained:
        return [n for tv in TORCHVISION_NAMES for n in (tv, tv + "_bn")]
    names = list(CONFIGS)
    if aliases:
        for alias in ALIASES:
            names += [alias, alias + "_bn"]
    return names


def parse_token(token: str) -> tuple[str, int, int]:
    """Split a layer token into ``(kind, kernel, channels)``; kind is "conv", "lrn" or "pool"."""
    if token == "M":
        return "pool", 2, 0
    if token == "LRN":
        return "lrn", 5, 0
    m = _CONV.match(token)
    if not m:
        raise ValueError(f"bad layer token {token!r} (expected conv3-N, conv1-N, conv5-N, LRN or M)")
    return "conv", int(m.group(1)), int(m.group(2))


def weight_layers(config: str) -> int:
    """Number of weight layers as the paper counts them (convs + 3 FC layers)."""
    return sum(parse_token(t)[0] == "conv" for t in CONFIGS[config]) + 3
