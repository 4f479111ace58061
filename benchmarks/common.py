"""Helpers shared by the benchmark scripts: machine name, side-by-side timing, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fwd_bwd(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """A callable running ``layer(x).backward(grad)`` with fresh gradients (as ``Trainer`` zeroes them)."""

    def run() -> None:
        for p in (*layer.parameters(), x):
            p.grad = None
        layer(x).backward(grad)

    return run


def side_by_side(first: Callable[[], None], second: Callable[[], None], repeats: int,
                 warmup: int = 2) -> tuple[float, float]:
    """Median seconds of ``first`` and ``second``, called alternately so both see the same machine state."""
    for _ in range(warmup):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def write_results(out: Path, title: str, table: str, payload: dict) -> None:
    """Print ``title`` + ``table`` and write ``out.json`` (``payload`` + title) and ``out.md``."""
    print(f"{title}\n{table}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"title": title, **payload}, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"{title}\n\n{table}\n")


def train_lm(model: nn.Module, blocks: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int) -> None:
    """Train a causal LM on random batches of ``blocks`` ``(n, seq)``: AdamW (weight decay 0.01), one-cycle LR
    (10% warm-up), gradient clipping at 1; logs the loss ten times. Leaves the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"  step {step:5d}  loss {loss.item():.3f}", flush=True)
    model.eval()
