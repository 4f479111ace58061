"""Few-shot in-context evaluation of a factorized causal LM at several compression levels, in one table.

For each (solver, param_ratio) pair the dense model is compressed with Greenformer (data-aware solvers use
``--calibration_file``), then scored on a local multiple-choice JSONL task (``question``, ``choices``,
``answer``) at each ``--shots`` count, plus perplexity on ``--eval_text`` when given.

    python examples/fewshot_eval.py --model_name_or_path gpt2 --task my_task.jsonl --shots 0 4 \\
        --solvers svd svd-llm --param_ratios 0.3 0.5 0.7 --calibration_file calib.txt --eval_text heldout.txt

With lm-eval installed (``pip install "hf-sparse[eval]"``), ``--lm_eval_tasks`` adds lm-eval tasks (built-in ones, or
local task YAMLs found through ``--lm_eval_include DIR``) scored on each compressed model in memory through
``lm_eval.models.huggingface.HFLM(pretrained=model, tokenizer=tokenizer)`` and ``lm_eval.simple_evaluate``:

    python examples/fewshot_eval.py --model_name_or_path gpt2 --lm_eval_tasks my_task --lm_eval_include tasks/ \\
        --shots 0 5 --param_ratios 0.5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_sparse
from hf_sparse.evaluation import fewshot_accuracy, lm_eval_tasks, load_jsonl_task, perplexity, require_lm_eval
from hf_sparse.summary import count_parameters


def read_lines(path: str | None) -> list[str] | None:
    if path is None:
        return None
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate(model, tokenizer, task, shots: list[int], eval_text: list[str] | None, seed: int,
             args: argparse.Namespace | None = None) -> dict:
    """One row: parameters, perplexity, ``acc@k`` on the JSONL task and ``<task>:<metric>@k`` for lm-eval tasks."""
    row = {"params": count_parameters(model)}
    if eval_text:
        row["perplexity"] = perplexity(model, tokenizer, eval_text)
    for k in shots if task else []:
        row[f"acc@{k}"] = fewshot_accuracy(model, tokenizer, task, shots=k, seed=seed)
    for k in shots if args is not None and args.lm_eval_tasks else []:
        scores = lm_eval_tasks(model, tokenizer, args.lm_eval_tasks, num_fewshot=k, include_path=args.lm_eval_include,
                               limit=args.lm_eval_limit, batch_size=args.lm_eval_batch_size)
        for name, metrics in scores.items():
            row.update({f"{name}:{metric}@{k}": value for metric, value in metrics.items()})
    return row


def table(rows: list[dict], shots: list[int]) -> str:
    has_ppl = any("perplexity" in r for r in rows)
    local = [k for k in shots if f"acc@{k}" in rows[0]]
    lm_eval_keys = [key for key in rows[0] if ":" in key and "_stderr" not in key]  # "<task>:<metric>@k"
    header = ["solver", "allocation", "param_ratio", "params", *(["perplexity"] if has_ppl else []),
              *[f"{k}-shot acc" for k in local],
              *[f"{key.rsplit('@', 1)[0].replace(':', ' ')} {key.rsplit('@', 1)[1]}-shot" for key in lm_eval_keys]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["solver"], r["allocation"], f"{r['param_ratio']:g}", f"{r['params']:,}"]
        if has_ppl:
            cells.append(f"{r['perplexity']:.3f}")
        cells += [f"{r[f'acc@{k}']:.3f}" for k in local] + [f"{r[key]:.3f}" for key in lm_eval_keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--task", help="JSONL multiple-choice task (question, choices, answer per line)")
    parser.add_argument("--shots", type=int, nargs="+", default=[0])
    parser.add_argument("--solvers", nargs="+", default=["svd"], help="greenformer solvers to compare")
    parser.add_argument("--param_ratios", type=float, nargs="+", default=[0.5])
    parser.add_argument("--allocation", default="uniform", choices=["uniform", "stable_rank", "sensitivity"])
    parser.add_argument("--calibration_file", help="one calibration text per line (data-aware solvers)")
    parser.add_argument("--eval_text", help="held-out text, one text per line, for perplexity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the table (markdown) and rows (.json beside it) here")
    parser.add_argument("--lm_eval_tasks", "--lm-eval-tasks", nargs="+", default=[],
                        help='lm-eval task names, scored at each --shots count (needs pip install "hf-sparse[eval]")')
    parser.add_argument("--lm_eval_include", "--lm-eval-include", nargs="+", default=None,
                        help="directories (or YAML files) of local lm-eval task configs")
    parser.add_argument("--lm_eval_limit", "--lm-eval-limit", type=int, default=None, help="documents per lm-eval task")
    parser.add_argument("--lm_eval_batch_size", "--lm-eval-batch-size", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.task and not args.lm_eval_tasks:
        parser.error("give a local task (--task FILE.jsonl) and/or lm-eval tasks (--lm_eval_tasks NAME ...)")
    if args.lm_eval_tasks:
        try:
            require_lm_eval()  # before any model is loaded
        except ImportError as err:
            parser.error(str(err))

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    task = load_jsonl_task(args.task) if args.task else None
    calibration = read_lines(args.calibration_file)
    eval_text = read_lines(args.eval_text)
    dense = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
    rows = [{"solver": "dense", "allocation": "-", "param_ratio": 1.0,
             **evaluate(dense, tokenizer, task, args.shots, eval_text, args.seed, args)}]
    for solver in args.solvers:
        for ratio in args.param_ratios:
            model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
            cfg = hf_sparse.GreenformerConfig(solver=solver, param_ratio=ratio, allocation=args.allocation)
            hf_sparse.sparsify(model, cfg, calibration_data=calibration, tokenizer=tokenizer)
            rows.append({"solver": solver, "allocation": args.allocation, "param_ratio": ratio,
                         **evaluate(model, tokenizer, task, args.shots, eval_text, args.seed, args)})
    text = table(rows, args.shots)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
        Path(args.output).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
