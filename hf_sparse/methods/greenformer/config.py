"""``GreenformerConfig``: low-rank factorization of Linear / Conv layers (LED / CED)."""

from __future__ import annotations

from typing import Any, ClassVar

from ...config import FORMAT_VERSION, SparsityConfig, check_choice, check_range, check_type
from ...registry import register_config

SOLVERS = ("random", "svd", "snmf")
SVD_ALGORITHMS = ("exact", "randomized")
#: iterations used when ``num_iter`` is None
DEFAULT_NUM_ITER = {"snmf": 100, "svd": 4, "random": 0}


@register_config("greenformer")
class GreenformerConfig(SparsityConfig):
    """Factorize each targeted layer ``W (out x in)`` into ``U (out x r) @ V (r x in)``.

    Args:
        rank: ``int >= 1``: absolute rank; ``float in (0, 1)``: fraction of ``r_max = m*n / (m+n)`` of each
            layer (the rank at which the factorized layer costs as much as the dense one).
        solver: ``"svd"`` (truncated SVD, ``sqrt(S)`` split into both factors), ``"snmf"`` (semi-NMF,
            ``W ~ U H`` with ``H >= 0``, Ding-Li-Jordan multiplicative updates) or ``"random"``
            (factorization by design: fresh factors with the dense layer's output scale, for training from scratch).
        num_iter: iterations of ``snmf`` (default 100) or power iterations of randomized SVD (default 4).
        svd_algorithm: ``"exact"`` (``torch.linalg.svd``) or ``"randomized"`` (``torch.svd_lowrank``).
        skip_if_no_gain: leave a layer dense when its rank would not reduce parameters (``r >= r_max``);
            when False such a layer is still factorized (rank capped at ``min(m, n)``).
        factorize_conv: also factorize ``nn.Conv1d/2d/3d`` (into CED); grouped convs always stay dense.
        seed: seed of the random / snmf initialization and of randomized SVD.
    """

    fields: ClassVar[tuple[str, ...]] = ("rank", "solver", "num_iter", "svd_algorithm", "skip_if_no_gain",
                                         "factorize_conv", "seed")

    def __init__(self, rank: int | float = 0.25, solver: str = "svd", num_iter: int | None = None,
                 svd_algorithm: str = "exact", skip_if_no_gain: bool = True, factorize_conv: bool = True,
                 seed: int = 0, target_modules: list[str] | str | None = None,
                 modules_to_not_convert: list[str] | str | None = None,
                 plan: dict[str, dict[str, Any]] | None = None, format_version: int = FORMAT_VERSION) -> None:
        check_type("rank", rank, (int, float), "an int >= 1 (absolute rank) or a float in (0, 1) (fraction of r_max)")
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
        self.rank = rank
        self.solver = solver
        self.num_iter = num_iter
        self.svd_algorithm = svd_algorithm
        self.skip_if_no_gain = skip_if_no_gain
        self.factorize_conv = factorize_conv
        self.seed = seed
        super().__init__(target_modules=target_modules, modules_to_not_convert=modules_to_not_convert,
                         plan=plan, format_version=format_version)

    @property
    def iterations(self) -> int:
        """``num_iter`` or the solver's default."""
        return self.num_iter if self.num_iter is not None else DEFAULT_NUM_ITER[self.solver]

    def resolve_rank(self, out_features: int, in_features: int) -> int:
        """Rank for an ``(out x in)`` matrix: ``rank`` itself, or ``round(rank * r_max)`` (at least 1)."""
        if isinstance(self.rank, float):
            r_max = out_features * in_features / (out_features + in_features)
            return max(1, round(self.rank * r_max))
        return self.rank
