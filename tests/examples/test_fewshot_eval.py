"""examples/fewshot_eval.py end to end on a tiny local model, task and texts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
