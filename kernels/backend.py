"""Which implementation runs a sparse op: the Triton kernels or the PyTorch path.

``HF_SPARSE_BACKEND=auto`` (default) picks Triton for CUDA tensors when Triton and a kernel for the op are
available, else PyTorch; ``torch`` always uses PyTorch; ``triton`` requires the kernel (with
``TRITON_INTERPRET=1`` also on CPU tensors) and raises if it is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "triton")
#: op name -> Triton implementation, filled by the kernel modules when they are imported
TRITON_KERNELS: dict[str, object] = {}
#: op name -> module of this package that registers its kernel (imported on first use: ``triton.jit`` reads
#: ``TRITON_INTERPRET`` when a kernel is defined, and CPU-only runs never need to import Triton)
KERNEL_MODULES = {"butterfly_matmul": "blocksparse_matmul", "pixelfly_linear": "pixelfly_linear",
                  "butterfly_attention": "butterfly_attention"}


def requested_backend() -> str:
    value = os.environ.get("HF_SPARSE_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"HF_SPARSE_BACKEND must be one of {list(BACKENDS)}, got {value!r}")
    return value


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def load_kernel(op: str) -> bool:
    """Import the kernel module of ``op`` if Triton is installed; whether ``op`` has a registered kernel."""
    if op not in TRITON_KERNELS and op in KERNEL_MODULES and triton_available():
        importlib.import_module(f"{__package__}.{KERNEL_MODULES[op]}")
    return op in TRITON_KERNELS


def select_backend(op: str, tensor: torch.Tensor) -> str:
    """``"triton"`` or ``"torch"`` for running ``op`` on ``tensor`` (see the module docstring)."""
    backend = requested_backend()
    if backend == "torch" or (backend == "auto" and tensor.device.type != "cuda"):
        return "torch"
    has_kernel = triton_available() and load_kernel(op)
    if backend == "triton":
        if not has_kernel:
            raise ValueError(f"HF_SPARSE_BACKEND=triton, but no Triton kernel for {op!r} is available "
                             f"(triton installed: {triton_available()}); use HF_SPARSE_BACKEND=torch or auto")
        if tensor.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"HF_SPARSE_BACKEND=triton runs {op!r} on CUDA tensors (or on CPU with "
                             "TRITON_INTERPRET=1); got a tensor on " + str(tensor.device))
        return "triton"
    return "triton" if has_kernel and tensor.device.type == "cuda" else "torch"


def autocast_operands(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """``tensors`` cast to the autocast dtype when autocast is on for their device (as ``F.linear`` / ``bmm``
    would cast them), else unchanged. Custom autograd functions call it before ``apply`` so that forward and
    backward see one dtype (the backward runs outside autocast)."""
    device_type = next(t for t in tensors if t is not None).device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    # as autocast itself: float64 operands stay float64
    return tuple(t.to(dtype) if t is not None and t.dtype != torch.float64 else t for t in tensors)
