"""LED (Linear Encoder-Decoder) and CED (Convolutional Encoder-Decoder): two thin layers for one dense one."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...dense import describe_dense
from ...layers import PlanError, SparseLayer, require_positive_int, source_from_spec
from ...registry import register_layer


class FactorizedLayer(SparseLayer):
    """Shared parts of LED and CED: ``W ~ U V`` with ``U (out, r)`` and ``V (r, in * prod(kernel))``."""

    method = "greenformer"
    rank: int

    def to_spec(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "method": self.method, **self.source, "rank": self.rank}

    @classmethod
    def params_and_flops(cls, spec: dict[str, Any]) -> tuple[int, int]:
        r, m = spec["rank"], spec["out_features"]
        n = spec["in_features"] * math.prod(spec.get("kernel_size", [1]))
        return r * (m + n) + (m if spec["bias"] else 0), 2 * r * (m + n)

    @classmethod
    def describe(cls, spec: dict[str, Any]) -> str:
        return f"rank {spec['rank']}"

    @torch.no_grad()
    def load_factors(self, dense: nn.Module, u: torch.Tensor, v: torch.Tensor) -> FactorizedLayer:
        """Take ``u (out, r)``, ``v (r, in * prod(kernel))`` and ``dense``'s bias, device, dtype and mode."""
        factory = {"device": dense.weight.device, "dtype": dense.weight.dtype}
        # contiguous copies: the layout a reload produces, so reloaded outputs are bit-identical
        dense_layout = torch.contiguous_format
        self.u_weight = nn.Parameter(u.to(**factory).reshape(self.u_weight.shape).clone(memory_format=dense_layout))
        self.v_weight = nn.Parameter(v.to(**factory).reshape(self.v_weight.shape).clone(memory_format=dense_layout))
        if dense.bias is not None:
            self.bias = nn.Parameter(dense.bias.detach().clone())
        return self.train(dense.training)


@register_layer
class LED(FactorizedLayer):
    """``y = (x V^T) U^T + b``: a Linear (or GPT-2 ``Conv1D``) factorized at rank ``r``.

    Shapes: ``v_weight (r, in)``, ``u_weight (out, r)``, ``bias (out,)``; input ``(*, in)`` -> ``(*, out)``.
    Costs ``r (in + out)`` parameters and ``2 r (in + out)`` FLOPs per token instead of ``in * out`` / ``2 in out``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 source: str = "Linear", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.source = {"source": source, "in_features": in_features, "out_features": out_features, "bias": bias}
        self.v_weight = nn.Parameter(torch.empty(rank, in_features, **factory))
        self.u_weight = nn.Parameter(torch.empty(out_features, rank, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Init so the product ``U V`` has the variance of ``nn.Linear``'s default init (``1 / (3 in)``)."""
        if self.v_weight.is_meta:
            return
        target_std = 1.0 / math.sqrt(3 * self.in_features)
        nn.init.normal_(self.v_weight, std=1.0 / math.sqrt(self.in_features))
        nn.init.normal_(self.u_weight, std=target_std * math.sqrt(self.in_features / self.rank))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.v_weight), self.u_weight, self.bias)

    def dense_weight(self) -> torch.Tensor:
        return self.u_weight @ self.v_weight

    @classmethod
    def from_factors(cls, dense: nn.Module, u: torch.Tensor, v: torch.Tensor) -> LED:
        """LED replacing ``dense`` (Linear / Conv1D) with ``W ~ u (out, r) @ v (r, in)``; bias copied."""
        desc = describe_dense(dense)
        layer = cls(desc["in_features"], desc["out_features"], u.shape[1], desc["bias"], desc["source"],
                    device="meta", dtype=dense.weight.dtype)
        return layer.load_factors(dense, u, v)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device=None, dtype=None) -> LED:
        src = source_from_spec(spec, conv=False)
        if src["source"] not in ("Linear", "Conv1D"):
            raise PlanError(f"LED replaces Linear or Conv1D layers, plan says source={src['source']!r}")
        return cls(src["in_features"], src["out_features"], require_positive_int(spec, "rank"), src["bias"],
                   src["source"], device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}, source={self.source['source']}")


_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@register_layer
class CED(FactorizedLayer):
    """A ConvNd factorized at rank ``r``: a conv with ``r`` filters (original kernel, stride, padding,
    dilation) followed by a 1x1 conv to ``out`` channels.

    Shapes: ``v_weight (r, in, *kernel)``, ``u_weight (out, r, 1, ...)``, ``bias (out,)``; input
    ``(N, in, *spatial)`` -> ``(N, out, *spatial_out)``. Only ``groups == 1`` convs are factorized.
    """

    def __init__(self, source: dict[str, Any], rank: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if source.get("groups", 1) != 1:
            raise ValueError(f"CED factorizes convs with groups=1 only, got groups={source.get('groups')}")
        factory = {"device": device, "dtype": dtype}
        self.source = dict(source)
        self.rank = rank
        self.in_channels, self.out_channels = source["in_features"], source["out_features"]
        self.kernel_size = tuple(source["kernel_size"])
        self.dim = len(self.kernel_size)
        self.stride, self.dilation = tuple(source["stride"]), tuple(source["dilation"])
        self.padding = source["padding"] if isinstance(source["padding"], str) else tuple(source["padding"])
        self.padding_mode = source["padding_mode"]
        if self.padding_mode != "zeros" and isinstance(self.padding, str):
            raise ValueError("CED supports string padding only with padding_mode='zeros'")
        self.v_weight = nn.Parameter(torch.empty(rank, self.in_channels, *self.kernel_size, **factory))
        self.u_weight = nn.Parameter(torch.empty(self.out_channels, rank, *([1] * self.dim), **factory))
        self.bias = nn.Parameter(torch.empty(self.out_channels, **factory)) if source["bias"] else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Init so the product has the variance of ``nn.ConvNd``'s default init (``1 / (3 fan_in)``)."""
        if self.v_weight.is_meta:
            return
        fan_in = self.in_channels * math.prod(self.kernel_size)
        nn.init.normal_(self.v_weight, std=1.0 / math.sqrt(fan_in))
        nn.init.normal_(self.u_weight, std=math.sqrt(1.0 / (3 * self.rank)))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = _CONV_FN[self.dim]
        if self.padding_mode != "zeros":
            pad = [p for p in reversed(self.padding) for _ in range(2)]
            x = F.pad(x, pad, mode=self.padding_mode)
            hidden = conv(x, self.v_weight, None, self.stride, 0, self.dilation)
        else:
            hidden = conv(x, self.v_weight, None, self.stride, self.padding, self.dilation)
        return conv(hidden, self.u_weight, self.bias)

    def dense_weight(self) -> torch.Tensor:
        return self.u_weight.reshape(self.out_channels, self.rank) @ self.v_weight.reshape(self.rank, -1)

    @classmethod
    def from_factors(cls, dense: nn.Module, u: torch.Tensor, v: torch.Tensor) -> CED:
        """CED replacing ``dense`` (ConvNd) with ``W ~ u (out, r) @ v (r, in * prod(kernel))``; bias copied."""
        layer = cls(describe_dense(dense), u.shape[1], device="meta", dtype=dense.weight.dtype)
        return layer.load_factors(dense, u, v)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device=None, dtype=None) -> CED:
        src = source_from_spec(spec, conv=True)
        if src["source"] not in ("Conv1d", "Conv2d", "Conv3d"):
            raise PlanError(f"CED replaces Conv1d/2d/3d layers, plan says source={src['source']!r}")
        if len(src["kernel_size"]) != int(src["source"][4]):
            raise PlanError(f"kernel_size {src['kernel_size']} does not match {src['source']}")
        return cls(src, require_positive_int(spec, "rank"), device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")
