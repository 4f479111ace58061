"""Run by ``test_trainer.py`` under ``torchrun --nproc_per_node 2`` (gloo, CPU): train a tiny GPT-2 with DST-EE in
``SparseTrainer`` and save each rank's final state (weights, masks, counts) to ``<out>/rank<r>.pt``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from hf_sparse import sparsify
from hf_sparse.methods.dst import DSTEEConfig, MaskedLayer
from hf_sparse.training import SparseTrainer

# the repository root, *after* site-packages: the tests' helpers come from it, hf_sparse from the install
sys.path.append(str(Path(__file__).resolve().parents[3]))
from tests.ddp_utils import shutdown  # noqa: E402


class LMData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.ids = torch.randint(1, 64, (64, 16), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(out: str) -> None:
    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_inner=64, vocab_size=64, n_positions=32)
    model = sparsify(GPT2LMHeadModel(config), DSTEEConfig(sparsity=0.8, update_interval=2, drop_fraction=0.5))
    initial = {n: m.mask.clone() for n, m in model.named_modules() if isinstance(m, MaskedLayer)}
    args = TrainingArguments(output_dir=f"{out}/run", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             learning_rate=1e-2, max_steps=8, max_grad_norm=1.0, save_strategy="no", report_to=[],
                             use_cpu=True, seed=0, disable_tqdm=True, ddp_backend="gloo", logging_steps=4)
    trainer = SparseTrainer(model=model, args=args, train_dataset=LMData())
    local = {}

    def keep_local(module, grad_input, grad_output):  # one local dense gradient, before any all-reduce
        local.setdefault("g", grad_output[0].detach().clone())

    model.transformer.h[0].mlp.c_fc.register_full_backward_hook(keep_local)
    trainer.train()
    rank = dist.get_rank()
    gathered = [torch.zeros_like(local["g"]) for _ in range(2)]
    dist.all_gather(gathered, local["g"])
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MaskedLayer)}
    torch.save({"state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "updates": [h["step"] for h in trainer.schedules[0].history],
                "local_grads_differ": not torch.equal(gathered[0], gathered[1]),
                "masks_changed": any(not torch.equal(m.mask, initial[n]) for n, m in layers.items())},
               f"{out}/rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown()
