"""vggnet: the VGG paper (Simonyan & Zisserman, ICLR 2015) end to end.

The six networks of Table 1, the paper's training recipe and its evaluation protocols.
"""

from __future__ import annotations

import importlib

# Attributes load on first use, so that `vgg --help` and `import vggnet.config` do not wait for torch. The
# functions train and evaluate live in the packages vggnet.training and vggnet.evaluation: no module shadows them.
_LAZY = {
    "CONFIGS": "architectures",
    "list_models": "architectures",
    "parse_name": "architectures",
    "init_from_net_a": "weights",
    "init_weights": "init",
    "VGGFeatures": "features",
    "PerceptualLoss": "perceptual",
    "transforms": "pretrained",
    "VGG": "model",
    "create_model": "factory",
    "spatial_average": "model",
    "export_weights": "weights",
    "load_model": "weights",
    "load_weights": "weights",
    "save_weights": "weights",
    "TrainConfig": "config",
    "evaluate": "evaluation",
    "predict": "evaluation",
    "load_run": "runs",
    "train": "training",
}


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
