"""Pixelfly: flat block butterfly + low-rank weights (Pixelated Butterfly)."""

from . import model  # noqa: F401  (registers the converter)
from .butterfly import PixelflyShape, coarse_layout, flat_block_butterfly_layout, plan_shape
from .config import PixelflyConfig
from .linear import PixelflyLinear

__all__ = ["PixelflyConfig", "PixelflyLinear", "PixelflyShape", "coarse_layout", "flat_block_butterfly_layout",
           "plan_shape"]
