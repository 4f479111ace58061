"""Per-layer active-weight counts for a global sparsity target: ERK (with the capacity check) or uniform.

Shapes are weight shapes: ``(out, in)`` for linear layers, ``(out, in / groups, *kernel)`` for convs. Counts
are integers whose sum is exactly ``round((1 - sparsity) * total)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def erk_scores(shape: Sequence[int]) -> float:
    """ERK raw density of a weight: ``sum(shape) / prod(shape)`` (``(in + out) / (in out)`` for a linear layer,
    ``(in + out + sum(kernel)) / (in out prod(kernel))`` for a conv)."""
    return sum(shape) / math.prod(shape)


def erk_densities(shapes: Sequence[Sequence[int]], density: float) -> tuple[list[float], set[int]]:
    """Real-valued ERK densities ``eps * erk_scores(shape)`` meeting ``density`` over all weights, and the indices
    of the layers set dense by the capacity check (a layer whose ERK density would exceed 1 is made dense, its
    weights leave the budget of the others, and ``eps`` is solved again; RigL's procedure)."""
    sizes = [math.prod(s) for s in shapes]
    raw = [erk_scores(s) for s in shapes]
    dense: set[int] = set()
    while True:
        sparse = [i for i in range(len(shapes)) if i not in dense]
        if not sparse:
            return [1.0] * len(shapes), dense
        budget = density * sum(sizes) - sum(sizes[i] for i in dense)
        eps = budget / sum(raw[i] * sizes[i] for i in sparse)
        top = max(raw[i] for i in sparse)
        if eps * top <= 1.0:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))], dense
        dense |= {i for i in sparse if raw[i] == top}


def round_to_total(reals: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Integers close to ``reals`` (each in ``[min(1, cap), cap]``) summing to exactly ``total``: floors, then
    +1 for the largest fractional parts (or -1 for the smallest) until the sum matches."""
    if not 0 <= total <= sum(caps):
        raise ValueError(f"cannot place {total} active weights in layers holding {sum(caps)}")
    counts = [min(cap, max(min(1, cap), math.floor(x))) for x, cap in zip(reals, caps, strict=True)]
    order = sorted(range(len(reals)), key=lambda i: reals[i] - math.floor(reals[i]), reverse=True)
    while sum(counts) != total:
        step = 1 if sum(counts) < total else -1
        before = sum(counts)
        for i in order if step > 0 else reversed(order):
            if sum(counts) == total:
                break
            if (step > 0 and counts[i] < caps[i]) or (step < 0 and counts[i] > min(1, caps[i])):
                counts[i] += step
        if sum(counts) == before:  # only possible when every layer sits at 1 and total < len(layers)
            for i in reversed(order):
                if sum(counts) == total:
                    break
                if counts[i] > 0:
                    counts[i] -= 1
    return counts


def active_counts(shapes: Sequence[Sequence[int]], sparsity: float, distribution: str) -> list[int]:
    """Active weights per layer: ``distribution`` ``"erk"`` or ``"uniform"``, exactly
    ``round((1 - sparsity) * total)`` in all. A count equal to the layer's size means the layer stays dense."""
    density = 1.0 - sparsity
    sizes = [math.prod(s) for s in shapes]
    total = round(density * sum(sizes))
    if distribution == "erk":
        reals, dense = erk_densities(shapes, density)
        reals = [sizes[i] if i in dense else reals[i] * sizes[i] for i in range(len(shapes))]
    elif distribution == "uniform":
        reals = [density * n for n in sizes]
    else:
        raise ValueError(f"distribution must be 'erk' or 'uniform', got {distribution!r}")
    return round_to_total(reals, sizes, total)
