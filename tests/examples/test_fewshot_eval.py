"""examples/fewshot_eval.py end to end on a tiny local model, task and texts (lm-eval through a stand-in)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from ..test_evaluation import FakeLMEval

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("fewshot_eval", ROOT / "examples" / "fewshot_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fewshot_eval_table(model_with_texts, tmp_path):
    model_dir, calib, held_out = model_with_texts
    rows = _load_script().main([
        "--model_name_or_path", str(model_dir), "--task", str(ROOT / "tests" / "fixtures" / "fewshot_task.jsonl"),
        "--shots", "0", "2", "--solvers", "svd", "svd-llm", "--param_ratios", "0.4",
        "--calibration_file", str(calib), "--eval_text", str(held_out),
        "--output", str(tmp_path / "table.md")])
    assert [(r["solver"], r["param_ratio"]) for r in rows] == [("dense", 1.0), ("svd", 0.4), ("svd-llm", 0.4)]
    assert rows[1]["params"] < rows[0]["params"]
    assert all(0 <= r["acc@0"] <= 1 and 0 <= r["acc@2"] <= 1 and r["perplexity"] > 1 for r in rows)
    assert "| svd-llm | uniform | 0.4 |" in (tmp_path / "table.md").read_text()
    assert json.loads((tmp_path / "table.json").read_text()) == rows


def test_fewshot_eval_runs_lm_eval_tasks_on_each_compressed_model(model_with_texts, tmp_path, monkeypatch):
    model_dir, _, _ = model_with_texts
    fake = FakeLMEval().install(monkeypatch)
    (tmp_path / "tasks").mkdir()
    rows = _load_script().main([
        "--model_name_or_path", str(model_dir), "--lm-eval-tasks", "my_task", "--lm-eval-include",
        str(tmp_path / "tasks"), "--lm_eval_limit", "4", "--shots", "0", "1", "--solvers", "svd",
        "--param_ratios", "0.3", "0.6", "--output", str(tmp_path / "table.md")])
    # dense + two budgets, each evaluated at 0 and 1 shots on the model in memory
    assert [lm.model.num_parameters() for lm in fake.lms[::2]] == [r["params"] for r in rows]
    assert rows[0]["params"] > rows[2]["params"] > rows[1]["params"]
    assert [c["num_fewshot"] for c in fake.calls] == [0, 1] * 3 and {c["limit"] for c in fake.calls} == {4}
    assert fake.managers[0].include_path == [str(tmp_path / "tasks")]
    assert all(r["my_task:acc@0"] == 0.25 and r["my_task:acc@1"] == 0.26 for r in rows)
    table = (tmp_path / "table.md").read_text()
    assert "| my_task acc 0-shot | my_task loglik (strict) 0-shot | my_task acc 1-shot |" in table
    assert "acc_stderr" not in table  # standard errors stay in the rows, out of the table
    assert len({r["my_task:loglik (strict)@0"] for r in rows}) == 3  # scored with each compressed model
    assert "| svd | uniform | 0.3 |" in table


def test_fewshot_eval_without_lm_eval_is_a_clean_error(model_with_texts, monkeypatch, capsys):
    model_dir, _, _ = model_with_texts
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(SystemExit) as info:
        _load_script().main(["--model_name_or_path", str(model_dir), "--lm_eval_tasks", "hellaswag"])
    assert info.value.code == 2 and 'pip install "hf-sparse[eval]"' in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        _load_script().main(["--model_name_or_path", str(model_dir)])
    assert info.value.code == 2 and "--task" in capsys.readouterr().err
