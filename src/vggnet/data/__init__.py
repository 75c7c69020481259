"""Data: image folders, the embedded default data sets, the paper's transforms, statistics, loaders."""

from __future__ import annotations

from .io import load_image, rescale

__all__ = ["load_image", "rescale"]
