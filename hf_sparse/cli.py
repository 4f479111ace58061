"""``hf-sparse`` command line: ``compress``, ``inspect``, ``eval``, ``push``, ``demo``.

User errors (bad configs, missing files, a dense model where a compressed one is needed, a missing optional
package, Hub errors) print one ``hf-sparse <command>: error: ...`` line and exit with status 2, like argparse's
own errors; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HfHubHTTPError
from tqdm.auto import tqdm
from transformers import AutoConfig

from .registry import CONFIG_CLASSES, SCHEDULES

TASKS = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "base": "AutoModel",
}
#: files whose presence means a directory holds a saved tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
#: config keys ``--option`` cannot set (the method is ``--method``; the plan is written by conversion)
RESERVED_OPTIONS = ("method", "quant_method", "plan", "format_version")


def _bar(total: int, desc: str):
    """A progress bar on stderr (hidden when stderr is not a terminal)."""
    return tqdm(total=total, desc=desc, unit="step", disable=None, leave=False, file=sys.stderr)


# ------------------------------------------------------------------------------------------------ demo
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_stages, run_demo

    stages = run_demo(args.output_dir, args.pretrain_steps, args.finetune_steps, args.rank, seed=args.seed)
    print(format_stages(stages))
    print(f"\ncompressed model saved to {Path(args.output_dir) / 'model'}; inspect it with "
          f"`hf-sparse inspect {Path(args.output_dir) / 'model'}`")
    return 0


# ------------------------------------------------------------------------------------------------ compress
def _read_texts(path: str, limit: int | None) -> list[str]:
    """Non-empty lines of a UTF-8 text file (at most ``limit``)."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no text")
    return lines[:limit] if limit else lines


def _load_dense(args: argparse.Namespace):
    import transformers

    return getattr(transformers, TASKS[args.task]).from_pretrained(args.model)


def _has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def _optional_hub_tokenizer(name: str):
    """The tokenizer of Hub model ``name``, or None when the repository has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError):
        return None


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)``; the value is read as JSON (``4``, ``0.25``, ``true``, ``["c_attn"]``),
    Python's ``True``/``False``/``None`` are accepted, anything else stays a string (``solver=svd``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. rank=0.25), got {text!r}")
    if key in RESERVED_OPTIONS:
        raise argparse.ArgumentTypeError(f"{key!r} cannot be set with --option (use --method / --config)")
    raw = {"True": "true", "False": "false", "None": "null"}.get(raw.strip(), raw)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def build_config(method: str | None, config: str | None, options: list[tuple[str, Any]]):
    """The sparsity config of ``compress``: ``--config`` (JSON file or string) and/or ``--method``, updated by
    ``--option KEY=VALUE`` pairs. Raises ``ValueError`` / ``TypeError`` naming the bad field."""
    from .config import SparsityConfig

    settings = dict(options)
    if config is None:
        if method is None:
            raise ValueError("name a method with --method {" + ",".join(sorted(CONFIG_CLASSES)) + "} (plus "
                             "--option KEY=VALUE settings), or pass --config FILE_OR_JSON")
        return SparsityConfig.from_dict({"method": method, **settings})
    parsed = SparsityConfig.from_json(config)
    if method is not None and any(c.method != method for c in parsed.configs):
        raise ValueError(f"--method {method} contradicts --config, whose method(s) are "
                         f"{[c.method for c in parsed.configs]}; drop one of them")
    if not settings:
        return parsed
    if len(parsed.configs) > 1:
        raise ValueError("--option applies to a single-method config; edit the entries of the JSON list instead")
    return SparsityConfig.from_dict({**parsed.to_dict(), **settings})


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

    from .evaluation import perplexity
    from .inject import sparsify
    from .summary import count_parameters, effective_parameters, summary

    config = build_config(args.method, args.config, args.option)
    sweep = bool(args.sweep_solvers or args.sweep_ratios)
    configs = list(_sweep_configs(config, args.sweep_solvers, args.sweep_ratios)) if sweep else [config]
    if args.calibration or args.eval_text or _has_tokenizer(args.model):
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    elif Path(args.model).is_dir():
        tokenizer = None  # a local model saved without a tokenizer
    else:
        tokenizer = _optional_hub_tokenizer(args.model)
    calibration = _read_texts(args.calibration, args.calibration_samples) if args.calibration else None
    eval_texts = _read_texts(args.eval_text, None) if args.eval_text else None
    if any(c.needs_calibration for c in configs) and calibration is None:
        raise ValueError("this config needs calibration data: pass --calibration FILE (one text per line)")

    progress = _bar(1 + 3 * len(configs) + bool(eval_texts), "compress")
    progress.set_postfix_str("loading the dense model")
    dense = _load_dense(args)
    dense_params = count_parameters(dense)
    progress.update()
    rows = []
    if eval_texts:
        progress.set_postfix_str("dense perplexity")
        rows.append({"solver": "dense", "param_ratio": 1.0, "params": dense_params, "dense_params": dense_params,
                     "perplexity": perplexity(dense, tokenizer, eval_texts, args.max_length)})
        progress.update()
    for cfg in configs:
        model = dense if len(configs) == 1 else _load_dense(args)
        progress.update()
        progress.set_postfix_str(f"compressing with {cfg.method}")
        sparsify(model, cfg, calibration_data=calibration, tokenizer=tokenizer, max_length=args.max_length)
        progress.update()
        row = {"solver": getattr(cfg, "solver", cfg.method), "param_ratio": getattr(cfg, "param_ratio", None),
               "params": effective_parameters(model, cfg.plan), "dense_params": dense_params}
        if eval_texts:
            progress.set_postfix_str("perplexity")
            row["perplexity"] = perplexity(model, tokenizer, eval_texts, args.max_length)
        progress.update()
        rows.append(row)
    progress.close()
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
    print(f"\nsaved to {output}" + ("" if tokenizer is not None else " (no tokenizer: the source has none)"))
    training_time = [cfg.method for cfg in configs[-1].configs if cfg.method in SCHEDULES]
    if training_time:
        print(f"{', '.join(training_time)} acts during training: train the saved model with hf_sparse.SparseTrainer "
              "(e.g. examples/run_clm.py or run_glue.py)")
    return 0


def _sweep_table(rows: list[dict]) -> str:
    lines = ["| solver | param_ratio | params | params kept | perplexity |", "|---|---|---|---|---|"]
    for r in rows:
        ppl = f"{r['perplexity']:.3f}" if "perplexity" in r else "-"
        ratio = "-" if r["param_ratio"] is None else f"{r['param_ratio']:g}"
        lines.append(f"| {r['solver']} | {ratio} | {r['params']:,} | {r['params'] / r['dense_params']:.1%} | {ppl} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ inspect
def _saved_sparsity_config(model_dir: Path):
    """The hf-sparse config recorded in ``model_dir/config.json``, or None for a dense model."""
    from .config import SparsityConfig

    quant = getattr(AutoConfig.from_pretrained(model_dir), "quantization_config", None)
    if quant is None:
        return None
    return quant if isinstance(quant, SparsityConfig) else SparsityConfig.from_dict(quant)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .summary import summary_from_plan

    model_dir = Path(args.model_dir)
    sparsity = _saved_sparsity_config(model_dir)
    if sparsity is None:
        print(f"{model_dir}: no hf-sparse config (a dense model)", file=sys.stderr)
        return 1
    report = summary_from_plan(sparsity.plan, _saved_parameter_count(model_dir, sparsity.plan))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    if args.plot:
        plot_plan(sparsity.plan, args.plot, title=str(model_dir))
        print(f"\nplot saved to {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _saved_parameter_count(model_dir: Path, plan: dict[str, dict[str, Any]]) -> int:
    """Parameters stored in the directory's safetensors files (tied weights are stored once), each planned
    module counted at its layer class's ``params_and_flops`` instead of its stored tensors (a masked layer
    stores a dense-shaped weight, its mask and counts)."""
    from .registry import LAYER_CLASSES

    prefixes = tuple(f"{name}." for name in plan)
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {model_dir}")
    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                if key.startswith(prefixes):
                    continue
                shape = fh.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total + sum(LAYER_CLASSES[spec["class"]].params_and_flops(spec)[0] for spec in plan.values())


def plot_plan(plan: dict[str, dict[str, Any]], path: str | Path, title: str = "", max_layouts: int = 8):
    """Save a figure of ``plan``: per-layer kept fraction of parameters, per-layer rank (layers that have one, when
    any is nonzero) and the block layouts of layers that expose ``.layout`` (Pixelfly's butterflies; identical
    layouts shown once). Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .inject import build_layer
    from .layers import SparseLayer
    from .registry import LAYER_CLASSES

    if not plan:
        raise ValueError("the plan is empty: no converted module to plot")
    names = list(plan)
    kept, ranks, layouts = [], {}, {}
    for name, spec in plan.items():
        before, _ = SparseLayer.dense_cost(spec)
        after, _ = LAYER_CLASSES[spec["class"]].params_and_flops(spec)
        kept.append(after / before)
        if isinstance(spec.get("rank"), int):
            ranks[name] = spec["rank"]
        layout = getattr(build_layer(name, spec, device="meta"), "layout", None)
        if layout is not None:
            key = (tuple(layout.shape), tuple(layout.flatten().tolist()))
            layouts.setdefault(key, (layout, []))[1].append(name)
    if not any(ranks.values()):
        ranks = {}  # only rank-0 terms (butterflies without a low-rank part): nothing to plot
    shown = list(layouts.values())[:max_layouts]
    rows = 1 + bool(ranks) + bool(shown)
    height = max(3.0, 0.18 * len(names))
    fig = plt.figure(figsize=(max(8.0, 2.2 * len(shown)), height * (1 + bool(ranks)) + 3.0 * bool(shown)))
    grid = fig.add_gridspec(rows, max(1, len(shown)),
                            height_ratios=[height] * (1 + bool(ranks)) + ([3.0] if shown else []))
    positions = range(len(names))
    ax = fig.add_subplot(grid[0, :])
    ax.barh(positions, kept, color="tab:blue")
    ax.set_yticks(positions, names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, max(kept)))
    ax.set_xlabel("parameters kept (density vs the dense layer)")
    ax.set_title(f"{title}: per-layer density" if title else "per-layer density")
    if ranks:
        ax = fig.add_subplot(grid[1, :])
        rank_names = list(ranks)
        ax.barh(range(len(rank_names)), [ranks[n] for n in rank_names], color="tab:orange")
        ax.set_yticks(range(len(rank_names)), rank_names, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel("rank")
        ax.set_title("per-layer rank")
    for column, (layout, members) in enumerate(shown):
        ax = fig.add_subplot(grid[rows - 1, column])
        ax.imshow(layout.float().numpy(), cmap="Greys", interpolation="nearest", vmin=0, vmax=1)
        more = f" (+{len(members) - 1})" if len(members) > 1 else ""
        ax.set_title(f"{members[0]}{more}\nlayout {layout.shape[0]}x{layout.shape[1]} blocks", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


# ------------------------------------------------------------------------------------------------ eval
def _load_saved_model(model_dir: str | Path, causal_lm: bool = False):
    """The model saved in ``model_dir``, loaded with its own architecture class (or as a causal LM), refusing
    checkpoints whose planned weights are missing (``SparseAutoModel``)."""
    import transformers

    from .auto import SparseAutoModel, SparseAutoModelForCausalLM

    if causal_lm:
        return SparseAutoModelForCausalLM.from_pretrained(model_dir)
    architectures = getattr(AutoConfig.from_pretrained(model_dir), "architectures", None) or []
    if not architectures or not hasattr(transformers, architectures[0]):
        raise ValueError(f"{model_dir}/config.json names no transformers architecture ({architectures}); "
                         "re-save the model with save_pretrained")
    return SparseAutoModel.for_auto_class(getattr(transformers, architectures[0])).from_pretrained(model_dir)


def _load_tokenizer(model_dir: str | Path, name: str | None):
    from transformers import AutoTokenizer

    if name is None and not _has_tokenizer(model_dir):
        raise ValueError(f"{model_dir} holds no tokenizer: pass --tokenizer NAME_OR_PATH (the tokenizer of the "
                         "model it was compressed from)")
    return AutoTokenizer.from_pretrained(name or model_dir)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import fewshot_accuracy, lm_eval_tasks, load_jsonl_task, perplexity, require_lm_eval

    if not (args.task or args.perplexity or args.lm_eval_tasks):
        raise ValueError("nothing to evaluate: pass --task FILE.jsonl, --perplexity FILE and/or --lm-eval-tasks")
    if args.lm_eval_tasks:
        require_lm_eval()  # fail before loading anything
    tasks = {Path(path).stem: load_jsonl_task(path) for path in args.task}
    texts = _read_texts(args.perplexity, None) if args.perplexity else None
    tokenizer = _load_tokenizer(args.model_dir, args.tokenizer)
    steps = bool(texts) + len(tasks) * len(args.shots) + bool(args.lm_eval_tasks) * len(args.shots)
    progress = _bar(1 + steps, "eval")
    progress.set_postfix_str("loading the model")
    model = _load_saved_model(args.model_dir, causal_lm=True)
    progress.update()
    results: dict[str, float] = {}
    if texts:
        progress.set_postfix_str("perplexity")
        results[f"perplexity ({Path(args.perplexity).name})"] = perplexity(model, tokenizer, texts, args.max_length)
        progress.update()
    for name, examples in tasks.items():
        for shots in args.shots:
            progress.set_postfix_str(f"{name}, {shots}-shot")
            results[f"accuracy ({name}, {shots}-shot)"] = fewshot_accuracy(
                model, tokenizer, examples, shots=shots, seed=args.seed, normalize=args.normalize)
            progress.update()
    for shots in args.shots if args.lm_eval_tasks else []:
        progress.set_postfix_str(f"lm-eval, {shots}-shot")
        limit = args.lm_eval_limit
        limit = int(limit) if limit is not None and limit >= 1 else limit
        scores = lm_eval_tasks(model, tokenizer, args.lm_eval_tasks, num_fewshot=shots,
                               include_path=args.lm_eval_include, limit=limit)
        for task, metrics in scores.items():
            for metric, value in metrics.items():
                results[f"{metric} ({task}, {shots}-shot)"] = value
        progress.update()
    progress.close()
    text = json.dumps(results, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        width = max(len(k) for k in results)
        print("\n".join([f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------",
                         *[f"{k.ljust(width)}  {v:.4f}" for k, v in results.items()]]))
    return 0


# ------------------------------------------------------------------------------------------------ push
def cmd_push(args: argparse.Namespace) -> int:
    from .hub import check_hub_id, push_to_hub

    check_hub_id("repo_id", args.repo_id, "model")
    model_dir = Path(args.model_dir)
    if _saved_sparsity_config(model_dir) is None:
        raise ValueError(f"{model_dir} holds a dense model (no hf-sparse config in config.json): compress it first "
                         "with `hf-sparse compress`")
    eval_results = None
    if args.eval_results:
        eval_results = json.loads(Path(args.eval_results).read_text(encoding="utf-8"))
        if not isinstance(eval_results, dict):
            raise ValueError(f"--eval-results {args.eval_results} must hold a JSON object of metric name -> value "
                             "(as written by `hf-sparse eval --output`)")
    tokenizer = _load_tokenizer(model_dir, args.tokenizer) if args.tokenizer or _has_tokenizer(model_dir) else None
    progress = _bar(2, "push")
    progress.set_postfix_str("loading the model")
    model = _load_saved_model(model_dir)
    progress.update()
    progress.set_postfix_str(f"uploading to {args.repo_id}")
    commit = push_to_hub(model, args.repo_id, tokenizer=tokenizer, base_model=args.base_model, dataset=args.dataset,
                         eval_results=eval_results, private=args.private, commit_message=args.commit_message,
                         token=args.token, create_pr=args.create_pr, license=args.license)
    progress.update()
    progress.close()
    print(f"uploaded {model_dir} to {args.repo_id}" + (" with its tokenizer" if tokenizer is not None else ""))
    print(f"commit: {commit.commit_url}")
    if commit.pr_url:
        print(f"pull request: {commit.pr_url}")
    return 0


# ------------------------------------------------------------------------------------------------ parser
def _methods_epilog() -> str:
    lines = ["methods and their --option keys (plus target_modules, modules_to_not_convert):"]
    for method, cls in sorted(CONFIG_CLASSES.items()):
        lines.append(f"  {method}: {', '.join(cls.fields)}")
    lines += ["", "examples:",
              "  hf-sparse compress gpt2 --method greenformer --option rank=0.25 --option solver=svd --output gpt2-gf",
              "  hf-sparse compress gpt2 --method pixelfly --option density=0.25 block_size=32 --output gpt2-pf",
              "  hf-sparse compress gpt2 --config cfg.json --output out   # a JSON list combines methods"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-sparse", description="Compress Hugging Face models with structured "
                                     "sparsity and low-rank factorization.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is converted and skipped")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="offline end-to-end demo on a bundled tiny GPT-2 and corpus",
                          description="Train a bundled tiny GPT-2, compress it, fine-tune, save and reload it, and "
                          "print a before/after table (offline, about a minute on 2 CPU cores).")
    demo.add_argument("--output-dir", default="demo_output")
    demo.add_argument("--pretrain-steps", type=int, default=300)
    demo.add_argument("--finetune-steps", type=int, default=100)
    demo.add_argument("--rank", type=float, default=0.25, help="Greenformer rank (fraction of r_max if < 1)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    compress = sub.add_parser("compress", help="load a model, compress it with a sparsity config, save it (or "
                              "sweep solvers x budgets and tabulate perplexity)",
                              description="Load a dense model, compress it and save it (with its tokenizer, when "
                              "the source has one).", epilog=_methods_epilog(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    compress.add_argument("model", help="Hub id or local directory of a dense model")
    compress.add_argument("--method", choices=sorted(CONFIG_CLASSES), help="sparsity method (settings with --option)")
    compress.add_argument("--option", nargs="+", action="extend", type=parse_option, default=[],
                          metavar="KEY=VALUE", help="a method setting, e.g. rank=0.25 or target_modules='[\"c_attn\"]'"
                          " (values are JSON; repeatable)")
    compress.add_argument("--config", help="sparsity config: JSON file or inline JSON (a list for several methods)")
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

    inspect = sub.add_parser("inspect", help="per-module report of a saved compressed model",
                             description="Per-module parameters and FLOPs/token before and after, read from "
                             "config.json and the safetensors headers (no weights are loaded).")
    inspect.add_argument("model_dir")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--plot", metavar="FILE.png", help="also save a plot of per-layer density and rank and of "
                         "the butterfly block layouts")
    inspect.set_defaults(func=cmd_inspect)

    evaluate = sub.add_parser("eval", help="perplexity and few-shot accuracy of a saved causal LM",
                              description="Evaluate a saved (compressed or dense) causal LM: perplexity on a text "
                              "file, k-shot multiple-choice accuracy on JSONL tasks (lines with question, choices, "
                              "answer) and, with lm-eval installed, lm-eval tasks.")
    evaluate.add_argument("model_dir")
    evaluate.add_argument("--task", action="append", default=[], metavar="FILE.jsonl",
                          help="multiple-choice task file (repeatable)")
    evaluate.add_argument("--shots", type=int, nargs="+", default=[0], help="demonstrations per prompt (several: "
                          "one result each)")
    evaluate.add_argument("--perplexity", metavar="FILE", help="text file (one text per line) for perplexity")
    evaluate.add_argument("--lm-eval-tasks", nargs="+", default=[], metavar="TASK",
                          help='lm-eval task names (needs: pip install "hf-sparse[eval]")')
    evaluate.add_argument("--lm-eval-include", action="append", default=None, metavar="PATH",
                          help="directory (or YAML file) of local lm-eval task configs (repeatable)")
    evaluate.add_argument("--lm-eval-limit", type=float, default=None, help="lm-eval documents per task (or a "
                          "fraction in (0, 1))")
    evaluate.add_argument("--tokenizer", help="tokenizer name or path (default: the one saved in MODEL_DIR)")
    evaluate.add_argument("--max-length", type=int, default=512, help="tokens per perplexity block")
    evaluate.add_argument("--normalize", action="store_true", help="score choices by mean log-likelihood per token")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the demonstration sampling")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--output", metavar="FILE.json", help="also write the results as JSON (for push "
                          "--eval-results)")
    evaluate.set_defaults(func=cmd_eval)

    push = sub.add_parser("push", help="upload a saved compressed model with a generated model card",
                          description="Load a saved compressed model (checking it rebuilds), render its model card "
                          "and upload model, tokenizer and README.md to the Hugging Face Hub.")
    push.add_argument("model_dir")
    push.add_argument("repo_id", help="Hub repository, e.g. user/gpt2-greenformer (created if missing)")
    push.add_argument("--private", action="store_true", default=None, help="create the repository as private")
    push.add_argument("--base-model", help="Hub id of the dense model it was compressed from")
    push.add_argument("--dataset", action="append", default=None, help="Hub id of a dataset used (repeatable)")
    push.add_argument("--eval-results", metavar="FILE.json", help="metric name -> value JSON (hf-sparse eval "
                      "--output) for the card")
    push.add_argument("--license", help="license id for the card header, e.g. apache-2.0")
    push.add_argument("--tokenizer", help="tokenizer to upload (default: the one saved in MODEL_DIR, if any)")
    push.add_argument("--commit-message", default="Upload model compressed with hf-sparse")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    push.add_argument("--token", help="Hub token (default: the saved login or HF_TOKEN)")
    push.set_defaults(func=cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError, HfHubHTTPError) as err:  # user errors: no traceback
        print(f"hf-sparse {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
