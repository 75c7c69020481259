"""vggnet: the VGG paper (Simonyan & Zisserman, ICLR 2015) end to end.

The six networks of Table 1, the paper's training recipe and its evaluation protocols.
"""

from __future__ import annotations

from .configs import CONFIGS, list_models, parse_name
from .init import init_from_net_a, init_weights
from .model import VGG, create_model, spatial_average
from .weights import export_weights, load_model, load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "CONFIGS",
    "VGG",
    "create_model",
    "export_weights",
    "init_from_net_a",
    "init_weights",
    "list_models",
    "load_model",
    "load_weights",
    "parse_name",
    "save_weights",
    "spatial_average",
]
