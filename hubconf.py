"""torch.hub entry points: ``torch.hub.load("<this repo or a local clone>", "vgg16", pretrained="torchvision:vgg16")``.

Every entry takes ``create_model``'s arguments (``pretrained``: a file, URL or named source; ``num_classes``;
``features_only``; ``width`` ...). Nothing is downloaded unless ``pretrained`` asks for it.
"""

import sys
from pathlib import Path

dependencies = ["torch", "safetensors"]

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # a clone is usable without installing it

from vggnet import create_model as _create  # noqa: E402


def _entry(name: str):
    def entry(pretrained=None, **kwargs):
        return _create(name, pretrained=pretrained, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"VGG net {name!r} (vggnet.create_model({name!r}, pretrained=..., **kwargs))."
    return entry


vgg11 = _entry("vgg11")
vgg11_bn = _entry("vgg11_bn")
vgg11_lrn = _entry("vgg11_lrn")
vgg13 = _entry("vgg13")
vgg13_bn = _entry("vgg13_bn")
vgg16 = _entry("vgg16")
vgg16_bn = _entry("vgg16_bn")
vgg16_c = _entry("vgg16_c")
vgg19 = _entry("vgg19")
vgg19_bn = _entry("vgg19_bn")
