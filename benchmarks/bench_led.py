"""LED (factorized Linear) vs dense ``nn.Linear``: forward + backward wall-clock, side by side in one run.

Default case from the core issue: 1024 -> 4096, 4096 tokens, fp32, rank 128 (FLOP ratio
mn / (r (m + n)) = 6.4x). Dense and LED calls alternate so both see the same machine state; gradients are
reset to None before each call (as ``Trainer`` does); the median of ``--repeats`` timings is reported.
Writes JSON + markdown to ``benchmarks/results/``.

    python benchmarks/bench_led.py                              # the issue's case, all cores
    python benchmarks/bench_led.py --ranks 64 128 256 --threads 1 2
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from common import cpu_name, fwd_bwd, side_by_side, write_results
from torch import nn

from hf_sparse import LED


def run_case(in_f: int, out_f: int, tokens: int, rank: int, repeats: int, warmup: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dense, led = nn.Linear(in_f, out_f), LED(in_f, out_f, rank)
    x = torch.randn(tokens, in_f, requires_grad=True)
    grad = torch.randn(tokens, out_f)
    d, s = side_by_side(fwd_bwd(dense, x, grad), fwd_bwd(led, x, grad), repeats, warmup)
    flop_ratio = in_f * out_f / (rank * (in_f + out_f))
    return {"threads": threads, "in": in_f, "out": out_f, "tokens": tokens, "rank": rank,
            "dense_ms": d * 1e3, "led_ms": s * 1e3, "speedup": d / s, "flop_ratio": flop_ratio,
            "fraction_of_flop_ratio": d / s / flop_ratio}


def markdown(rows: list[dict]) -> str:
    lines = ["| threads | in -> out | tokens | rank | dense fwd+bwd (ms) | LED fwd+bwd (ms) | speedup | FLOP ratio "
             "| speedup / FLOP ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['in']} -> {r['out']} | {r['tokens']} | {r['rank']} | "
                     f"{r['dense_ms']:.1f} | {r['led_ms']:.1f} | {r['speedup']:.2f}x | {r['flop_ratio']:.2f}x | "
                     f"{r['fraction_of_flop_ratio']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-features", type=int, default=1024)
    parser.add_argument("--out-features", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--ranks", type=int, nargs="+", default=[128])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "led_cpu")
    args = parser.parse_args()
    rows = [run_case(args.in_features, args.out_features, args.tokens, r, args.repeats, args.warmup, t)
            for t in args.threads for r in args.ranks]
    meta = {"device": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "dtype": "float32",
            "repeats": args.repeats, "statistic": "median"}
    title = f"{meta['device']} ({meta['cores']} cores), torch {meta['torch']}, fp32, median of {args.repeats}"
    write_results(args.out, title, markdown(rows), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
