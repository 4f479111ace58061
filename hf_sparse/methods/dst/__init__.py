"""DST-EE: dynamic sparse training with exploration-exploitation growth (and RigL / SET in the same engine)."""

from . import model, schedule  # noqa: F401  (register the converter, finalizer and training schedule)
from .config import DSTEEConfig
from .distribution import active_counts, erk_densities
from .export import from_sparse_state_dict, load_sparse, save_sparse, to_sparse_state_dict
from .growth import drop_and_grow, drop_fraction_at, dst_ee_scores, grow_scores
from .masked import MaskedConv, MaskedLayer, MaskedLinear
from .schedule import DSTEESchedule

__all__ = ["DSTEEConfig", "DSTEESchedule", "MaskedConv", "MaskedLayer", "MaskedLinear", "active_counts",
           "drop_and_grow", "drop_fraction_at", "dst_ee_scores", "erk_densities", "from_sparse_state_dict",
           "grow_scores", "load_sparse", "save_sparse", "to_sparse_state_dict"]
