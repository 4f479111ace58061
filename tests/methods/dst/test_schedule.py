"""DSTEESchedule driven by hand in a plain PyTorch loop: mask invariants under SGD momentum and AdamW, the
update calendar, gradient accumulation, loss scaling / clipping, exact resume, metrics and report."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_sparse import get_sparsity_config, sparsify
from hf_sparse.methods.dst import DSTEEConfig, DSTEESchedule, MaskedLayer
from hf_sparse.training import StepContext

X = torch.randn(256, 12, generator=torch.Generator().manual_seed(0))
Y = (X[:, :3].sum(1) > 0).long() + (X[:, 3] > 1).long()


def tiny_model(config: DSTEEConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 8))
    return sparsify(model, config)


def batch(step: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, len(X), (size,), generator=torch.Generator().manual_seed(1000 + step))
    return X[idx], Y[idx]


def run(model, optimizer, schedule, steps, max_steps, start=0, accumulate=1, loss_scale=1.0, clip=None,
        after_step=None):
    """The loop ``SparseTrainer`` runs: micro-batch backward passes, unscale + clip, hooks around the step."""
    for step in range(start + 1, steps + 1):
        x, y = batch(step)
        for part_x, part_y in zip(x.chunk(accumulate), y.chunk(accumulate), strict=True):
            (F.cross_entropy(model(part_x), part_y) * loss_scale / accumulate).backward()
        if loss_scale != 1.0:
            for p in model.parameters():
                p.grad.div_(loss_scale)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        ctx = StepContext(model, optimizer, step, max_steps)
        schedule.before_optimizer_step(ctx)
        optimizer.step()
        schedule.after_optimizer_step(ctx)
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(step)


def start(model, optimizer, max_steps, step=0) -> DSTEESchedule:
    schedule = DSTEESchedule(model, get_sparsity_config(model))
    schedule.on_train_begin(StepContext(model, optimizer, step, max_steps))
    return schedule


def layers(model) -> dict[str, MaskedLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLayer)}


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3, amsgrad=True),
], ids=["sgd-momentum", "adamw", "adam-amsgrad"])
@pytest.mark.parametrize("grow", ["dst-ee", "rigl", "set"])
def test_inactive_weights_and_their_optimizer_state_stay_zero(make_optimizer, grow):
    model = tiny_model(DSTEEConfig(sparsity=0.8, update_interval=4, drop_fraction=0.5, grow=grow, c=1e-2))
    optimizer = make_optimizer(model.parameters())
    schedule = start(model, optimizer, 60)
    active = {n: int(m.mask.sum()) for n, m in layers(model).items()}
    initial = {n: m.mask.clone() for n, m in layers(model).items()}

    def check(step):
        for name, layer in layers(model).items():
            assert int(layer.mask.sum()) == active[name] == layer.active
            assert torch.equal(layer.weight[~layer.mask], torch.zeros(layer.mask.numel() - layer.active))
            for value in optimizer.state[layer.weight].values():
                if value.shape == layer.weight.shape:
                    assert torch.equal(value[~layer.mask], torch.zeros_like(value[~layer.mask])), (step, name)

    run(model, optimizer, schedule, 60, 60, after_step=check)
    updates = [h for h in schedule.history if not h.get("skipped")]
    assert [h["step"] for h in updates] == list(range(4, 46, 4))  # stop_step = 0.75 * 60 = 45
    assert all(h["mask_change"] > 0 for h in updates[:-2])
    assert any(not torch.equal(m.mask, initial[n]) for n, m in layers(model).items())
    counts = torch.cat([m.active_count.flatten() for m in layers(model).values()])
    assert int(counts.max()) == len(updates) + 1  # a weight active throughout: initial period + every update
    metrics = schedule.log_metrics()
    assert metrics["dst/sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert metrics["dst/exploration_degree"] == pytest.approx(float((counts > 0).float().mean()))
    assert metrics["dst/exploration_degree"] > 0.2 + 0.05
    assert {"dst/mask_change", "dst/drop_fraction", "dst/sparsity/0", "dst/sparsity/2"} <= set(metrics)


class Drift(torch.optim.Optimizer):
    """An optimizer that moves every weight, gradient or not: the schedule must re-zero inactive ones."""

    def __init__(self, params):
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(0.01)


def test_other_optimizers_get_inactive_weights_re_zeroed_after_every_step():
    model = tiny_model(DSTEEConfig(sparsity=0.8, update_interval=4))
    optimizer = Drift(model.parameters())

    def check(step):
        assert all(not m.weight[~m.mask].any() for m in layers(model).values()), step

    run(model, optimizer, start(model, optimizer, 12), 12, 12, after_step=check)


def test_dense_gradients_recorded_on_update_steps_only():
    model = tiny_model(DSTEEConfig(sparsity=0.5, update_interval=3, stop_step=7))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = start(model, optimizer, 20)
    armed = []

    def record(step):
        armed.append(all(m.capture_grad for m in layers(model).values()))
        assert all(m.dense_grad is None for m in layers(model).values())

    run(model, optimizer, schedule, 10, 20, after_step=record)
    # after step s the layers are armed for step s + 1: steps 3 and 6 update (9 > stop_step)
    assert [s + 1 for s, a in zip(range(1, 11), armed, strict=True) if a] == [3, 6]
    assert [h["step"] for h in schedule.history] == [3, 6]


def test_gradient_accumulation_gives_the_same_masks():
    masks = []
    for accumulate in (1, 4):
        model = tiny_model(DSTEEConfig(sparsity=0.8, update_interval=5, drop_fraction=0.4, c=1e-2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        run(model, optimizer, start(model, optimizer, 12), 12, 12, accumulate=accumulate)
        masks.append({n: m.mask.clone() for n, m in layers(model).items()})
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_scores_use_the_applied_gradient_units():
    """fp16-style loss scaling is undone and clipping applied the same way to the recorded dense gradients,
    so the exploration term keeps its weight."""
    masks = []
    for scale in (1.0, 4096.0):
        model = tiny_model(DSTEEConfig(sparsity=0.8, update_interval=5, drop_fraction=0.4, c=5e-3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run(model, optimizer, start(model, optimizer, 12), 12, 12, loss_scale=scale, clip=0.5)
        masks.append({n: m.mask.clone() for n, m in layers(model).items()})
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


@pytest.mark.parametrize("grow", ["dst-ee", "set"])
def test_resume_from_a_checkpoint_is_exact(grow, tmp_path):
    config = DSTEEConfig(sparsity=0.8, update_interval=3, drop_fraction=0.5, grow=grow, c=1e-2)
    model = tiny_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = start(model, optimizer, 30)
    run(model, optimizer, schedule, 14, 30)  # step 15 is an update step: the resumed run must arm it
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()), schedule.state_dict())
    run(model, optimizer, schedule, 30, 30, start=14)

    resumed = tiny_model(config, seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(saved[0])
    optimizer2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    optimizer2.load_state_dict(saved[1])
    schedule2 = DSTEESchedule(resumed, get_sparsity_config(resumed))
    schedule2.load_state_dict(saved[2], resumed)
    schedule2.on_train_begin(StepContext(resumed, optimizer2, 14, 30))
    run(resumed, optimizer2, schedule2, 30, 30, start=14)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert schedule2.history == schedule.history
    schedule2.save_report(str(tmp_path))
    report = json.loads((tmp_path / "dst_report.json").read_text())
    assert report["exploration_degree"] == pytest.approx(schedule.exploration_degree())
    assert [h["step"] for h in report["history"]] == list(range(3, 23, 3))
    assert set(report["layers"]) == {"0", "2", "4"}


def test_dst_ee_explores_more_than_rigl():
    degrees = {}
    for grow in ("rigl", "dst-ee"):
        model = tiny_model(DSTEEConfig(sparsity=0.9, update_interval=2, drop_fraction=0.3, grow=grow, c=0.05))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        schedule = start(model, optimizer, 40)
        run(model, optimizer, schedule, 40, 40)
        degrees[grow] = schedule.exploration_degree()
    assert degrees["dst-ee"] > degrees["rigl"]


def test_bf16_autocast_training_updates_masks():
    model = tiny_model(DSTEEConfig(sparsity=0.8, update_interval=3, drop_fraction=0.5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = start(model, optimizer, 12)
    before = {n: m.mask.clone() for n, m in layers(model).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run(model, optimizer, schedule, 12, 12)
    assert len(schedule.history) == 3 and schedule.history[0]["mask_change"] > 0
    assert any(not torch.equal(m.mask, before[n]) for n, m in layers(model).items())
    assert all(not m.weight[~m.mask].any() and m.weight.dtype == torch.float32 for m in layers(model).values())
