"""``hf-sparse demo``: the whole library on an embedded default, offline, in about a minute on 2 CPU cores.

Builds the bundled tiny GPT-2 (byte-level vocabulary), trains it dense on the bundled corpus, compresses
it with Greenformer (SVD), fine-tunes it with the plain ``transformers.Trainer``, saves it, reloads it
with plain ``AutoModelForCausalLM.from_pretrained`` and prints a before/after table.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging

from .data import byte_blocks, data_path, demo_corpus
from .evaluation import perplexity_of_blocks
from .inject import sparsify
from .methods.greenformer import GreenformerConfig
from .summary import count_parameters, matmul_flops_per_token

logger = logging.getLogger("hf_sparse")


class BlockDataset(Dataset):
    """Causal-LM examples from ``(num_blocks, block_len)`` token ids (labels = inputs)."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks[index], "labels": self.blocks[index]}


@dataclass
class Stage:
    name: str
    params: int
    flops_per_token: int
    perplexity: float
    seconds: float


def train(model: torch.nn.Module, blocks: torch.Tensor, steps: int, lr: float, output_dir: Path, seed: int) -> None:
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=16, learning_rate=lr,
        warmup_steps=min(20, steps // 10), lr_scheduler_type="cosine", weight_decay=0.0, logging_strategy="no",
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=seed, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=BlockDataset(blocks))
    trainer.remove_callback(PrinterCallback)  # the demo prints its own table
    trainer.train()


def run_demo(output_dir: str | Path = "demo_output", pretrain_steps: int = 300, finetune_steps: int = 100,
             rank: float = 0.25, block_size: int = 128, seed: int = 0) -> list[Stage]:
    """Run the demo; returns the stages printed in the table. Writes the compressed model to ``output_dir``."""
    output_dir = Path(output_dir)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    blocks = byte_blocks(demo_corpus(), block_size)
    generator = torch.Generator().manual_seed(seed)
    blocks = blocks[torch.randperm(len(blocks), generator=generator)]
    n_val = max(16, len(blocks) // 10)
    val, train_blocks = blocks[:n_val], blocks[n_val:]
    config = GPT2Config(**json.loads(data_path("demo_gpt2_config.json").read_text()))
    model = GPT2LMHeadModel(config)
    stages: list[Stage] = []

    def record(name: str, start: float) -> None:
        seconds = time.perf_counter() - start
        stages.append(Stage(name, count_parameters(model), matmul_flops_per_token(model),
                            perplexity_of_blocks(model, val), seconds))
        logger.info("%s: perplexity %.2f", name, stages[-1].perplexity)

    record("untrained", time.perf_counter())
    t = time.perf_counter()
    train(model, train_blocks, pretrain_steps, 2e-3, output_dir / "runs", seed)
    record(f"dense, trained {pretrain_steps} steps", t)

    t = time.perf_counter()
    sparsify(model, GreenformerConfig(rank=rank, solver="svd"))
    record(f"greenformer svd rank={rank} (no training)", t)

    t = time.perf_counter()
    train(model, train_blocks, finetune_steps, 1e-3, output_dir / "runs", seed)
    record(f"  + fine-tuned {finetune_steps} steps", t)

    t = time.perf_counter()
    model.save_pretrained(output_dir / "model")
    reloaded = AutoModelForCausalLM.from_pretrained(output_dir / "model")
    probe = val[:4]
    with torch.no_grad():
        identical = torch.equal(model.eval()(probe).logits, reloaded(probe).logits)
    if not identical:
        raise RuntimeError("reloaded model differs from the saved one")
    model = reloaded
    record("  reloaded with AutoModelForCausalLM (bit-identical)", t)
    return stages


def format_stages(stages: list[Stage]) -> str:
    header = ("stage", "params", "matmul FLOPs/token", "val perplexity", "seconds")
    rows = [(s.name, f"{s.params:,}", f"{s.flops_per_token:,}", f"{s.perplexity:.2f}", f"{s.seconds:.1f}")
            for s in stages]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
