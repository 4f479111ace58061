"""One rank of a 2-process Cuttlefish run (``torchrun --nproc_per_node 2``, gloo, CPU), used by test_ddp.py.

Writes ``rank{R}.pt`` (final weights) and ``rank{R}.json`` (switch, rank history, profiling table) into the
output directory given as the only argument.
"""

import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainingArguments

from hf_sparse import sparsify
from hf_sparse.methods.cuttlefish import CuttlefishConfig
from hf_sparse.training import SparseTrainer

# the repository root, *after* site-packages: the tests' helpers come from it, hf_sparse from the install
sys.path.append(str(Path(__file__).resolve().parents[3]))
from tests.conftest import TINY_MODELS  # noqa: E402
from tests.ddp_utils import shutdown  # noqa: E402
from tests.methods.cuttlefish.test_trainer import LMData  # noqa: E402


def main(output_dir: str) -> None:
    model = TINY_MODELS["gpt2"].build().train()
    # tau > 0: profiling runs (on rank 0, broadcast); tiny tau so the tiny layers still get factorized
    sparsify(model, CuttlefishConfig(tau=0.01, rank_check_interval=2, smoothing_window=2, min_checks=2, epsilon=0.3,
                                     candidate_rank_ratios=[0.25, 0.5], profile_repeats=1))
    args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=4, learning_rate=1e-2, max_steps=16,
                             logging_steps=4, save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0,
                             disable_tqdm=True, ddp_backend="gloo")
    trainer = SparseTrainer(model=model, args=args, train_dataset=LMData())
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    schedule = trainer.schedules[0]
    torch.save({k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
               os.path.join(output_dir, f"rank{rank}.pt"))
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"switch": schedule.switch, "history": schedule.history, "profile": schedule.profile,
                   "world_size": trainer.args.world_size}, fh)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown()
