"""vggnet: the VGG paper (Simonyan & Zisserman, ICLR 2015) end to end.

The six networks of Table 1, the paper's training recipe and its evaluation protocols.
"""

from __future__ import annotations

import importlib
import sys
import types

# Attributes load on first use, so that `vgg --help` and `import vggnet.config` do not wait for torch.
_LAZY = {
    "CONFIGS": "configs", "list_models": "configs", "parse_name": "configs",
    "init_from_net_a": "init", "init_weights": "init", "VGGFeatures": "features", "PerceptualLoss": "perceptual",
    "transforms": "pretrained",
    "VGG": "model", "create_model": "model", "spatial_average": "model",
    "export_weights": "weights", "load_model": "weights", "load_weights": "weights", "save_weights": "weights",
    "TrainConfig": "config", "evaluate": "evaluation", "predict": "evaluation", "load_run": "runs", "train": "train",
}  # fmt: skip


class _Package(types.ModuleType):
    # `vggnet.train` is the function; importing the module of the same name (which sets the package attribute)
    # must not replace it. The module stays importable: `from vggnet.train import`.
    def __setattr__(self, name: str, value: object) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    else:
        try:  # a submodule: vggnet.data, vggnet.metrics, ...
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


sys.modules[__name__].__class__ = _Package

__version__ = "0.1.0"

__all__ = [
    "CONFIGS",
    "TrainConfig",
    "PerceptualLoss",
    "VGG",
    "VGGFeatures",
    "create_model",
    "evaluate",
    "export_weights",
    "init_from_net_a",
    "init_weights",
    "list_models",
    "load_model",
    "load_run",
    "load_weights",
    "parse_name",
    "predict",
    "save_weights",
    "spatial_average",
    "train",
    "transforms",
]
