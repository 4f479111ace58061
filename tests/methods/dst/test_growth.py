"""Drop / grow rules: the DST-EE score on a hand-computed example, the drop-fraction schedules, the three grow
modes and the update calendar."""

from __future__ import annotations

import math

import pytest
import torch

from hf_sparse.methods.dst.growth import (
    drop_and_grow,
    drop_fraction_at,
    dst_ee_scores,
    grow_scores,
    is_update_step,
    set_generator,
)


def test_dst_ee_score_hand_computed():
    grad = torch.tensor([[0.5, -0.1], [0.0, 0.2]])
    counts = torch.tensor([[0, 3], [1, 0]], dtype=torch.int16)
    # |g| + c ln(t) / (N + eps) with c = 1e-3, t = 100, eps = 1; ln(100) = 4.605170...
    expected = torch.tensor([[0.5 + 0.004605170, 0.1 + 0.004605170 / 4],
                             [0.0 + 0.004605170 / 2, 0.2 + 0.004605170]])
    got = dst_ee_scores(grad, counts, step=100, c=1e-3, eps=1.0)
    assert torch.allclose(got, expected, atol=1e-8)
    assert torch.allclose(dst_ee_scores(grad, counts, 100, c=0.0, eps=1.0), grad.abs())
    # eps is the floor of the denominator: never-active weights get c ln t / eps
    assert dst_ee_scores(grad, counts, 100, c=1e-3, eps=0.5)[1, 1] == pytest.approx(0.2 + 0.004605170 / 0.5)


@pytest.mark.parametrize("step, expected", [(0, 0.3), (50, 0.15), (100, 0.0), (25, 0.15 * (1 + math.cos(math.pi / 4))),
                                            (150, 0.0)])
def test_cosine_drop_schedule(step, expected):
    assert drop_fraction_at(step, 100, 0.3, "cosine") == pytest.approx(expected, abs=1e-12)


def test_constant_drop_schedule_and_bad_name():
    assert [drop_fraction_at(s, 100, 0.2, "constant") for s in (1, 50, 100)] == [0.2, 0.2, 0.2]
    with pytest.raises(ValueError, match="schedule"):
        drop_fraction_at(1, 100, 0.2, "linear")


def test_update_calendar():
    assert [s for s in range(0, 50) if is_update_step(s, 10, 35)] == [10, 20, 30]
    assert [s for s in range(0, 8) if is_update_step(s, 1, 3)] == [1, 2, 3]


# weight / mask shared by the grow-mode tests: 4 active weights, drop k = 2 (the two smallest |w|)
WEIGHT = torch.tensor([[0.9, -0.05, 0.0, 0.0], [0.3, 0.0, 0.0, -0.02]])
MASK = torch.tensor([[True, True, False, False], [True, False, False, True]])
GRAD = torch.tensor([[0.0, 0.0, 0.04, 0.01], [0.0, 0.03, 0.002, 0.0]])
COUNTS = torch.tensor([[5, 5, 4, 0], [5, 0, 0, 5]], dtype=torch.int16)


def _grown(new_mask):
    return {tuple(i) for i in (new_mask & ~MASK).nonzero().tolist()}


def test_drop_by_magnitude_and_rigl_grow_by_gradient():
    new = drop_and_grow(WEIGHT, MASK, grow_scores("rigl", GRAD, COUNTS, 10, 0.0, 1.0), 2)
    assert int(new.sum()) == 4
    assert not new[0, 1] and not new[1, 3]  # the two smallest active magnitudes went
    assert _grown(new) == {(0, 2), (1, 1)}  # the two largest gradients came in


def test_dst_ee_grows_unexplored_weights_the_gradient_alone_would_skip():
    # c ln(10) / (N + 1): (0, 2) was active for 4 periods, (0, 3) and (1, 2) never were
    scores = grow_scores("dst-ee", GRAD, COUNTS, 10, c=0.02, eps=1.0)
    new = drop_and_grow(WEIGHT, MASK, scores, 2)
    assert int(new.sum()) == 4
    assert _grown(new) == {(1, 1), (0, 3)}  # 0.03 + 0.046 and 0.01 + 0.046 beat 0.04 + 0.0092
    assert scores[0, 3] > scores[0, 2] > scores[1, 2]  # 0.0561 > 0.0492 > 0.0481


def test_set_grows_at_random_reproducibly():
    draws = [drop_and_grow(WEIGHT, MASK, grow_scores("set", None, COUNTS, 10, 0.0, 1.0, set_generator(0, 10, i)), 2)
             for i in range(8)]
    assert all(int(d.sum()) == 4 and d[0, 0] and d[1, 0] for d in draws)  # the large weights always stay
    again = drop_and_grow(WEIGHT, MASK, grow_scores("set", None, COUNTS, 10, 0.0, 1.0, set_generator(0, 10, 3)), 2)
    assert torch.equal(draws[3], again)
    assert len({tuple(d.flatten().tolist()) for d in draws}) > 1  # layers (and steps) draw differently
    with pytest.raises(ValueError, match="needs the dense gradient"):
        grow_scores("rigl", None, COUNTS, 10, 0.0, 1.0)


def test_dropped_weight_regrown_simply_stays_and_k_is_capped():
    scores = torch.zeros(2, 4)
    scores[1, 3] = 1.0  # the weight about to be dropped (smallest |w|) has the best growth score
    new = drop_and_grow(WEIGHT, MASK, scores, 1)
    assert torch.equal(new, MASK)
    assert int(drop_and_grow(WEIGHT, MASK, scores, 99).sum()) == 4
    assert torch.equal(drop_and_grow(WEIGHT, MASK, scores, 0), MASK)
