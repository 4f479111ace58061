"""Drop / grow rules of dynamic sparse training (DST-EE, RigL, SET) as pure tensor functions.

All tensors have the weight's shape. ``mask`` is bool; ``counts`` is ``N`` (mask periods each weight has been
active for); ``grad`` the dense gradient ``dL/d(weight * mask)``.
"""

from __future__ import annotations

import math

import torch


def is_update_step(step: int, update_interval: int, stop_step: int) -> bool:
    """True when optimizer step ``step`` (1-based) ends with a mask update: every ``update_interval`` steps,
    up to and including ``stop_step``."""
    return 0 < step <= stop_step and step % update_interval == 0


def drop_fraction_at(step: int, stop_step: int, drop_fraction: float, schedule: str) -> float:
    """Fraction of active weights replaced at ``step``: ``"constant"``, or ``"cosine"`` decay
    ``drop_fraction / 2 * (1 + cos(pi * step / stop_step))`` (RigL's schedule, 0 at ``stop_step``)."""
    if schedule == "constant":
        return drop_fraction
    if schedule == "cosine":
        return drop_fraction / 2 * (1 + math.cos(math.pi * min(step, stop_step) / stop_step))
    raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")


def dst_ee_scores(grad: torch.Tensor, counts: torch.Tensor, step: int, c: float, eps: float) -> torch.Tensor:
    """DST-EE acquisition score ``|grad| + c * ln(step) / (N + eps)`` (float32)."""
    return grad.float().abs() + (c * math.log(step)) / (counts.float() + eps)


def set_generator(seed: int, step: int, layer_index: int) -> torch.Generator:
    """CPU generator for SET's random growth, determined by ``(seed, step, layer_index)`` alone, so a resumed or
    distributed run draws the same numbers."""
    mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + layer_index * 0x94D049BB133111EB) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def grow_scores(mode: str, grad: torch.Tensor | None, counts: torch.Tensor, step: int, c: float, eps: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Growth score of every weight for ``mode`` ``"dst-ee"``, ``"rigl"`` (``|grad|``) or ``"set"`` (uniform
    random from ``generator``); higher grows first."""
    if mode == "set":
        return torch.rand(counts.shape, generator=generator).to(counts.device)
    if grad is None:
        raise ValueError(f"grow={mode!r} needs the dense gradient of the update step")
    if mode == "rigl":
        return grad.float().abs()
    if mode == "dst-ee":
        return dst_ee_scores(grad, counts, step, c, eps)
    raise ValueError(f"grow must be 'dst-ee', 'rigl' or 'set', got {mode!r}")


def drop_and_grow(weight: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """New mask: the ``k`` active weights with the smallest ``|weight|`` are dropped, then the ``k`` weights
    with the highest ``scores`` among those not active after the drop are grown (a weight dropped and grown
    again simply stays). The number of active weights is unchanged."""
    flat_mask = mask.reshape(-1)
    active_index = flat_mask.nonzero().squeeze(1)
    k = max(0, min(k, active_index.numel()))
    if k == 0:
        return mask.clone()
    magnitude = weight.detach().reshape(-1)[active_index].float().abs()
    dropped = active_index[magnitude.topk(k, largest=False, sorted=False).indices]
    kept = flat_mask.clone()
    kept[dropped] = False
    candidates = scores.reshape(-1).float().masked_fill(kept, -math.inf)
    grown = candidates.topk(k, sorted=False).indices
    kept[grown] = True
    return kept.view_as(mask)
