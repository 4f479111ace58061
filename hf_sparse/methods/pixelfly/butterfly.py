"""Flat block butterfly layouts and the Pixelfly budget split.

A flat block butterfly on a coarse ``butterfly_size x butterfly_size`` grid keeps cell ``(i, j)`` iff
``i XOR j`` is in ``{0} U {2^f : f < n_factors}``: ``1 + n_factors`` cells per row, symmetric. The coarse
grid is stretched over the hardware grid of ``block_size x block_size`` tiles of an ``out x in`` weight
(padded up to whole blocks), so every kept coarse cell is a dense tile of whole blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def butterfly_offsets(n_factors: int) -> list[int]:
    """XOR offsets of the kept cells of a coarse row: ``[0, 1, 2, 4, ..., 2^(n_factors-1)]``."""
    return [0] + [1 << f for f in range(n_factors)]


def max_factors(butterfly_size: int) -> int:
    return int(math.log2(butterfly_size))


def _check_power_of_two(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 1, got {value!r}")


def coarse_layout(butterfly_size: int, n_factors: int | None = None) -> torch.Tensor:
    """``(butterfly_size, butterfly_size)`` bool grid of the flat butterfly (see module docstring)."""
    _check_power_of_two("butterfly_size", butterfly_size)
    n_factors = max_factors(butterfly_size) if n_factors is None else n_factors
    if not 0 <= n_factors <= max_factors(butterfly_size):
        raise ValueError(f"n_factors must be in [0, {max_factors(butterfly_size)}] for butterfly_size "
                         f"{butterfly_size}, got {n_factors}")
    idx = torch.arange(butterfly_size)
    xor = idx[:, None] ^ idx[None, :]
    return torch.isin(xor, torch.tensor(butterfly_offsets(n_factors)))


def flat_block_butterfly_layout(out_features: int, in_features: int, block_size: int = 32,
                                butterfly_size: int | None = None, n_factors: int | None = None,
                                aligned: bool = False, global_rows: int = 0, global_cols: int = 0) -> torch.Tensor:
    """Bool block mask ``(ceil(out / block_size), ceil(in / block_size))`` of a flat block butterfly.

    Block row ``r`` lies in coarse row ``r * butterfly_size // n_block_rows`` (likewise for columns), so the
    coarse grid is stretched over any rectangular block grid. ``butterfly_size`` defaults to the largest power
    of two not above either block count (with ``aligned``: one that divides the number of block columns, so
    every block row keeps the same number of blocks). ``global_rows`` / ``global_cols`` make the first block
    rows / columns dense.
    """
    for name, value in (("out_features", out_features), ("in_features", in_features), ("block_size", block_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    rows, cols = math.ceil(out_features / block_size), math.ceil(in_features / block_size)
    if butterfly_size is None:
        butterfly_size = 1 << int(math.log2(min(rows, cols)))
        if aligned:
            butterfly_size = math.gcd(butterfly_size, cols & -cols)
    _check_power_of_two("butterfly_size", butterfly_size)
    if butterfly_size > min(rows, cols):
        raise ValueError(f"butterfly_size {butterfly_size} exceeds the block grid {rows} x {cols}")
    if aligned and cols % butterfly_size:
        raise ValueError(f"aligned layouts need butterfly_size ({butterfly_size}) to divide the number of block "
                         f"columns ({cols})")
    for name, value, limit in (("global_rows", global_rows, rows), ("global_cols", global_cols, cols)):
        if not isinstance(value, int) or not 0 <= value <= limit:
            raise ValueError(f"{name} must be an int in [0, {limit}], got {value!r}")
    coarse = coarse_layout(butterfly_size, n_factors)
    row_group = torch.arange(rows) * butterfly_size // rows
    col_group = torch.arange(cols) * butterfly_size // cols
    layout = coarse[row_group][:, col_group]
    layout[:global_rows] = True
    layout[:, :global_cols] = True
    return layout


@dataclass(frozen=True)
class PixelflyShape:
    """How one ``out x in`` weight is split: padded sizes, butterfly grid and low-rank rank.

    The padded weight (``out_padded x in_padded``, multiples of ``block_size * butterfly_size``) is cut into
    ``butterfly_size x butterfly_size`` tiles of ``out_tile x in_tile``; each coarse row keeps
    ``1 + n_factors`` tiles.
    """

    out_features: int
    in_features: int
    block_size: int
    butterfly_size: int
    n_factors: int
    rank: int

    @property
    def out_padded(self) -> int:
        step = self.block_size * self.butterfly_size
        return math.ceil(self.out_features / step) * step

    @property
    def in_padded(self) -> int:
        step = self.block_size * self.butterfly_size
        return math.ceil(self.in_features / step) * step

    @property
    def out_tile(self) -> int:
        return self.out_padded // self.butterfly_size

    @property
    def in_tile(self) -> int:
        return self.in_padded // self.butterfly_size

    @property
    def tiles_per_row(self) -> int:
        return 1 + self.n_factors

    @property
    def butterfly_params(self) -> int:
        return self.butterfly_size * self.tiles_per_row * self.out_tile * self.in_tile

    @property
    def lowrank_params(self) -> int:
        return self.rank * (self.out_features + self.in_features)

    @property
    def density(self) -> float:
        """(butterfly + low-rank parameters) / dense ``out * in``: also the FLOP ratio."""
        return (self.butterfly_params + self.lowrank_params) / (self.out_features * self.in_features)


def plan_shape(out_features: int, in_features: int, density: float, block_size: int = 32,
               lowrank_fraction: float = 0.25, n_factors: int | None = None,
               butterfly_size: int | None = None) -> PixelflyShape:
    """Split a layer's budget as in the Pixelfly paper (section 3.3).

    ``lowrank_fraction`` of ``density * out * in`` goes to the low-rank term (rank rounded to the nearest multiple
    of ``block_size``); the butterfly (``butterfly_size``, ``n_factors``) is the one whose parameter count comes
    closest to the rest (ties: least padding, then the most factors). Fixed ``butterfly_size`` / ``n_factors``
    restrict the search.
    """
    budget = density * out_features * in_features
    rank = round(lowrank_fraction * budget / (out_features + in_features) / block_size) * block_size
    rank = min(rank, min(out_features, in_features) // block_size * block_size)
    rest = budget - rank * (out_features + in_features)
    rows, cols = math.ceil(out_features / block_size), math.ceil(in_features / block_size)
    sizes = [butterfly_size] if butterfly_size else [1 << k for k in range(int(math.log2(min(rows, cols))) + 1)]
    best = None
    for size in sizes:
        factors = [n_factors] if n_factors is not None else range(max_factors(size) + 1)
        for nf in factors:
            if nf > max_factors(size):
                continue
            shape = PixelflyShape(out_features, in_features, block_size, size, nf, rank)
            waste = shape.out_padded * shape.in_padded / (out_features * in_features)
            key = (abs(shape.butterfly_params - rest), waste, -nf)  # ties: the longest butterfly stride
            if best is None or key < best[0]:
                best = (key, shape)
    if best is None:
        raise ValueError(f"no butterfly fits butterfly_size={butterfly_size}, n_factors={n_factors} for a "
                         f"{out_features} x {in_features} weight with block_size {block_size}")
    return best[1]
