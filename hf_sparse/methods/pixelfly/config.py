"""``PixelflyConfig``: flat block butterfly + low-rank weights at a target density."""

from __future__ import annotations

from typing import Any, ClassVar

from ...config import FORMAT_VERSION, SparsityConfig, check_choice, check_range, check_type
from ...registry import register_config

GATINGS = ("scalar", "input")
INITS = ("auto", "project", "random")


@register_config("pixelfly")
class PixelflyConfig(SparsityConfig):
    """Replace each targeted Linear / GPT-2 ``Conv1D`` by a :class:`PixelflyLinear` at ``density``.

    Args:
        density: fraction of the dense parameters (and FLOPs) each layer keeps, in ``(0, 1)``; the budget
            planner splits it between the butterfly and the low-rank term and records the achieved density
            per layer in the plan.
        block_size: hardware block size (the butterfly is made of whole ``block_size x block_size`` blocks;
            the low-rank rank is a multiple of it). 16/32/64/128 suit GPUs; any positive int works on CPU.
        lowrank_fraction: share of each layer's budget spent on the low-rank term, in ``[0, 0.5]``.
        n_factors: butterfly factors (max stride ``2^(n_factors-1)``); None: chosen by the planner.
        butterfly_size: coarse butterfly grid (a power of two); None: chosen by the planner.
        gating: ``"scalar"`` (learnable ``alpha``, the paper) or ``"input"`` (per-token sigmoid gate).
        init: ``"project"`` (start from the dense weights: butterfly = their blocks, low-rank = SVD of the rest),
            ``"random"`` (fresh init with a dense layer's output variance, for training from scratch) or
            ``"auto"`` (project for models loaded from a checkpoint or plain modules, random for
            ``from_config`` models).
        attention: also replace the model's attention by butterfly sparse attention (models that use
            transformers' attention interface: GPT-2, LLaMA-family, BERT, ViT, ...). Stored in the config, so a
            reload switches it back on.
        attention_block_size: sequence block size of the attention layout.
        attention_n_factors: butterfly factors of the attention layout (each query block reads ``1 + n``
            key blocks); None: chosen so the density at the model's maximum length follows ``density``
            (recorded in the saved config).
        attention_global_blocks: number of leading sequence blocks made global (they read every key block and
            every query block reads them, within the causal mask), as in the paper's optional global
            rows/columns; 0 (default) for the pure butterfly layout.
    """

    fields: ClassVar[tuple[str, ...]] = ("density", "block_size", "lowrank_fraction", "n_factors", "butterfly_size",
                                         "gating", "init", "attention", "attention_block_size", "attention_n_factors",
                                         "attention_global_blocks")

    def __init__(self, density: float = 0.25, block_size: int = 32, lowrank_fraction: float = 0.25,
                 n_factors: int | None = None, butterfly_size: int | None = None, gating: str = "scalar",
                 init: str = "auto", attention: bool = False, attention_block_size: int = 64,
                 attention_n_factors: int | None = None, attention_global_blocks: int = 0,
                 target_modules: list[str] | str | None = None,
                 modules_to_not_convert: list[str] | str | None = None,
                 plan: dict[str, dict[str, Any]] | None = None, format_version: int = FORMAT_VERSION) -> None:
        check_type("density", density, (int, float), "a float in (0, 1)")
        check_range("density", density, 0.0, 1.0, low_open=True, high_open=True)
        check_type("block_size", block_size, int, "a positive int")
        check_range("block_size", block_size, 1, 4096)
        check_type("lowrank_fraction", lowrank_fraction, (int, float), "a float in [0, 0.5]")
        check_range("lowrank_fraction", lowrank_fraction, 0.0, 0.5)
        if n_factors is not None:
            check_type("n_factors", n_factors, int, "None or an int >= 0")
            check_range("n_factors", n_factors, 0, 30)
        if butterfly_size is not None:
            check_type("butterfly_size", butterfly_size, int, "None or a power of two")
            if butterfly_size < 1 or butterfly_size & (butterfly_size - 1):
                raise ValueError(f"butterfly_size must be a power of two >= 1, got {butterfly_size}")
        check_type("gating", gating, str, f"one of {list(GATINGS)}")
        check_choice("gating", gating, GATINGS)
        check_type("init", init, str, f"one of {list(INITS)}")
        check_choice("init", init, INITS)
        check_type("attention", attention, bool, "True or False")
        check_type("attention_block_size", attention_block_size, int, "a positive int")
        check_range("attention_block_size", attention_block_size, 1, 65536)
        if attention_n_factors is not None:
            check_type("attention_n_factors", attention_n_factors, int, "None or an int >= 0")
            check_range("attention_n_factors", attention_n_factors, 0, 30)
        check_type("attention_global_blocks", attention_global_blocks, int, "an int >= 0")
        check_range("attention_global_blocks", attention_global_blocks, 0, 65536)
        self.attention = attention
        self.attention_global_blocks = attention_global_blocks
        self.attention_block_size = attention_block_size
        self.attention_n_factors = attention_n_factors
        self.density = float(density)
        self.block_size = block_size
        self.lowrank_fraction = float(lowrank_fraction)
        self.n_factors = n_factors
        self.butterfly_size = butterfly_size
        self.gating = gating
        self.init = init
        super().__init__(target_modules=target_modules, modules_to_not_convert=modules_to_not_convert,
                         plan=plan, format_version=format_version)
