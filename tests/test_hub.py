"""Model cards and Hub upload, offline: ``HfApi`` calls are patched (with their real signatures) and the folder
handed to ``upload_folder`` is checked file by file."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import CommitInfo, EvalResult, HfApi, ModelCard, RepoUrl
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_sparse import GreenformerConfig, PixelflyConfig, SparsityConfig, get_sparsity_config, sparsify, summary
from hf_sparse.hub import create_model_card, push_to_hub
from hf_sparse.registry import CONFIG_CLASSES

from .conftest import TINY_MODELS, word_tokenizer

WARNING = "needs the `hf-sparse` plugin to load"


def _compressed_gpt2(gpt2):
    return sparsify(gpt2.build(), [PixelflyConfig(density=0.5, block_size=8, target_modules=["c_fc", "mlp.c_proj"]),
                                   GreenformerConfig(rank=4, target_modules=["c_attn"])])


def test_card_header_and_body(gpt2):
    model = _compressed_gpt2(gpt2)
    card = create_model_card(model, base_model="openai-community/gpt2", dataset="Salesforce/wikitext",
                             eval_results={"perplexity": 12.5, "accuracy (my_task, 4-shot)": 0.625},
                             repo_id="someone/tiny-gpt2-sparse", tokenizer=word_tokenizer())
    data = ModelCard(str(card)).data  # parsed back from the rendered text
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.tags[:3] == ["hf-sparse", "pixelfly", "greenformer"]
    assert data.base_model == "openai-community/gpt2" and data.datasets == ["Salesforce/wikitext"]
    assert data.model_name == "tiny-gpt2-sparse"
    assert [(r.metric_type, r.metric_value, r.metric_name, r.dataset_type, r.task_type) for r in data.eval_results] == [
        ("perplexity", 12.5, "perplexity", "Salesforce/wikitext", "text-generation"),
        ("accuracy", 0.625, "accuracy (my_task, 4-shot)", "Salesforce/wikitext", "text-generation")]

    body = card.text
    assert WARNING in body and "randomly initialized" in body
    assert "pip install \"hf-sparse>=0.1.0\"" in body and "import hf_sparse" in body
    assert 'AutoModelForCausalLM.from_pretrained("someone/tiny-gpt2-sparse")' in body
    assert 'AutoTokenizer.from_pretrained("someone/tiny-gpt2-sparse")' in body
    report = summary(model)
    totals = (f"| whole model, parameters | {report.total_params_before:,} | {report.total_params_after:,} | "
              f"{report.param_ratio:.1%} |")
    assert totals in body
    assert f"| {report.flops_before:,} | {report.flops_after:,} |" in body
    for row in report.rows:
        assert (f"| `{row.name}` | {row.kind} | {row.shape} | {row.params_before:,} | {row.params_after:,} | "
                f"{row.flops_before:,} | {row.flops_after:,} | {row.detail} |") in body
    assert "| `density` | `0.5` |" in body and "| `rank` | `4` |" in body and "| `solver` | `\"svd\"` |" in body
    assert '"plan"' not in body and "butterfly_size\": " not in body  # settings only, not the plan
    assert "| accuracy (my_task, 4-shot) | 0.625 | Salesforce/wikitext |" in body


def test_card_without_dataset_keeps_results_in_the_body_only(gpt2):
    card = create_model_card(_compressed_gpt2(gpt2), eval_results={"perplexity": 3.25})
    assert card.data.eval_results is None and "model-index" not in str(card).split("---")[1]
    assert "| perplexity | 3.25 |" in card.text
    assert 'from_pretrained("<repo_id>")' in card.text and "AutoTokenizer" not in card.text
    assert card.data.tags == ["hf-sparse", "pixelfly", "greenformer"]


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_card_takes_eval_result_objects_and_other_heads(name):
    model = sparsify(TINY_MODELS[name].build(), GreenformerConfig(rank=4))
    result = EvalResult(task_type="text-classification", dataset_type="nyu-mll/glue", dataset_name="GLUE SST-2",
                        metric_type="accuracy", metric_value=0.91)
    card = create_model_card(model, eval_results=[result], model_name="tiny-bert-lowrank")
    expected = {"bert": "AutoModelForSequenceClassification", "t5": "AutoModelForSeq2SeqLM"}[name]
    assert f"model = {expected}.from_pretrained" in card.text
    assert ModelCard(str(card)).data.eval_results[0].metric_value == 0.91
    assert "| accuracy | 0.91 | GLUE SST-2 |" in card.text


def test_card_errors(gpt2):
    with pytest.raises(ValueError, match="carries no hf-sparse config.*sparsify"):
        create_model_card(gpt2.build())
    model = _compressed_gpt2(gpt2)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        create_model_card("gpt2")
    with pytest.raises(TypeError, match="eval_results"):
        create_model_card(model, eval_results=[0.5])
    with pytest.raises(TypeError, match=r"eval_results\['ppl'\] must be a number"):
        create_model_card(model, eval_results={"ppl": "low"})
    with pytest.raises(ValueError, match="base_model 'not a/valid//id' is not a Hub model id"):
        create_model_card(model, base_model="not a/valid//id")
    with pytest.raises(ValueError, match="dataset '/data/train.csv' is not a Hub dataset id"):
        create_model_card(model, dataset=["Salesforce/wikitext", "/data/train.csv"])
    with pytest.raises(TypeError, match="dataset"):
        create_model_card(model, dataset=["ok", 3])


def _fake_hub(uploads: list[dict]):
    """Patches of ``HfApi.create_repo`` / ``upload_folder`` (autospec: calls must fit the real signatures) that
    record what the upload folder holds while it exists."""

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        files = {p.name: p for p in folder.iterdir()}
        with safe_open(str(files["model.safetensors"]), framework="pt") as fh:
            keys = set(fh.keys())
        uploads.append({"repo_id": repo_id, "files": sorted(files), "keys": keys, "kwargs": kwargs,
                        "config": json.loads(files["config.json"].read_text()),
                        "card": ModelCard.load(files["README.md"]),
                        "reloaded": AutoModelForCausalLM.from_pretrained(folder),
                        "tokenizer": AutoTokenizer.from_pretrained(folder) if "tokenizer.json" in files else None})
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123", commit_message="msg",
                          commit_description="", oid="abc123")

    return (mock.patch.object(HfApi, "create_repo", autospec=True, side_effect=create_repo),
            mock.patch.object(HfApi, "upload_folder", autospec=True, side_effect=upload_folder))


def test_push_to_hub_uploads_model_tokenizer_and_card(gpt2):
    model = _compressed_gpt2(gpt2)
    tokenizer = word_tokenizer()
    uploads: list[dict] = []
    patch_create, patch_upload = _fake_hub(uploads)
    with patch_create as create, patch_upload:
        commit = push_to_hub(model, "someone/tiny", tokenizer=tokenizer, base_model="openai-community/gpt2",
                             private=True, commit_message="first upload", eval_results={"perplexity": 9.5})
    create.assert_called_once_with(mock.ANY, "someone/tiny", private=True, exist_ok=True, repo_type="model")
    assert commit.commit_url == "https://huggingface.co/someone/tiny/commit/abc123"
    (upload,) = uploads
    assert upload["repo_id"] == "someone/tiny" and upload["kwargs"]["commit_message"] == "first upload"
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json"} <= set(
        upload["files"])
    quant = upload["config"]["quantization_config"]
    assert quant["quant_method"] == "hf_sparse" and [c["method"] for c in quant["configs"]] == ["pixelfly",
                                                                                               "greenformer"]
    assert "transformer.h.0.attn.c_attn" in quant["configs"][1]["plan"]
    assert any(k.startswith("transformer.h.0.mlp.c_fc.butterfly_weight") for k in upload["keys"])
    card = upload["card"]
    assert card.data.base_model == "openai-community/gpt2" and "hf-sparse" in card.data.tags
    assert WARNING in card.text and 'from_pretrained("someone/tiny")' in card.text
    assert f"{summary(model).total_params_after:,}" in card.text and "| perplexity | 9.5 |" in card.text
    ids = torch.randint(2, 64, (1, 10))
    with torch.no_grad():  # the uploaded folder rebuilds the same model
        torch.testing.assert_close(upload["reloaded"](input_ids=ids).logits, model(input_ids=ids).logits)
    assert upload["tokenizer"]("w5 w6")["input_ids"] == tokenizer("w5 w6")["input_ids"]


def test_push_to_hub_checks_everything_before_uploading(gpt2):
    uploads: list[dict] = []
    patch_create, patch_upload = _fake_hub(uploads)
    model = _compressed_gpt2(gpt2)
    with patch_create as create, patch_upload as upload:
        with pytest.raises(ValueError, match="repo_id 'bad id with spaces' is not a Hub model id"):
            push_to_hub(model, "bad id with spaces")
        with pytest.raises(ValueError, match="no hf-sparse config"):
            push_to_hub(gpt2.build(), "someone/dense")
        with pytest.raises(TypeError, match="tokenizer must be"):
            push_to_hub(model, "someone/tiny", tokenizer="gpt2")
        with pytest.raises(TypeError, match="save_pretrained"):
            push_to_hub(torch.nn.Linear(2, 2), "someone/tiny")
        assert create.call_count == 0 and upload.call_count == 0


@pytest.mark.parametrize("method", sorted(CONFIG_CLASSES))
def test_card_for_every_registered_method(method, gpt2):
    model = sparsify(gpt2.build(), SparsityConfig.from_dict({"method": method}))
    card = create_model_card(model, base_model="openai-community/gpt2")
    assert ModelCard(str(card)).data.tags == ["hf-sparse", method]
    assert f"### {method}\n" in card.text and WARNING in card.text
    plan = get_sparsity_config(model).plan
    assert f"{len(plan)} module(s) converted" in card.text
    assert ("<summary>Per-module summary" in card.text) == bool(plan)  # empty plan: structure set in training
