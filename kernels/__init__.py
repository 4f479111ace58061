"""Kernels of hf-sparse, installed as ``hf_sparse.kernels`` (never as a top-level ``kernels`` module)."""
