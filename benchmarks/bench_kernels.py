"""GPU benchmark of the Triton kernels (``hf_sparse.kernels``) against dense cuBLAS, torch's BSR path and SDPA.

Linear: ``x (tokens, n) @ W^T`` for a block-butterfly ``W (n, n)`` with ``K = 4`` tiles per block row (densities
1/4, 1/8, 1/16 from butterfly sizes 16, 32, 64), forward and forward+backward (input and weight gradients), vs
``torch.matmul`` on the dense weight, the PyTorch butterfly path (batched GEMM) and ``torch.sparse`` BSR
(forward only: torch has no BSR weight gradient). Attention: butterfly attention on the kernel (causal) vs
``scaled_dot_product_attention`` (flash backend) at sequence 2048-16384, forward+backward. Layer: a whole
``PixelflyLinear`` (density 1/8 and 1/4 split as in the paper: a quarter to the low-rank term) on the fused kernel
vs the same layer as separate launches, vs its PyTorch path and vs a dense ``nn.Linear``.

Needs a CUDA GPU and Triton; writes ``benchmarks/results/kernels_<gpu>.json`` and ``.md``.
``--smoke`` runs tiny shapes on CPU with ``TRITON_INTERPRET=1`` to check the script end to end (no timings).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import write_results

from hf_sparse.methods.pixelfly.attention import butterfly_attention, grid_factors
from hf_sparse.methods.pixelfly.ops import ButterflyMatmul, butterfly_to_dense, partner_index

RESULTS = Path(__file__).parent / "results"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
FACTORS = 3  # K = 4 tiles per block row


def timer(smoke: bool) -> Callable[[Callable[[], None]], float]:
    """Median milliseconds of a callable: ``triton.testing.do_bench`` on GPU, one call on CPU (smoke)."""
    if smoke:
        def once(fn):
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        return once
    from triton.testing import do_bench
    return lambda fn: do_bench(fn, warmup=25, rep=100, return_mode="median")


def fwd_bwd(forward: Callable[[], torch.Tensor], grad: torch.Tensor, leaves: list[torch.Tensor]
            ) -> Callable[[], None]:
    def run() -> None:
        for leaf in leaves:
            leaf.grad = None
        forward().backward(grad)
    return run


def bench_linear(n: int, tokens: int, groups: int, dtype: torch.dtype, device: str, measure) -> dict:
    from hf_sparse.kernels.blocksparse_matmul import butterfly_matmul_triton

    offsets = tuple([0] + [1 << f for f in range(FACTORS)])
    tile = n // groups
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, n, device=device, dtype=dtype, generator=gen).requires_grad_()
    weight = (torch.randn(groups, tile, len(offsets) * tile, device=device, dtype=dtype, generator=gen)
              / (len(offsets) * tile) ** 0.5).requires_grad_()
    dense = butterfly_to_dense(weight.detach(), partner_index(groups, list(offsets), device)).requires_grad_()
    bsr = dense.detach().to_sparse_bsr((tile, tile))
    grad_groups = torch.randn(groups, tokens, tile, device=device, dtype=dtype, generator=gen)
    grad_dense = grad_groups.transpose(0, 1).reshape(tokens, n)
    row = {"n": n, "tokens": tokens, "density": len(offsets) / groups, "block": tile, "dtype": str(dtype)[6:]}
    with torch.no_grad():
        row["triton_fwd_ms"] = measure(lambda: butterfly_matmul_triton(x, weight, offsets))
        row["torch_bmm_fwd_ms"] = measure(lambda: ButterflyMatmul.apply(x, weight, offsets))
        row["dense_fwd_ms"] = measure(lambda: torch.matmul(x, dense.T))
        try:
            row["bsr_fwd_ms"] = measure(lambda: F.linear(x, bsr))
        except (RuntimeError, NotImplementedError) as err:  # BSR kernels cover few dtype/device combinations
            row["bsr_fwd_ms"] = None
            row["bsr_error"] = str(err).splitlines()[0][:120]
    row["triton_fwdbwd_ms"] = measure(fwd_bwd(lambda: butterfly_matmul_triton(x, weight, offsets), grad_groups,
                                              [x, weight]))
    row["torch_bmm_fwdbwd_ms"] = measure(fwd_bwd(lambda: ButterflyMatmul.apply(x, weight, offsets), grad_groups,
                                                 [x, weight]))
    row["dense_fwdbwd_ms"] = measure(fwd_bwd(lambda: torch.matmul(x, dense.T), grad_dense, [x, dense]))
    row["speedup_fwdbwd_vs_dense"] = row["dense_fwdbwd_ms"] / row["triton_fwdbwd_ms"]
    return row


def unfused_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """The scalar-gated PixelflyLinear as separate launches (butterfly kernel, two low-rank GEMMs, transpose-add):
    what the layer ran before the low-rank term was fused into the kernel."""
    from hf_sparse.kernels.blocksparse_matmul import butterfly_matmul_triton

    s = layer.shape
    groups = butterfly_matmul_triton(x, layer.alpha * layer.butterfly_weight, layer.offsets)
    rest = F.linear(F.linear(x, layer.v_weight), (1 - layer.alpha) * layer.u_weight, layer.bias)
    return torch.add(rest.view(x.shape[0], s.butterfly_size, s.out_tile), groups.transpose(0, 1))


def bench_layer(n: int, tokens: int, density: float, block: int, dtype: torch.dtype, device: str, measure) -> dict:
    """A whole PixelflyLinear (butterfly + rank-r term + bias, Pixelfly's budget split) vs ``nn.Linear``."""
    from hf_sparse.methods.pixelfly import PixelflyLinear, plan_shape

    shape = plan_shape(n, n, density, block_size=block, lowrank_fraction=0.25)
    layer = PixelflyLinear(shape, device=device, dtype=dtype)
    dense = torch.nn.Linear(n, n, device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, n, device=device, dtype=dtype, generator=gen).requires_grad_()
    grad = torch.randn(tokens, n, device=device, dtype=dtype, generator=gen)
    params = [x, *layer.parameters()]
    row = {"n": n, "tokens": tokens, "density": shape.density, "block": block, "rank": shape.rank,
           "butterfly": f"{1 + shape.n_factors}/{shape.butterfly_size}", "dtype": str(dtype)[6:]}
    os.environ["HF_SPARSE_BACKEND"] = "triton"
    row["fused_fwdbwd_ms"] = measure(fwd_bwd(lambda: layer(x), grad, params))
    row["unfused_fwdbwd_ms"] = measure(fwd_bwd(lambda: unfused_layer(layer, x).view(tokens, n), grad, params))
    os.environ["HF_SPARSE_BACKEND"] = "torch"
    row["torch_path_fwdbwd_ms"] = measure(fwd_bwd(lambda: layer(x), grad, params))
    row["dense_fwdbwd_ms"] = measure(fwd_bwd(lambda: dense(x), grad, [x, *dense.parameters()]))
    row["fused_vs_unfused"] = row["unfused_fwdbwd_ms"] / row["fused_fwdbwd_ms"]
    row["speedup_vs_dense"] = row["dense_fwdbwd_ms"] / row["fused_fwdbwd_ms"]
    return row


def bench_attention(seq: int, heads: int, head_dim: int, block: int, dtype: torch.dtype, device: str, measure
                    ) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, grad = (torch.randn(1, heads, seq, head_dim, device=device, dtype=dtype, generator=gen)
                     for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    nb = seq // block
    factors = grid_factors(nb)
    # causal: about half of the (1 + factors) blocks of each query block row lie at or before the diagonal
    row = {"seq": seq, "heads": heads, "head_dim": head_dim, "block": block, "n_factors": factors,
           "density": (1 + factors) / nb, "dtype": str(dtype)[6:]}
    os.environ["HF_SPARSE_BACKEND"] = "triton"
    row["butterfly_fwdbwd_ms"] = measure(fwd_bwd(
        lambda: butterfly_attention(q, k, v, block, factors, is_causal=True), grad, [q, k, v]))
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            row["sdpa_flash_fwdbwd_ms"] = measure(fwd_bwd(
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), grad, [q, k, v]))
    else:
        row["sdpa_flash_fwdbwd_ms"] = measure(fwd_bwd(
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), grad, [q, k, v]))
    row["speedup_vs_sdpa"] = row["sdpa_flash_fwdbwd_ms"] / row["butterfly_fwdbwd_ms"]
    return row


def table(rows: list[dict], columns: list[str]) -> str:
    def fmt(value) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384, help="rows of x in the linear benchmark")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--attention-block", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (TRITON_INTERPRET=1), no files")
    args = parser.parse_args()
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--smoke runs the kernels in the Triton interpreter: set TRITON_INTERPRET=1")
        device, sizes, tokens, seqs, head_dims, block = "cpu", [256], 32, [128], [16], 16
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_kernels.py measures GPU kernels and needs a CUDA GPU (none found); the kernels' "
                     "correctness is tested on CPU by tests/kernels with TRITON_INTERPRET=1")
        device, sizes, tokens, seqs, head_dims, block = ("cuda", [1024, 4096], args.tokens,
                                                         [2048, 4096, 8192, 16384], [64, 128], args.attention_block)
    measure = timer(args.smoke)
    linear_rows = [bench_linear(n, tokens, groups, dtype, device, measure)
                   for dtype in DTYPES.values() for n in sizes for groups in (16, 32, 64)]
    layer_rows = [bench_layer(n, tokens, density, 8 if args.smoke else 64, dtype, device, measure)
                  for dtype in DTYPES.values() for n in sizes for density in (1 / 8, 1 / 4)]
    attention_rows = [bench_attention(seq, args.heads, d, block, torch.bfloat16 if device == "cuda" else torch.float32,
                                      device, measure) for d in head_dims for seq in seqs]
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu-smoke"
    title = (f"## Triton kernels on {gpu} (torch {torch.__version__}), median ms "
             f"(triton.testing.do_bench); linear: {tokens} tokens, K=4 tiles per block row")
    text = (table(linear_rows, ["n", "dtype", "density", "block", "triton_fwd_ms", "torch_bmm_fwd_ms", "dense_fwd_ms",
                                "bsr_fwd_ms", "triton_fwdbwd_ms", "torch_bmm_fwdbwd_ms", "dense_fwdbwd_ms",
                                "speedup_fwdbwd_vs_dense"])
            + "\n\n### Whole PixelflyLinear (butterfly + low rank + bias), forward+backward\n\n"
            + table(layer_rows, ["n", "dtype", "density", "butterfly", "rank", "block", "fused_fwdbwd_ms",
                                 "unfused_fwdbwd_ms", "torch_path_fwdbwd_ms", "dense_fwdbwd_ms", "fused_vs_unfused",
                                 "speedup_vs_dense"])
            + "\n\n### Causal attention, forward+backward, batch 1\n\n"
            + table(attention_rows, ["seq", "head_dim", "block", "density", "dtype", "butterfly_fwdbwd_ms",
                                     "sdpa_flash_fwdbwd_ms", "speedup_vs_sdpa"]))
    if args.smoke:
        print(text)
        return
    name = re.sub(r"[^a-z0-9]+", "_", gpu.lower()).strip("_")
    write_results(RESULTS / f"kernels_{name}", title, text, {"linear": linear_rows, "layer": layer_rows,
                                                                 "attention": attention_rows})


if __name__ == "__main__":
    main()
