"""Evaluation: causal-LM perplexity (``perplexity``, ``perplexity_of_blocks``) and in-context k-shot
multiple-choice accuracy (``fewshot_accuracy`` on JSONL tasks); lm-eval tasks on an in-memory model
(``lm_eval_tasks``, needs the optional ``lm-eval`` package)."""

from __future__ import annotations

import json
import math
import os
import random
from typing import Any

import torch
from torch import nn

from .calibration import model_max_positions


@torch.no_grad()
def perplexity_of_blocks(model: nn.Module, blocks: torch.Tensor, batch_size: int = 16) -> float:
    """``exp(mean next-token cross-entropy)`` of a causal LM over ``blocks`` ``(num_blocks, block_len)``.

    Every block is scored independently (no context carried across blocks); all blocks have equal
    length, so the mean over batches weights every predicted token equally.
    """
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be (num_blocks, block_len >= 2), got shape {tuple(blocks.shape)}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start:start + batch_size].to(device)
        loss = model(input_ids=batch, labels=batch).loss
        tokens = batch.shape[0] * (batch.shape[1] - 1)
        total += loss.item() * tokens
        count += tokens
    model.train(was_training)
    return math.exp(total / count)


def perplexity(model: nn.Module, tokenizer, texts: list[str] | str, block_size: int = 512,
               batch_size: int = 8) -> float:
    """Perplexity of a causal LM over ``texts``: joined with the tokenizer's EOS (or a newline), tokenized,
    cut into ``block_size`` blocks (capped at the model's maximum positions; a shorter text is one block)."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ValueError("perplexity needs at least one text")
    separator = tokenizer.eos_token or "\n"
    ids = tokenizer(separator.join(texts), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() < 2:
        raise ValueError("the texts tokenize to fewer than 2 tokens; nothing to predict")
    size = min(block_size, ids.numel(), model_max_positions(model) or block_size)
    usable = ids.numel() // size * size
    return perplexity_of_blocks(model, ids[:usable].reshape(-1, size), batch_size)


# --------------------------------------------------------------------------------------------- few-shot
def load_jsonl_task(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A multiple-choice task: one JSON object per line with ``question`` (str), ``choices`` (list of str)
    and ``answer`` (index of the right choice)."""
    examples = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if not (isinstance(item.get("question"), str) and isinstance(item.get("choices"), list)
                    and isinstance(item.get("answer"), int) and 0 <= item["answer"] < len(item["choices"])):
                raise ValueError(f"{path}:{number}: each line needs 'question' (str), 'choices' (list of str) and "
                                 f"'answer' (an index into choices), got {item!r}")
            examples.append(item)
    if not examples:
        raise ValueError(f"{path} holds no examples")
    return examples


def _demonstration(example: dict[str, Any]) -> str:
    return f"{example['question']} {example['choices'][example['answer']]}"


@torch.no_grad()
def continuation_logprob(model: nn.Module, tokenizer, context: str, continuation: str) -> tuple[float, int]:
    """(sum of log-probabilities of ``continuation``'s tokens after ``context``, number of those tokens)."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if full_ids[:len(context_ids)] != context_ids:  # tokenization merged across the boundary
        full_ids = context_ids + tokenizer(continuation, add_special_tokens=False)["input_ids"]
    n_cont = len(full_ids) - len(context_ids)
    if n_cont <= 0:
        raise ValueError(f"continuation {continuation!r} tokenizes to nothing")
    limit = model_max_positions(model)
    if limit is not None:
        full_ids = full_ids[-limit:]  # keep the end: the continuation and as much context as fits
    ids = torch.tensor([full_ids], device=next(model.parameters()).device)
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    picked = logprobs.gather(1, targets[:, None])[:, 0]
    return picked[-n_cont:].sum().item(), n_cont


def fewshot_accuracy(model: nn.Module, tokenizer, examples: list[dict[str, Any]], shots: int = 0,
                     demonstrations: list[dict[str, Any]] | None = None, seed: int = 0,
                     normalize: bool = False, separator: str = "\n\n") -> float:
    """k-shot accuracy of a causal LM on a multiple-choice task.

    For each example the prompt is ``shots`` demonstrations (``question answer``, drawn with ``seed`` from
    ``demonstrations``, default: the other examples) followed by the question; the prediction is the choice
    with the highest log-likelihood (per token with ``normalize=True``).
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    pool = demonstrations if demonstrations is not None else examples
    gen = random.Random(seed)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for index, example in enumerate(examples):
            candidates = [d for i, d in enumerate(pool) if demonstrations is not None or i != index]
            if shots > len(candidates):
                raise ValueError(f"shots={shots} but only {len(candidates)} demonstrations are available")
            demos = gen.sample(candidates, shots)
            context = "".join(_demonstration(d) + separator for d in demos) + example["question"]
            scores = []
            for choice in example["choices"]:
                total, count = continuation_logprob(model, tokenizer, context, " " + choice)
                scores.append(total / count if normalize else total)
            correct += int(max(range(len(scores)), key=scores.__getitem__) == example["answer"])
    finally:
        model.train(was_training)
    return correct / len(examples)


# --------------------------------------------------------------------------------------------- lm-eval
LM_EVAL_INSTALL = 'pip install "hf-sparse[eval]"'


def require_lm_eval():
    """``(lm_eval, HFLM, TaskManager)``; an ``ImportError`` naming ``pip install "hf-sparse[eval]"`` when lm-eval
    is not installed."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(f"running lm-eval tasks needs the lm-eval package ({err}); install it with: "
                          f"{LM_EVAL_INSTALL}") from err
    return lm_eval, HFLM, TaskManager


def _include_dirs(include_path: str | os.PathLike | list | tuple | None) -> list[str]:
    """Directories of local lm-eval task YAMLs (a YAML file stands for its directory)."""
    if include_path is None:
        return []
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path)
    dirs = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ValueError(f"lm-eval include path {path!r} does not exist (a directory of task YAML files, or one "
                             "task YAML file)")
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def lm_eval_tasks(model: nn.Module, tokenizer, tasks: list[str] | str, num_fewshot: int = 0,
                  include_path: str | os.PathLike | list | None = None, limit: int | float | None = None,
                  batch_size: int = 1, **simple_evaluate_kwargs: Any) -> dict[str, dict[str, float]]:
    """Evaluate an in-memory causal LM on lm-eval tasks: ``lm_eval.simple_evaluate`` on
    ``HFLM(pretrained=model, tokenizer=tokenizer)``.

    ``include_path``: directories (or YAML files) of local task configs, registered with
    ``lm_eval.tasks.TaskManager(include_path=...)``. ``limit``: at most that many documents per task (a float in
    (0, 1): that fraction). Returns ``{task: {metric: value}}`` with lm-eval's ``"metric,filter"`` keys shortened
    to ``"metric"`` for the default filter (``"metric (filter)"`` otherwise), standard errors as
    ``"<metric>_stderr"``. Raises ``ImportError`` (naming ``pip install "hf-sparse[eval]"``) without lm-eval.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f"tasks must be a non-empty list of lm-eval task names, got {tasks!r}")
    if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise ValueError(f"num_fewshot must be an int >= 0, got {num_fewshot!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ValueError(f"limit must be None, a positive int (documents per task) or a fraction in (0, 1), "
                         f"got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dirs = _include_dirs(include_path)
    lm_eval, HFLM, TaskManager = require_lm_eval()
    manager = TaskManager(include_path=dirs) if dirs else TaskManager()
    was_training = model.training
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        output = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                         task_manager=manager, **simple_evaluate_kwargs)
    finally:
        model.train(was_training)
    if output is None:  # lm-eval returns results on rank 0 only
        return {}
    return {task: _lm_eval_metrics(values) for task, values in output.get("results", {}).items()}


def _lm_eval_metrics(values: dict[str, Any]) -> dict[str, float]:
    metrics = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or key == "alias":
            continue  # "alias", "N/A" stderrs, sample counts as strings
        name, _, filter_name = key.partition(",")
        metrics[name if filter_name in ("", "none") else f"{name} ({filter_name})"] = float(value)
    return metrics
