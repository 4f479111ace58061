"""examples/run_glue.py end to end on a tiny local BERT and csv data, including a 2-process DDP run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_sparse import LED

from ..conftest import TINY_MODELS, VOCAB, word_tokenizer
from .scripts import load_example

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    return load_example("run_glue")


@pytest.fixture
def glue_data(tmp_path):
    """(model dir, train csv, dev csv): a tiny BERT with the word tokenizer, label = whether w2..w9 appears."""
    model_dir = tmp_path / "bert"
    TINY_MODELS["bert"].build().save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 64), ("dev", 16)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sentence", "label"])
            for _ in range(n):
                words = torch.randint(2, VOCAB, (8,), generator=gen).tolist()
                writer.writerow([" ".join(f"w{w}" for w in words), int(min(words) < 10)])
    return model_dir, tmp_path / "train.csv", tmp_path / "dev.csv"


def args_for(glue_data, out: Path, config: str, *extra: str) -> list[str]:
    model_dir, train, dev = glue_data
    return ["--model_name_or_path", str(model_dir), "--train_file", str(train), "--validation_file", str(dev),
            "--sparsity_config", config, "--output_dir", str(out), "--do_train", "--do_eval",
            "--per_device_train_batch_size", "8", "--max_steps", "8", "--learning_rate", "5e-3",
            "--use_cpu", "--report_to", "none", "--save_strategy", "no", "--seed", "0", "--max_seq_length", "16",
            "--disable_tqdm", "true", *extra]


def test_run_glue_greenformer_trains_reports_and_reloads(glue_data, tmp_path, capsys):
    out = tmp_path / "out"
    trainer = load_script().main(args_for(glue_data, out, '{"method": "greenformer", "rank": 4}'))
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["methods"] == ["greenformer"]
    assert report["params_after"] < report["params_before"]
    assert 0.0 <= report["metrics"]["eval_accuracy"] <= 1.0
    printed = capsys.readouterr().out
    assert "parameters:" in printed and "eval_accuracy" in printed
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert isinstance(reloaded.bert.encoder.layer[0].intermediate.dense, LED)
    batch = {"input_ids": torch.tensor([[2, 3, 4]])}
    trainer.model.eval()
    torch.testing.assert_close(reloaded(**batch).logits, trainer.model(**batch).logits)


def test_run_glue_config_file_and_list_of_methods(glue_data, tmp_path):
    config = tmp_path / "configs.json"
    config.write_text(json.dumps([{"method": "greenformer", "rank": 4, "target_modules": ["attention.self.query"]},
                                  {"method": "pixelfly", "density": 0.5, "block_size": 16,
                                   "target_modules": ["intermediate.dense"]}]))
    load_script().main(args_for(glue_data, tmp_path / "out", str(config)))
    report = json.loads((tmp_path / "out" / "sparsity_report.json").read_text())
    assert report["methods"] == ["greenformer", "pixelfly"]


def test_run_glue_rejects_bad_arguments(glue_data, tmp_path):
    script = load_script()
    with pytest.raises(ValueError, match="not a GLUE task"):
        script.main(["--model_name_or_path", "x", "--task_name", "sst3", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="csv"):
        script.main(["--model_name_or_path", "x", "--train_file", "a.txt", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="rank"):
        script.main(args_for(glue_data, tmp_path / "out", '{"method": "greenformer", "rank": -1}'))


def test_run_glue_dst_reports_active_parameters(glue_data, tmp_path):
    out = tmp_path / "out"
    load_script().main(args_for(glue_data, out, '{"method": "dst-ee", "sparsity": 0.8, "update_interval": 2}'))
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["params_after"] == report["summary"]["totals"]["params_after"] < report["params_before"]


def test_run_glue_maps_string_labels(glue_data, tmp_path):
    model_dir, train, dev = glue_data
    for path in (train, dev):
        path.write_text(path.read_text().replace(",1\n", ",yes\n").replace(",0\n", ",no\n"))
    trainer = load_script().main(args_for((model_dir, train, dev), tmp_path / "out", '{"method": "greenformer"}'))
    assert trainer.model.config.label2id == {"no": 0, "yes": 1}
    assert json.loads((tmp_path / "out" / "sparsity_report.json").read_text())["metrics"]["eval_accuracy"] >= 0


def test_local_glue_metric_values():
    metric = load_script().local_glue_metric
    pred, label = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    assert metric("sst2", pred, label) == {"accuracy": 0.75}
    assert metric("mrpc", pred, label) == {"accuracy": 0.75, "f1": pytest.approx(0.8)}
    assert metric("cola", pred, label)["matthews_correlation"] == pytest.approx(2 / np.sqrt(12))
    out = metric("stsb", np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.0, 0.3, 0.5, 1.0]))
    assert out["spearmanr"] == pytest.approx(0.8)
    assert out["pearson"] == pytest.approx(np.corrcoef([0.1, 0.4, 0.35, 0.8], [0.0, 0.3, 0.5, 1.0])[0, 1])


def test_run_glue_ddp_two_processes_identical_weights(glue_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(ROOT / "tests" / "examples" / "glue_ddp_worker.py"),
           *args_for(glue_data, out, '{"method": "greenformer", "rank": 4}', "--ddp_backend", "gloo")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    weights = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert any("u_weight" in k for k in weights[0])
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0, msg=key)
    initial = AutoModelForSequenceClassification.from_pretrained(glue_data[0]).state_dict()
    moved = initial["bert.embeddings.word_embeddings.weight"] - weights[0]["bert.embeddings.word_embeddings.weight"]
    assert moved.abs().max() > 0  # both ranks trained (not just equal at init)


def test_run_glue_push_to_hub_uploads_model_and_card(glue_data, tmp_path):
    from unittest import mock

    from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl

    uploads = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        uploads.append({"repo_id": repo_id, "files": sorted(p.name for p in folder.iterdir()),
                        "card": ModelCard.load(folder / "README.md"), "private": kwargs})
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/1", commit_message="m",
                          commit_description="", oid="1")

    with mock.patch.object(HfApi, "create_repo", autospec=True,
                           side_effect=lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}")), \
            mock.patch.object(HfApi, "upload_folder", autospec=True, side_effect=upload_folder):
        load_script().main(args_for(glue_data, tmp_path / "out", '{"method": "greenformer", "rank": 4}',
                                    "--push_to_hub", "--hub_model_id", "me/tiny-bert-gf"))
    assert len(uploads) == 1 and uploads[0]["repo_id"] == "me/tiny-bert-gf"
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(uploads[0]["files"])
    card = uploads[0]["card"]
    assert "hf-sparse" in card.data.tags and "greenformer" in card.data.tags
    assert card.data.base_model is None  # a local directory is not a Hub id
    assert "eval_accuracy" in card.text and "eval_runtime" not in card.text
