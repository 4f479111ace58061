"""LED (factorized Linear) vs dense ``nn.Linear``: forward + backward wall-clock, side by side in one run.

Default case from the core issue: 1024 -> 4096, 4096 tokens, fp32, rank 128 (FLOP ratio
mn / (r (m + n)) = 6.4x). Reports the median of ``--repeats`` timings per layer, alternating dense and
LED so both see the same machine state, and writes JSON + markdown to ``benchmarks/results/``.

    python benchmarks/bench_led.py                    # the issue's case
    python benchmarks/bench_led.py --ranks 64 128 256 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from hf_sparse import LED


def time_fwd_bwd(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    start = time.perf_counter()
    out = layer(x)
    out.backward(grad)
    return time.perf_counter() - start


def run_case(in_f: int, out_f: int, tokens: int, rank: int, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    dense = nn.Linear(in_f, out_f)
    led = LED(in_f, out_f, rank)
    x = torch.randn(tokens, in_f, requires_grad=True)
    grad = torch.randn(tokens, out_f)
    for _ in range(warmup):
        time_fwd_bwd(dense, x, grad)
        time_fwd_bwd(led, x, grad)
    dense_t, led_t = [], []
    for _ in range(repeats):
        dense_t.append(time_fwd_bwd(dense, x, grad))
        led_t.append(time_fwd_bwd(led, x, grad))
    d, s = statistics.median(dense_t), statistics.median(led_t)
    flop_ratio = in_f * out_f / (rank * (in_f + out_f))
    return {"in": in_f, "out": out_f, "tokens": tokens, "rank": rank, "dense_ms": d * 1e3, "led_ms": s * 1e3,
            "speedup": d / s, "flop_ratio": flop_ratio, "fraction_of_flop_ratio": d / s / flop_ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-features", type=int, default=1024)
    parser.add_argument("--out-features", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--ranks", type=int, nargs="+", default=[128])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "led_cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run_case(args.in_features, args.out_features, args.tokens, r, args.repeats, args.warmup)
            for r in args.ranks]
    meta = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "dtype": "float32", "repeats": args.repeats, "statistic": "median"}
    lines = ["| in -> out | tokens | rank | dense fwd+bwd (ms) | LED fwd+bwd (ms) | speedup | FLOP ratio | "
             "speedup / FLOP ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['in']} -> {r['out']} | {r['tokens']} | {r['rank']} | {r['dense_ms']:.1f} | "
                     f"{r['led_ms']:.1f} | {r['speedup']:.2f}x | {r['flop_ratio']:.2f}x | "
                     f"{r['fraction_of_flop_ratio']:.0%} |")
    table = "\n".join(lines)
    print(f"CPU, {meta['threads']} threads, torch {meta['torch']}, fp32, median of {args.repeats}\n{table}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(f"CPU ({meta['device']}), {meta['threads']} threads, torch "
                                           f"{meta['torch']}, fp32, median of {args.repeats}\n\n{table}\n")


if __name__ == "__main__":
    main()
