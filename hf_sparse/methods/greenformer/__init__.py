"""Greenformer: factorize Linear / Conv layers into two thin layers (LED / CED)."""

from . import model  # noqa: F401  (registers the converter)
from .config import GreenformerConfig
from .layers import CED, LED
from .solvers import factorize

__all__ = ["CED", "LED", "GreenformerConfig", "factorize"]
