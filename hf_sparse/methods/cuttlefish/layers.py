"""Factorized layers with a normalization between the two factors (Cuttlefish's ``extra_norm`` option).

Plain factorized layers are Greenformer's LED / CED. These variants insert a LayerNorm over the rank dimension
(Linear / GPT-2 ``Conv1D``) or a BatchNorm over the rank channels (ConvNd) after the first factor. The norm makes
the layer nonlinear, so there is no exact equivalent dense weight: ``to_dense()`` raises ``ValueError`` and
``.weight`` returns the plain product ``U V`` (indicative only).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import PlanError, require
from ...registry import register_layer
from ..greenformer.layers import CED, LED

_BATCH_NORMS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _check_norm(spec: dict[str, Any], expected: str) -> None:
    if require(spec, "norm", str) != expected:
        raise PlanError(f"plan entry for {spec.get('class')} must have norm={expected!r}, got {spec['norm']!r}")


class _NormMixin:
    """What the normalized variants share: spec field, costs, the missing dense equivalent."""

    method = "cuttlefish"
    norm_kind: str
    norm: nn.Module
    rank: int
    u_weight: nn.Parameter
    v_weight: nn.Parameter

    def to_spec(self) -> dict[str, Any]:
        return {**super().to_spec(), "norm": self.norm_kind}

    @classmethod
    def params_and_flops(cls, spec: dict[str, Any]) -> tuple[int, int]:
        params, flops = super().params_and_flops(spec)
        return params + 2 * spec["rank"], flops

    @classmethod
    def describe(cls, spec: dict[str, Any]) -> str:
        return f"rank {spec['rank']} + {spec['norm']} norm"

    def dense_weight(self) -> torch.Tensor:
        raise ValueError(f"a {type(self).__name__} normalizes between its factors: it has no equivalent dense weight")

    @property
    def weight(self) -> torch.Tensor:
        """The plain product of the factors in the replaced layer's layout (indicative: the norm is ignored)."""
        matrix = self.u_weight.reshape(self.u_weight.shape[0], self.rank) @ self.v_weight.reshape(self.rank, -1)
        kind = self.source["source"]
        if kind == "Conv1D":
            return matrix.t()
        if kind in ("Conv1d", "Conv2d", "Conv3d"):
            return matrix.reshape(self.source["out_features"], self.source["in_features"], *self.source["kernel_size"])
        return matrix

    @torch.no_grad()
    def load_factors(self, dense: nn.Module, u: torch.Tensor, v: torch.Tensor):
        layer = super().load_factors(dense, u, v)
        layer.norm = self._make_norm(device=dense.weight.device, dtype=dense.weight.dtype).train(dense.training)
        return layer


@register_layer
class NormLED(_NormMixin, LED):
    """``y = LayerNorm(x V^T) U^T + b``: LED with a LayerNorm over its ``rank`` hidden features.

    Shapes: ``v_weight (r, in)``, ``norm`` LayerNorm(r), ``u_weight (out, r)``, ``bias (out,)``; input ``(*, in)``
    -> ``(*, out)``.
    """

    norm_kind = "layer"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, source: str = "Linear",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, rank, bias, source, device=device, dtype=dtype)
        self.norm = self._make_norm(device=device, dtype=dtype)

    def _make_norm(self, device=None, dtype=None) -> nn.Module:
        return nn.LayerNorm(self.rank, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.linear(x, self.v_weight)), self.u_weight, self.bias)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device=None, dtype=None) -> NormLED:
        _check_norm(spec, cls.norm_kind)
        return super().from_spec(spec, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", norm=layer"


@register_layer
class NormCED(_NormMixin, CED):
    """A ConvNd factorized at rank ``r`` with a BatchNorm over the ``r`` channels between the two convs.

    Shapes: ``v_weight (r, in, *kernel)``, ``norm`` BatchNormNd(r), ``u_weight (out, r, 1, ...)``, ``bias (out,)``.
    """

    norm_kind = "batch"

    def __init__(self, source: dict[str, Any], rank: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(source, rank, device=device, dtype=dtype)
        self.norm = self._make_norm(device=device, dtype=dtype)

    def _make_norm(self, device=None, dtype=None) -> nn.Module:
        return _BATCH_NORMS[self.dim](self.rank, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[self.dim]
        if self.padding_mode != "zeros":
            pad = [p for p in reversed(self.padding) for _ in range(2)]
            hidden = conv(F.pad(x, pad, mode=self.padding_mode), self.v_weight, None, self.stride, 0, self.dilation)
        else:
            hidden = conv(x, self.v_weight, None, self.stride, self.padding, self.dilation)
        return conv(self.norm(hidden), self.u_weight, self.bias)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device=None, dtype=None) -> NormCED:
        _check_norm(spec, cls.norm_kind)
        return super().from_spec(spec, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", norm=batch"
