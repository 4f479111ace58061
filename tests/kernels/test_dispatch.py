"""Dispatch between the Triton kernels and the PyTorch path (HF_SPARSE_BACKEND, device, Triton availability)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from .helpers import require_triton_interpreter

require_triton_interpreter()

from hf_sparse.kernels import backend  # noqa: E402

CUDA_LIKE = SimpleNamespace(device=torch.device("cuda"))  # select_backend only looks at the device


@pytest.mark.parametrize("op", ["butterfly_matmul", "butterfly_attention"])
def test_forced_triton_loads_and_uses_the_kernel(op, monkeypatch):
    monkeypatch.setenv("HF_SPARSE_BACKEND", "triton")
    assert backend.select_backend(op, torch.zeros(1)) == "triton"  # CPU tensor: TRITON_INTERPRET=1 is set
    module = __import__(f"hf_sparse.kernels.{backend.KERNEL_MODULES[op]}", fromlist=["_"])
    assert backend.TRITON_KERNELS[op].__module__ == module.__name__


def test_auto_uses_torch_on_cpu_and_triton_on_cuda(monkeypatch):
    monkeypatch.delenv("HF_SPARSE_BACKEND", raising=False)
    assert backend.select_backend("butterfly_matmul", torch.zeros(1)) == "torch"
    assert backend.select_backend("butterfly_matmul", CUDA_LIKE) == "triton"
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    assert backend.select_backend("butterfly_matmul", CUDA_LIKE) == "torch"


def test_torch_backend_always_wins(monkeypatch):
    monkeypatch.setenv("HF_SPARSE_BACKEND", "torch")
    assert backend.select_backend("butterfly_matmul", CUDA_LIKE) == "torch"


def test_forced_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("HF_SPARSE_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        backend.select_backend("butterfly_matmul", torch.zeros(1))


def test_unknown_op_has_no_kernel(monkeypatch):
    monkeypatch.setenv("HF_SPARSE_BACKEND", "triton")
    with pytest.raises(ValueError, match="no Triton kernel for 'no_such_op'"):
        backend.select_backend("no_such_op", torch.zeros(1))
