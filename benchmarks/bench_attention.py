"""Butterfly sparse attention vs ``torch.nn.functional.scaled_dot_product_attention``: forward + backward
wall-clock side by side (median of repeats) and peak memory (each variant in a fresh subprocess).

Default case from the Pixelfly issue: sequence 4096, 12 heads x 64, fp32, causal, CPU; layouts of density
about 1/8 (block 64 with 6 factors = 7/64, block 128 with 3 factors = 4/32).

    python benchmarks/bench_attention.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import cpu_name, write_results

from hf_sparse.methods.pixelfly.attention import block_partners, butterfly_attention


def inputs(seq: int, heads: int, dim: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, seq, dim, generator=gen, requires_grad=True) for _ in range(3)]


def step(variant: str, q, k, v, block: int, factors: int) -> float:
    for t in (q, k, v):
        t.grad = None
    start = time.perf_counter()
    if variant == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        out = butterfly_attention(q, k, v, block, factors, is_causal=True)
    out.sum().backward()
    return time.perf_counter() - start


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak(variant: str, seq: int, heads: int, dim: int, block: int, factors: int) -> float:
    """Extra peak resident memory (MiB) of a first forward + backward in this process: the high-water mark is
    reset (``/proc/self/clear_refs``), then compared with the resident size before the step."""
    q, k, v = inputs(seq, heads, dim)
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as fh:
        fh.write("5")
    base = _status_kib("VmRSS")
    step(variant, q, k, v, block, factors)
    return (_status_kib("VmHWM") - base) / 1024


def peak_rss_mb(variant: str, args: argparse.Namespace, block: int, factors: int) -> float:
    """Median of ``args.memory_repeats`` runs of :func:`measure_peak`, each in a fresh process (so the variants
    do not share an allocator; the resident high-water mark varies by a few MiB from run to run)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_attention as b; "
            f"print(b.measure_peak({variant!r}, {args.seq}, {args.heads}, {args.dim}, {block}, {factors}))")
    peaks = []
    for _ in range(args.memory_repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        peaks.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layouts", nargs="+", default=["64:6", "128:3"], help="block:n_factors")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory_repeats", type=int, default=5, help="fresh processes per peak-memory figure")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "butterfly_attention_cpu")
    args = parser.parse_args()
    q, k, v = inputs(args.seq, args.heads, args.dim)
    rows = []
    sdpa_mem = peak_rss_mb("sdpa", args, 1, 0)
    for layout in args.layouts:
        block, factors = (int(x) for x in layout.split(":"))
        partners, valid = block_partners(-(-args.seq // block), factors, torch.device("cpu"))
        density = valid.sum().item() / (-(-args.seq // block)) ** 2
        step("sdpa", q, k, v, block, factors)
        step("butterfly", q, k, v, block, factors)
        dense_t, sparse_t = [], []
        for _ in range(args.repeats):
            dense_t.append(step("sdpa", q, k, v, block, factors))
            sparse_t.append(step("butterfly", q, k, v, block, factors))
        d, s = statistics.median(dense_t), statistics.median(sparse_t)
        rows.append({"seq": args.seq, "heads": args.heads, "dim": args.dim, "block": block, "n_factors": factors,
                     "layout_density": density, "sdpa_ms": d * 1e3, "butterfly_ms": s * 1e3, "speedup": d / s,
                     "sdpa_peak_mib": sdpa_mem, "butterfly_peak_mib": peak_rss_mb("butterfly", args, block, factors)})
    title = (f"{cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, fp32, causal, batch 1, "
             f"forward+backward, median of {args.repeats}; peak = extra resident MiB during one step, "
             f"median of {args.memory_repeats} fresh processes")
    lines = ["| seq | heads x dim | block | factors | layout density | SDPA (ms) | butterfly (ms) | speedup | "
             "SDPA peak (MiB) | butterfly peak (MiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seq']} | {r['heads']} x {r['dim']} | {r['block']} | {r['n_factors']} | "
                     f"{r['layout_density']:.3f} | {r['sdpa_ms']:.0f} | {r['butterfly_ms']:.0f} | "
                     f"{r['speedup']:.2f}x | {r['sdpa_peak_mib']:.0f} | {r['butterfly_peak_mib']:.0f} |")
    write_results(args.out, title, "\n".join(lines), {"rows": rows})

if __name__ == "__main__":
    main()
