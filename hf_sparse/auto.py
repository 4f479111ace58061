"""``SparseAutoModel*``: ``from_pretrained(..., sparsity_config=cfg)`` for any transformers auto class.

They call the wrapped auto class with ``quantization_config=cfg`` (the same path as plain
``AutoModelForX.from_pretrained(name, quantization_config=cfg)``) and additionally refuse a compressed
checkpoint whose planned modules did not receive their weights, instead of returning random weights.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
)

from .config import SparsityConfig, as_sparsity_config
from .inject import get_sparsity_config, sparsify
from .layers import PlanError


def _planned_keys(keys: list[str] | set[str], plan: dict[str, Any]) -> list[str]:
    return sorted(k for k in keys if any(k.startswith(name + ".") for name in plan))


class SparseAutoModel:
    """Load or build a transformers model compressed with an hf-sparse config.

    ``SparseAutoModel`` wraps ``AutoModel``; ``SparseAutoModel.for_auto_class(AutoModelForX)`` makes the
    wrapper for any other head (``SparseAutoModelForCausalLM`` etc. are made that way).
    """

    auto_class: type = AutoModel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError(f"{type(self).__name__} is used through {type(self).__name__}.from_pretrained(...) or "
                      f".from_config(...)")

    @classmethod
    def for_auto_class(cls, auto_class: type) -> type[SparseAutoModel]:
        """Wrapper class for ``auto_class`` (e.g. ``AutoModelForTokenClassification``)."""
        if not hasattr(auto_class, "from_pretrained"):
            raise TypeError(f"auto_class must be a transformers auto class, got {auto_class!r}")
        return type(f"Sparse{auto_class.__name__}", (cls,), {"auto_class": auto_class})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any,
                        sparsity_config: SparsityConfig | dict | list | str | None = None, **kwargs: Any) -> nn.Module:
        """``auto_class.from_pretrained`` that compresses a dense checkpoint with ``sparsity_config`` or
        rebuilds a compressed one (``sparsity_config=None``: whatever its ``config.json`` records).

        Raises ``PlanError`` when a compressed checkpoint's plan is damaged, unknown, or leaves planned
        parameters missing or mismatched.
        """
        if sparsity_config is not None and kwargs.get("quantization_config") is not None:
            raise ValueError("pass either sparsity_config or quantization_config, not both")
        if sparsity_config is not None:
            kwargs["quantization_config"] = as_sparsity_config(sparsity_config)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = cls.auto_class.from_pretrained(pretrained_model_name_or_path, *model_args,
                                                     output_loading_info=True, **kwargs)
        config = get_sparsity_config(model)
        if config is not None and config.plan:
            missing = _planned_keys(info.get("missing_keys", []), config.plan)
            mismatched = _planned_keys([k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])],
                                       config.plan)
            if missing or mismatched:
                raise PlanError(
                    f"the checkpoint at {pretrained_model_name_or_path} does not fit its sparsity plan: missing "
                    f"{missing[:8]}, mismatched {mismatched[:8]}. The plan in config.json and the saved weights "
                    "disagree (damaged or edited checkpoint); re-save the model with save_pretrained")
        return (model, info) if want_info else model

    @classmethod
    def from_config(cls, config: PreTrainedConfig, sparsity_config: SparsityConfig | dict | list | str | None = None,
                    **kwargs: Any) -> nn.Module:
        """A freshly initialized model from ``config``, compressed with ``sparsity_config`` if given."""
        model = cls.auto_class.from_config(config, **kwargs)
        if sparsity_config is not None:
            sparsify(model, sparsity_config)
        return model


SparseAutoModelForCausalLM = SparseAutoModel.for_auto_class(AutoModelForCausalLM)
SparseAutoModelForSequenceClassification = SparseAutoModel.for_auto_class(AutoModelForSequenceClassification)
SparseAutoModelForMaskedLM = SparseAutoModel.for_auto_class(AutoModelForMaskedLM)
