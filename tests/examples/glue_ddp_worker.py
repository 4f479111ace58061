"""Run examples/run_glue.py under torchrun and save this rank's final weights (used by test_run_glue)."""

import os
import sys
from pathlib import Path

import torch

# the repository root, *after* site-packages: the tests' helpers come from it, hf_sparse from the install
sys.path.append(str(Path(__file__).resolve().parents[2]))
from tests.ddp_utils import shutdown  # noqa: E402
from tests.examples.scripts import load_example  # noqa: E402

run_glue = load_example("run_glue")


if __name__ == "__main__":
    trainer = run_glue.main(sys.argv[1:])
    rank = int(os.environ.get("RANK", "0"))
    torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
               os.path.join(trainer.args.output_dir, f"rank{rank}.pt"))
    shutdown()
