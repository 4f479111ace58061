"""hf-sparse command line: inspect, compress, demo."""

from __future__ import annotations

import json

import pytest

from hf_sparse import GreenformerConfig, sparsify
from hf_sparse.cli import main
from hf_sparse.demo import format_stages, run_demo


def test_inspect_table_and_json(gpt2, tmp_path, capsys):
    sparsify(gpt2.build(), GreenformerConfig(rank=4)).save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "transformer.h.0.attn.c_attn" in out and "whole model" in out
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 8 and data["totals"]["params_after"] < data["totals"]["params_before"]


def test_inspect_dense_model_says_so(gpt2, tmp_path, capsys):
    gpt2.build().save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 1
    assert "dense model" in capsys.readouterr().err


def test_compress_local_model(gpt2, tmp_path, capsys):
    gpt2.build().save_pretrained(tmp_path / "dense")
    code = main(["compress", str(tmp_path / "dense"), "--config", '{"method": "greenformer", "rank": 4}',
                 "--output", str(tmp_path / "out")])
    assert code == 0
    assert "quantization_config" in json.loads((tmp_path / "out" / "config.json").read_text())
    assert "rank 4" in capsys.readouterr().out


def test_compress_bad_config_fails_before_writing(gpt2, tmp_path, capsys):
    gpt2.build().save_pretrained(tmp_path / "dense")
    code = main(["compress", str(tmp_path / "dense"), "--config", '{"method": "greenformer", "rank": 0}',
                 "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "rank must be" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_inspect_missing_directory_is_a_clean_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    assert "error" in capsys.readouterr().err


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["compress"])
    assert info.value.code == 2


def test_demo_runs_end_to_end(tmp_path):
    stages = run_demo(tmp_path, pretrain_steps=30, finetune_steps=10)
    names = [s.name for s in stages]
    assert names[0] == "untrained" and "reloaded" in names[-1]
    assert stages[1].perplexity < stages[0].perplexity  # dense training learned something
    assert stages[2].params < stages[1].params and stages[2].flops_per_token < stages[1].flops_per_token
    assert stages[-1].perplexity == stages[-2].perplexity  # reload is exact
    assert "val perplexity" in format_stages(stages)
    assert (tmp_path / "model" / "config.json").exists()


def test_compress_sweep_solvers_and_budgets(model_with_texts, tmp_path, capsys):
    model_dir, calib, held_out = model_with_texts
    code = main(["compress", str(model_dir), "--config", '{"method": "greenformer"}', "--output", str(tmp_path / "s"),
                 "--calibration", str(calib), "--eval-text", str(held_out), "--max-length", "32",
                 "--sweep-solvers", "svd,svd-llm", "--sweep-ratios", "0.3,0.6"])
    assert code == 0
    rows = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [(r["solver"], r["param_ratio"]) for r in rows] == [
        ("dense", 1.0), ("svd", 0.3), ("svd", 0.6), ("svd-llm", 0.3), ("svd-llm", 0.6)]
    assert rows[1]["params"] < rows[2]["params"] < rows[0]["params"]
    assert all(r["perplexity"] > 1 for r in rows)
    assert "| svd-llm | 0.3 |" in capsys.readouterr().out


def test_compress_data_aware_saves_model_and_tokenizer(model_with_texts, tmp_path):
    model_dir, calib, held_out = model_with_texts
    config = '{"method": "greenformer", "solver": "svd-llm", "param_ratio": 0.5, "allocation": "stable_rank"}'
    assert main(["compress", str(model_dir), "--config", config, "--output", str(tmp_path / "c"),
                 "--calibration", str(calib), "--eval-text", str(held_out)]) == 0
    saved = json.loads((tmp_path / "c" / "config.json").read_text())["quantization_config"]
    assert saved["allocation_report"]["allocation"] == "stable_rank"
    assert (tmp_path / "c" / "tokenizer.json").exists()


def test_compress_data_aware_without_calibration_is_a_clean_error(model_with_texts, tmp_path, capsys):
    model_dir, _, _ = model_with_texts
    assert main(["compress", str(model_dir), "--config", '{"method": "greenformer", "solver": "asvd"}',
                 "--output", str(tmp_path / "x")]) == 2
    assert "--calibration" in capsys.readouterr().err
