"""Initial optimizer state of the factors at the switch, projected from the dense layer's moments.

With ``W = U V`` (``U (m, r)``, ``V (r, n)``) the factors' gradients are ``G_U = G V^T`` and ``G_V = U^T G``, so a
first moment (Adam ``exp_avg``, SGD ``momentum_buffer``) projects exactly as ``M V^T`` / ``U^T M`` for the switch-time
factors. Second moments (``exp_avg_sq``, ``max_exp_avg_sq``) are elementwise squares and project under the
diagonal approximation ``E[(G V^T)^2] ~ E[G^2] (V^2)^T`` (and ``(U^2)^T E[G^2]``). ``step`` is copied. A state with
any other entry is not projected (the factors start fresh).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ...dense import dense_kind

logger = logging.getLogger("hf_sparse")

FIRST_MOMENTS = ("exp_avg", "momentum_buffer")
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")
COPIED = ("step",)


def dense_state_matrix(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A state tensor shaped like ``module.weight`` as an ``(out, in * prod(kernel))`` matrix."""
    if dense_kind(module) == "Conv1D":
        return tensor.t()
    return tensor.reshape(tensor.shape[0], -1)


@torch.no_grad()
def project_state(dense_state: dict[str, Any], module: nn.Module, u: torch.Tensor,
                  v: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(state of ``U``, state of ``V``) from the optimizer state of ``module.weight``, or None when the state
    holds entries this projection does not know. ``u (m, r)`` and ``v (r, n)`` are the switch-time factors;
    the returned tensors have the shapes of ``u`` / ``v`` (reshape for conv factors)."""
    unknown = set(dense_state) - set(FIRST_MOMENTS + SECOND_MOMENTS + COPIED)
    if unknown or not dense_state:
        if unknown:
            logger.info("cuttlefish: optimizer state entries %s cannot be projected; factors start fresh",
                        sorted(unknown))
        return None
    u32, v32 = u.float(), v.float()
    state_u: dict[str, Any] = {}
    state_v: dict[str, Any] = {}
    for key, value in dense_state.items():
        if key in COPIED:
            state_u[key] = value.clone() if torch.is_tensor(value) else value
            state_v[key] = value.clone() if torch.is_tensor(value) else value
            continue
        matrix = dense_state_matrix(module, value).float()
        if key in FIRST_MOMENTS:
            pu, pv = matrix @ v32.t(), u32.t() @ matrix
        else:
            pu, pv = matrix @ v32.square().t(), u32.square().t() @ matrix
        state_u[key] = pu.to(value.dtype).contiguous()
        state_v[key] = pv.to(value.dtype).contiguous()
    return state_u, state_v
