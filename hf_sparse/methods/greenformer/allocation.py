"""Rank allocation for a global parameter budget over the targeted layers.

A layer of shape ``(m, n)`` at rank ``r`` costs ``r (m + n)`` weight parameters; ``None`` means "stays dense"
(``m n``), which is also what any rank ``>= r_max = mn / (m + n)`` amounts to. Every allocation ends with
:func:`fit_budget`, which moves single ranks until the kept fraction of the targeted layers' weight
parameters is within ``tolerance`` of ``param_ratio``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Shape = tuple[int, int]
Ranks = list[int | None]


def r_max(shape: Shape) -> float:
    m, n = shape
    return m * n / (m + n)


def cost(shape: Shape, rank: int | None) -> int:
    """Weight parameters of a layer at ``rank`` (dense when None or when the rank saves nothing)."""
    m, n = shape
    return m * n if rank is None or rank >= r_max(shape) else rank * (m + n)


def achieved_ratio(shapes: Sequence[Shape], ranks: Ranks) -> float:
    return sum(cost(s, r) for s, r in zip(shapes, ranks, strict=True)) / sum(m * n for m, n in shapes)


def _normalize(shape: Shape, rank: int | None) -> int | None:
    if rank is None or rank >= r_max(shape):
        return None
    return max(1, int(rank))


def _step(shape: Shape, rank: int | None, shrink: bool) -> tuple[bool, int | None]:
    """(possible, new rank) for one rank less (``shrink``) or more."""
    if shrink:
        if rank is None:
            top = math.floor(r_max(shape))
            return True, _normalize(shape, top - 1 if top >= r_max(shape) else top)
        return (rank > 1), rank - 1
    if rank is None:
        return False, None
    return True, _normalize(shape, rank + 1)


def fit_budget(shapes: Sequence[Shape], ranks: Ranks, param_ratio: float,
               importance: Callable[[int, int], float], tolerance: float = 0.005) -> Ranks:
    """Move ranks one at a time until the kept weight fraction is within ``tolerance`` of ``param_ratio``.

    ``importance(i, r)`` says how much layer ``i`` at rank ``r`` deserves its last rank (a dense layer is scored
    at ``floor(r_max)``). Over budget the least important layer loses a rank; under budget the most important
    gains one. Only steps that bring the total closer to the budget are taken.
    """
    ranks = [_normalize(s, r) for s, r in zip(shapes, ranks, strict=True)]
    budget = param_ratio * sum(m * n for m, n in shapes)
    current = sum(cost(s, r) for s, r in zip(shapes, ranks, strict=True))
    while abs(current - budget) > tolerance * budget:
        shrink = current > budget
        options = []
        for i, (shape, rank) in enumerate(zip(shapes, ranks, strict=True)):
            possible, new = _step(shape, rank, shrink)
            delta = cost(shape, new) - cost(shape, rank)
            if possible and abs(current + delta - budget) < abs(current - budget):
                score = importance(i, math.floor(r_max(shape)) if rank is None else rank)
                options.append((score if shrink else -score, i, new, delta))
        if not options:
            break
        _, i, new, delta = min(options)
        ranks[i] = new
        current += delta
    return ranks


def allocate_uniform(shapes: Sequence[Shape], param_ratio: float) -> Ranks:
    """The same fraction of ``r_max`` everywhere (``r = param_ratio * r_max`` keeps ``param_ratio`` of the
    parameters), rounding residue spread by :func:`fit_budget`."""
    ranks: Ranks = [round(param_ratio * r_max(s)) for s in shapes]

    def below_share(i: int, rank: int) -> float:
        return -rank / r_max(shapes[i])

    return fit_budget(shapes, ranks, param_ratio, below_share)


def stable_rank(singular_values) -> float:
    """``sum(s^2) / max(s)^2``: a smooth lower bound of the rank."""
    s2 = singular_values.double().square()
    return float(s2.sum() / s2.max().clamp_min(1e-300))


def allocate_stable_rank(shapes: Sequence[Shape], stable_ranks: Sequence[float], param_ratio: float) -> Ranks:
    """Ranks proportional to each layer's stable rank, ``r_i = c * srank_i``, with ``c`` found by bisection so
    the budget holds (layers whose rank reaches ``r_max`` stay dense)."""
    budget = param_ratio * sum(m * n for m, n in shapes)

    def ranks_for(c: float) -> Ranks:
        return [_normalize(s, round(c * sr)) for s, sr in zip(shapes, stable_ranks, strict=True)]

    low, high = 0.0, max(max(s) for s in shapes) / max(min(stable_ranks), 1e-9)
    for _ in range(100):
        mid = (low + high) / 2
        if sum(cost(s, r) for s, r in zip(shapes, ranks_for(mid), strict=True)) > budget:
            high = mid
        else:
            low = mid
    target = [low * sr for sr in stable_ranks]

    def below_target(i: int, rank: int) -> float:
        return -rank / max(target[i], 1e-9)

    return fit_budget(shapes, ranks_for(low), param_ratio, below_target)


def allocate_sensitivity(shapes: Sequence[Shape], losses: Sequence[dict[int | None, float]],
                         param_ratio: float) -> Ranks:
    """Least predicted loss increase under the budget.

    ``losses[i]`` maps candidate ranks of layer ``i`` (None = dense, increase 0) to the measured calibration
    loss increase with only that layer factorized. Lagrangian relaxation: for a price ``lam`` per parameter
    each layer picks ``argmin loss + lam * cost``; ``lam`` is bisected to meet the budget, then ranks are
    fine-tuned with the loss increase interpolated linearly between candidates.
    """
    budget = param_ratio * sum(m * n for m, n in shapes)
    curves = []
    for shape, table in zip(shapes, losses, strict=True):
        points = {cost(shape, r): (r, loss) for r, loss in table.items()}
        points[shape[0] * shape[1]] = (None, 0.0)
        curve = sorted(points.items())
        # Measured increases are noisy: make them non-increasing in the parameter count (a smaller layer is
        # never predicted to be better) and nonnegative.
        floor = 0.0
        for k in range(len(curve) - 1, -1, -1):
            floor = max(floor, curve[k][1][1])
            curve[k] = (curve[k][0], (curve[k][1][0], floor))
        curves.append(curve)

    def choose(lam: float) -> Ranks:
        return [min(curve, key=lambda item: item[1][1] + lam * item[0])[1][0] for curve in curves]

    def total(ranks: Ranks) -> int:
        return sum(cost(s, r) for s, r in zip(shapes, ranks, strict=True))

    low, high = 0.0, 1.0
    while total(choose(high)) > budget and high < 1e12:
        high *= 10
    for _ in range(100):
        mid = (low + high) / 2
        if total(choose(mid)) > budget:
            low = mid
        else:
            high = mid
    ranks = choose(high)

    def interpolated_loss(i: int, rank: int) -> float:
        """Piecewise-linear in the parameter count; below the smallest candidate the first segment's slope
        is extended, so shrinking past what was measured is never predicted to be free."""
        curve = curves[i]
        c = cost(shapes[i], rank)
        segments = list(zip(curve, curve[1:], strict=False)) or [(curve[0], curve[0])]
        for (c0, (_, l0)), (c1, (_, l1)) in segments:
            if c <= c1:
                return l0 + (l1 - l0) * (c - c0) / max(c1 - c0, 1)
        return 0.0

    def marginal(i: int, rank: int) -> float:
        """Loss increase per parameter saved by removing one rank from layer ``i``."""
        m, n = shapes[i]
        return (interpolated_loss(i, rank - 1) - interpolated_loss(i, rank)) / (m + n) if rank > 1 else math.inf

    return fit_budget(shapes, ranks, param_ratio, marginal)
