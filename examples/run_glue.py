"""Fine-tune a sequence classifier on a GLUE task (or local csv/json files) with any hf-sparse config.

    python examples/run_glue.py --model_name_or_path bert-base-uncased --task_name sst2 \\
        --sparsity_config '{"method": "greenformer", "rank": 0.25}' --output_dir out/sst2 \\
        --do_train --do_eval --num_train_epochs 3

    # local data (columns: one or two text columns + "label"), a list of methods, several processes:
    accelerate launch examples/run_glue.py --model_name_or_path bert-base-uncased \\
        --train_file train.csv --validation_file dev.csv --sparsity_config configs.json --output_dir out

Training runs in ``hf_sparse.SparseTrainer``, so Cuttlefish and DST-EE schedules run as configured.
Prints and saves (``output_dir/sparsity_report.json``) the parameter count before/after and the eval
metrics; ``--push_to_hub --hub_model_id user/repo`` uploads the model with a generated model card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    TrainingArguments,
)

import hf_sparse  # noqa: F401  (registers the hf_sparse quantization method)
from hf_sparse import SparseTrainer
from hf_sparse.training.scripts import SparsityArguments, compress, finish, parse_script_args, take_push_to_hub

logger = logging.getLogger(__name__)

TASK_TO_KEYS = {
    "cola": ("sentence", None), "mnli": ("premise", "hypothesis"), "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"), "qqp": ("question1", "question2"), "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None), "stsb": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "pretrained model name or local directory"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "default: model_name_or_path"})
    from_scratch: bool = field(default=False, metadata={"help": "random init from the model's config"})


@dataclass
class DataArguments:
    task_name: str | None = field(default=None, metadata={"help": f"one of {sorted(TASK_TO_KEYS)}"})
    train_file: str | None = field(default=None, metadata={"help": "local csv/json training file"})
    validation_file: str | None = field(default=None, metadata={"help": "local csv/json validation file"})
    max_seq_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self) -> None:
        if self.task_name is not None:
            self.task_name = self.task_name.lower()
            if self.task_name not in TASK_TO_KEYS:
                raise ValueError(f"--task_name {self.task_name!r} is not a GLUE task; use one of "
                                 f"{sorted(TASK_TO_KEYS)} or give --train_file/--validation_file")
        elif self.train_file is None:
            raise ValueError("give --task_name (GLUE, downloaded with datasets) or --train_file (local csv/json)")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is not None and not path.endswith((".csv", ".json", ".jsonl")):
                raise ValueError(f"--{name} must be a .csv, .json or .jsonl file, got {path!r}")


# ------------------------------------------------------------------------------------------------ metrics
def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x))
    for value in np.unique(x):  # average ranks of ties
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _f1(pred: np.ndarray, label: np.ndarray) -> float:
    tp = float(((pred == 1) & (label == 1)).sum())
    fp, fn = float(((pred == 1) & (label == 0)).sum()), float(((pred == 0) & (label == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _matthews(pred: np.ndarray, label: np.ndarray) -> float:
    tp, tn = float(((pred == 1) & (label == 1)).sum()), float(((pred == 0) & (label == 0)).sum())
    fp, fn = float(((pred == 1) & (label == 0)).sum()), float(((pred == 0) & (label == 1)).sum())
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


def local_glue_metric(task: str | None, pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """The GLUE metric of ``task`` computed locally (used when ``evaluate`` cannot fetch its script)."""
    if task == "stsb" or pred.dtype.kind == "f":
        return {"pearson": _pearson(pred, label), "spearmanr": _pearson(_ranks(pred), _ranks(label))}
    if task == "cola":
        return {"matthews_correlation": _matthews(pred, label)}
    out = {"accuracy": float((pred == label).mean())}
    if task in ("mrpc", "qqp"):
        out["f1"] = _f1(pred, label)
    return out


def metric_fn(task: str | None, regression: bool):
    glue = None
    if task is not None:
        try:
            import evaluate

            glue = evaluate.load("glue", task)
        except Exception as err:  # offline or no metric script: the same numbers computed locally
            logger.warning("evaluate.load('glue', %r) failed (%s); using the local GLUE metric", task, err)

    def compute(p: EvalPrediction) -> dict[str, float]:
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        pred = np.squeeze(logits) if regression else np.argmax(logits, axis=1)
        if glue is not None:
            return {k: float(v) for k, v in glue.compute(predictions=pred, references=p.label_ids).items()}
        return local_glue_metric(task, pred, p.label_ids)

    return compute


# ------------------------------------------------------------------------------------------------ data
def load_data(data_args: DataArguments):
    if data_args.train_file is not None:
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        kind = "csv" if data_args.train_file.endswith(".csv") else "json"
        return load_dataset(kind, data_files=files)
    return load_dataset("nyu-mll/glue", data_args.task_name)


def text_keys(data_args: DataArguments, columns: list[str]) -> tuple[str, str | None]:
    if data_args.task_name is not None:
        return TASK_TO_KEYS[data_args.task_name]
    texts = [c for c in columns if c not in ("label", "idx")]
    if "sentence1" in texts and "sentence2" in texts:
        return "sentence1", "sentence2"
    if not texts:
        raise ValueError(f"the data has no text column besides 'label' (columns: {columns})")
    return texts[0], (texts[1] if len(texts) > 1 else None)


def main(argv: list[str] | None = None):
    model_args, data_args, sparsity_args, training_args = parse_script_args(
        (ModelArguments, DataArguments, SparsityArguments, TrainingArguments), argv)

    raw = load_data(data_args)
    label_feature = raw["train"].features["label"]
    regression = data_args.task_name == "stsb" or label_feature.dtype in ("float32", "float64")
    label_to_id = None  # local files: labels of any kind (strings, 1..5, ...) mapped to 0..n-1
    if regression:
        num_labels = 1
    elif hasattr(label_feature, "names"):
        num_labels = len(label_feature.names)
    else:
        label_to_id = {label: i for i, label in enumerate(sorted(set(raw["train"]["label"])))}
        num_labels = len(label_to_id)

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    extra = {} if label_to_id is None else {"label2id": {str(k): v for k, v in label_to_id.items()},
                                            "id2label": {v: str(k) for k, v in label_to_id.items()}}
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, num_labels=num_labels,
                                        finetuning_task=data_args.task_name, **extra)
    if model_args.from_scratch:
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_args.model_name_or_path, config=config)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    report = compress(model, sparsity_args)

    key1, key2 = text_keys(data_args, raw["train"].column_names)

    def tokenize(batch):
        texts = (batch[key1],) if key2 is None else (batch[key1], batch[key2])
        encoded = tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length)
        if label_to_id is not None:
            unknown = {label for label in batch["label"] if label not in label_to_id}
            if unknown:
                raise ValueError(f"labels {sorted(map(str, unknown))} in the data do not occur in --train_file "
                                 f"(known: {sorted(map(str, label_to_id))})")
            encoded["labels"] = [label_to_id[label] for label in batch["label"]]  # a new column: int typed
        else:
            encoded["labels"] = batch["label"]
        return encoded

    with training_args.main_process_first(desc="tokenizing"):
        data = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names)
    train = data["train"]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    eval_split = "validation_matched" if data_args.task_name == "mnli" else "validation"
    evaluation = data[eval_split] if eval_split in data else None
    if evaluation is not None and data_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(len(evaluation), data_args.max_eval_samples)))

    push = take_push_to_hub(training_args)
    trainer = SparseTrainer(model=model, args=training_args, train_dataset=train if training_args.do_train else None,
                            eval_dataset=evaluation, processing_class=tokenizer,
                            data_collator=DataCollatorWithPadding(tokenizer),
                            compute_metrics=metric_fn(data_args.task_name, regression))
    metrics: dict[str, float] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics.update({k: v for k, v in result.metrics.items() if k == "train_loss"})
        trainer.save_model()
    if training_args.do_eval and evaluation is not None:
        metrics.update(trainer.evaluate())
        trainer.save_metrics("eval", metrics)
    dataset = "nyu-mll/glue" if data_args.task_name else None
    finish(trainer, report, metrics, tokenizer=tokenizer,
           base_model=sparsity_args.base_model_name or model_args.model_name_or_path, dataset=dataset, push=push)
    return trainer


if __name__ == "__main__":
    main()
