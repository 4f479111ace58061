"""Per-module parameter / FLOP report of a compressed model (``summary(model)``, ``hf-sparse inspect``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .dense import dense_flops, dense_kind, describe_dense
from .inject import build_layer, get_sparsity_config
from .layers import SparseLayer
from .registry import LAYER_CLASSES


@dataclass
class SummaryRow:
    """One converted module. FLOPs are per token (per output position for convs), 2 per multiply-add."""

    name: str
    kind: str
    method: str
    shape: str
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    detail: str


@dataclass
class SparsitySummary:
    """Rows for every converted module plus whole-model totals; ``str()`` renders a table."""

    rows: list[SummaryRow] = field(default_factory=list)
    total_params_before: int = 0
    total_params_after: int = 0

    @property
    def converted_params_before(self) -> int:
        return sum(r.params_before for r in self.rows)

    @property
    def converted_params_after(self) -> int:
        return sum(r.params_after for r in self.rows)

    @property
    def flops_before(self) -> int:
        return sum(r.flops_before for r in self.rows)

    @property
    def flops_after(self) -> int:
        return sum(r.flops_after for r in self.rows)

    @property
    def param_ratio(self) -> float:
        """Parameters kept by the whole model (after / before)."""
        return self.total_params_after / self.total_params_before if self.total_params_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "totals": {
                "params_before": self.total_params_before,
                "params_after": self.total_params_after,
                "param_ratio": self.param_ratio,
                "converted_params_before": self.converted_params_before,
                "converted_params_after": self.converted_params_after,
                "converted_flops_per_token_before": self.flops_before,
                "converted_flops_per_token_after": self.flops_after,
            },
        }

    def __str__(self) -> str:
        header = ("module", "kind", "shape", "params before", "params after", "FLOPs/tok before",
                  "FLOPs/tok after", "structure")
        body = [(r.name, r.kind, r.shape, f"{r.params_before:,}", f"{r.params_after:,}", f"{r.flops_before:,}",
                 f"{r.flops_after:,}", r.detail) for r in self.rows]
        body.append(("converted modules", "", "", f"{self.converted_params_before:,}",
                     f"{self.converted_params_after:,}", f"{self.flops_before:,}", f"{self.flops_after:,}", ""))
        body.append(("whole model", "", "", f"{self.total_params_before:,}", f"{self.total_params_after:,}", "", "",
                     f"{self.param_ratio:.1%} of params kept"))
        widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(str(c).ljust(w) if i < 3 or i == 7 else str(c).rjust(w)
                           for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in [header, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _row(name: str, spec: dict[str, Any]) -> SummaryRow:
    cls = LAYER_CLASSES[spec["class"]]
    params_before, flops_before = SparseLayer.dense_cost(spec)
    params_after, flops_after = cls.params_and_flops(spec)
    shape = f"{spec['in_features']}->{spec['out_features']}"
    if "kernel_size" in spec:
        shape += " k" + "x".join(str(k) for k in spec["kernel_size"])
    return SummaryRow(name, spec["class"], spec["method"], shape, params_before, params_after, flops_before,
                      flops_after, cls.describe(spec))


def summary_from_plan(plan: dict[str, dict[str, Any]], total_params_after: int) -> SparsitySummary:
    """Summary of a model with ``total_params_after`` parameters compressed according to ``plan``."""
    for name, spec in plan.items():
        build_layer(name, spec, device="meta")  # validates the entry
    rows = [_row(name, spec) for name, spec in plan.items()]
    result = SparsitySummary(rows=rows, total_params_after=total_params_after)
    result.total_params_before = total_params_after - result.converted_params_after + result.converted_params_before
    return result


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def effective_parameters(model: nn.Module, plan: dict[str, dict[str, Any]]) -> int:
    """Unique parameters, each planned module counted at its layer class's ``params_and_flops`` (a masked
    layer stores a dense-shaped weight of which only the active entries count)."""
    planned: set[int] = set()
    for name in plan:
        planned |= {id(p) for p in model.get_submodule(name).parameters()}
    unique = {id(p): p for p in model.parameters()}
    return (sum(p.numel() for key, p in unique.items() if key not in planned)
            + sum(LAYER_CLASSES[spec["class"]].params_and_flops(spec)[0] for spec in plan.values()))


def summary(model: nn.Module) -> SparsitySummary:
    """Per-module rows (name, kind, shape, params and FLOPs/token before and after, rank or density) with
    whole-model totals. Works on any model ``sparsify`` converted or hf-sparse loaded."""
    config = get_sparsity_config(model)
    plan = config.plan if config is not None else {}
    return summary_from_plan(plan, effective_parameters(model, plan))


def matmul_flops_per_token(model: nn.Module) -> int:
    """FLOPs per token (2 per multiply-add) of every Linear / Conv1D / ConvNd / hf-sparse layer in ``model``:
    the weight-matrix work, without attention scores, norms or activations."""
    total = 0
    for module in model.modules():
        if isinstance(module, SparseLayer):
            total += type(module).params_and_flops(module.to_spec())[1]
        elif dense_kind(module) is not None:
            total += dense_flops(describe_dense(module))
    return total
