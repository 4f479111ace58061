"""Kernel dispatch: HF_SPARSE_BACKEND and the PyTorch fallback."""

from __future__ import annotations

import pytest
import torch
from hf_sparse.kernels import backend


def test_auto_and_torch_use_pytorch_without_kernels(monkeypatch):
    monkeypatch.delenv("HF_SPARSE_BACKEND", raising=False)
    assert backend.select_backend("butterfly_matmul", torch.zeros(1)) == "torch"
    monkeypatch.setenv("HF_SPARSE_BACKEND", "torch")
    assert backend.select_backend("butterfly_matmul", torch.zeros(1)) == "torch"


def test_forcing_triton_without_a_kernel_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    monkeypatch.setenv("HF_SPARSE_BACKEND", "triton")
    with pytest.raises(ValueError, match="no Triton kernel for 'butterfly_matmul'"):
        backend.select_backend("butterfly_matmul", torch.zeros(1))


def test_registered_kernel_is_dispatched(monkeypatch):
    calls = []
    monkeypatch.setitem(backend.TRITON_KERNELS, "butterfly_matmul", lambda *a: calls.append(a) or "kernel")
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    monkeypatch.setenv("HF_SPARSE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from hf_sparse.methods.pixelfly.ops import butterfly_groups

    assert butterfly_groups(torch.zeros(2, 4), torch.zeros(2, 3, 2), (0,)) == "kernel" and calls
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        butterfly_groups(torch.zeros(2, 4), torch.zeros(2, 3, 2), (0,))
    monkeypatch.setenv("HF_SPARSE_BACKEND", "auto")
    assert backend.select_backend("butterfly_matmul", torch.zeros(1)) == "torch"  # CPU tensor


def test_bad_backend_value(monkeypatch):
    monkeypatch.setenv("HF_SPARSE_BACKEND", "cuda")
    with pytest.raises(ValueError, match="HF_SPARSE_BACKEND"):
        backend.requested_backend()
