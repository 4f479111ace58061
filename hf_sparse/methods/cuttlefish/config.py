"""``CuttlefishConfig``: train full rank until the stable ranks settle, then switch to low-rank factors."""

from __future__ import annotations

from typing import Any, ClassVar

from ...config import FORMAT_VERSION, SparsityConfig, check_range, check_type
from ...registry import register_config

DEFAULT_CANDIDATE_RANK_RATIOS = (0.125, 0.25, 0.5)


@register_config("cuttlefish")
class CuttlefishConfig(SparsityConfig):
    """Cuttlefish (Wang et al., MLSys 2023): full-rank training, then low rank at the settled scaled stable ranks.

    The model stays dense when converted (``sparsify`` / ``from_pretrained`` record the config only);
    ``SparseTrainer`` runs the schedule that decides, during training, when to switch (E), which layer stacks
    to factorize (K) and at which ranks (R), and records the factorized layers in ``plan``.

    Args:
        epsilon: a layer's stable rank has settled when the derivative (per rank check) of its moving average
            over ``smoothing_window`` checks is below this, in absolute stable-rank units (paper: 0.1).
        tau: factorize a stack of identical layers only when its measured full-rank forward+backward time is
            above ``tau`` x its factorized time at the chosen ranks; ``0`` factorizes every eligible stack
            (no profiling).
        rank_check_interval: ``"epoch"`` (check at every epoch end) or a number of optimizer steps.
        smoothing_window: moving-average width (in checks) of the stable-rank sequence.
        min_checks: rank checks (after the initial measurement) before a switch may happen; ``>= smoothing_window``.
        max_full_rank_fraction: force the switch after this fraction of the run's optimizer steps, in ``(0, 1]``,
            if the ranks have not settled by then.
        candidate_rank_ratios: fractions of full rank at which the factorized layers are timed when profiling.
        profile_repeats: timed forward+backward runs per profiled layer (after a warm-up; the fastest is kept).
        factorized_lr_decay: multiply the learning rate by this at the switch (None: unchanged), in ``(0, 1]``.
        frobenius_decay: ``lambda`` of the Frobenius decay ``lambda/2 ||U V||_F^2`` on factorized layers, which
            are then excluded from plain weight decay; ``0`` disables it.
        extra_norm: put a normalization between the two factors (LayerNorm over the rank dimension for
            Linear / ``Conv1D``, BatchNorm over the rank channels for ConvNd).
        project_optimizer_state: initialize the factors' optimizer moments (Adam ``exp_avg``/``exp_avg_sq``, SGD
            momentum) by projecting the dense layer's moments onto the factors; False starts them fresh.
    """

    fields: ClassVar[tuple[str, ...]] = ("epsilon", "tau", "rank_check_interval", "smoothing_window", "min_checks",
                                         "max_full_rank_fraction", "candidate_rank_ratios", "profile_repeats",
                                         "factorized_lr_decay", "frobenius_decay", "extra_norm",
                                         "project_optimizer_state")
    structure_set_in_training: ClassVar[bool] = True

    def __init__(self, epsilon: float = 0.1, tau: float = 1.5, rank_check_interval: str | int = "epoch",
                 smoothing_window: int = 3, min_checks: int = 3, max_full_rank_fraction: float = 0.5,
                 candidate_rank_ratios: list[float] | tuple[float, ...] | None = None, profile_repeats: int = 3,
                 factorized_lr_decay: float | None = None, frobenius_decay: float = 0.0, extra_norm: bool = False,
                 project_optimizer_state: bool = True, target_modules: list[str] | str | None = None,
                 modules_to_not_convert: list[str] | str | None = None,
                 plan: dict[str, dict[str, Any]] | None = None, format_version: int = FORMAT_VERSION) -> None:
        check_type("epsilon", epsilon, (int, float), "a positive number")
        check_range("epsilon", epsilon, 0.0, low_open=True)
        check_type("tau", tau, (int, float), "a number >= 0 (0: factorize every eligible stack)")
        check_range("tau", tau, 0.0)
        if isinstance(rank_check_interval, str):
            if rank_check_interval != "epoch":
                raise ValueError(f"rank_check_interval must be 'epoch' or a positive number of optimizer steps, "
                                 f"got {rank_check_interval!r}")
        else:
            check_type("rank_check_interval", rank_check_interval, int,
                       "'epoch' or a positive int (optimizer steps)")
            check_range("rank_check_interval", rank_check_interval, 1)
        check_type("smoothing_window", smoothing_window, int, "a positive int (rank checks)")
        check_range("smoothing_window", smoothing_window, 1)
        check_type("min_checks", min_checks, int, "a positive int (rank checks)")
        check_range("min_checks", min_checks, 1)
        if min_checks < smoothing_window:
            raise ValueError(f"min_checks={min_checks} must be >= smoothing_window={smoothing_window}: the smoothed "
                             "derivative needs smoothing_window checks; raise min_checks or lower smoothing_window")
        check_type("max_full_rank_fraction", max_full_rank_fraction, (int, float), "a number in (0, 1]")
        check_range("max_full_rank_fraction", max_full_rank_fraction, 0.0, 1.0, low_open=True)
        if candidate_rank_ratios is None:
            candidate_rank_ratios = DEFAULT_CANDIDATE_RANK_RATIOS
        check_type("candidate_rank_ratios", candidate_rank_ratios, (list, tuple),
                   "a non-empty list of floats in (0, 1)")
        if len(candidate_rank_ratios) == 0:
            raise ValueError("candidate_rank_ratios must not be empty")
        for ratio in candidate_rank_ratios:
            check_type("candidate_rank_ratios entry", ratio, (int, float), "a float in (0, 1)")
            check_range("candidate_rank_ratios entry", ratio, 0.0, 1.0, low_open=True, high_open=True)
        check_type("profile_repeats", profile_repeats, int, "a positive int")
        check_range("profile_repeats", profile_repeats, 1, 1000)
        if factorized_lr_decay is not None:
            check_type("factorized_lr_decay", factorized_lr_decay, (int, float), "None or a number in (0, 1]")
            check_range("factorized_lr_decay", factorized_lr_decay, 0.0, 1.0, low_open=True)
        check_type("frobenius_decay", frobenius_decay, (int, float), "a number >= 0")
        check_range("frobenius_decay", frobenius_decay, 0.0)
        check_type("extra_norm", extra_norm, bool, "True or False")
        check_type("project_optimizer_state", project_optimizer_state, bool, "True or False")
        self.epsilon = float(epsilon)
        self.tau = float(tau)
        self.rank_check_interval = rank_check_interval
        self.smoothing_window = smoothing_window
        self.min_checks = min_checks
        self.max_full_rank_fraction = float(max_full_rank_fraction)
        self.candidate_rank_ratios = sorted({float(r) for r in candidate_rank_ratios})
        self.profile_repeats = profile_repeats
        self.factorized_lr_decay = None if factorized_lr_decay is None else float(factorized_lr_decay)
        self.frobenius_decay = float(frobenius_decay)
        self.extra_norm = extra_norm
        self.project_optimizer_state = project_optimizer_state
        super().__init__(target_modules=target_modules, modules_to_not_convert=modules_to_not_convert,
                         plan=plan, format_version=format_version)
