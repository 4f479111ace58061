"""Greenformer glue: turn the selected dense layers into LED / CED according to a ``GreenformerConfig``.

Without calibration or a global budget each layer is factorized on its own (``rank``, ``solver``). With a
data-aware solver the layers' input statistics are collected first; with ``param_ratio`` the ranks come
from the chosen allocation. The model is only read (the sensitivity measurement swaps one layer at a time
and always puts the original back).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...calibration import calibration_loss, collect_stats, supports_stats
from ...dense import dense_kind, is_conv, weight_matrix
from ...registry import register_converter
from .allocation import (
    achieved_ratio,
    allocate_sensitivity,
    allocate_stable_rank,
    allocate_uniform,
    r_max,
    stable_rank,
)
from .config import DATA_AWARE_SOLVERS, GreenformerConfig
from .layers import CED, LED, FactorizedLayer
from .solvers import (
    Decomposition,
    asvd_decomposition,
    factorize,
    fisher_decomposition,
    plain_decomposition,
    whitened_decomposition,
)

logger = logging.getLogger("hf_sparse")


def is_eligible(module: nn.Module, config: GreenformerConfig) -> bool:
    kind = dense_kind(module)
    if kind is None:
        return False
    if is_conv(kind):
        return config.factorize_conv and module.groups == 1
    return True


def planned_rank(name: str, module: nn.Module, config: GreenformerConfig) -> int | None:
    """Rank this layer gets from ``config.rank``, or None (logged) when factorizing would not reduce its cost."""
    out_features, in_flat = weight_matrix(module).shape
    rank = config.resolve_rank(out_features, in_flat)
    limit = r_max((out_features, in_flat))
    if rank >= limit and config.skip_if_no_gain:
        logger.info("greenformer: %s stays dense: rank %d >= r_max %.1f of its %dx%d weight saves nothing",
                    name, rank, limit, out_features, in_flat)
        return None
    return min(rank, out_features, in_flat)


def _layer(module: nn.Module, u, v) -> FactorizedLayer:
    return (CED if is_conv(dense_kind(module)) else LED).from_factors(module, u, v)


def iter_decompositions(model: nn.Module, names: list[str], config: GreenformerConfig,
                        batches: list[dict[str, Any]] | None) -> Iterator[tuple[str, Decomposition]]:
    """One SVD-family decomposition per layer, yielded as soon as its statistics are in (data-aware where the
    solver asks for it and the layer is a Linear / Conv1D; plain SVD otherwise). Consumers that build the
    layer right away keep only one calibration group's statistics and decompositions alive at a time."""
    aware = ([n for n in names if supports_stats(model.get_submodule(n))]
             if config.solver in DATA_AWARE_SOLVERS else [])
    if aware:
        for group in collect_stats(model, aware, batches, fisher=config.solver == "fwsvd",
                                   max_layers_per_pass=config.max_layers_per_pass):
            for name in list(group):
                stats = group.pop(name)
                weight = weight_matrix(model.get_submodule(name))
                if config.solver == "svd-llm":
                    yield name, whitened_decomposition(weight, stats.xtx, name)
                elif config.solver == "asvd":
                    yield name, asvd_decomposition(weight, stats.abs_mean, config.asvd_alpha)
                else:
                    yield name, fisher_decomposition(weight, stats.fisher)
    aware_names = set(aware)
    fallback = [n for n in names if n not in aware_names]
    if aware and fallback:
        logger.info("greenformer: %s uses plain SVD on %d conv layer(s) without input statistics",
                    config.solver, len(fallback))
    for name in fallback:
        yield name, plain_decomposition(weight_matrix(model.get_submodule(name)))


def sensitivity_table(model: nn.Module, names: list[str], decomps: dict[str, Decomposition],
                      config: GreenformerConfig, batches: list[dict[str, Any]]) -> list[dict[int | None, float]]:
    """Calibration-loss increase with only layer ``i`` factorized, per candidate rank (fraction of r_max)."""
    base = calibration_loss(model, batches)
    tables = []
    for name in tqdm(names, desc="sensitivity", disable=None, leave=False):
        original = model.get_submodule(name)
        shape = tuple(weight_matrix(original).shape)
        table: dict[int | None, float] = {None: 0.0}
        for ratio in config.sensitivity_ratios:
            rank = round(ratio * r_max(shape))
            if rank < 1 or rank >= r_max(shape) or rank in table:
                continue
            model.set_submodule(name, _layer(original, *decomps[name].factors(rank)))
            try:
                table[rank] = calibration_loss(model, batches) - base
            finally:
                model.set_submodule(name, original)
        tables.append(table)
    return tables


def allocate(model: nn.Module, names: list[str], config: GreenformerConfig, decomps: dict[str, Decomposition] | None,
             batches: list[dict[str, Any]] | None) -> dict[str, int | None]:
    """Per-layer ranks (None = stays dense) meeting ``config.param_ratio``; records ``allocation_report``."""
    shapes = [tuple(weight_matrix(model.get_submodule(n)).shape) for n in names]
    if config.allocation == "uniform":
        ranks = allocate_uniform(shapes, config.param_ratio)
    elif config.allocation == "stable_rank":
        # the weights' own stable rank: a whitened / scaled matrix is dominated by a few high-energy input
        # directions and would starve layers of rank
        sranks = [stable_rank(_svdvals(model, n)) for n in names]
        ranks = allocate_stable_rank(shapes, sranks, config.param_ratio)
    else:
        ranks = allocate_sensitivity(shapes, sensitivity_table(model, names, decomps, config, batches),
                                     config.param_ratio)
    achieved = achieved_ratio(shapes, ranks)
    config.allocation_report = {"allocation": config.allocation, "target_param_ratio": config.param_ratio,
                                "achieved_param_ratio": achieved, "dense_layers": sum(r is None for r in ranks)}
    logger.info("greenformer: kept %.2f%% of the targeted layers' weights (target %.2f%%, allocation=%s)",
                100 * achieved, 100 * config.param_ratio, config.allocation)
    return dict(zip(names, ranks, strict=True))


def _svdvals(model: nn.Module, name: str) -> torch.Tensor:
    return torch.linalg.svdvals(weight_matrix(model.get_submodule(name)).detach().double())


@register_converter("greenformer", is_eligible)
def convert(model: nn.Module, names: list[str], config: GreenformerConfig,
            batches: list[dict[str, Any]] | None) -> dict[str, FactorizedLayer]:
    """LED / CED for each selected module that gets factorized (the others stay dense)."""
    modules = {n: model.get_submodule(n) for n in names}
    if config.allocation == "sensitivity":
        # the allocation needs every layer's decomposition (one SVD serves all candidate ranks)
        decomps = dict(iter_decompositions(model, names, config, batches))
        ranks = allocate(model, names, config, decomps, batches)
        factors = ((n, decomps[n].factors(ranks[n])) for n in names if ranks[n] is not None)
    else:
        if config.param_ratio is not None:
            ranks = allocate(model, names, config, None, batches)
        else:
            ranks = {n: planned_rank(n, m, config) for n, m in modules.items()}
        if config.solver in DATA_AWARE_SOLVERS:
            kept = [n for n in names if ranks[n] is not None]
            factors = ((n, d.factors(ranks[n])) for n, d in iter_decompositions(model, kept, config, batches))
        else:
            factors = ((n, factorize(weight_matrix(modules[n]), ranks[n], config.solver, config.iterations,
                                     config.svd_algorithm, config.seed)) for n in names if ranks[n] is not None)
    return {name: _layer(modules[name], u, v) for name, (u, v) in factors}
