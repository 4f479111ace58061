"""Calibration: stream per-layer input statistics (and optionally Fisher information) over a few batches.

Only running sums are kept (``X^T X`` in float64, ``sum |x|`` per input feature, squared weight
gradients); activations are never stored. Layers can be processed in groups
(``max_layers_per_pass``) so the statistics of a large model never have to fit in memory at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .dense import dense_kind, is_conv, weight_matrix

logger = logging.getLogger("hf_sparse")


@dataclass
class LayerStats:
    """Input statistics of one Linear / Conv1D layer over the calibration tokens.

    ``xtx (in, in)``: ``sum_t x_t x_t^T`` (float64); ``abs_sum (in,)``: ``sum_t |x_t|``; ``tokens``: count;
    ``fisher (out, in)`` or None: ``sum_batches (dL/dW)^2`` of the weight matrix (float64).
    """

    xtx: torch.Tensor
    abs_sum: torch.Tensor
    tokens: int = 0
    fisher: torch.Tensor | None = None

    @property
    def abs_mean(self) -> torch.Tensor:
        return self.abs_sum / max(self.tokens, 1)


def supports_stats(module: nn.Module) -> bool:
    """Calibration statistics are collected for Linear and GPT-2 ``Conv1D`` layers (not ConvNd)."""
    kind = dense_kind(module)
    return kind is not None and not is_conv(kind)


def model_max_positions(model: nn.Module) -> int | None:
    """Longest sequence the model's position embeddings allow (``max_position_embeddings`` / ``n_positions``
    of its config), or None when the config does not say."""
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def prepare_batches(data: Iterable[Any], tokenizer: Any = None, max_length: int = 512,
                    batch_size: int = 8) -> list[dict[str, Any]]:
    """Model-input dicts from ``data``: dicts are used as they are; strings need ``tokenizer`` and are
    tokenized in batches of ``batch_size`` (padded, truncated to ``max_length``)."""
    if data is None:
        raise ValueError("calibration_data is required for this config: pass an iterable of model input dicts, "
                         "or a list of strings together with tokenizer=")
    if isinstance(data, (str, bytes)):
        raise TypeError("calibration_data must be an iterable of dicts or of strings, not a single string")
    items = list(data)
    if not items:
        raise ValueError("calibration_data is empty")
    if all(isinstance(item, str) for item in items):
        if tokenizer is None:
            raise ValueError("calibration_data is a list of strings: pass tokenizer= to tokenize it")
        return [_tokenize(tokenizer, items[i:i + batch_size], max_length) for i in range(0, len(items), batch_size)]
    if all(isinstance(item, dict) for item in items):
        return items
    raise TypeError("calibration_data entries must all be dicts of model inputs or all be strings, got "
                    f"{sorted({type(i).__name__ for i in items})}")


def _tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    """One right-padded batch. Tokenizers without a pad token (GPT-2's) are padded by hand with id 0 under
    ``attention_mask`` 0, so the user's tokenizer is never modified."""
    if tokenizer.pad_token is not None:
        return dict(tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length))
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.zeros(len(encoded), width, dtype=torch.long)
    attention_mask = torch.zeros(len(encoded), width, dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def with_labels(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """Add causal-LM labels (``input_ids`` with padding masked to -100) when a batch has none."""
    if "labels" in batch or "input_ids" not in batch:
        return batch
    if not type(model).__name__.endswith("ForCausalLM") and not type(model).__name__.endswith("LMHeadModel"):
        return batch
    labels = batch["input_ids"].clone()
    if "attention_mask" in batch:
        labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    return {**batch, "labels": labels}


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def calibration_loss(model: nn.Module, batches: list[dict[str, Any]]) -> float:
    """Mean loss of ``model`` over ``batches`` (labels added for causal LMs); the model must return ``.loss``."""
    was_training = model.training
    model.eval()
    device = _device(model)
    total = 0.0
    try:
        for batch in batches:
            out = model(**_to_device(with_labels(model, batch), device))
            loss = getattr(out, "loss", None)
            if loss is None:
                raise ValueError("the model returned no loss for a calibration batch: include labels in the "
                                 "calibration batches (causal LMs get labels=input_ids automatically)")
            total += loss.item()
    finally:
        model.train(was_training)
    return total / len(batches)


def _flat_inputs(module: nn.Module, inputs: tuple) -> torch.Tensor:
    x = inputs[0]
    return x.detach().reshape(-1, x.shape[-1]).to(torch.float64)


def _collect_group(model: nn.Module, modules: dict[str, nn.Module], batches: list[dict[str, Any]], fisher: bool,
                   progress: bool, desc: str) -> dict[str, LayerStats]:
    stats = {}
    for name, module in modules.items():
        n = weight_matrix(module).shape[1]
        device = module.weight.device
        stats[name] = LayerStats(torch.zeros(n, n, dtype=torch.float64, device=device),
                                 torch.zeros(n, dtype=torch.float64, device=device))

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            x = _flat_inputs(module, inputs)
            entry = stats[name]
            entry.xtx.addmm_(x.T, x)
            entry.abs_sum.add_(x.abs().sum(0))
            entry.tokens += x.shape[0]
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    params = list(model.parameters())
    saved = [(p.requires_grad, p.grad) for p in params]
    was_training = model.training
    device = _device(model)
    try:
        model.eval()
        if fisher:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
            for module in modules.values():
                module.weight.requires_grad_(True)
        # disable=None: a bar on a terminal, silent in logs and CI
        for batch in tqdm(batches, desc=desc, disable=None if progress else True, leave=False):
            batch = _to_device(with_labels(model, batch) if fisher else batch, device)
            if not fisher:
                with torch.no_grad():
                    model(**batch)
                continue
            loss = getattr(model(**batch), "loss", None)
            if loss is None:
                raise ValueError("fwsvd needs a loss on the calibration batches: include labels "
                                 "(causal LMs get labels=input_ids automatically)")
            loss.backward()
            for name, module in modules.items():
                grad = module.weight.grad
                grad = grad.T if dense_kind(module) == "Conv1D" else grad
                sq = grad.detach().to(torch.float64).square()
                stats[name].fisher = sq if stats[name].fisher is None else stats[name].fisher.add_(sq)
                module.weight.grad = None
    finally:
        for handle in handles:
            handle.remove()
        for p, (requires_grad, grad) in zip(params, saved, strict=True):
            p.requires_grad_(requires_grad)
            p.grad = grad
        model.train(was_training)
    return stats


def collect_stats(model: nn.Module, names: list[str], batches: list[dict[str, Any]], fisher: bool = False,
                  max_layers_per_pass: int | None = None, progress: bool = True) -> Iterator[dict[str, LayerStats]]:
    """Yield statistics for ``names`` in groups of ``max_layers_per_pass`` layers (all at once if None).

    Each group costs one pass over ``batches`` (forward only, or forward + backward with ``fisher=True``);
    a group's statistics can be dropped before the next group is collected.
    """
    modules = {name: model.get_submodule(name) for name in names}
    unsupported = [n for n, m in modules.items() if not supports_stats(m)]
    if unsupported:
        raise ValueError(f"calibration statistics need Linear or Conv1D layers; got {unsupported[:5]}")
    step = max_layers_per_pass or max(len(names), 1)
    for start in range(0, len(names), step):
        group = {n: modules[n] for n in names[start:start + step]}
        passes = (len(names) + step - 1) // step
        yield _collect_group(model, group, batches, fisher, progress,
                             f"calibration pass {start // step + 1}/{passes}")
