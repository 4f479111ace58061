"""``DSTEEConfig``: dynamic sparse training at a fixed sparsity (DST-EE, with RigL and SET in the same engine)."""

from __future__ import annotations

from typing import Any, ClassVar

from ...config import FORMAT_VERSION, SparsityConfig, check_choice, check_range, check_type
from ...registry import register_config

DISTRIBUTIONS = ("erk", "uniform")
SCHEDULES = ("cosine", "constant")
GROW_MODES = ("dst-ee", "rigl", "set")
MASK_INITS = ("random", "magnitude")


@register_config("dst-ee")
class DSTEEConfig(SparsityConfig):
    """Train the targeted layers as sparse layers whose masks move during training.

    Every ``update_interval`` optimizer steps up to ``stop_step``, each layer drops the ``k`` active weights
    with the smallest ``|w|`` and grows ``k`` inactive ones (they start at zero), so its number of active
    weights never changes. ``k = round(f(t) * active)`` with ``f`` the drop-fraction schedule. Growth scores:

    * ``"dst-ee"``: ``|dL/dw| + c * ln(t) / (N + eps)``, ``t`` the optimizer step of the update and ``N`` the
      number of mask periods the weight has been active for (exploitation + exploration);
    * ``"rigl"``: ``|dL/dw|``; ``"set"``: uniform random (reproducible from ``seed`` and the step).

    Args:
        sparsity: fraction of the targeted layers' weights that are zero, in ``(0, 1)`` (global target; the
            per-layer split follows ``distribution``; biases stay dense and are not counted).
        distribution: ``"erk"`` (Erdos-Renyi-Kernel: density proportional to ``sum(shape) / prod(shape)``;
            layers that would exceed density 1 stay dense and the budget is redistributed) or ``"uniform"``.
        update_interval: optimizer steps between mask updates (``>= 1``).
        stop_step: last optimizer step at which masks may change; None: ``stop_fraction`` of the run.
        stop_fraction: with ``stop_step=None``, masks stop moving after this fraction of the total steps.
        drop_fraction: fraction of each layer's active weights replaced at the first update, in ``(0, 1)``.
        schedule: ``"cosine"`` (``f(t) = drop_fraction / 2 * (1 + cos(pi t / stop_step))``) or ``"constant"``.
        c: exploration weight of the DST-EE score (``>= 0``; 0 makes it RigL).
        eps: the ``eps`` of the DST-EE score (``> 0``).
        grow: ``"dst-ee"``, ``"rigl"`` or ``"set"`` (drop is by magnitude for all).
        mask_init: ``"random"`` (a uniformly random mask per layer, for training from scratch as in the paper) or
            ``"magnitude"`` (keep the largest weights, for sparsifying a trained model).
        dense_first_layer / dense_last_layer: leave the first / last selected layer (model order) dense and out
            of the budget.
        seed: seed of the random initial masks and of SET's growth.
        distribution_report: filled by conversion: per-layer densities and the achieved global sparsity.
    """

    fields: ClassVar[tuple[str, ...]] = ("sparsity", "distribution", "update_interval", "stop_step", "stop_fraction",
                                         "drop_fraction", "schedule", "c", "eps", "grow", "mask_init",
                                         "dense_first_layer", "dense_last_layer", "seed", "distribution_report")

    def __init__(self, sparsity: float = 0.9, distribution: str = "erk", update_interval: int = 100,
                 stop_step: int | None = None, drop_fraction: float = 0.3, schedule: str = "cosine",
                 c: float = 1e-3, eps: float = 1.0, grow: str = "dst-ee", stop_fraction: float = 0.75,
                 mask_init: str = "random", dense_first_layer: bool = False, dense_last_layer: bool = False,
                 seed: int = 0, distribution_report: dict[str, Any] | None = None,
                 target_modules: list[str] | str | None = None,
                 modules_to_not_convert: list[str] | str | None = None,
                 plan: dict[str, dict[str, Any]] | None = None, format_version: int = FORMAT_VERSION) -> None:
        check_type("sparsity", sparsity, (int, float), "a float in (0, 1)")
        check_range("sparsity", sparsity, 0.0, 1.0, low_open=True, high_open=True)
        check_type("distribution", distribution, str, f"one of {list(DISTRIBUTIONS)}")
        check_choice("distribution", distribution, DISTRIBUTIONS)
        check_type("update_interval", update_interval, int, "a positive int (optimizer steps)")
        check_range("update_interval", update_interval, 1)
        if stop_step is not None:
            check_type("stop_step", stop_step, int, "None or a positive int (optimizer step)")
            check_range("stop_step", stop_step, 1)
        check_type("stop_fraction", stop_fraction, (int, float), "a float in (0, 1]")
        check_range("stop_fraction", stop_fraction, 0.0, 1.0, low_open=True)
        check_type("drop_fraction", drop_fraction, (int, float), "a float in (0, 1)")
        check_range("drop_fraction", drop_fraction, 0.0, 1.0, low_open=True, high_open=True)
        check_type("schedule", schedule, str, f"one of {list(SCHEDULES)}")
        check_choice("schedule", schedule, SCHEDULES)
        check_type("c", c, (int, float), "a number >= 0")
        check_range("c", c, 0.0)
        check_type("eps", eps, (int, float), "a number > 0")
        check_range("eps", eps, 0.0, low_open=True)
        check_type("grow", grow, str, f"one of {list(GROW_MODES)}")
        check_choice("grow", grow, GROW_MODES)
        check_type("mask_init", mask_init, str, f"one of {list(MASK_INITS)}")
        check_choice("mask_init", mask_init, MASK_INITS)
        check_type("dense_first_layer", dense_first_layer, bool, "True or False")
        check_type("dense_last_layer", dense_last_layer, bool, "True or False")
        check_type("seed", seed, int, "an int")
        if distribution_report is not None:
            check_type("distribution_report", distribution_report, dict, "None or a dict (filled by conversion)")
        self.sparsity = float(sparsity)
        self.distribution = distribution
        self.update_interval = update_interval
        self.stop_step = stop_step
        self.stop_fraction = float(stop_fraction)
        self.drop_fraction = float(drop_fraction)
        self.schedule = schedule
        self.c = float(c)
        self.eps = float(eps)
        self.grow = grow
        self.mask_init = mask_init
        self.dense_first_layer = dense_first_layer
        self.dense_last_layer = dense_last_layer
        self.seed = seed
        self.distribution_report = distribution_report
        super().__init__(target_modules=target_modules, modules_to_not_convert=modules_to_not_convert,
                         plan=plan, format_version=format_version)

    def without_plan(self) -> DSTEEConfig:
        clone = super().without_plan()
        clone.distribution_report = None
        return clone

    def resolve_stop_step(self, max_steps: int) -> int:
        """Last step at which masks may change: ``stop_step``, or ``stop_fraction`` of ``max_steps`` (>= 1)."""
        if self.stop_step is not None:
            return self.stop_step
        return max(1, int(self.stop_fraction * max_steps))
