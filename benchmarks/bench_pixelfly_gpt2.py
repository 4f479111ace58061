"""End to end: a small GPT-2 trained from scratch, dense vs Pixelfly (MLP + attention projections +
butterfly attention at about 1/4 density), same data, same steps, same seed, one after the other.

Reports training tokens/s and held-out loss of both. Byte-level tokens from the bundled corpus.

    python benchmarks/bench_pixelfly_gpt2.py                         # 6 layers, width 512, sequence 1024
    python benchmarks/bench_pixelfly_gpt2.py --steps 20 --n-layer 2  # smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from common import cpu_name, train_lm, write_results
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from hf_sparse import PixelflyConfig, sparsify, summary
from hf_sparse.data import byte_blocks, demo_corpus
from hf_sparse.summary import count_parameters


def train_and_eval(model: GPT2LMHeadModel, train: torch.Tensor, held_out: torch.Tensor, steps: int, batch: int,
                   lr: float, seed: int) -> dict:
    start = time.perf_counter()
    train_lm(model, train, steps, batch, lr, seed)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        losses = [model(input_ids=held_out[i:i + batch], labels=held_out[i:i + batch]).loss.item()
                  for i in range(0, len(held_out), batch)]
    return {"tokens_per_s": steps * batch * train.shape[1] / seconds, "train_seconds": seconds,
            "eval_loss": sum(losses) / len(losses), "params": count_parameters(model)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=512)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--attention-block-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pixelfly_gpt2_cpu")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    blocks = byte_blocks(demo_corpus(), args.seq)
    blocks = blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(args.seed))]
    n_eval = max(args.batch, len(blocks) // 10)
    held_out, train = blocks[:n_eval], blocks[n_eval:]
    config = GPT2Config(vocab_size=256, n_positions=args.seq, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=args.n_embd // 64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=10, eos_token_id=10)
    results = {}
    for name in ("dense", "pixelfly"):
        torch.manual_seed(args.seed)
        model = GPT2LMHeadModel(config)
        if name == "pixelfly":
            sparsify(model, PixelflyConfig(density=args.density, block_size=args.block_size, init="random",
                                           attention=True, attention_block_size=args.attention_block_size))
            report = summary(model)
            print(f"  pixelfly: {report.converted_params_after / report.converted_params_before:.3f} of the "
                  f"converted layers' parameters, attention {model.config._attn_implementation}")
        print(f"{name}:", flush=True)
        results[name] = train_and_eval(model, train, held_out, args.steps, args.batch, args.lr, args.seed)
        print(f"  {results[name]}", flush=True)
    dense, sparse = results["dense"], results["pixelfly"]
    title = (f"{cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, fp32; GPT-2 {args.n_layer} layers x "
             f"{args.n_embd}, sequence {args.seq}, batch {args.batch}, {args.steps} steps from scratch, byte-level "
             f"bundled corpus; Pixelfly density {args.density} (block {args.block_size}) on all attention and MLP "
             f"projections + butterfly attention (block {args.attention_block_size})")
    lines = ["| model | params | train tokens/s | held-out loss | held-out perplexity |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['params']:,} | {r['tokens_per_s']:.0f} | {r['eval_loss']:.3f} | "
                     f"{math.exp(r['eval_loss']):.2f} |")
    lines += ["", f"Pixelfly vs dense: {sparse['tokens_per_s'] / dense['tokens_per_s']:.2f}x tokens/s, held-out loss "
                  f"{(sparse['eval_loss'] / dense['eval_loss'] - 1) * 100:+.1f}%"]
    write_results(args.out, title, "\n".join(lines), {"results": results})

if __name__ == "__main__":
    main()
