"""Masked layers for dynamic sparse training: a dense-shaped weight, a boolean mask and per-weight counts.

The weight keeps the layout of the layer it replaced (``(out, in)`` Linear, ``(in, out)`` GPT-2 ``Conv1D``,
``(out, in / groups, *kernel)`` ConvNd), so ``layer.weight`` is what ``to_dense()`` returns. Forward uses
``weight * mask``: inactive weights are exactly zero in every forward and receive exactly zero gradient.
State (all persistent, saved by ``save_pretrained``): ``weight``, ``bias``, ``mask`` (bool, weight shape) and
``active_count`` (int16, weight shape: ``N``, the number of mask periods each weight has been active for,
saturating at 32767; ``N > 0`` marks weights that were ever active).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...dense import describe_dense
from ...layers import CONV_KEYS, SOURCE_KEYS, PlanError, SparseLayer, require, require_positive_int, source_from_spec
from ...registry import register_layer

COUNT_DTYPE = torch.int16
COUNT_MAX = torch.iinfo(COUNT_DTYPE).max
_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def weight_shape(source: dict[str, Any]) -> tuple[int, ...]:
    """Shape of the weight of the dense layer ``source`` (``describe_dense`` output) describes."""
    kind, n_in, n_out = source["source"], source["in_features"], source["out_features"]
    if kind == "Linear":
        return (n_out, n_in)
    if kind == "Conv1D":
        return (n_in, n_out)
    return (n_out, n_in // source["groups"], *source["kernel_size"])


class MaskedLayer(SparseLayer):
    """Shared parts of :class:`MaskedLinear` and :class:`MaskedConv`.

    ``active`` (the number of active weights) is fixed at construction and recorded in the plan; mask updates
    move weights but never change it. While ``capture_grad`` is True every backward adds the dense gradient
    ``dL/d(weight * mask)`` (float32, weight shape) into ``dense_grad`` (summed over micro-batches); the training
    schedule turns it on for mask-update steps only.
    """

    method = "dst-ee"

    def _init_state(self, shape: tuple[int, ...], active: int, bias: bool, device, dtype) -> None:
        numel = math.prod(shape)
        if not 1 <= active <= numel:
            raise ValueError(f"active must be in [1, {numel}] for a weight of shape {shape}, got {active}")
        factory = {"device": device, "dtype": dtype}
        self.active = active
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(self.source["out_features"], **factory)) if bias else None
        self.register_buffer("mask", torch.zeros(shape, dtype=torch.bool, device=device))
        self.register_buffer("active_count", torch.zeros(shape, dtype=COUNT_DTYPE, device=device))
        self.capture_grad = False
        self.dense_grad: torch.Tensor | None = None
        self._mask_cache: tuple[torch.Tensor, tuple, torch.Tensor] | None = None
        self.reset_parameters()

    # ``SparseLayer.weight`` is a computed property; here the weight is a real parameter.
    @property
    def weight(self) -> nn.Parameter:
        found = self._parameters.get("weight")
        if found is None:
            raise AttributeError("weight")
        return found

    @property
    def density(self) -> float:
        return self.active / self.mask.numel()

    def reset_parameters(self) -> None:
        """Fresh layer: the dense layer's default init on a uniformly random mask of ``active`` weights."""
        if self.weight.is_meta:
            return
        self._reset_dense()
        order = torch.randperm(self.mask.numel(), device=self.mask.device)
        self.set_mask(torch.zeros_like(self.mask).view(-1).index_fill_(0, order[:self.active], True).view_as(self.mask))

    def _reset_dense(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel() if self.source["source"] != "Conv1D" else self.weight.shape[0]
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor, reset_counts: bool = True) -> None:
        """Install ``mask`` (bool, weight shape, exactly ``active`` True entries), zero the weights it drops and,
        with ``reset_counts``, start ``N`` at 1 for its active weights and 0 elsewhere."""
        if mask.shape != self.mask.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(self.mask.shape)}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        if int(mask.sum()) != self.active:
            raise ValueError(f"mask has {int(mask.sum())} active weights, this layer keeps {self.active}")
        self.mask.copy_(mask)
        self.weight.mul_(self.mask)
        if reset_counts:
            self.active_count.copy_(self.mask)

    def mask_like_weight(self) -> torch.Tensor:
        """The mask as a multiplier for the weight. On CPU a copy in the weight's dtype, cached until the mask
        changes (its version counter moves), because bool-times-float runs several times slower there; on
        accelerators the bool buffer itself."""
        mask = self.mask
        if mask.device.type != "cpu":
            return mask
        cache = self._mask_cache
        if cache is None or cache[0] is not mask or cache[1] != (mask._version, self.weight.dtype):
            cache = self._mask_cache = (mask, (mask._version, self.weight.dtype), mask.to(self.weight.dtype))
        return cache[2]

    def masked_weight(self) -> torch.Tensor:
        """``weight * mask``; with ``capture_grad`` its gradient is added into ``dense_grad`` during backward."""
        weight = self.weight * self.mask_like_weight()
        if self.capture_grad and weight.requires_grad:
            weight.register_hook(self._accumulate_dense_grad)
        return weight

    def _accumulate_dense_grad(self, grad: torch.Tensor) -> None:
        grad = grad.detach().float()
        if self.dense_grad is None:
            self.dense_grad = grad.clone()
        else:
            self.dense_grad.add_(grad)

    def dense_weight(self) -> torch.Tensor:
        weight = self.weight * self.mask_like_weight()
        if self.source["source"] == "Conv1D":
            return weight.t()
        return weight.reshape(weight.shape[0], -1)

    def to_dense(self) -> torch.Tensor:
        return self.weight * self.mask_like_weight()  # already in the replaced layer's layout

    # -- plan ---------------------------------------------------------------------------------------------
    def to_spec(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "method": self.method, **self.source, "active": self.active,
                "density": self.density}

    @classmethod
    def params_and_flops(cls, spec: dict[str, Any]) -> tuple[int, int]:
        """Active weights (+ bias) and ``2 * active`` FLOPs per token / output position: the layer as a sparse
        layer would cost (the dense-shaped storage here is a training convenience)."""
        return spec["active"] + (spec["out_features"] if spec["bias"] else 0), 2 * spec["active"]

    @classmethod
    def describe(cls, spec: dict[str, Any]) -> str:
        return f"density {spec['density']:.3f} ({spec['active']:,} active)"

    @classmethod
    def _source_from_spec(cls, spec: dict[str, Any], conv: bool) -> tuple[dict[str, Any], int]:
        kinds = ("Conv1d", "Conv2d", "Conv3d") if conv else ("Linear", "Conv1D")
        if require(spec, "source", str) not in kinds:
            raise PlanError(f"{cls.__name__} replaces {' / '.join(kinds)} layers, plan says source={spec['source']!r}")
        source = source_from_spec(spec, conv)
        active = require_positive_int(spec, "active")
        numel = math.prod(weight_shape(source))
        if active > numel:
            raise PlanError(f"plan field 'active' ({active}) exceeds the {numel} weights of the layer")
        return source, active

    @classmethod
    def from_dense(cls, dense: nn.Module, active: int, mask_init: str = "random",
                   generator: torch.Generator | None = None) -> MaskedLayer:
        """Masked copy of ``dense`` (weight, bias, device, dtype, train mode) keeping ``active`` weights:
        ``mask_init="random"`` draws them uniformly (from ``generator``), ``"magnitude"`` keeps the largest."""
        weight = dense.weight.detach()
        layer = cls(describe_dense(dense), active, device="meta", dtype=weight.dtype)
        layer.weight = nn.Parameter(weight.clone(memory_format=torch.contiguous_format))
        if layer.bias is not None:
            layer.bias = nn.Parameter(dense.bias.detach().clone())
        layer.mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
        layer.active_count = torch.zeros(weight.shape, dtype=COUNT_DTYPE, device=weight.device)
        if mask_init == "magnitude":
            keep = weight.abs().flatten().float().topk(active, sorted=False).indices
        elif mask_init == "random":
            keep = torch.randperm(weight.numel(), generator=generator)[:active].to(weight.device)
        else:
            raise ValueError(f"mask_init must be 'random' or 'magnitude', got {mask_init!r}")
        flat = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
        layer.set_mask(flat.index_fill_(0, keep, True).view(weight.shape))
        return layer.train(dense.training)


@register_layer
class MaskedLinear(MaskedLayer):
    """Masked replacement of an ``nn.Linear`` (weight ``(out, in)``) or GPT-2 ``Conv1D`` (weight ``(in, out)``).

    Input ``(*, in)`` -> ``(*, out)``; ``y = x (weight * mask)^T + b`` (Linear layout).
    """

    def __init__(self, source: dict[str, Any], active: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if source["source"] not in ("Linear", "Conv1D"):
            raise ValueError(f"MaskedLinear replaces Linear or Conv1D layers, got source={source['source']!r}")
        self.source = {key: source[key] for key in SOURCE_KEYS}
        self.in_features, self.out_features = source["in_features"], source["out_features"]
        self._init_state(weight_shape(self.source), active, source["bias"], device, dtype)

    def _reset_dense(self) -> None:
        if self.source["source"] == "Conv1D":  # transformers' Conv1D init
            nn.init.normal_(self.weight, std=0.02)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
        else:
            super()._reset_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.masked_weight()
        if self.source["source"] == "Conv1D":
            flat = x.reshape(-1, x.shape[-1])
            out = torch.addmm(self.bias, flat, weight) if self.bias is not None else flat @ weight
            return out.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, weight, self.bias)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device=None, dtype=None) -> MaskedLinear:
        source, active = cls._source_from_spec(spec, conv=False)
        return cls(source, active, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, active={self.active}, "
                f"density={self.density:.4f}, bias={self.bias is not None}, source={self.source['source']}")


@register_layer
class MaskedConv(MaskedLayer):
    """Masked replacement of an ``nn.Conv1d/2d/3d`` (any groups, padding mode).

    Weight ``(out, in / groups, *kernel)``; input ``(N, in, *spatial)`` -> ``(N, out, *spatial_out)``.
    """

    def __init__(self, source: dict[str, Any], active: int, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if source["source"] not in ("Conv1d", "Conv2d", "Conv3d"):
            raise ValueError(f"MaskedConv replaces Conv1d/2d/3d layers, got source={source['source']!r}")
        self.source = {key: source[key] for key in SOURCE_KEYS + CONV_KEYS}
        self.in_channels, self.out_channels = source["in_features"], source["out_features"]
        self.kernel_size = tuple(source["kernel_size"])
        self.dim = len(self.kernel_size)
        self.stride, self.dilation, self.groups = tuple(source["stride"]), tuple(source["dilation"]), source["groups"]
        self.padding = source["padding"] if isinstance(source["padding"], str) else tuple(source["padding"])
        self.padding_mode = source["padding_mode"]
        if self.padding_mode != "zeros" and isinstance(self.padding, str):
            raise ValueError("MaskedConv supports string padding only with padding_mode='zeros'")
        self._init_state(weight_shape(self.source), active, source["bias"], device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = _CONV_FN[self.dim]
        weight = self.masked_weight()
        if self.padding_mode != "zeros":
            pad = [p for p in reversed(self.padding) for _ in range(2)]
            x = F.pad(x, pad, mode=self.padding_mode)
            return conv(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device=None, dtype=None) -> MaskedConv:
        source, active = cls._source_from_spec(spec, conv=True)
        if len(source["kernel_size"]) != int(source["source"][4]):
            raise PlanError(f"kernel_size {source['kernel_size']} does not match {source['source']}")
        return cls(source, active, device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, active={self.active}, density={self.density:.4f}, "
                f"bias={self.bias is not None}")
