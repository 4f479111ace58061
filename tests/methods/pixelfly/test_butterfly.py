"""Flat block butterfly layouts (property tests) and the budget planner."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_sparse.methods.pixelfly.butterfly import (
    PixelflyShape,
    butterfly_offsets,
    coarse_layout,
    flat_block_butterfly_layout,
    plan_shape,
)


@given(log_size=st.integers(0, 7), data=st.data())
def test_coarse_layout_xor_rule_density_and_symmetry(log_size, data):
    size = 1 << log_size
    n_factors = data.draw(st.integers(0, log_size))
    layout = coarse_layout(size, n_factors)
    assert layout.shape == (size, size) and layout.dtype == torch.bool
    assert torch.equal(layout, layout.T)
    assert (layout.sum(1) == 1 + n_factors).all() and (layout.sum(0) == 1 + n_factors).all()
    i, j = data.draw(st.integers(0, size - 1)), data.draw(st.integers(0, size - 1))
    assert bool(layout[i, j]) == ((i ^ j) in butterfly_offsets(n_factors))


@settings(max_examples=60, deadline=None)
@given(out_blocks=st.integers(1, 40), in_blocks=st.integers(1, 40), block=st.sampled_from([1, 4, 16, 32]),
       pad_out=st.integers(0, 3), pad_in=st.integers(0, 3), data=st.data())
def test_layout_shapes_and_density(out_blocks, in_blocks, block, pad_out, pad_in, data):
    out_f = max(1, out_blocks * block - min(pad_out, block - 1))
    in_f = max(1, in_blocks * block - min(pad_in, block - 1))
    rows, cols = math.ceil(out_f / block), math.ceil(in_f / block)
    size = 1 << data.draw(st.integers(0, int(math.log2(min(rows, cols)))))
    n_factors = data.draw(st.integers(0, int(math.log2(size))))
    layout = flat_block_butterfly_layout(out_f, in_f, block, size, n_factors)
    assert layout.shape == (rows, cols)
    # every coarse cell covers about rows/size x cols/size blocks: density = (1 + n_factors) / size
    if rows % size == 0 and cols % size == 0:
        assert layout.float().mean().item() == pytest.approx((1 + n_factors) / size)
    assert layout.any(1).all() and layout.any(0).all()  # the diagonal reaches every block row and column


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 48), log_cols=st.integers(0, 5), mult=st.integers(1, 3), data=st.data())
def test_aligned_layout_has_equal_blocks_per_row(rows, log_cols, mult, data):
    cols = (1 << log_cols) * mult
    layout = flat_block_butterfly_layout(rows * 8, cols * 8, 8, aligned=True)
    counts = layout.sum(1)
    assert (counts == counts[0]).all()


def test_square_layout_is_symmetric_and_global_blocks():
    layout = flat_block_butterfly_layout(256, 256, 16, butterfly_size=16, n_factors=2)
    assert torch.equal(layout, layout.T)
    with_global = flat_block_butterfly_layout(256, 256, 16, butterfly_size=16, n_factors=2, global_rows=1,
                                              global_cols=2)
    assert with_global[0].all() and with_global[:, :2].all()
    assert (with_global & ~layout).sum() > 0 and (layout & ~with_global).sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"butterfly_size": 3}, "power of two"),
        ({"butterfly_size": 64}, "exceeds"),
        ({"butterfly_size": 4, "n_factors": 3}, "n_factors"),
        ({"block_size": 0}, "block_size"),
        ({"global_rows": 99}, "global_rows"),
        ({"butterfly_size": 4, "aligned": True}, "divide"),
    ],
)
def test_layout_errors(kwargs, match):
    args = {"out_features": 96, "in_features": 48, "block_size": 8}
    args.update(kwargs)
    if kwargs.get("aligned"):
        args["in_features"] = 40  # 5 block columns
    with pytest.raises(ValueError, match=match):
        flat_block_butterfly_layout(**args)


@pytest.mark.parametrize("density", [0.0625, 0.125, 0.25, 0.5])
@pytest.mark.parametrize("block", [32, 64])
def test_planner_budget_split(density, block):
    shape = plan_shape(4096, 1024, density, block, lowrank_fraction=0.25)
    assert shape.rank % block == 0
    assert abs(shape.density - density) / density < 0.15
    lowrank_share = shape.lowrank_params / (shape.lowrank_params + shape.butterfly_params)
    assert lowrank_share <= 0.5
    assert shape.out_padded == 4096 and shape.in_padded == 1024


def test_planner_respects_fixed_grid_and_zero_lowrank():
    shape = plan_shape(512, 512, 0.25, 32, lowrank_fraction=0.0, butterfly_size=8)
    assert shape.butterfly_size == 8 and shape.rank == 0 and shape.n_factors == 1
    assert shape.density == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="no butterfly fits"):
        plan_shape(512, 512, 0.25, 32, butterfly_size=4, n_factors=5)


def test_shape_padding():
    shape = PixelflyShape(100, 72, 8, 4, 1, 8)
    assert (shape.out_padded, shape.in_padded) == (128, 96)
    assert (shape.out_tile, shape.in_tile) == (32, 24)
    assert shape.butterfly_params == 4 * 2 * 32 * 24
