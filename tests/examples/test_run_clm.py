"""examples/run_clm.py end to end on a tiny local GPT-2 and text files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from hf_sparse import PixelflyLinear

from ..conftest import word_texts
from .scripts import load_example

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    return load_example("run_clm")


def base_args(model_dir: Path, train: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_file", str(train), "--output_dir", str(out),
            "--do_train", "--do_eval", "--block_size", "16", "--per_device_train_batch_size", "4",
            "--max_steps", "6", "--learning_rate", "5e-3", "--use_cpu", "--report_to", "none",
            "--save_strategy", "no", "--seed", "0", "--disable_tqdm", "true", *extra]


def test_run_clm_pixelfly_from_scratch(model_with_texts, tmp_path):
    model_dir, calib, held_out = model_with_texts
    train = tmp_path / "train.txt"
    train.write_text("\n".join(word_texts(40, seed=3)))
    out = tmp_path / "out"
    trainer = load_script().main(base_args(
        model_dir, train, out, "--validation_file", str(held_out), "--from_scratch",
        "--sparsity_config", '{"method": "pixelfly", "density": 0.5, "block_size": 16}'))
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["methods"] == ["pixelfly"]
    assert report["params_after"] < report["params_before"]
    metrics = report["metrics"]
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert trainer.state.global_step == 6
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(reloaded.transformer.h[0].mlp.c_fc, PixelflyLinear)


def test_run_clm_splits_validation_and_groups_blocks(model_with_texts, tmp_path):
    model_dir, _, _ = model_with_texts
    train = tmp_path / "train.txt"
    train.write_text("\n".join(word_texts(60, seed=4)))
    script = load_script()
    trainer = script.main(base_args(model_dir, train, tmp_path / "out", "--max_steps", "2"))
    assert all(len(row["input_ids"]) == 16 for row in trainer.train_dataset)
    assert len(trainer.eval_dataset) > 0
    blocks = script.group_texts({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8]]}, 3)
    assert blocks == {"input_ids": [[1, 2, 3], [4, 5, 6]], "labels": [[1, 2, 3], [4, 5, 6]]}


def test_run_clm_rejects_a_missing_text_column(model_with_texts, tmp_path):
    model_dir, _, held_out = model_with_texts
    with pytest.raises(ValueError, match="--text_column 'body' is not in the data"):
        load_script().main(base_args(model_dir, held_out, tmp_path / "out", "--text_column", "body"))


def test_run_clm_rejects_bad_arguments(tmp_path):
    script = load_script()
    with pytest.raises(ValueError, match="--dataset_name"):
        script.main(["--model_name_or_path", "x", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="block_size"):
        script.main(["--model_name_or_path", "x", "--train_file", "a.txt", "--block_size", "1",
                     "--output_dir", str(tmp_path)])
