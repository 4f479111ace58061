"""Pieces shared by the example training scripts (``examples/run_glue.py``, ``examples/run_clm.py``): the
``--sparsity_config`` argument, compressing the model before training with a before/after report, and
saving / pushing the result at the end."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed

from ..config import as_sparsity_config
from ..inject import get_sparsity_config, sparsify
from ..summary import effective_parameters, summary

logger = logging.getLogger(__name__)

REPORT_NAME = "sparsity_report.json"


@dataclass
class SparsityArguments:
    """Command-line arguments of the example scripts for hf-sparse (parsed by ``HfArgumentParser``)."""

    sparsity_config: str | None = field(default=None, metadata={
        "help": "a sparsity config: path to a JSON file or inline JSON, one method ({\"method\": "
                "\"greenformer\", ...}) or a list of methods with disjoint targets; omit to train dense"})
    base_model_name: str | None = field(default=None, metadata={
        "help": "base model named in the model card when pushing (default: --model_name_or_path)"})


def parse_script_args(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse the example scripts' arguments (``SparsityArguments`` and ``TrainingArguments`` among
    ``dataclass_types``, the latter last) from ``argv`` / the command line, or from a single ``.json`` file
    argument; set up logging and the seed. Returns one instance per dataclass."""
    parser = HfArgumentParser(dataclass_types)
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        parsed = parser.parse_json_file(sys.argv[1])
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    training_args = parsed[-1]
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)
    return tuple(parsed)


def parameter_count(model: nn.Module) -> int:
    """Parameters that count: unique parameters, sparse layers at their real size (a masked layer's active
    weights, not its dense-shaped storage)."""
    config = get_sparsity_config(model)
    return effective_parameters(model, config.plan if config is not None else {})


def compress(model: nn.Module, sparsity_args: SparsityArguments) -> dict[str, Any]:
    """Apply ``--sparsity_config`` to ``model`` in place (schedules such as Cuttlefish / DST-EE attach and
    run later inside ``SparseTrainer``). Returns the before/after report; ``ValueError`` for a bad config,
    before the model changes."""
    before = parameter_count(model)
    report: dict[str, Any] = {"params_before": before}
    if sparsity_args.sparsity_config:
        config = as_sparsity_config(sparsity_args.sparsity_config)
        sparsify(model, config)
        report["methods"] = [cfg.method for cfg in config.configs]
    report["params_after_compression"] = parameter_count(model)
    return report


def take_push_to_hub(args: TrainingArguments) -> bool:
    """Whether ``--push_to_hub`` was given, switching the Trainer's own push off: the scripts push once at the
    end with :func:`hf_sparse.push_to_hub` (hf-sparse model card, eval results) instead of the Trainer's
    push at every save. Call before building the trainer."""
    push = bool(args.push_to_hub)
    args.push_to_hub = False
    return push


def finish(trainer: Trainer, report: dict[str, Any], metrics: dict[str, float], tokenizer: Any = None,
           base_model: str | None = None, dataset: str | None = None, push: bool = False) -> dict[str, Any]:
    """After training: record the final size (schedules may have changed it), the eval metrics and the
    per-module summary in ``output_dir/sparsity_report.json``, print them, and, with ``push`` (see
    :func:`take_push_to_hub`), upload to the Hub with a generated model card (``--hub_model_id`` names the
    repo, default: the output folder's name)."""
    model = trainer.model
    report = {**report, "params_after": parameter_count(model), "metrics": metrics}
    if get_sparsity_config(model) is not None:
        table = summary(model)
        report["summary"] = table.to_dict()
        if trainer.is_world_process_zero():
            print(table)
    before, after = report["params_before"], report["params_after"]
    if trainer.is_world_process_zero():
        print(f"parameters: {before:,} -> {after:,} ({after / before:.1%})")
        for key, value in metrics.items():
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if trainer.args.should_save:
        os.makedirs(trainer.args.output_dir, exist_ok=True)
        with open(os.path.join(trainer.args.output_dir, REPORT_NAME), "w") as f:
            json.dump(report, f, indent=2)
    if push and trainer.is_world_process_zero():
        from ..hub import push_to_hub

        repo_id = trainer.args.hub_model_id or os.path.basename(os.path.abspath(trainer.args.output_dir))
        eval_results = {k: v for k, v in metrics.items() if isinstance(v, (int, float))
                        and k.startswith(("eval_", "perplexity")) and not k.endswith(("_runtime", "_per_second"))}
        if base_model is not None and os.path.isdir(base_model):
            base_model = None  # a local directory is not a Hub id the card could link to
        info = push_to_hub(model, repo_id, tokenizer=tokenizer, base_model=base_model, dataset=dataset,
                           eval_results=eval_results, private=trainer.args.hub_private_repo,
                           token=trainer.args.hub_token)
        logger.info("pushed to %s", info)
    return report
