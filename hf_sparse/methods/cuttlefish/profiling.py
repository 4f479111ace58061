"""Which layer stacks to factorize (K): time dense vs factorized layers on the training device.

A *stack* is a group of tracked layers with identical kind, shapes (conv geometry included) and input shape, e.g.
every ``mlp.c_fc`` of a GPT-2. Profiling times one representative's forward+backward at full rank and as a
factorized layer at each candidate rank ratio; at the switch a stack is factorized when
``sum(full-rank time) > tau * sum(factorized time at the chosen ranks)`` (factorized times interpolated linearly
in rank between the candidates). The table is plain JSON-able data so it can be broadcast, saved and reported.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ...dense import describe_dense, weight_matrix
from .model import empty_factorized

#: ``measure(module, input_shape) -> seconds`` of one forward+backward (injectable for tests)
Measure = Callable[[nn.Module, Sequence[int]], float]


def stack_pattern(name: str) -> str:
    """The module name with its numeric path components replaced by ``*`` (``h.3.mlp.c_fc`` -> ``h.*.mlp.c_fc``)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "*", name)


def group_stacks(modules: dict[str, nn.Module], input_shapes: dict[str, Sequence[int]]) -> list[dict[str, Any]]:
    """Stacks of ``modules`` (in model order): ``{"stack", "layers", "source", "shape", "input_shape", "full_rank"}``.
    Layers without a recorded input shape form stacks with ``input_shape`` None (never profiled)."""
    stacks: dict[str, dict[str, Any]] = {}
    for name, module in modules.items():
        desc = describe_dense(module)
        shape = input_shapes.get(name)
        key = repr((sorted(desc.items()), None if shape is None else list(shape)))
        if key not in stacks:
            out, flat = weight_matrix(module).shape
            stacks[key] = {"layers": [], "source": desc["source"], "shape": [out, flat],
                           "input_shape": None if shape is None else list(shape), "full_rank": min(out, flat)}
        stacks[key]["layers"].append(name)
    result = []
    for entry in stacks.values():
        patterns = list(dict.fromkeys(stack_pattern(n) for n in entry["layers"]))
        result.append({"stack": ", ".join(patterns), **entry})
    return result


def fresh_dense(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A newly initialized module of ``module``'s type and shapes (no hooks, no shared state), in training mode."""
    desc = describe_dense(module)
    factory = {"device": device, "dtype": dtype}
    if desc["source"] == "Linear":
        return nn.Linear(desc["in_features"], desc["out_features"], bias=desc["bias"], **factory)
    if desc["source"] == "Conv1D":
        return Conv1D(desc["out_features"], desc["in_features"]).to(**factory)
    padding = desc["padding"] if isinstance(desc["padding"], str) else tuple(desc["padding"])
    return type(module)(desc["in_features"], desc["out_features"], tuple(desc["kernel_size"]),
                        stride=tuple(desc["stride"]), padding=padding, dilation=tuple(desc["dilation"]),
                        groups=desc["groups"], bias=desc["bias"], padding_mode=desc["padding_mode"], **factory)


def candidate_rank(full: int, ratio: float) -> int:
    return max(1, round(ratio * full))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_forward_backward(clock: Callable[[], float] = time.perf_counter) -> Measure:
    """A ``Measure``: seconds of one ``module(x).backward(g)`` with fresh gradients, on random inputs (made once
    per shape, outside the timed region)."""
    inputs: dict[tuple, torch.Tensor] = {}
    grads: dict[tuple, torch.Tensor] = {}

    def measure(module: nn.Module, input_shape: Sequence[int]) -> float:
        param = next(module.parameters())
        key = (tuple(input_shape), param.device, param.dtype)
        if key not in inputs:
            inputs[key] = torch.randn(*input_shape, device=param.device, dtype=param.dtype, requires_grad=True)
        x = inputs[key]
        for p in (*module.parameters(), x):
            p.grad = None
        _sync(param.device)
        start = clock()
        out = module(x)
        out_key = (tuple(out.shape), out.device, out.dtype)
        if out_key not in grads:
            grads[out_key] = torch.randn_like(out)
        out.backward(grads[out_key])
        _sync(param.device)
        return clock() - start

    return measure


def profile_stacks(stacks: list[dict[str, Any]], modules: dict[str, nn.Module], ratios: Sequence[float],
                   extra_norm: bool, measure: Measure, repeats: int = 3) -> list[dict[str, Any]]:
    """Each stack with ``dense_seconds`` and ``candidates`` (``[{"ratio", "rank", "seconds"}]``) added: per stack,
    the dense layer and each candidate are run once to warm up, then timed in ``repeats`` interleaved rounds
    keeping each one's fastest time (interference from other work only ever adds time). Stacks without an
    input shape get ``dense_seconds`` None. The model's own layers are only read (fresh layers are timed)."""
    table = []
    for stack in stacks:
        entry = copy.deepcopy(stack)
        if stack["input_shape"] is None:
            entry.update(dense_seconds=None, candidates=[])
            table.append(entry)
            continue
        original = modules[stack["layers"][0]]
        weight = weight_matrix(original)
        ranks = sorted({candidate_rank(stack["full_rank"], r) for r in ratios})
        variants = [fresh_dense(original, weight.device, weight.dtype).train()]
        variants += [empty_factorized(original, r, extra_norm, device=weight.device, dtype=weight.dtype).train()
                     for r in ranks]
        for module in variants:
            measure(module, stack["input_shape"])  # warm-up
        times = [[measure(module, stack["input_shape"]) for module in variants] for _ in range(repeats)]
        best = [min(column) for column in zip(*times, strict=True)]
        entry["dense_seconds"] = float(best[0])
        entry["candidates"] = [{"ratio": r / stack["full_rank"], "rank": r, "seconds": float(t)}
                               for r, t in zip(ranks, best[1:], strict=True)]
        table.append(entry)
    return table


def estimate_factorized_seconds(entry: dict[str, Any], rank: int) -> float:
    """Factorized time of one layer of the stack at ``rank``: linear interpolation between the measured candidate
    ranks; below the smallest, its time (conservative); above the largest, extrapolated along the last segment
    (non-decreasing), or proportionally to the rank with a single candidate."""
    points = sorted((c["rank"], c["seconds"]) for c in entry["candidates"])
    if not points:
        raise ValueError(f"stack {entry['stack']!r} has no profiled candidates")
    if rank <= points[0][0]:
        return points[0][1]
    for (r0, t0), (r1, t1) in zip(points, points[1:], strict=False):
        if rank <= r1:
            return t0 + (t1 - t0) * (rank - r0) / (r1 - r0)
    if len(points) == 1:
        r0, t0 = points[0]
        return t0 * rank / r0
    (r0, t0), (r1, t1) = points[-2], points[-1]
    return t1 + max(0.0, (t1 - t0) / (r1 - r0)) * (rank - r1)


def decide_stack(entry: dict[str, Any], ranks: dict[str, int], tau: float) -> dict[str, Any]:
    """Decision for one stack whose layers would be factorized at ``ranks`` (name -> rank; layers left dense for
    other reasons are absent). ``{"stack", "layers", "dense_seconds", "factorized_seconds", "speedup",
    "factorize", "reason"}``; times are for the whole stack (None when not measured)."""
    out: dict[str, Any] = {"stack": entry["stack"], "layers": sorted(ranks, key=entry["layers"].index),
                           "dense_seconds": None, "factorized_seconds": None, "speedup": None}
    if not ranks:
        return {**out, "factorize": False, "reason": "no layer's rank saves parameters"}
    if tau == 0:
        return {**out, "factorize": True, "reason": "tau=0: every eligible stack"}
    if entry.get("dense_seconds") is None or not entry.get("candidates"):
        return {**out, "factorize": False, "reason": "not profiled (the layers never ran in the first step)"}
    dense = entry["dense_seconds"] * len(ranks)
    factorized = sum(estimate_factorized_seconds(entry, r) for r in ranks.values())
    speedup = dense / factorized if factorized > 0 else float("inf")
    factorize = dense > tau * factorized
    reason = f"speedup {speedup:.2f}x {'>' if factorize else '<='} tau={tau:g}"
    return {**out, "dense_seconds": dense, "factorized_seconds": factorized, "speedup": speedup,
            "factorize": factorize, "reason": reason}
