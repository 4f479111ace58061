"""Helpers for the test scripts run under ``torchrun`` (imported after ``sys.path.append(<repo root>)``)."""

from __future__ import annotations

import torch.distributed as dist


def shutdown() -> None:
    """Leave the process group cleanly: exiting with gloo threads alive can abort the process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
