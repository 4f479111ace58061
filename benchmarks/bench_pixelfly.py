"""PixelflyLinear vs dense ``nn.Linear``: forward + backward wall-clock, side by side in one run.

Default case from the Pixelfly issue: 1024 -> 4096, 4096 tokens, fp32, CPU; densities 1/4, 1/8, 1/16 and
block sizes 32 / 64 (low-rank share 1/4 of each layer's budget). Dense and Pixelfly calls alternate; grads
are reset before each call; median of ``--repeats``. Writes JSON + markdown to ``benchmarks/results/``.

    python benchmarks/bench_pixelfly.py
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from common import cpu_name, fwd_bwd, side_by_side, write_results
from torch import nn

from hf_sparse.methods.pixelfly import PixelflyLinear, plan_shape


def run_case(in_f: int, out_f: int, tokens: int, density: float, block: int, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    dense = nn.Linear(in_f, out_f)
    shape = plan_shape(out_f, in_f, density, block, 0.25)
    sparse = PixelflyLinear(shape)
    x = torch.randn(tokens, in_f, requires_grad=True)
    grad = torch.randn(tokens, out_f)
    d, s = side_by_side(fwd_bwd(dense, x, grad), fwd_bwd(sparse, x, grad), repeats, warmup)
    return {"in": in_f, "out": out_f, "tokens": tokens, "target_density": density, "block_size": block,
            "achieved_density": shape.density, "butterfly": f"{shape.tiles_per_row}/{shape.butterfly_size}",
            "rank": shape.rank, "dense_ms": d * 1e3, "pixelfly_ms": s * 1e3, "speedup": d / s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-features", type=int, default=1024)
    parser.add_argument("--out-features", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--densities", type=float, nargs="+", default=[1 / 4, 1 / 8, 1 / 16])
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pixelfly_linear_cpu")
    args = parser.parse_args()
    rows = [run_case(args.in_features, args.out_features, args.tokens, d, b, args.repeats, args.warmup)
            for b in args.block_sizes for d in args.densities]
    title = (f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}, "
             f"fp32, forward+backward, median of {args.repeats}")
    lines = ["| in -> out | tokens | block | target density | achieved density | butterfly tiles | rank | dense (ms) "
             "| Pixelfly (ms) | speedup |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['in']} -> {r['out']} | {r['tokens']} | {r['block_size']} | {r['target_density']:.4f} | "
                     f"{r['achieved_density']:.4f} | {r['butterfly']} | {r['rank']} | {r['dense_ms']:.1f} | "
                     f"{r['pixelfly_ms']:.1f} | {r['speedup']:.2f}x |")
    write_results(args.out, title, "\n".join(lines), {"rows": rows})


if __name__ == "__main__":
    main()
