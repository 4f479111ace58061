"""Compact export of masked layers: each weight as CSR (``values``, ``col_indices``, ``crow_indices``) of its
``(out, in * prod(kernel))`` matrix, the structure being the mask (an active weight that happens to be zero is
kept). Masks are rebuilt from the indices; the exploration counts ``N`` (training state) are not stored and
restart at 1 for the active weights.

``save_sparse(model, "model.safetensors")`` / ``load_sparse(model, path)`` write and read one safetensors
file; ``load_sparse`` fills a model with the same masked layers or the original dense architecture.
"""

from __future__ import annotations

import json
import os
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ...dense import dense_kind
from .masked import MaskedLayer

FORMAT = "hf_sparse.dst.csr"
_PARTS = ("values", "col_indices", "crow_indices")


def csr_parts(layer: MaskedLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(values, col_indices, crow_indices)`` of the layer's ``(out, in * prod(kernel))`` weight matrix in CSR,
    the structure being the mask (int32 indices when they fit)."""
    mask = layer.mask.t() if layer.source["source"] == "Conv1D" else layer.mask.reshape(layer.mask.shape[0], -1)
    rows, cols = mask.nonzero(as_tuple=True)
    index_dtype = torch.int32 if max(mask.shape[1], int(mask.sum())) < 2**31 else torch.int64
    crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int64, device=mask.device)
    crow[1:] = torch.bincount(rows, minlength=mask.shape[0]).cumsum(0)
    return layer.dense_weight().detach()[rows, cols], cols.to(index_dtype), crow.to(index_dtype)


def csr_weight(layer: MaskedLayer) -> torch.Tensor:
    """The layer's weight as a ``torch.sparse_csr`` ``(out, in * prod(kernel))`` tensor (e.g. for
    ``torch.sparse.mm``); its structure is the mask."""
    values, cols, crow = csr_parts(layer)
    shape = (crow.numel() - 1, layer.mask.numel() // (crow.numel() - 1))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, size=shape, check_invariants=False)


def to_sparse_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every masked layer's ``weight``, ``mask`` and ``active_count`` replaced by
    ``weight.values``, ``weight.col_indices`` and ``weight.crow_indices``."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, MaskedLayer):
            prefix = f"{name}." if name else ""
            for key in ("weight", "mask", "active_count"):
                state.pop(prefix + key)
            for part, tensor in zip(_PARTS, csr_parts(module), strict=True):
                state[prefix + "weight." + part] = tensor
    return state


def _layer_layout(matrix: torch.Tensor, module: nn.Module) -> torch.Tensor:
    kind = dense_kind(module) or module.source["source"]
    if kind == "Conv1D":
        return matrix.t()
    shape = module.mask.shape if isinstance(module, MaskedLayer) else module.weight.shape
    return matrix.reshape(shape)


@torch.no_grad()
def from_sparse_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``to_sparse_state_dict`` output into ``model``: masked layers get weight and mask (``N`` reset to the
    mask), dense Linear / Conv1D / ConvNd layers the dense weight. Strict: any missing or unexpected key, or
    a layer whose active count differs, raises ``ValueError``. Returns ``model``."""
    state = dict(state)
    full: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for key in [k for k in state if k.endswith(".weight.values") or k == "weight.values"]:
        name = key[:-len("weight.values")].rstrip(".")
        prefix = f"{name}." if name else ""
        values, cols, crow = (state.pop(prefix + "weight." + part) for part in _PARTS)
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"sparse state names module {name!r}, which {type(model).__name__} "
                             "does not have") from None
        rows_n = crow.numel() - 1
        if isinstance(module, MaskedLayer):
            cols_n = module.mask.numel() // rows_n
            if values.numel() != module.active:
                raise ValueError(f"{name}: the sparse state holds {values.numel()} active weights, the layer keeps "
                                 f"{module.active}")
        elif dense_kind(module) is not None:
            cols_n = module.weight.numel() // rows_n
        else:
            raise ValueError(f"sparse state has a weight for {name!r}, a {type(module).__name__}, which is neither a "
                             "masked layer nor a Linear / Conv1D / ConvNd")
        rows = torch.repeat_interleave(torch.arange(rows_n, device=crow.device), crow.diff().long())
        flat = rows * cols_n + cols.long()
        dense = torch.zeros(rows_n * cols_n, dtype=values.dtype, device=values.device).index_put_((flat,), values)
        full[prefix + "weight"] = _layer_layout(dense.view(rows_n, cols_n), module)
        if isinstance(module, MaskedLayer):
            mask = torch.zeros(rows_n * cols_n, dtype=torch.bool, device=values.device).index_fill_(0, flat, True)
            masks[name] = _layer_layout(mask.view(rows_n, cols_n), module)
            full[prefix + "mask"] = masks[name]
            full[prefix + "active_count"] = masks[name].to(module.active_count.dtype)
    full.update(state)
    missing, unexpected = model.load_state_dict(full, strict=False)
    if missing or unexpected:
        raise ValueError(f"sparse state does not match {type(model).__name__}: missing {missing}, "
                         f"unexpected {unexpected}")
    return model


def save_sparse(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``to_sparse_state_dict(model)`` to a safetensors file (shared tensors, e.g. tied embeddings, once)."""
    state = to_sparse_state_dict(model)
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if ident in seen and tensor.numel() > 0:
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        unique[key] = tensor.detach().contiguous().cpu()
    save_file(unique, str(path), metadata={"format": FORMAT, "aliases": json.dumps(aliases)})


def load_sparse(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Fill ``model`` from a :func:`save_sparse` file (see :func:`from_sparse_state_dict`). Returns ``model``."""
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not an hf-sparse compact export (metadata format={metadata.get('format')!r})")
        state = {key: fh.get_tensor(key) for key in fh.keys()}
    for alias, key in json.loads(metadata.get("aliases", "{}")).items():
        state[alias] = state[key]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return from_sparse_state_dict(model, {k: v.to(device) for k, v in state.items()})
