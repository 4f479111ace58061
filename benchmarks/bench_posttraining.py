"""Post-training factorization quality: every solver x allocation at one parameter budget, in one table.

Pretrains a small byte-level GPT-2 on the bundled corpus (real English prose, a few minutes on CPU), then
keeps ``--param-ratio`` of the transformer blocks' weight parameters with each (solver, allocation) pair,
calibrating on training blocks and measuring perplexity on held-out blocks. The issue's target: the
perplexity increase of ``svd-llm`` + ``sensitivity`` is at most half the increase of ``svd`` + ``uniform``.
Writes JSON + markdown to ``benchmarks/results/``.

    python benchmarks/bench_posttraining.py                # about 10 minutes on 2 cores
    python benchmarks/bench_posttraining.py --steps 200    # quick smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from common import train_lm
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from hf_sparse import GreenformerConfig, sparsify
from hf_sparse.data import byte_blocks, demo_corpus
from hf_sparse.evaluation import perplexity_of_blocks

SOLVERS = ("svd", "asvd", "fwsvd", "svd-llm")
ALLOCATIONS = ("uniform", "stable_rank", "sensitivity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--n-embd", type=int, default=192)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--param-ratio", type=float, default=0.5)
    parser.add_argument("--calibration-blocks", type=int, default=32)
    parser.add_argument("--eval-blocks", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "posttraining_cpu")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.manual_seed(args.seed)

    blocks = byte_blocks(demo_corpus(), args.block_size)
    blocks = blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(args.seed))]
    held_out, train = blocks[:args.eval_blocks], blocks[args.eval_blocks:]
    calibration = [{"input_ids": train[i:i + 8]} for i in range(0, args.calibration_blocks, 8)]
    config = GPT2Config(vocab_size=256, n_positions=args.block_size, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=max(1, args.n_embd // 64), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=10, eos_token_id=10)
    dense = GPT2LMHeadModel(config)
    start = time.perf_counter()
    train_lm(dense, train, args.steps, args.batch_size, 3e-3, args.seed)
    pretrain_s = time.perf_counter() - start
    dense_ppl = perplexity_of_blocks(dense, held_out)
    print(f"dense: held-out perplexity {dense_ppl:.3f} after {args.steps} steps ({pretrain_s:.0f} s)", flush=True)

    rows = []
    for solver in SOLVERS:
        for allocation in ALLOCATIONS:
            model = copy.deepcopy(dense)
            cfg = GreenformerConfig(solver=solver, param_ratio=args.param_ratio, allocation=allocation)
            start = time.perf_counter()
            sparsify(model, cfg, calibration_data=calibration)
            seconds = time.perf_counter() - start
            report = model.config.quantization_config.allocation_report
            ppl = perplexity_of_blocks(model, held_out)
            rows.append({"solver": solver, "allocation": allocation, "achieved_param_ratio":
                         report["achieved_param_ratio"], "perplexity": ppl, "increase": ppl - dense_ppl,
                         "seconds": seconds})
            print(f"{solver:8s} {allocation:12s} kept {report['achieved_param_ratio']:.3f}  ppl {ppl:8.3f} "
                  f"(+{ppl - dense_ppl:.3f})  {seconds:.1f} s", flush=True)

    base = next(r for r in rows if r["solver"] == "svd" and r["allocation"] == "uniform")["increase"]
    best = next(r for r in rows if r["solver"] == "svd-llm" and r["allocation"] == "sensitivity")["increase"]
    target_met = best <= 0.5 * base
    lines = [f"Dense model: held-out perplexity {dense_ppl:.3f} ({args.n_layer} layers, n_embd {args.n_embd}, "
             f"byte-level, {args.steps} pretraining steps). Budget: keep {args.param_ratio:.0%} of the transformer "
             f"blocks' weight parameters.", "",
             "| solver | allocation | kept | held-out perplexity | increase over dense | increase / svd+uniform "
             "| seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['solver']} | {r['allocation']} | {r['achieved_param_ratio']:.3f} | {r['perplexity']:.3f} "
                     f"| {r['increase']:+.3f} | {r['increase'] / base:.2f} | {r['seconds']:.1f} |")
    lines += ["", f"Target (svd-llm + sensitivity increase <= 0.5 x svd + uniform increase): "
                  f"{best:.3f} vs {0.5 * base:.3f} -> {'met' if target_met else 'NOT met'}"]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"dense_perplexity": dense_ppl, "args": {k: str(v) for k, v in vars(args).items()},
            "torch": torch.__version__, "target_met": target_met, "pretrain_seconds": pretrain_s}
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
