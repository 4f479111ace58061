"""``GreenformerConfig``: low-rank factorization of Linear / Conv layers (LED / CED)."""

from __future__ import annotations

from typing import Any, ClassVar

from ...config import FORMAT_VERSION, SparsityConfig, check_choice, check_range, check_type
from ...registry import register_config

SOLVERS = ("random", "svd", "snmf", "svd-llm", "asvd", "fwsvd")
#: solvers that need calibration data (layer input statistics or gradients)
DATA_AWARE_SOLVERS = ("svd-llm", "asvd", "fwsvd")
#: solvers built on one SVD that every candidate rank truncates
SVD_SOLVERS = ("svd", "svd-llm", "asvd", "fwsvd")
ALLOCATIONS = ("uniform", "stable_rank", "sensitivity")
DEFAULT_RANK = 0.25
DEFAULT_SENSITIVITY_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SVD_ALGORITHMS = ("exact", "randomized")
#: iterations used when ``num_iter`` is None
DEFAULT_NUM_ITER = {"snmf": 100, "svd": 4, "random": 0, "svd-llm": 0, "asvd": 0, "fwsvd": 0}


@register_config("greenformer")
class GreenformerConfig(SparsityConfig):
    """Factorize each targeted layer ``W (out x in)`` into ``U (out x r) @ V (r x in)``.

    Args:
        rank: ``int >= 1``: absolute rank; ``float in (0, 1)``: fraction of ``r_max = m*n / (m+n)`` of each
            layer (the rank at which the factorized layer costs as much as the dense one). Default 0.25.
            Exclusive with ``param_ratio``.
        solver: ``"svd"`` (truncated SVD, ``sqrt(S)`` split into both factors), ``"snmf"`` (semi-NMF,
            ``W ~ U H`` with ``H >= 0``, Ding-Li-Jordan multiplicative updates), ``"random"`` (factorization by
            design: fresh factors with the dense layer's output scale, for training from scratch), or the
            data-aware ``"svd-llm"`` (SVD of ``W S`` with ``S S^T = X^T X``), ``"asvd"`` (input channels scaled by
            ``mean|x|^asvd_alpha``) and ``"fwsvd"`` (input channels weighted by Fisher information), which need
            ``calibration_data`` in ``sparsify``.
        num_iter: iterations of ``snmf`` (default 100) or power iterations of randomized SVD (default 4).
        svd_algorithm: ``"exact"`` (``torch.linalg.svd``) or ``"randomized"`` (``torch.svd_lowrank``; plain svd).
        skip_if_no_gain: leave a layer dense when its rank would not reduce parameters (``r >= r_max``);
            when False such a layer is still factorized (rank capped at ``min(m, n)``).
        factorize_conv: also factorize ``nn.Conv1d/2d/3d`` (into CED); grouped convs always stay dense.
            Data-aware solvers use plain SVD on convs.
        seed: seed of the random / snmf initialization and of randomized SVD.
        asvd_alpha: exponent of the ASVD channel scale, in ``[0, 2]``.
        param_ratio: keep this fraction (in ``(0, 1)``) of the targeted layers' weight parameters, with ranks
            chosen per layer by ``allocation``; the achieved ratio is within 1% and recorded in
            ``allocation_report``.
        allocation: ``"uniform"`` (same fraction of ``r_max`` everywhere), ``"stable_rank"`` (ranks proportional
            to each layer's stable rank) or ``"sensitivity"`` (measured calibration-loss increase per layer and
            candidate ratio, then the least predicted loss under the budget; needs calibration data and an
            SVD solver).
        sensitivity_ratios: candidate fractions of ``r_max`` measured by ``"sensitivity"``.
        max_layers_per_pass: collect calibration statistics for at most this many layers per pass over the
            data (bounds memory for large models; None: all layers in one pass).
    """

    fields: ClassVar[tuple[str, ...]] = ("rank", "solver", "num_iter", "svd_algorithm", "skip_if_no_gain",
                                         "factorize_conv", "seed", "asvd_alpha", "param_ratio", "allocation",
                                         "sensitivity_ratios", "max_layers_per_pass", "allocation_report")

    def __init__(self, rank: int | float | None = None, solver: str = "svd", num_iter: int | None = None,
                 svd_algorithm: str = "exact", skip_if_no_gain: bool = True, factorize_conv: bool = True,
                 seed: int = 0, asvd_alpha: float = 0.5, param_ratio: float | None = None,
                 allocation: str = "uniform", sensitivity_ratios: list[float] | tuple[float, ...] | None = None,
                 max_layers_per_pass: int | None = None, allocation_report: dict[str, Any] | None = None,
                 target_modules: list[str] | str | None = None,
                 modules_to_not_convert: list[str] | str | None = None,
                 plan: dict[str, dict[str, Any]] | None = None, format_version: int = FORMAT_VERSION) -> None:
        if rank is not None:
            check_type("rank", rank, (int, float),
                       "an int >= 1 (absolute rank) or a float in (0, 1) (fraction of r_max)")
            if isinstance(rank, float):
                check_range("rank", rank, 0.0, 1.0, low_open=True, high_open=True)
            else:
                check_range("rank", rank, 1)
        check_type("solver", solver, str, f"one of {list(SOLVERS)}")
        check_choice("solver", solver, SOLVERS)
        if num_iter is not None:
            check_type("num_iter", num_iter, int, "None or a positive int")
            check_range("num_iter", num_iter, 1, 100_000)
        check_type("svd_algorithm", svd_algorithm, str, f"one of {list(SVD_ALGORITHMS)}")
        check_choice("svd_algorithm", svd_algorithm, SVD_ALGORITHMS)
        check_type("skip_if_no_gain", skip_if_no_gain, bool, "True or False")
        check_type("factorize_conv", factorize_conv, bool, "True or False")
        check_type("seed", seed, int, "an int")
        check_type("asvd_alpha", asvd_alpha, (int, float), "a number in [0, 2]")
        check_range("asvd_alpha", asvd_alpha, 0.0, 2.0)
        if param_ratio is not None:
            check_type("param_ratio", param_ratio, (int, float), "None or a float in (0, 1)")
            check_range("param_ratio", param_ratio, 0.0, 1.0, low_open=True, high_open=True)
            if rank is not None:
                raise ValueError(f"rank={rank!r} and param_ratio={param_ratio!r} are exclusive: param_ratio "
                                 "chooses the ranks; drop one of them")
        check_type("allocation", allocation, str, f"one of {list(ALLOCATIONS)}")
        check_choice("allocation", allocation, ALLOCATIONS)
        if allocation != "uniform" and param_ratio is None:
            raise ValueError(f"allocation={allocation!r} distributes a global budget: set param_ratio "
                             "(fraction of the targeted layers' parameters to keep)")
        if allocation == "sensitivity" and solver not in SVD_SOLVERS:
            raise ValueError(f"allocation='sensitivity' needs an SVD-family solver {list(SVD_SOLVERS)}, "
                             f"got solver={solver!r}")
        if sensitivity_ratios is not None:
            check_type("sensitivity_ratios", sensitivity_ratios, (list, tuple), "a list of floats in (0, 1)")
        ratios = list(DEFAULT_SENSITIVITY_RATIOS if sensitivity_ratios is None else sensitivity_ratios)
        if not ratios:
            raise ValueError("sensitivity_ratios must not be empty")
        for ratio in ratios:
            check_type("sensitivity_ratios entry", ratio, float, "a float in (0, 1)")
            check_range("sensitivity_ratios entry", ratio, 0.0, 1.0, low_open=True, high_open=True)
        if max_layers_per_pass is not None:
            check_type("max_layers_per_pass", max_layers_per_pass, int, "None or a positive int")
            check_range("max_layers_per_pass", max_layers_per_pass, 1)
        self.rank = rank
        self.solver = solver
        self.num_iter = num_iter
        self.svd_algorithm = svd_algorithm
        self.skip_if_no_gain = skip_if_no_gain
        self.factorize_conv = factorize_conv
        self.seed = seed
        self.asvd_alpha = float(asvd_alpha)
        self.param_ratio = None if param_ratio is None else float(param_ratio)
        self.allocation = allocation
        self.sensitivity_ratios = sorted(ratios)
        self.max_layers_per_pass = max_layers_per_pass
        self.allocation_report = allocation_report
        super().__init__(target_modules=target_modules, modules_to_not_convert=modules_to_not_convert,
                         plan=plan, format_version=format_version)

    @property
    def needs_calibration(self) -> bool:
        """True when ``sparsify`` needs ``calibration_data`` for this config."""
        return self.solver in DATA_AWARE_SOLVERS or self.allocation == "sensitivity"

    def without_plan(self) -> GreenformerConfig:
        clone = super().without_plan()
        clone.allocation_report = None
        return clone

    @property
    def iterations(self) -> int:
        """``num_iter`` or the solver's default."""
        return self.num_iter if self.num_iter is not None else DEFAULT_NUM_ITER[self.solver]

    def resolve_rank(self, out_features: int, in_features: int) -> int:
        """Rank for an ``(out x in)`` matrix: ``rank`` itself, or ``round(rank * r_max)`` (at least 1)."""
        rank = DEFAULT_RANK if self.rank is None else self.rank
        if isinstance(rank, float):
            r_max = out_features * in_features / (out_features + in_features)
            return max(1, round(rank * r_max))
        return rank
