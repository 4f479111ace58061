"""apply_restructure on a user-built optimizer: group placement, state, LR scaling, errors before changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_sparse.methods.greenformer.layers import LED
from hf_sparse.methods.greenformer.solvers import svd_factors
from hf_sparse.training import Restructure, apply_restructure, scale_learning_rate


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def factorized(layer: nn.Linear, rank: int = 2) -> LED:
    u, v = svd_factors(layer.weight.detach(), rank)
    return LED.from_factors(layer, u, v)


def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(5, 8)).pow(2).mean().backward()
    optimizer.step()


def test_new_parameters_join_the_group_of_what_they_replace():
    model = net()
    optimizer = torch.optim.AdamW([{"params": [model[0].weight, model[2].weight], "weight_decay": 0.1},
                                   {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0}], lr=1e-2)
    step(model, optimizer)
    kept = optimizer.state[model[2].weight]["exp_avg"]
    led = factorized(model[0])
    apply_restructure(model, optimizer, Restructure({"0": led}))
    def in_model_order(*params):
        wanted = {id(p) for p in params}
        return [id(p) for p in model.parameters() if id(p) in wanted]

    assert [id(p) for p in optimizer.param_groups[0]["params"]] == in_model_order(led.u_weight, led.v_weight,
                                                                                  model[2].weight)
    assert [id(p) for p in optimizer.param_groups[1]["params"]] == in_model_order(led.bias, model[2].bias)
    assert optimizer.state[model[2].weight]["exp_avg"] is kept
    assert len(optimizer.state) == 2  # the replaced layer's state is gone, the factors have none yet
    step(model, optimizer)
    assert int(optimizer.state[led.u_weight]["step"]) == 1


def test_initial_state_and_no_weight_decay_placement():
    model = net()
    optimizer = torch.optim.AdamW([{"params": [model[0].weight, model[2].weight], "weight_decay": 0.1},
                                   {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0}], lr=1e-2)
    led = factorized(model[0])
    state = {"step": torch.tensor(7.0), "exp_avg": torch.ones_like(led.u_weight),
             "exp_avg_sq": torch.ones_like(led.u_weight)}
    apply_restructure(model, optimizer, Restructure({"0": led}, optimizer_state={led.u_weight: state},
                                                     no_weight_decay={"0.u_weight", "0.v_weight"}))
    assert {id(p) for p in optimizer.param_groups[1]["params"]} >= {id(led.u_weight), id(led.v_weight)}
    assert int(optimizer.state[led.u_weight]["step"]) == 7


def test_errors_leave_model_and_optimizer_unchanged():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    before = [list(g["params"]) for g in optimizer.param_groups]
    first = model[0]
    with pytest.raises(ValueError, match="weight_decay=0"):
        apply_restructure(model, optimizer, Restructure({"0": factorized(model[0])}, no_weight_decay={"0.u_weight"}))
    with pytest.raises(ValueError, match="lr_scale"):
        apply_restructure(model, optimizer, Restructure({"0": factorized(model[0])}, lr_scale=0.0))
    assert model[0] is first
    assert [list(g["params"]) for g in optimizer.param_groups] == before


def test_scale_learning_rate_scales_scheduler_base():
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    scale_learning_rate(optimizer, scheduler, 0.1)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 5)
