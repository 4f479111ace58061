"""Stacks, profiling and the tau rule, with fake timings so the decisions are deterministic."""

import itertools

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_sparse.methods.cuttlefish.profiling import (
    decide_stack,
    estimate_factorized_seconds,
    group_stacks,
    profile_stacks,
    stack_pattern,
    timed_forward_backward,
)
from hf_sparse.methods.greenformer.layers import LED


def flop_measure(module: nn.Module, input_shape) -> float:
    """Fake timer: seconds proportional to the layer's parameters (its FLOPs per token), per token."""
    tokens = torch.Size(input_shape[:-1]).numel()
    return tokens * sum(p.numel() for n, p in module.named_parameters() if "bias" not in n) * 1e-9


def modules_and_shapes():
    modules = {f"h.{i}.fc": nn.Linear(64, 256) for i in range(3)}
    modules.update({f"h.{i}.proj": Conv1D(64, 256) for i in range(2)})  # (in 256 -> out 64), GPT-2 layout
    modules["h.0.attn"] = nn.Linear(64, 64)
    shapes = {name: [2, 10, modules[name].in_features if isinstance(modules[name], nn.Linear) else 256]
              for name in modules}
    shapes["h.2.fc"] = [2, 5, 64]  # other input shape: its own stack
    return modules, shapes


def test_stack_pattern():
    assert stack_pattern("transformer.h.11.mlp.c_fc") == "transformer.h.*.mlp.c_fc"
    assert stack_pattern("0.conv") == "*.conv"
    assert stack_pattern("layer2.1.conv1") == "layer2.*.conv1"
    assert stack_pattern("fc") == "fc"


def test_group_stacks_by_shape_and_input():
    modules, shapes = modules_and_shapes()
    stacks = group_stacks(modules, shapes)
    assert [s["layers"] for s in stacks] == [["h.0.fc", "h.1.fc"], ["h.2.fc"], ["h.0.proj", "h.1.proj"], ["h.0.attn"]]
    assert stacks[0]["stack"] == "h.*.fc" and stacks[0]["shape"] == [256, 64] and stacks[0]["full_rank"] == 64
    assert stacks[2]["source"] == "Conv1D" and stacks[2]["shape"] == [64, 256]
    unprofiled = group_stacks(modules, {})
    assert [s["layers"] for s in unprofiled][0] == ["h.0.fc", "h.1.fc", "h.2.fc"]
    assert unprofiled[0]["input_shape"] is None


def test_profile_with_fake_timer_and_tau_rule():
    modules, shapes = modules_and_shapes()
    table = profile_stacks(group_stacks(modules, shapes), modules, [0.125, 0.25, 0.5], False, flop_measure)
    fc = table[0]
    assert fc["dense_seconds"] == pytest.approx(20 * 256 * 64 * 1e-9)
    assert [c["rank"] for c in fc["candidates"]] == [8, 16, 32]
    assert fc["candidates"][1]["seconds"] == pytest.approx(20 * 16 * (256 + 64) * 1e-9)
    # factorized time interpolates linearly in rank (exact for the FLOP timer)
    assert estimate_factorized_seconds(fc, 24) == pytest.approx(20 * 24 * 320 * 1e-9)
    assert estimate_factorized_seconds(fc, 4) == pytest.approx(fc["candidates"][0]["seconds"])  # floor
    assert estimate_factorized_seconds(fc, 48) == pytest.approx(20 * 48 * 320 * 1e-9)  # extrapolated
    # dense/factorized at rank r is 256*64 / (320 r): 3.2x at r=16, 1.6x at r=32, 1.0x at r=51.2
    ranks = {"h.0.fc": 16, "h.1.fc": 16}
    assert decide_stack(fc, ranks, tau=1.5)["factorize"]
    assert decide_stack(fc, ranks, tau=1.5)["speedup"] == pytest.approx(3.2)
    assert not decide_stack(fc, ranks, tau=4.0)["factorize"]
    mixed = decide_stack(fc, {"h.0.fc": 16, "h.1.fc": 40}, tau=1.5)  # 2 dense / (1/3.2 + 40/16/3.2) = 1.83x
    assert mixed["factorize"] and mixed["speedup"] == pytest.approx(2 / (1 / 3.2 + 2.5 / 3.2))
    assert not decide_stack(fc, {"h.0.fc": 40, "h.1.fc": 40}, tau=1.5)["factorize"]  # 1.28x
    # tau = 0: every eligible stack, without timings
    assert decide_stack(fc, {"h.0.fc": 63}, tau=0.0)["factorize"]
    assert not decide_stack(fc, {}, tau=0.0)["factorize"]  # no layer whose rank saves parameters
    unprofiled = profile_stacks(group_stacks({"x": nn.Linear(4, 4)}, {}), {"x": nn.Linear(4, 4)}, [0.5], False,
                                flop_measure)
    assert unprofiled[0]["dense_seconds"] is None
    assert not decide_stack(unprofiled[0], {"x": 1}, tau=1.5)["factorize"]


def test_profile_times_the_norm_variant_when_asked():
    seen = []

    def spy(module, shape):
        seen.append(type(module).__name__)
        return 1.0

    modules = {"fc": nn.Linear(16, 32)}
    profile_stacks(group_stacks(modules, {"fc": [3, 16]}), modules, [0.25], True, spy)
    assert seen == ["Linear", "NormLED"] * 4  # warm-up + 3 rounds


def test_timed_forward_backward_with_fake_clock():
    ticks = itertools.count()
    measure = timed_forward_backward(clock=lambda: float(next(ticks)))
    layer = LED(8, 4, 2)
    assert measure(layer, [5, 8]) == 1.0  # one run spans one tick
    assert next(ticks) == 2
    assert layer.u_weight.grad is not None and layer.u_weight.grad.abs().sum() > 0


def test_profiling_keeps_the_fastest_of_interleaved_rounds():
    calls = []
    noisy = iter([9.0, 9.0, 5.0, 1.0, 2.0, 0.5, 3.0, 0.7])  # warm-ups (discarded), then 3 rounds of (dense, r=4)

    def measure(module, shape):
        calls.append(type(module).__name__)
        return next(noisy)

    modules = {"fc": nn.Linear(16, 32)}
    (entry,) = profile_stacks(group_stacks(modules, {"fc": [3, 16]}), modules, [0.25], False, measure, repeats=3)
    assert calls == ["Linear", "LED"] * 4
    assert entry["dense_seconds"] == 2.0 and entry["candidates"][0]["seconds"] == 0.5
