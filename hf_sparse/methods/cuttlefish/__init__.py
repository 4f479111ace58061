"""Cuttlefish: automated low-rank training (full rank until the stable ranks settle, then factorize)."""

from . import model  # noqa: F401  (registers the converter)
from .config import CuttlefishConfig
from .controller import CuttlefishSchedule
from .layers import NormCED, NormLED
from .rank import scaled_rank, stable_rank

__all__ = ["CuttlefishConfig", "CuttlefishSchedule", "NormCED", "NormLED", "scaled_rank", "stable_rank"]
