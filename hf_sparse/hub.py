"""Model cards (``create_model_card``) and Hub upload (``push_to_hub``) of hf-sparse models.

The card's YAML header comes from ``huggingface_hub.ModelCardData``; its body is rendered from the Jinja template
``model_card.md.jinja`` shipped in ``hf_sparse.model_cards``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from huggingface_hub import CommitInfo, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from torch import nn
from transformers.models.auto import modeling_auto

from .config import SparsityConfig, check_type
from .inject import get_sparsity_config
from .summary import SparsitySummary, summary

TEMPLATE = "model_card.md.jinja"
#: ``library_name`` of the card header. The repository is a transformers checkpoint (``config.json`` +
#: safetensors) loaded with ``AutoModel*.from_pretrained``, so it belongs to the Hub's transformers library
#: (filters, download counts on ``config.json``); the ``hf-sparse`` tag and the card's warning name the plugin.
LIBRARY_NAME = "transformers"
TAG = "hf-sparse"
#: (auto class, name mapping in ``transformers.models.auto.modeling_auto``, pipeline tag), most specific first
AUTO_CLASSES = (
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "text-generation"),
    ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", None),
    ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "text-classification"),
    ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "token-classification"),
    ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES", "question-answering"),
    ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "fill-mask"),
    ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "image-classification"),
    ("AutoModel", "MODEL_MAPPING_NAMES", "feature-extraction"),
)
#: config fields left out of the card's settings tables (the plan is summarized per module instead)
HIDDEN_FIELDS = ("quant_method", "method", "plan")
MAX_VALUE_CHARS = 120


def _template() -> str:
    return resources.files("hf_sparse.model_cards").joinpath(TEMPLATE).read_text(encoding="utf-8")


def auto_class_and_task(model: nn.Module) -> tuple[str, str | None]:
    """(name of the transformers auto class that loads ``model``, its Hub pipeline tag or None).

    Falls back to the model's own class name (importable from ``transformers``) when no auto class maps it.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    name = type(model).__name__
    for auto_class, mapping_name, task in AUTO_CLASSES:
        target = getattr(modeling_auto, mapping_name, {}).get(model_type)
        if name == target or (isinstance(target, (tuple, list)) and name in target):
            return auto_class, task
    return name, None


def check_hub_id(field: str, value: str, kind: str) -> str:
    """``value`` if it is a valid Hub id; a ``ValueError`` naming ``field`` otherwise (local paths are not)."""
    try:
        validate_repo_id(value)
    except HFValidationError as err:
        raise ValueError(f"{field} {value!r} is not a Hub {kind} id such as 'user/name' (the card header links it on "
                         f"the Hub; leave it out for local files): {err}") from None
    return value


def _names(field: str, value: str | Sequence[str] | None, kind: str | None = None) -> list[str]:
    """None, one string or a list of strings as a list (checked as Hub ids of ``kind`` when given)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"{field} must be None, a string or a list of strings, got {value!r}")
    return [check_hub_id(field, v, kind) for v in value] if kind else list(value)


def _metric_type(name: str) -> str:
    """``"accuracy (my_task, 4-shot)"`` -> ``"accuracy"``: the name up to `` (``, as a lowercase identifier."""
    return re.sub(r"[^0-9a-z]+", "_", name.split(" (")[0].strip().lower()).strip("_") or "metric"


def _eval_results(eval_results: Mapping[str, float] | Sequence[EvalResult] | None, datasets: list[str],
                  task: str | None) -> tuple[list[EvalResult], list[dict[str, str]]]:
    """(results for the model-index header, rows of the card's evaluation table)."""
    if eval_results is None:
        return [], []
    if isinstance(eval_results, Mapping):
        rows, results = [], []
        for name, value in eval_results.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"eval_results keys must be metric names (non-empty strings), got {name!r}")
            check_type(f"eval_results[{name!r}]", value, (int, float), "a number")
            rows.append({"name": name, "value": _number(value), "dataset": datasets[0] if datasets else ""})
            if datasets:  # the Hub's model-index needs a dataset for every result
                results.append(EvalResult(task_type=task or "other", dataset_type=datasets[0],
                                          dataset_name=datasets[0], metric_type=_metric_type(name),
                                          metric_value=float(value), metric_name=name))
        return results, rows
    if isinstance(eval_results, (list, tuple)) and all(isinstance(r, EvalResult) for r in eval_results):
        rows = [{"name": r.metric_name or r.metric_type, "value": _number(r.metric_value),
                 "dataset": r.dataset_name} for r in eval_results]
        return list(eval_results), rows
    raise TypeError("eval_results must be None, a mapping of metric name -> number, or a list of "
                    f"huggingface_hub.EvalResult, got {type(eval_results).__name__}")


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value) or abs(value) >= 1e6 or (value != 0 and abs(value) < 1e-3):
        return f"{value:.6g}"
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _setting(value: Any) -> str:
    text = json.dumps(value, sort_keys=False)
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + f"... ({len(text)} chars)"
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def _description(config: SparsityConfig) -> str:
    """First sentence of the config class's docstring, with reST literals turned into Markdown ones."""
    doc = (type(config).__doc__ or "").strip().split("\n\n")[0]
    text = re.sub(r"``([^`]+)``", r"`\1`", " ".join(doc.split()))
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)  # reST roles such as :class:`PixelflyLinear`
    return text or f"hf-sparse method `{config.method}`."


def _ratio(after: int, before: int) -> str:
    return f"{after / before:.1%}" if before else "-"


def _totals(report: SparsitySummary) -> dict[str, str]:
    return {
        "params_before": f"{report.total_params_before:,}", "params_after": f"{report.total_params_after:,}",
        "param_ratio": _ratio(report.total_params_after, report.total_params_before),
        "converted_params_before": f"{report.converted_params_before:,}",
        "converted_params_after": f"{report.converted_params_after:,}",
        "converted_ratio": _ratio(report.converted_params_after, report.converted_params_before),
        "flops_before": f"{report.flops_before:,}", "flops_after": f"{report.flops_after:,}",
        "flops_ratio": _ratio(report.flops_after, report.flops_before),
    }


def create_model_card(model: nn.Module, base_model: str | None = None, dataset: str | Sequence[str] | None = None,
                      eval_results: Mapping[str, float] | Sequence[EvalResult] | None = None, *,
                      repo_id: str | None = None, tokenizer: Any = None, model_name: str | None = None,
                      license: str | None = None, language: str | Sequence[str] | None = None,
                      tags: Sequence[str] | None = None, pipeline_tag: str | None = None,
                      library_name: str = LIBRARY_NAME) -> ModelCard:
    """Model card of a compressed model: YAML header plus a body rendered from ``model_cards/model_card.md.jinja``.

    Header: ``library_name`` (``"transformers"``), tags ``hf-sparse`` + the method names, ``base_model``,
    ``datasets``, ``pipeline_tag`` (inferred from the model class) and, with ``eval_results``, a ``model-index``.
    Body: a warning that loading needs ``import hf_sparse``, the usage snippet, each method's settings (not the
    plan), parameter/FLOP totals and the per-module summary of ``hf_sparse.summary``, and the evaluation table.

    Args:
        model: a model converted by ``sparsify`` or loaded from a compressed checkpoint.
        base_model: Hub id of the dense model it was compressed from.
        dataset: Hub id(s) of the data it was calibrated / fine-tuned / evaluated on.
        eval_results: metric name -> value (``{"perplexity": 12.3, "accuracy (my_task, 4-shot)": 0.61}``; the
            header's metric type is the name up to `` (``; results enter ``model-index`` only when ``dataset`` is
            given, the body table always), or a list of ``huggingface_hub.EvalResult`` for full control.
        repo_id: Hub id used in the usage snippet (``push_to_hub`` passes it).
        tokenizer: when given, the snippet also loads the tokenizer.
        model_name: title and ``model-index`` name (default: the repo name, else the base model's + "-hf-sparse").

    Raises ``ValueError`` when ``model`` carries no hf-sparse config, ``TypeError`` / ``ValueError`` for
    malformed arguments.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"create_model_card expects a torch.nn.Module, got {type(model).__name__}")
    config = get_sparsity_config(model)
    if config is None:
        raise ValueError(f"{type(model).__name__} carries no hf-sparse config: compress it first with "
                         "hf_sparse.sparsify(model, config), or load a compressed checkpoint with "
                         "AutoModel*.from_pretrained after `import hf_sparse`")
    if base_model is not None:
        check_type("base_model", base_model, str, "None or a Hub model id")
        check_hub_id("base_model", base_model, "model")
    if repo_id is not None:
        check_type("repo_id", repo_id, str, "None or a Hub repo id")
        check_hub_id("repo_id", repo_id, "model")
    datasets = _names("dataset", dataset, "dataset")
    extra_tags = _names("tags", tags)
    for name, value in (("model_name", model_name), ("license", license), ("pipeline_tag", pipeline_tag),
                        ("library_name", library_name)):
        if value is not None:
            check_type(name, value, str, "None or a string")
    auto_class, inferred_task = auto_class_and_task(model)
    task = pipeline_tag or inferred_task
    title = model_name or (repo_id.split("/")[-1] if repo_id else None) or (
        f"{base_model.split('/')[-1]}-hf-sparse" if base_model else f"{type(model).__name__}-hf-sparse")
    results, eval_rows = _eval_results(eval_results, datasets, task)

    methods = [cfg.method for cfg in config.configs]
    card_data = ModelCardData(
        library_name=library_name, base_model=base_model, datasets=datasets or None, license=license,
        language=language, pipeline_tag=task, tags=list(dict.fromkeys([TAG, *methods, *extra_tags])),
        model_name=title if results else None, eval_results=results or None)

    import hf_sparse  # the package version, imported late: hf_sparse/__init__ imports this module

    report = summary(model)
    method_entries = []
    for cfg in config.configs:
        settings = [(key, _setting(value)) for key, value in cfg.to_dict().items() if key not in HIDDEN_FIELDS]
        method_entries.append({"name": cfg.method, "description": _description(cfg), "modules": len(cfg.plan),
                               "settings": settings})
    rows = [{"name": r.name, "kind": r.kind, "shape": r.shape, "params_before": f"{r.params_before:,}",
             "params_after": f"{r.params_after:,}", "flops_before": f"{r.flops_before:,}",
             "flops_after": f"{r.flops_after:,}", "detail": r.detail.replace("|", "\\|")} for r in report.rows]
    return ModelCard.from_template(
        card_data, template_str=_template(), title=title, method_names=", ".join(methods),
        hf_sparse_version=hf_sparse.__version__, dataset_list=datasets, repo_id=repo_id or "<repo_id>",
        auto_class=auto_class, has_tokenizer=tokenizer is not None, methods=method_entries, rows=rows,
        totals=_totals(report), eval_rows=eval_rows, eval_has_dataset=any(r["dataset"] for r in eval_rows))


def push_to_hub(model: nn.Module, repo_id: str, tokenizer: Any = None, base_model: str | None = None,
                dataset: str | Sequence[str] | None = None,
                eval_results: Mapping[str, float] | Sequence[EvalResult] | None = None, *, private: bool | None = None,
                commit_message: str = "Upload model compressed with hf-sparse", commit_description: str | None = None,
                token: str | None = None, create_pr: bool = False, **card_kwargs: Any) -> CommitInfo:
    """Save ``model`` (+ ``tokenizer``) and its model card (``README.md``, see :func:`create_model_card`) into a
    temporary folder and upload it: ``HfApi.create_repo(repo_id, private=..., exist_ok=True)`` then
    ``HfApi.upload_folder``. Returns the ``CommitInfo`` (``.commit_url``; ``.pr_url`` with ``create_pr``).

    ``card_kwargs`` go to :func:`create_model_card` (``model_name``, ``license``, ``language``, ``tags``, ...).
    Arguments, the model's config and the card are checked before anything is written or uploaded.
    """
    check_type("repo_id", repo_id, str, "a Hub repo id such as 'user/model-name'")
    check_hub_id("repo_id", repo_id, "model")
    if not callable(getattr(model, "save_pretrained", None)):
        raise TypeError(f"push_to_hub needs a transformers model (with save_pretrained), got {type(model).__name__}")
    if tokenizer is not None and not callable(getattr(tokenizer, "save_pretrained", None)):
        raise TypeError(f"tokenizer must be None or a transformers tokenizer/processor (with save_pretrained), "
                        f"got {type(tokenizer).__name__}")
    check_type("commit_message", commit_message, str, "a string")
    if private is not None:
        check_type("private", private, bool, "None, True or False")
    card = create_model_card(model, base_model, dataset, eval_results, repo_id=repo_id, tokenizer=tokenizer,
                             **card_kwargs)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="hf-sparse-push-") as folder:
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        card.save(os.path.join(folder, "README.md"))
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(repo_id=repo.repo_id, folder_path=folder, repo_type="model",
                                 commit_message=commit_message, commit_description=commit_description,
                                 create_pr=create_pr)
