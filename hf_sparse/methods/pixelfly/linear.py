"""PixelflyLinear: ``y = alpha * x B^T + (1 - alpha) * (x V^T) U^T + b`` with ``B`` a flat block butterfly."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...dense import describe_dense, weight_matrix
from ...kernels.backend import TRITON_KERNELS, select_backend
from ...layers import PlanError, SparseLayer, require, require_positive_int
from ...registry import register_layer
from .butterfly import PixelflyShape, butterfly_offsets, coarse_layout
from .ops import butterfly_groups, butterfly_matmul, butterfly_to_dense, partner_index

GATINGS = ("scalar", "input")


@register_layer
class PixelflyLinear(SparseLayer):
    """Flat block butterfly + low-rank replacement of a Linear (or GPT-2 ``Conv1D``).

    Parameters: ``butterfly_weight (G, out_tile, K * in_tile)``: the nonzero tiles only (output group ``i``,
    its ``K = 1 + n_factors`` partner input groups side by side); ``u_weight (out, r)``, ``v_weight (r, in)``;
    ``alpha`` (scalar, ``gating="scalar"``) or ``gate_weight (in,)`` + ``gate_bias`` (``gating="input"``:
    ``alpha = sigmoid(x . w + b)`` per token); ``bias (out,)``. Input ``(*, in)`` -> ``(*, out)``.
    """

    method = "pixelfly"

    def __init__(self, shape: PixelflyShape, bias: bool = True, gating: str = "scalar", source: str = "Linear",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if gating not in GATINGS:
            raise ValueError(f"gating must be one of {list(GATINGS)}, got {gating!r}")
        factory = {"device": device, "dtype": dtype}
        self.shape, self.gating = shape, gating
        self.in_features, self.out_features = shape.in_features, shape.out_features
        self.source = {"source": source, "in_features": shape.in_features, "out_features": shape.out_features,
                       "bias": bias}
        g, k = shape.butterfly_size, shape.tiles_per_row
        self.butterfly_weight = nn.Parameter(torch.empty(g, shape.out_tile, k * shape.in_tile, **factory))
        self.u_weight = nn.Parameter(torch.empty(shape.out_features, shape.rank, **factory))
        self.v_weight = nn.Parameter(torch.empty(shape.rank, shape.in_features, **factory))
        if gating == "scalar":
            self.alpha = nn.Parameter(torch.empty((), **factory))
        else:
            self.gate_weight = nn.Parameter(torch.empty(shape.in_features, **factory))
            self.gate_bias = nn.Parameter(torch.empty((), **factory))
        self.bias = nn.Parameter(torch.empty(shape.out_features, **factory)) if bias else None
        self.reset_parameters()

    @property
    def offsets(self) -> tuple[int, ...]:
        """XOR offsets of the kept tiles of every coarse row."""
        return tuple(butterfly_offsets(self.shape.n_factors))

    @property
    def partners(self) -> torch.Tensor:
        """``(G, K)`` input groups read by each output group (derived from the shape, not stored)."""
        return partner_index(self.shape.butterfly_size, butterfly_offsets(self.shape.n_factors),
                             self.butterfly_weight.device)

    @property
    def layout(self) -> torch.Tensor:
        """Bool ``(ceil(out / block), ceil(in / block))`` mask of the butterfly's nonzero blocks."""
        s = self.shape
        coarse = coarse_layout(s.butterfly_size, s.n_factors)
        blocks = coarse.repeat_interleave(s.out_tile // s.block_size, 0).repeat_interleave(s.in_tile // s.block_size, 1)
        return blocks[:math.ceil(s.out_features / s.block_size), :math.ceil(s.in_features / s.block_size)]

    def _init_scale(self) -> float:
        """Both terms start at the output variance of a dense layer: each gets ``1 / (a^2 + (1-a)^2) = 2``
        times the dense variance at ``a = 0.5``, since they add up independently."""
        return 2.0 if self.shape.rank > 0 else 1.0

    def reset_parameters(self) -> None:
        """From-scratch init keeping a dense ``nn.Linear``'s output variance ``|x|^2 / (3 in)``: every butterfly
        block row has only ``K * in_tile`` inputs, so its weights get variance ``1 / (3 K in_tile)``."""
        if self.butterfly_weight.is_meta:
            return
        scale = self._init_scale()
        fan_in = self.shape.tiles_per_row * self.shape.in_tile
        nn.init.normal_(self.butterfly_weight, std=math.sqrt(scale / (3 * fan_in)))
        if self.shape.rank:
            nn.init.normal_(self.v_weight, std=1 / math.sqrt(self.in_features))
            nn.init.normal_(self.u_weight, std=math.sqrt(scale / (3 * self.shape.rank)))
        if self.gating == "scalar":
            nn.init.constant_(self.alpha, 0.5 if self.shape.rank else 1.0)
        else:
            nn.init.zeros_(self.gate_weight)
            nn.init.constant_(self.gate_bias, 0.0 if self.shape.rank else 20.0)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def mixing(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha``: a scalar, or ``(*, 1)`` per token for the input gate."""
        if self.gating == "scalar":
            return self.alpha
        return torch.sigmoid(x @ self.gate_weight + self.gate_bias)[..., None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gating == "input":
            return self._forward_gated(x)
        s = self.shape
        lead, flat = x.shape[:-1], x.reshape(-1, s.in_features)
        if select_backend("pixelfly_linear", flat) == "triton":  # one fused kernel call (+ one skinny GEMM)
            low = (self.u_weight, (1 - self.alpha) * self.v_weight) if s.rank else (None, None)
            y = TRITON_KERNELS["pixelfly_linear"](flat, self.alpha * self.butterfly_weight, self.offsets, *low,
                                                  self.bias, s.out_features)
            return y.reshape(*lead, s.out_features)
        # alpha scales the (small) weights, not the (large) outputs: no extra passes over activations
        butterfly = butterfly_groups(self._pad_input(flat), self.alpha * self.butterfly_weight, self.offsets)
        if s.rank:
            rest = F.linear(F.linear(flat, self.v_weight), (1 - self.alpha) * self.u_weight, self.bias)
        else:
            rest = self.bias.to(butterfly.dtype).expand(flat.shape[0], -1) if self.bias is not None else None
        if s.out_padded == s.out_features and rest is not None:
            # add the group-major butterfly output while transposing it: one pass over the output
            y = torch.add(rest.view(flat.shape[0], s.butterfly_size, s.out_tile), butterfly.transpose(0, 1))
        else:
            y = butterfly.transpose(0, 1).reshape(flat.shape[0], -1)[:, :s.out_features]
            y = y + rest if rest is not None else y
        return y.reshape(*lead, s.out_features)

    def _pad_input(self, flat: torch.Tensor) -> torch.Tensor:
        extra = self.shape.in_padded - self.shape.in_features
        return F.pad(flat, (0, extra)) if extra else flat

    def _forward_gated(self, x: torch.Tensor) -> torch.Tensor:
        """Input-dependent gate: ``alpha(x) = sigmoid(x . w + b)`` mixes the two terms per token."""
        s = self.shape
        lead, flat = x.shape[:-1], x.reshape(-1, s.in_features)
        y = butterfly_matmul(self._pad_input(flat), self.butterfly_weight, self.offsets)[:, :s.out_features]
        alpha = self.mixing(flat).to(y.dtype)  # under autocast the activations stay in the autocast dtype
        y = alpha * y
        if s.rank:
            y = y + (1 - alpha) * F.linear(F.linear(flat, self.v_weight), self.u_weight)
        y = y + self.bias.to(y.dtype) if self.bias is not None else y
        return y.reshape(*lead, s.out_features)

    def butterfly_dense(self) -> torch.Tensor:
        """The butterfly term ``B`` as an ``(out, in)`` matrix."""
        s = self.shape
        return butterfly_to_dense(self.butterfly_weight, self.partners)[:s.out_features, :s.in_features]

    def dense_weight(self) -> torch.Tensor:
        if self.gating == "input":
            raise ValueError("a PixelflyLinear with gating='input' mixes its terms per token: it has no single "
                             "equivalent dense weight")
        return self.alpha * self.butterfly_dense() + (1 - self.alpha) * (self.u_weight @ self.v_weight)

    @property
    def weight(self) -> torch.Tensor:
        """For code that inspects ``module.weight`` (dtype, device, shape): ``to_dense()``; with
        ``gating="input"`` the weight at the gate's input-independent value ``sigmoid(gate_bias)`` (the gate
        really varies per token, so this is only indicative)."""
        if self.gating == "scalar":
            return self.to_dense()
        alpha = torch.sigmoid(self.gate_bias)
        matrix = alpha * self.butterfly_dense() + (1 - alpha) * (self.u_weight @ self.v_weight)
        return matrix.t() if self.source["source"] == "Conv1D" else matrix

    @classmethod
    @torch.no_grad()
    def from_dense(cls, dense: nn.Module, shape: PixelflyShape, gating: str = "scalar") -> PixelflyLinear:
        """Project a trained Linear / Conv1D: ``B`` = its weight on the layout, ``U V^T`` = truncated SVD of the
        rest, parameters scaled so ``alpha B + (1 - alpha) U V^T`` equals ``B + U V^T`` at the initial
        ``alpha`` (the best approximation of this structure), bias copied."""
        desc = describe_dense(dense)
        w = weight_matrix(dense).detach()
        layer = cls(shape, desc["bias"], gating, desc["source"], device=w.device, dtype=w.dtype)
        work = w.to(torch.float64)
        padded = F.pad(work, (0, shape.in_padded - shape.in_features, 0, shape.out_padded - shape.out_features))
        g, k = shape.butterfly_size, shape.tiles_per_row
        grid = padded.reshape(g, shape.out_tile, g, shape.in_tile)
        partners = layer.partners.to(grid.device)
        tiles = torch.stack([grid[torch.arange(g, device=grid.device), :, partners[:, j]] for j in range(k)], dim=2)
        butterfly = tiles.reshape(g, shape.out_tile, k * shape.in_tile)
        alpha = 0.5 if shape.rank else 1.0
        layer.butterfly_weight.copy_(butterfly / alpha)
        if shape.rank:
            kept = butterfly_to_dense(butterfly, layer.partners.to(butterfly.device))
            residual = work - kept[:shape.out_features, :shape.in_features]
            u, s, vh = torch.linalg.svd(residual, full_matrices=False)
            root = s[:shape.rank].sqrt()
            layer.u_weight.copy_(u[:, :shape.rank] * root / (1 - alpha))
            layer.v_weight.copy_(root[:, None] * vh[:shape.rank])
        if gating == "scalar":
            layer.alpha.fill_(alpha)
        else:
            layer.gate_weight.zero_()
            layer.gate_bias.fill_(0.0 if shape.rank else 20.0)
        if desc["bias"]:
            layer.bias.copy_(dense.bias.detach())
        return layer.train(dense.training)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device=None, dtype=None) -> PixelflyLinear:
        source = require(spec, "source", str)
        if source not in ("Linear", "Conv1D"):
            raise PlanError(f"PixelflyLinear replaces Linear or Conv1D layers, plan says source={source!r}")
        shape = PixelflyShape(require_positive_int(spec, "out_features"), require_positive_int(spec, "in_features"),
                              require_positive_int(spec, "block_size"), require_positive_int(spec, "butterfly_size"),
                              require(spec, "n_factors", int), require(spec, "rank", int))
        if shape.butterfly_size & (shape.butterfly_size - 1) or not 0 <= shape.n_factors <= math.log2(
                shape.butterfly_size) or shape.rank < 0:
            raise PlanError(f"plan entry has an impossible butterfly: {spec}")
        gating = require(spec, "gating", str)
        if gating not in GATINGS:
            raise PlanError(f"plan field 'gating' must be one of {list(GATINGS)}, got {gating!r}")
        return cls(shape, require(spec, "bias", bool), gating, source, device=device, dtype=dtype)

    def to_spec(self) -> dict[str, Any]:
        s = self.shape
        return {"class": type(self).__name__, "method": self.method, **self.source, "block_size": s.block_size,
                "butterfly_size": s.butterfly_size, "n_factors": s.n_factors, "rank": s.rank, "gating": self.gating,
                "density": s.density}

    @classmethod
    def params_and_flops(cls, spec: dict[str, Any]) -> tuple[int, int]:
        shape = PixelflyShape(spec["out_features"], spec["in_features"], spec["block_size"], spec["butterfly_size"],
                              spec["n_factors"], spec["rank"])
        weights = shape.butterfly_params + shape.lowrank_params
        extra = 1 if spec["gating"] == "scalar" else spec["in_features"] + 1
        return weights + extra + (spec["out_features"] if spec["bias"] else 0), 2 * weights

    @classmethod
    def describe(cls, spec: dict[str, Any]) -> str:
        tiles = f"{1 + spec['n_factors']}/{spec['butterfly_size']}"
        return f"density {spec['density']:.3f} (butterfly {tiles}, rank {spec['rank']})"

    def extra_repr(self) -> str:
        s = self.shape
        return (f"in_features={s.in_features}, out_features={s.out_features}, block_size={s.block_size}, "
                f"butterfly={1 + s.n_factors}/{s.butterfly_size}, rank={s.rank}, density={s.density:.3f}, "
                f"gating={self.gating}, bias={self.bias is not None}")
