"""``hf-sparse`` command line: ``demo``, ``compress``, ``inspect``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from transformers import AutoConfig

TASKS = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "base": "AutoModel",
}


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_stages, run_demo

    stages = run_demo(args.output_dir, args.pretrain_steps, args.finetune_steps, args.rank, seed=args.seed)
    print(format_stages(stages))
    print(f"\ncompressed model saved to {Path(args.output_dir) / 'model'}; inspect it with "
          f"`hf-sparse inspect {Path(args.output_dir) / 'model'}`")
    return 0


def _read_texts(path: str, limit: int | None) -> list[str]:
    """Non-empty lines of a UTF-8 text file (at most ``limit``)."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no text")
    return lines[:limit] if limit else lines


def _load_dense(args: argparse.Namespace):
    import transformers

    return getattr(transformers, TASKS[args.task]).from_pretrained(args.model)


def _sweep_configs(base, solvers: list[str], ratios: list[float]):
    from .methods.greenformer import GreenformerConfig

    if not isinstance(base, GreenformerConfig):
        raise ValueError("--sweep-solvers / --sweep-ratios sweep a greenformer config; got method "
                         f"{base.method!r}")
    settings = base.to_dict()
    for key in ("quant_method", "method", "plan", "allocation_report"):
        settings.pop(key, None)
    for solver in solvers or [base.solver]:
        for ratio in ratios or [base.param_ratio]:
            yield GreenformerConfig(**{**settings, "solver": solver, "param_ratio": ratio,
                                       "rank": None if ratio is not None else settings["rank"]})


def cmd_compress(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from .config import SparsityConfig
    from .evaluation import perplexity
    from .inject import sparsify
    from .summary import count_parameters, summary

    config = SparsityConfig.from_json(args.config)
    sweep = bool(args.sweep_solvers or args.sweep_ratios)
    configs = list(_sweep_configs(config, args.sweep_solvers, args.sweep_ratios)) if sweep else [config]
    needs_tokenizer = args.calibration or args.eval_text
    tokenizer = AutoTokenizer.from_pretrained(args.model) if needs_tokenizer else None
    calibration = _read_texts(args.calibration, args.calibration_samples) if args.calibration else None
    eval_texts = _read_texts(args.eval_text, None) if args.eval_text else None
    if any(c.needs_calibration for c in configs) and calibration is None:
        raise ValueError("this config needs calibration data: pass --calibration FILE (one text per line)")

    dense = _load_dense(args)
    dense_params = count_parameters(dense)
    rows = []
    if eval_texts:
        rows.append({"solver": "dense", "param_ratio": 1.0, "params": dense_params, "dense_params": dense_params,
                     "perplexity": perplexity(dense, tokenizer, eval_texts, args.max_length)})
    del dense
    for cfg in configs:
        model = _load_dense(args)
        sparsify(model, cfg, calibration_data=calibration, tokenizer=tokenizer, max_length=args.max_length)
        row = {"solver": getattr(cfg, "solver", cfg.method), "param_ratio": getattr(cfg, "param_ratio", None),
               "params": count_parameters(model), "dense_params": dense_params}
        if eval_texts:
            row["perplexity"] = perplexity(model, tokenizer, eval_texts, args.max_length)
        rows.append(row)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    if sweep:
        table = _sweep_table(rows)
        (output / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
        (output / "sweep.md").write_text(table + "\n")
        print(table)
        print(f"\nsweep table saved to {output / 'sweep.md'}")
        return 0
    model.save_pretrained(output)
    if tokenizer is not None:
        tokenizer.save_pretrained(output)
    print(summary(model))
    if eval_texts:
        print(f"\nheld-out perplexity: dense {rows[0]['perplexity']:.3f}, compressed {rows[-1]['perplexity']:.3f}")
    print(f"\nsaved to {output}")
    return 0


def _sweep_table(rows: list[dict]) -> str:
    lines = ["| solver | param_ratio | params | params kept | perplexity |", "|---|---|---|---|---|"]
    for r in rows:
        ppl = f"{r['perplexity']:.3f}" if "perplexity" in r else "-"
        ratio = "-" if r["param_ratio"] is None else f"{r['param_ratio']:g}"
        lines.append(f"| {r['solver']} | {ratio} | {r['params']:,} | {r['params'] / r['dense_params']:.1%} | {ppl} |")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .config import SparsityConfig
    from .inject import get_sparsity_config  # noqa: F401  (registers hf_sparse with transformers)
    from .summary import summary_from_plan

    model_dir = Path(args.model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        print(f"{model_dir}: no hf-sparse config (a dense model)", file=sys.stderr)
        return 1
    sparsity = quant if isinstance(quant, SparsityConfig) else SparsityConfig.from_dict(quant)
    report = summary_from_plan(sparsity.plan, _saved_parameter_count(model_dir))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0


def _saved_parameter_count(model_dir: Path) -> int:
    """Parameters stored in the directory's safetensors files (tied weights are stored once)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {model_dir}")
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                shape = fh.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-sparse", description="Compress Hugging Face models with structured "
                                     "sparsity and low-rank factorization.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is converted and skipped")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="offline end-to-end demo on a bundled tiny GPT-2 and corpus")
    demo.add_argument("--output-dir", default="demo_output")
    demo.add_argument("--pretrain-steps", type=int, default=300)
    demo.add_argument("--finetune-steps", type=int, default=100)
    demo.add_argument("--rank", type=float, default=0.25, help="Greenformer rank (fraction of r_max if < 1)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    compress = sub.add_parser("compress", help="load a model, compress it with a sparsity config, save it (or "
                              "sweep solvers x budgets and tabulate perplexity)")
    compress.add_argument("model", help="Hub id or local directory of a dense model")
    compress.add_argument("--config", required=True, help="sparsity config: JSON file or inline JSON")
    compress.add_argument("--output", required=True, help="directory for the compressed model (or the sweep table)")
    compress.add_argument("--task", choices=sorted(TASKS), default="causal-lm")
    compress.add_argument("--calibration", help="text file, one calibration text per line (data-aware solvers)")
    compress.add_argument("--calibration-samples", type=int, default=128, help="calibration lines to use")
    compress.add_argument("--eval-text", help="held-out text file (one text per line) for perplexity")
    compress.add_argument("--max-length", type=int, default=512, help="tokens per calibration text / eval block")
    compress.add_argument("--sweep-solvers", type=lambda v: v.split(","), default=[],
                          help="comma-separated greenformer solvers to sweep, e.g. svd,svd-llm")
    compress.add_argument("--sweep-ratios", type=lambda v: [float(x) for x in v.split(",")], default=[],
                          help="comma-separated param_ratio budgets to sweep, e.g. 0.3,0.5")
    compress.set_defaults(func=cmd_compress)

    inspect = sub.add_parser("inspect", help="per-module report of a saved compressed model")
    inspect.add_argument("model_dir")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    import hf_sparse  # noqa: F401  (registers the quantizer before any model is loaded)

    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:  # user errors: a message, no traceback
        print(f"hf-sparse {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
