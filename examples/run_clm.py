"""Train or fine-tune a causal LM on WikiText-103 (or local text files) with any hf-sparse config, and report
perplexity.

    # the Pixelfly paper's recipe: GPT-2 small from scratch on WikiText-103 with butterfly MLPs + attention
    python examples/run_clm.py --model_name_or_path gpt2 --from_scratch \\
        --dataset_name wikitext --dataset_config_name wikitext-103-raw-v1 \\
        --sparsity_config '{"method": "pixelfly", "density": 0.25, "attention": true}' \\
        --block_size 1024 --output_dir out/pixelfly-gpt2 --do_train --do_eval

    # fine-tune a factorized model on local text files, on several processes/GPUs
    accelerate launch examples/run_clm.py --model_name_or_path gpt2 --train_file train.txt \\
        --validation_file valid.txt --sparsity_config '{"method": "greenformer", "rank": 0.25}' \\
        --output_dir out/gpt2-lowrank --do_train --do_eval

Texts are tokenized, concatenated and cut into ``--block_size`` blocks. Training runs in
``hf_sparse.SparseTrainer`` (Cuttlefish / DST-EE schedules run); eval reports ``perplexity = exp(eval_loss)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from itertools import chain

from datasets import load_dataset
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    TrainingArguments,
    default_data_collator,
)

import hf_sparse  # noqa: F401  (registers the hf_sparse quantization method)
from hf_sparse import SparseTrainer
from hf_sparse.training.scripts import SparsityArguments, compress, finish, parse_script_args, take_push_to_hub

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "pretrained model name or local directory"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "default: model_name_or_path"})
    from_scratch: bool = field(default=False, metadata={"help": "random init from the model's config"})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "e.g. wikitext"})
    dataset_config_name: str | None = field(default=None, metadata={"help": "e.g. wikitext-103-raw-v1"})
    train_file: str | None = field(default=None, metadata={"help": "local .txt (one document per line) or json"})
    validation_file: str | None = None
    text_column: str = "text"
    block_size: int = field(default=1024, metadata={"help": "tokens per training block (capped by the model)"})
    validation_split_percentage: int = field(default=5, metadata={
        "help": "held-out percentage of the training data when there is no validation split"})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self) -> None:
        if self.dataset_name is None and self.train_file is None:
            raise ValueError("give --dataset_name (e.g. wikitext with --dataset_config_name wikitext-103-raw-v1) "
                             "or --train_file (local .txt/.json)")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is not None and not path.endswith((".txt", ".json", ".jsonl")):
                raise ValueError(f"--{name} must be a .txt, .json or .jsonl file, got {path!r}")
        if self.block_size < 2:
            raise ValueError(f"--block_size must be >= 2, got {self.block_size}")
        if not 0 < self.validation_split_percentage < 100:
            raise ValueError("--validation_split_percentage must be in (0, 100), got "
                             f"{self.validation_split_percentage}")


def load_data(data_args: DataArguments):
    if data_args.dataset_name is not None:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    else:
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        kind = "text" if data_args.train_file.endswith(".txt") else "json"
        raw = load_dataset(kind, data_files=files)
    if "validation" not in raw:
        split = raw["train"].train_test_split(test_size=data_args.validation_split_percentage / 100, seed=0)
        raw["train"], raw["validation"] = split["train"], split["test"]
    return raw


def group_texts(examples: dict[str, list], block_size: int) -> dict[str, list]:
    """Concatenate tokenized texts and cut them into ``block_size`` blocks (the remainder is dropped)."""
    joined = {k: list(chain.from_iterable(examples[k])) for k in examples}
    total = (len(joined["input_ids"]) // block_size) * block_size
    blocks = {k: [v[i:i + block_size] for i in range(0, total, block_size)] for k, v in joined.items()}
    blocks["labels"] = [list(b) for b in blocks["input_ids"]]
    return blocks


def main(argv: list[str] | None = None):
    model_args, data_args, sparsity_args, training_args = parse_script_args(
        (ModelArguments, DataArguments, SparsityArguments, TrainingArguments), argv)

    raw = load_data(data_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    if model_args.from_scratch:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_args.model_name_or_path))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    report = compress(model, sparsity_args)

    max_positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions",
                                                                                      None)
    block_size = min(data_args.block_size, max_positions) if max_positions else data_args.block_size
    columns = raw["train"].column_names
    if data_args.text_column not in columns and not (data_args.text_column == "text" and len(columns) == 1):
        raise ValueError(f"--text_column {data_args.text_column!r} is not in the data (columns: {columns})")
    column = data_args.text_column if data_args.text_column in columns else columns[0]
    with training_args.main_process_first(desc="tokenizing and grouping"):
        tokenized = raw.map(lambda b: tokenizer(b[column]), batched=True, remove_columns=raw["train"].column_names)
        blocks = tokenized.map(lambda b: group_texts(b, block_size), batched=True)
    train, evaluation = blocks["train"], blocks["validation"]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))
    if data_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(len(evaluation), data_args.max_eval_samples)))
    if training_args.do_train and len(train) == 0:
        raise ValueError(f"the training data is shorter than one block of {block_size} tokens: lower --block_size")

    push = take_push_to_hub(training_args)
    trainer = SparseTrainer(model=model, args=training_args, train_dataset=train if training_args.do_train else None,
                            eval_dataset=evaluation if training_args.do_eval else None, processing_class=tokenizer,
                            data_collator=default_data_collator)
    metrics: dict[str, float] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics["train_loss"] = result.metrics["train_loss"]
        trainer.save_model()
    if training_args.do_eval and len(evaluation):
        metrics.update(trainer.evaluate())
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        trainer.save_metrics("eval", metrics)
    dataset = data_args.dataset_name if data_args.dataset_name else None
    finish(trainer, report, metrics, tokenizer=tokenizer,
           base_model=None if model_args.from_scratch else (sparsity_args.base_model_name
                                                            or model_args.model_name_or_path),
           dataset=dataset, push=push)
    return trainer


if __name__ == "__main__":
    main()
