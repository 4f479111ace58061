"""Training with schedules that change the model mid-run (Cuttlefish, DST-EE): ``SparseTrainer`` runs them
inside the normal ``transformers.Trainer`` loop; ``SparseCallback`` does the same for the plain ``Trainer``
when a schedule never changes the model's structure."""

from .restructure import apply_restructure, rewrap_ddp, scale_learning_rate
from .schedule import Restructure, StepContext, TrainingSchedule
from .trainer import SCHEDULE_STATE_NAME, SparseCallback, SparseTrainer, build_schedules

__all__ = [
    "SCHEDULE_STATE_NAME",
    "Restructure",
    "SparseCallback",
    "SparseTrainer",
    "StepContext",
    "TrainingSchedule",
    "apply_restructure",
    "build_schedules",
    "rewrap_ddp",
    "scale_learning_rate",
]
