"""Perplexity, few-shot accuracy and the lm-eval adapter (with a stand-in lm_eval package)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from hf_sparse.evaluation import (
    continuation_logprob,
    fewshot_accuracy,
    lm_eval_tasks,
    load_jsonl_task,
    perplexity,
    perplexity_of_blocks,
    require_lm_eval,
)

from .conftest import word_texts, word_tokenizer


def test_perplexity_matches_block_loss(gpt2):
    model = gpt2.build()
    tok = word_tokenizer()
    texts = word_texts(4)
    value = perplexity(model, tok, texts, block_size=16)
    joined = tok("\n".join(texts), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    blocks = joined[: joined.numel() // 16 * 16].reshape(-1, 16)
    assert value == pytest.approx(perplexity_of_blocks(model, blocks))
    with torch.no_grad():
        loss = model(input_ids=blocks, labels=blocks).loss.item()
    assert value == pytest.approx(math.exp(loss), rel=1e-5)


def test_perplexity_input_errors(gpt2):
    with pytest.raises(ValueError, match="at least one"):
        perplexity(gpt2.build(), word_tokenizer(), [])
    with pytest.raises(ValueError, match="block_len"):
        perplexity_of_blocks(gpt2.build(), torch.zeros(3, dtype=torch.long))


FIXTURES = Path(__file__).parent / "fixtures"


def test_load_jsonl_task_and_errors(tmp_path):
    task = load_jsonl_task(FIXTURES / "fewshot_task.jsonl")
    assert len(task) == 16 and set(task[0]) == {"question", "choices", "answer"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "w2", "choices": ["w3"], "answer": 4}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_jsonl_task(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no examples"):
        load_jsonl_task(tmp_path / "empty.jsonl")


def test_continuation_logprob_matches_manual(gpt2):
    model, tok = gpt2.build(), word_tokenizer()
    total, count = continuation_logprob(model, tok, "w5 w6 w7", " w8 w9")
    ids = torch.tensor([tok("w5 w6 w7 w8 w9", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    expected = logprobs[2, ids[0, 3]] + logprobs[3, ids[0, 4]]
    assert count == 2 and total == pytest.approx(expected.item(), rel=1e-5)


def test_fewshot_accuracy_is_the_argmax_of_likelihoods(gpt2):
    model, tok = gpt2.build(), word_tokenizer()
    task = load_jsonl_task(FIXTURES / "fewshot_task.jsonl")
    expected = 0
    for ex in task:
        scores = [continuation_logprob(model, tok, ex["question"], " " + c)[0] for c in ex["choices"]]
        expected += int(scores.index(max(scores)) == ex["answer"])
    assert fewshot_accuracy(model, tok, task, shots=0) == expected / len(task)
    two_shot = fewshot_accuracy(model, tok, task, shots=2, seed=3)
    assert 0 <= two_shot <= 1 and two_shot == fewshot_accuracy(model, tok, task, shots=2, seed=3)
    with pytest.raises(ValueError, match="demonstrations"):
        fewshot_accuracy(model, tok, task[:2], shots=2)
    with pytest.raises(ValueError, match="shots"):
        fewshot_accuracy(model, tok, task, shots=-1)


# --------------------------------------------------------------------------------------------- lm-eval
class FakeLMEval:
    """A stand-in ``lm_eval`` package (``simple_evaluate``, ``models.huggingface.HFLM``, ``tasks.TaskManager``)
    that records how hf-sparse calls it. Its ``simple_evaluate`` scores with the wrapped model (the summed
    log-likelihood of a fixed continuation), so the model must really reach it, and answers in lm-eval's result
    layout (``"metric,filter"`` keys, ``alias``, stderrs)."""

    def __init__(self):
        self.lms, self.managers, self.calls = [], [], []
        fake = self

        class HFLM:
            def __init__(self, pretrained, tokenizer=None, batch_size=1, **kwargs):
                self.model, self.tokenizer, self.batch_size = pretrained, tokenizer, batch_size
                pretrained.eval()  # as lm-eval's HFLM does
                fake.lms.append(self)

        class TaskManager:
            def __init__(self, include_path=None, **kwargs):
                self.include_path = include_path
                fake.managers.append(self)

        def simple_evaluate(model, tasks, num_fewshot=None, limit=None, task_manager=None, **kwargs):
            assert isinstance(model, HFLM) and isinstance(task_manager, TaskManager)
            fake.calls.append({"tasks": tasks, "num_fewshot": num_fewshot, "limit": limit, **kwargs})
            score, _ = continuation_logprob(model.model, model.tokenizer, "w5 w6 w7", " w8")
            return {"results": {task: {"alias": task, "acc,none": 0.25 + num_fewshot / 100,
                                       "acc_stderr,none": 0.125, "loglik,strict": score, "acc_norm_stderr,none": "N/A"}
                                for task in tasks},
                    "config": {"model": "hf"}}

        self.HFLM, self.TaskManager, self.simple_evaluate = HFLM, TaskManager, simple_evaluate

    def install(self, monkeypatch) -> FakeLMEval:
        root, models, huggingface, tasks = (ModuleType(n) for n in (
            "lm_eval", "lm_eval.models", "lm_eval.models.huggingface", "lm_eval.tasks"))
        root.simple_evaluate, huggingface.HFLM, tasks.TaskManager = self.simple_evaluate, self.HFLM, self.TaskManager
        root.models, root.tasks, models.huggingface = models, tasks, huggingface
        for module in (root, models, huggingface, tasks):
            monkeypatch.setitem(sys.modules, module.__name__, module)
        return self


def test_lm_eval_not_installed_names_the_extra(gpt2, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an environment without lm-eval looks like
    with pytest.raises(ImportError, match=r'pip install "hf-sparse\[eval\]"'):
        lm_eval_tasks(gpt2.build(), word_tokenizer(), ["hellaswag"])
    with pytest.raises(ImportError, match="lm-eval"):
        require_lm_eval()


def test_lm_eval_adapter_calls_hflm_and_simple_evaluate(gpt2, tmp_path, monkeypatch):
    fake = FakeLMEval().install(monkeypatch)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "my_task.yaml").write_text("task: my_task\n")
    model, tok = gpt2.build().train(), word_tokenizer()
    scores = lm_eval_tasks(model, tok, ["my_task", "other"], num_fewshot=3,
                           include_path=[tmp_path / "tasks" / "my_task.yaml", tmp_path / "tasks"], limit=5,
                           batch_size=2)
    (lm,) = fake.lms
    assert lm.model is model and lm.tokenizer is tok and lm.batch_size == 2
    assert fake.managers[0].include_path == [str(tmp_path / "tasks")]  # a YAML file stands for its directory
    assert fake.calls == [{"tasks": ["my_task", "other"], "num_fewshot": 3, "limit": 5}]
    assert model.training  # restored after HFLM put it in eval mode
    expected_loglik = continuation_logprob(model.eval(), tok, "w5 w6 w7", " w8")[0]
    assert scores == {task: {"acc": 0.28, "acc_stderr": 0.125, "loglik (strict)": pytest.approx(expected_loglik)}
                      for task in ("my_task", "other")}


def test_lm_eval_argument_errors(gpt2, tmp_path, monkeypatch):
    FakeLMEval().install(monkeypatch)
    model, tok = gpt2.build(), word_tokenizer()
    with pytest.raises(ValueError, match="tasks must be a non-empty list"):
        lm_eval_tasks(model, tok, [])
    with pytest.raises(ValueError, match="num_fewshot"):
        lm_eval_tasks(model, tok, "t", num_fewshot=-1)
    with pytest.raises(ValueError, match="limit"):
        lm_eval_tasks(model, tok, "t", limit=0)
    with pytest.raises(ValueError, match="does not exist"):
        lm_eval_tasks(model, tok, "t", include_path=tmp_path / "missing")
