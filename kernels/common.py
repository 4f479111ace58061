"""Helpers shared by the Triton kernels: the float32-accumulating dot and its precision constants."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton import knobs


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` in float32. ``UPCAST``: widen the operands first (the interpreter multiplies bfloat16
    operands as their raw 16-bit patterns; widening bf16 to fp32 is exact, so the result is the same)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


def precision(dtype: torch.dtype) -> tuple[str | None, bool]:
    """``(PRECISION, UPCAST)`` constants of :func:`dot` for operands of ``dtype``: TF32 for float32 only where
    torch allows it for its own matmuls; bfloat16 operands are widened in the interpreter."""
    interpret = bool(knobs.runtime.interpret)
    if dtype != torch.float32:
        return None, interpret and dtype == torch.bfloat16  # the precision setting applies to float32 only
    return ("tf32" if torch.backends.cuda.matmul.allow_tf32 and not interpret else "ieee"), False


@triton.jit
def cast_out(acc, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """float32 ``acc`` cast to the output ``dtype``, rounding to nearest even as the GPU does. ``UPCAST``
    (interpreter, bfloat16): the interpreter's float32 -> bfloat16 cast truncates, so round by hand first
    (add half an ulp of bfloat16, ties to even, on the bit pattern; the truncation then drops the low half)."""
    if UPCAST:
        bits = acc.to(tl.uint32, bitcast=True)
        acc = (bits + 0x7FFF + ((bits >> 16) & 1)).to(tl.float32, bitcast=True)
    return acc.to(dtype)
