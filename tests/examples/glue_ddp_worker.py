"""Run examples/run_glue.py under torchrun and save this rank's final weights (used by test_run_glue)."""

import importlib.util
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("run_glue", ROOT / "examples" / "run_glue.py")
run_glue = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run_glue
spec.loader.exec_module(run_glue)


def shutdown() -> None:
    """Leave the process group cleanly: exiting with gloo threads alive can abort the process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    trainer = run_glue.main(sys.argv[1:])
    rank = int(os.environ.get("RANK", "0"))
    torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
               os.path.join(trainer.args.output_dir, f"rank{rank}.pt"))
    shutdown()
