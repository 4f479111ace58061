"""The transformers integration: an ``HfQuantizer`` for ``quant_method="hf_sparse"``.

Registered with ``register_quantization_config`` / ``register_quantizer`` when ``hf_sparse`` is imported:

* ``from_pretrained(dense_checkpoint, quantization_config=cfg)`` loads the dense weights, then converts
  them (``sparsify``) after loading.
* ``from_pretrained(compressed_checkpoint)`` finds the config with its plan in ``config.json``, rebuilds
  the planned modules on the meta device before the weights load, and the checkpoint fills them.

A compressed model is not a quantized one: the quantizer leaves ``model.is_quantized`` unset so
``.half()``, ``.float()``, ``Trainer`` fine-tuning and PEFT behave as for any dense model.
"""

from __future__ import annotations

from typing import Any

from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)

from .config import QUANT_METHOD, SparsityConfig
from .inject import apply_plan, get_sparsity_config, set_sparsity_config, sparsify


class SparseHfQuantizer(HfQuantizer):
    """Builds or rebuilds hf-sparse modules inside ``PreTrainedModel.from_pretrained``."""

    requires_calibration = False

    def __init__(self, quantization_config: SparsityConfig, **kwargs: Any) -> None:
        if isinstance(quantization_config, dict):
            quantization_config = SparsityConfig.from_dict(quantization_config)
        super().__init__(quantization_config, **kwargs)
        if not self.pre_quantized and quantization_config.plan:
            # A dense checkpoint with a config that already carries a plan (say, copied from another
            # model): convert afresh from the settings.
            self.quantization_config = quantization_config.without_plan()

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        """Refuse, before any weight is loaded, a config that needs calibration data it cannot get here."""
        if not self.pre_quantized and self.quantization_config.needs_calibration:
            raise ValueError(
                "this sparsity config needs calibration data (a data-aware solver or allocation='sensitivity'), "
                "which from_pretrained cannot pass: load the dense model, then call "
                "hf_sparse.sparsify(model, config, calibration_data=..., tokenizer=...)")

    def preprocess_model(self, model, dtype=None, **kwargs):  # noqa: D401 - transformers hook
        """Rebuild the planned modules (pre-compressed checkpoint); nothing to do for a dense one."""
        if self.pre_quantized:
            apply_plan(model, self.quantization_config, dtype=dtype)
        return model

    def postprocess_model(self, model, **kwargs):
        """Convert the freshly loaded dense weights, or record the rebuilt model's config."""
        if self.pre_quantized:
            set_sparsity_config(model, self.quantization_config)
        else:
            set_sparsity_config(model, None)  # transformers attached the bare settings; sparsify records the result
            sparsify(model, self.quantization_config)
            self.quantization_config = get_sparsity_config(model)
        return model

    def _dequantize(self, model, dtype=None):
        from .inject import densify

        return densify(model)

    def remove_quantization_config(self, model):
        if hasattr(model, "hf_quantizer"):
            del model.hf_quantizer
        set_sparsity_config(model, None)

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


def register() -> None:
    """Register the config class and the quantizer with transformers (idempotent)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not SparsityConfig:
        AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)
        register_quantization_config(QUANT_METHOD)(SparsityConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not SparseHfQuantizer:
        AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
        register_quantizer(QUANT_METHOD)(SparseHfQuantizer)
