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


def cmd_compress(args: argparse.Namespace) -> int:
    import transformers

    from .auto import SparseAutoModel
    from .config import SparsityConfig
    from .summary import summary

    config = SparsityConfig.from_json(args.config)
    auto_class = getattr(transformers, TASKS[args.task])
    model = SparseAutoModel.for_auto_class(auto_class).from_pretrained(args.model, sparsity_config=config)
    model.save_pretrained(args.output)
    print(summary(model))
    print(f"\nsaved to {args.output}")
    return 0


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

    compress = sub.add_parser("compress", help="load a model, compress it with a sparsity config, save it")
    compress.add_argument("model", help="Hub id or local directory of a dense model")
    compress.add_argument("--config", required=True, help="sparsity config: JSON file or inline JSON")
    compress.add_argument("--output", required=True, help="directory to save the compressed model")
    compress.add_argument("--task", choices=sorted(TASKS), default="causal-lm")
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
