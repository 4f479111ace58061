"""Shared checks of the kernel tests: relative error against a float64 reference, NaN never passing."""

from __future__ import annotations

import os
import sys
import zlib

import pytest
import torch


def require_triton_interpreter() -> None:
    """Skip the calling test module unless Triton is installed and runs interpreted (see conftest.py)."""
    pytest.importorskip("triton", reason="Triton is not installed (pip install 'hf-sparse[triton]')")
    language = sys.modules["triton.language"]
    if os.environ.get("TRITON_INTERPRET") != "1" or type(language.zeros).__name__ != "InterpretedFunction":
        pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set: run the kernel tests with "
                    "TRITON_INTERPRET=1 in the environment", allow_module_level=True)

def case_seed(*parts) -> int:
    """A seed of its own for every test case, the same in every run (``hash`` of strings is salted per process)."""
    return zlib.crc32(repr(parts).encode())


#: relative Frobenius error allowed per operand dtype (outputs and gradients)
TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def assert_close(actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert actual.shape == reference.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (unwritten tile?)"
    error = ((actual.double() - reference).norm() / reference.norm().clamp_min(1e-30)).item()
    assert error < TOLERANCE[dtype], f"{what}: relative error {error:.2e} >= {TOLERANCE[dtype]} ({dtype})"


def poison(module, monkeypatch) -> None:
    """Make ``module._empty`` return NaN-filled tensors, so any output element a kernel does not write fails."""

    def nan_empty(shape, like, dtype=None):
        return torch.full(shape, float("nan"), dtype=dtype or like.dtype, device=like.device)

    monkeypatch.setattr(module, "_empty", nan_empty)
