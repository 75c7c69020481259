"""vggnet: the VGG paper (Simonyan & Zisserman, ICLR 2015) end to end.

The six networks of Table 1, the paper's training recipe and its evaluation protocols.
"""

from __future__ import annotations

from .configs import CONFIGS, list_models, parse_name
from .init import init_from_net_a, init_weights
from .features import VGGFeatures
from .model import VGG, create_model, spatial_average
from .perceptual import PerceptualLoss
from .pretrained import transforms
from .weights import export_weights, load_model, load_weights, save_weights

# The functions below share their module's name; imported eagerly here, the package attribute is the function
# (`vggnet.train(...)`, `vggnet.evaluate(...)`); the modules stay importable as `from vggnet.train import ...`.
from .config import TrainConfig  # noqa: E402
from .evaluate import evaluate, predict  # noqa: E402
from .runs import load_run  # noqa: E402
from .train import train  # noqa: E402

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
