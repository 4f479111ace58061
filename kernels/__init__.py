"""Kernels of hf-sparse, installed as ``hf_sparse.kernels`` (never as a top-level ``kernels`` module).

``backend``: the dispatch point (``HF_SPARSE_BACKEND=auto|torch|triton``); it imports a kernel module on first
use, so a CPU-only run never imports Triton. ``blocksparse_matmul``: the block-butterfly product of
``PixelflyLinear`` (forward, grad input, grad of the nonzero tiles); ``pixelfly_linear``: a whole scalar-gated
``PixelflyLinear`` on those kernels with its low-rank term and bias fused in; ``butterfly_attention``:
block-sparse flash attention for the butterfly layout (forward and backward); ``common``: their shared
``tl.dot`` helper.
"""
