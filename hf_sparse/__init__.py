"""hf-sparse: structured sparsity and low-rank factorization for Hugging Face Transformers.

Importing this package registers the ``hf_sparse`` quantization config and quantizer with transformers,
so ``AutoModel*.from_pretrained`` can compress models and reload compressed ones.
"""

from . import methods  # noqa: F401  (registers every method's config, converter and layers)
from .auto import (
    SparseAutoModel,
    SparseAutoModelForCausalLM,
    SparseAutoModelForMaskedLM,
    SparseAutoModelForSequenceClassification,
)
from .config import ComposedSparsityConfig, SparsityConfig
from .hub import create_model_card, push_to_hub
from .inject import apply_plan, densify, get_sparsity_config, sparse_layers, sparsify
from .layers import PlanError, SparseLayer
from .methods.cuttlefish import CuttlefishConfig, CuttlefishSchedule, NormCED, NormLED
from .methods.dst import DSTEEConfig, MaskedConv, MaskedLinear, load_sparse, save_sparse
from .methods.greenformer import CED, LED, GreenformerConfig
from .methods.pixelfly import PixelflyConfig, PixelflyLinear, flat_block_butterfly_layout
from .quantizer import SparseHfQuantizer, register
from .summary import SparsitySummary, summary
from .training import SparseCallback, SparseTrainer

register()

__version__ = "0.1.0"

__all__ = [
    "CED",
    "LED",
    "MaskedConv",
    "MaskedLinear",
    "NormCED",
    "NormLED",
    "ComposedSparsityConfig",
    "CuttlefishConfig",
    "CuttlefishSchedule",
    "DSTEEConfig",
    "GreenformerConfig",
    "PixelflyConfig",
    "PixelflyLinear",
    "PlanError",
    "SparseAutoModel",
    "SparseAutoModelForCausalLM",
    "SparseAutoModelForMaskedLM",
    "SparseAutoModelForSequenceClassification",
    "SparseHfQuantizer",
    "SparseCallback",
    "SparseLayer",
    "SparseTrainer",
    "SparsityConfig",
    "SparsitySummary",
    "apply_plan",
    "create_model_card",
    "densify",
    "flat_block_butterfly_layout",
    "push_to_hub",
    "save_sparse",
    "get_sparsity_config",
    "load_sparse",
    "sparse_layers",
    "sparsify",
    "summary",
]
