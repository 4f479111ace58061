"""hf-sparse command line: compress, inspect, eval, push, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_sparse import GreenformerConfig, PixelflyConfig, get_sparsity_config, sparsify
from hf_sparse.cli import main, plot_plan
from hf_sparse.demo import format_stages, run_demo
from hf_sparse.evaluation import fewshot_accuracy, load_jsonl_task, perplexity
from hf_sparse.registry import CONFIG_CLASSES

from .test_evaluation import FakeLMEval

FIXTURES = Path(__file__).parent / "fixtures"


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


# ------------------------------------------------------------------------------------------------ issue 7 verbs
@pytest.mark.parametrize("command", [[], ["compress"], ["inspect"], ["eval"], ["push"], ["demo"]])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-sparse " + " ".join(command))
    if command == ["compress"]:
        assert all(f"  {method}: " in out for method in CONFIG_CLASSES)  # every registered method, with its keys


@pytest.mark.parametrize("method", sorted(CONFIG_CLASSES))
def test_compress_any_registered_method(method, gpt2, tmp_path, capsys):
    gpt2.build().save_pretrained(tmp_path / "dense")
    assert main(["compress", str(tmp_path / "dense"), "--method", method, "--output", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert saved["method"] == method
    says_train = "acts during training" in capsys.readouterr().out
    assert says_train == (method in ("cuttlefish", "dst-ee"))


def test_compress_method_options_and_tokenizer(model_with_texts, tmp_path, capsys):
    model_dir, _, _ = model_with_texts
    assert main(["compress", str(model_dir), "--method", "pixelfly", "--option", "density=0.5", "block_size=8",
                 "--option", 'target_modules=["c_fc"]', "--output", str(tmp_path / "pf")]) == 0
    saved = json.loads((tmp_path / "pf" / "config.json").read_text())["quantization_config"]
    assert (saved["density"], saved["block_size"], saved["target_modules"]) == (0.5, 8, ["c_fc"])
    assert sorted(saved["plan"]) == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    assert (tmp_path / "pf" / "tokenizer.json").exists()  # the source's tokenizer travels with the model
    assert "PixelflyLinear" in capsys.readouterr().out


def test_compress_config_file_with_option_override(gpt2, tmp_path):
    gpt2.build().save_pretrained(tmp_path / "dense")
    (tmp_path / "cfg.json").write_text('{"method": "greenformer", "rank": 8, "solver": "snmf"}')
    assert main(["compress", str(tmp_path / "dense"), "--config", str(tmp_path / "cfg.json"), "--option", "rank=2",
                 "--method", "greenformer", "--output", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert (saved["rank"], saved["solver"]) == (2, "snmf")
    assert {spec["rank"] for spec in saved["plan"].values()} == {2}


@pytest.mark.parametrize(("extra", "message"), [
    (["--option", "rank"], "expected KEY=VALUE"),
    (["--option", "method=pixelfly"], "cannot be set with --option"),
    (["--method", "nope"], "invalid choice"),
])
def test_compress_bad_flags_are_argparse_errors(extra, message, gpt2, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["compress", str(tmp_path), "--output", str(tmp_path / "out"), *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    ([], "--method"),
    (["--method", "greenformer", "--option", "bogus=1"], "unknown field(s) ['bogus']"),
    (["--method", "pixelfly", "--option", "density=2"], "density must be in (0.0, 1.0)"),
    (["--method", "pixelfly", "--config", '{"method": "greenformer"}'], "contradicts --config"),
    (["--config", '[{"method": "greenformer", "target_modules": ["c_attn"]}, {"method": "pixelfly"}]',
      "--option", "rank=2"], "single-method config"),
])
def test_compress_config_errors_exit_2_before_writing(extra, message, gpt2, tmp_path, capsys):
    gpt2.build().save_pretrained(tmp_path / "dense")
    assert main(["compress", str(tmp_path / "dense"), "--output", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_inspect_plot_density_rank_and_layouts(gpt2, tmp_path, capsys):
    model = sparsify(gpt2.build(), [PixelflyConfig(density=0.5, block_size=8, target_modules=["c_fc", "mlp.c_proj"]),
                                    GreenformerConfig(rank=4, target_modules=["c_attn"])])
    model.save_pretrained(tmp_path / "m")
    assert main(["inspect", str(tmp_path / "m"), "--plot", str(tmp_path / "plot.png")]) == 0
    assert "plot saved to" in capsys.readouterr().out
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = plot_plan(get_sparsity_config(model).plan, tmp_path / "again.png")
    titles = [ax.get_title() for ax in fig.axes]
    # density of all 6 layers, rank of the 4 with a rank (LED rank 4, Pixelfly low-rank term 0), two distinct
    # butterfly layouts (c_fc 32->64 and c_proj 64->32), each shared by both blocks
    assert titles[:2] == ["per-layer density", "per-layer rank"] and len(fig.axes) == 4
    assert titles[2].startswith("transformer.h.0.mlp.c_fc (+1)") and "layout 8x4 blocks" in titles[2]
    assert len(fig.axes[0].patches) == 6 and len(fig.axes[1].patches) == 6
    layout = fig.axes[2].images[0].get_array()
    assert layout.shape == (8, 4) and layout.sum() == 16  # block density 1/2, as configured


def _compressed_dir(model_with_texts, tmp_path, tokenizer: bool = True):
    model_dir, _, held_out = model_with_texts
    out = tmp_path / "compressed"
    sparsify(AutoModelForCausalLM.from_pretrained(model_dir), GreenformerConfig(rank=4)).save_pretrained(out)
    if tokenizer:
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out, held_out


def test_eval_task_and_perplexity_match_the_library(model_with_texts, tmp_path, capsys):
    out, held_out = _compressed_dir(model_with_texts, tmp_path)
    task = FIXTURES / "fewshot_task.jsonl"
    assert main(["eval", str(out), "--task", str(task), "--shots", "0", "2", "--perplexity", str(held_out),
                 "--max-length", "16", "--json", "--output", str(tmp_path / "results.json")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    examples = load_jsonl_task(task)
    texts = [t for t in held_out.read_text().splitlines() if t.strip()]
    assert results == pytest.approx({
        "perplexity (eval.txt)": perplexity(model, tok, texts, 16),
        "accuracy (fewshot_task, 0-shot)": fewshot_accuracy(model, tok, examples, shots=0),
        "accuracy (fewshot_task, 2-shot)": fewshot_accuracy(model, tok, examples, shots=2)})
    assert main(["eval", str(out), "--task", str(task)]) == 0
    assert "accuracy (fewshot_task, 0-shot)" in capsys.readouterr().out.splitlines()[2]


def test_eval_user_errors_exit_2(model_with_texts, tmp_path, capsys, monkeypatch):
    out, held_out = _compressed_dir(model_with_texts, tmp_path, tokenizer=False)
    assert main(["eval", str(out), "--perplexity", str(held_out)]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert main(["eval", str(out)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # lm-eval not installed
    assert main(["eval", str(out), "--lm-eval-tasks", "hellaswag"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "hf-sparse[eval]"' in err and "Traceback" not in err


def test_push_uploads_saved_model_with_card(model_with_texts, tmp_path, capsys):
    out, _ = _compressed_dir(model_with_texts, tmp_path)
    (tmp_path / "eval.json").write_text('{"accuracy (fewshot_task, 0-shot)": 0.5}')
    uploads: list[dict] = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        uploads.append({"files": files, "card": ModelCard.load(Path(folder_path) / "README.md"), **kwargs})
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abc", commit_message="m",
                          commit_description="", oid="0123abc")

    create = mock.patch.object(HfApi, "create_repo", autospec=True,
                               side_effect=lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    with create as created, mock.patch.object(HfApi, "upload_folder", autospec=True, side_effect=upload_folder):
        assert main(["push", str(out), "someone/tiny-gf", "--private", "--base-model", "openai-community/gpt2",
                     "--dataset", "Salesforce/wikitext", "--eval-results", str(tmp_path / "eval.json"),
                     "--commit-message", "hello"]) == 0
    created.assert_called_once_with(mock.ANY, "someone/tiny-gf", private=True, exist_ok=True, repo_type="model")
    assert "commit: https://huggingface.co/someone/tiny-gf/commit/0123abc" in capsys.readouterr().out
    (upload,) = uploads
    assert upload["commit_message"] == "hello"
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(upload["files"])
    card = upload["card"]
    assert card.data.base_model == "openai-community/gpt2" and card.data.tags == ["hf-sparse", "greenformer"]
    assert card.data.eval_results[0].metric_type == "accuracy" and card.data.eval_results[0].metric_value == 0.5
    assert 'AutoTokenizer.from_pretrained("someone/tiny-gf")' in card.text


def test_push_refuses_dense_models_and_bad_repo_ids(model_with_texts, tmp_path, capsys):
    model_dir, _, _ = model_with_texts
    with mock.patch.object(HfApi, "create_repo", autospec=True) as create, \
            mock.patch.object(HfApi, "upload_folder", autospec=True) as upload:
        assert main(["push", str(model_dir), "someone/dense"]) == 2
        assert "dense model" in capsys.readouterr().err
        assert main(["push", str(model_dir), "not//valid"]) == 2
        assert "repo_id 'not//valid' is not a Hub model id" in capsys.readouterr().err
    assert create.call_count == 0 and upload.call_count == 0


def test_eval_lm_eval_tasks_through_the_adapter(model_with_texts, tmp_path, capsys, monkeypatch):
    out, _ = _compressed_dir(model_with_texts, tmp_path)
    fake = FakeLMEval().install(monkeypatch)
    assert main(["eval", str(out), "--lm-eval-tasks", "my_task", "--lm-eval-include", str(tmp_path),
                 "--lm-eval-limit", "8", "--shots", "0", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["acc (my_task, 0-shot)"] == 0.25 and results["acc (my_task, 2-shot)"] == 0.27
    assert [c["num_fewshot"] for c in fake.calls] == [0, 2] and fake.calls[0]["limit"] == 8
    assert fake.managers[0].include_path == [str(tmp_path)]
    assert get_sparsity_config(fake.lms[0].model) is not None  # the compressed model, loaded from the directory
