"""DST-EE vs RigL vs SET (vs dense) on scikit-learn's digits: accuracy, exploration degree, mask-update overhead.

An MLP (64 -> hidden -> hidden -> 10) is trained from scratch at 90% sparsity (ERK over its three layers) with
the same initial weights and mask, data order, steps, optimizer and schedule for every method; only the growth
rule differs. Training is a plain PyTorch loop calling ``DSTEESchedule``'s hooks exactly where ``SparseTrainer``
calls them (after backward and clipping / right after ``optimizer.step()``). The data set ships with
scikit-learn (no download).

Digits is small (1797 images), so one 25% test split (450 images) cannot separate methods that differ by a few
tenths of a percent. Each seed therefore runs a stratified 5-fold cross-validation and its accuracy is pooled
over all 1797 held-out predictions; the table gives mean and std over the seeds and the per-seed paired
differences. DST-EE runs at the config default ``c`` (no tuning on the evaluation data); ``--c-grid`` adds a
sensitivity table for other values, reported, never selected.

Overhead: wall time inside the schedule's hooks (gradient collection, mask updates, bookkeeping) plus the extra
backward time of the steps that record dense gradients, as a share of the training time (forward, backward,
optimizer and hooks; evaluation excluded). One thread (the model is far too small for more).

    python benchmarks/bench_dst.py                          # hidden 256, 3000 steps, seeds 0 1 2, 5 folds
    python benchmarks/bench_dst.py --c-grid 1e-4 1e-2 --update-interval 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import cpu_name, write_results
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold
from torch import nn

from hf_sparse import get_sparsity_config, sparsify
from hf_sparse.methods.dst import DSTEEConfig, DSTEESchedule
from hf_sparse.training import StepContext

METHODS = ("dense", "set", "rigl", "dst-ee")


def load_folds(folds: int) -> list[tuple[torch.Tensor, ...]]:
    """``(x_train, y_train, x_eval, y_eval)`` per stratified fold, features standardized on the train part."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    splits = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(x.numpy(), y.numpy()):
        train, test = torch.as_tensor(train), torch.as_tensor(test)
        mean, std = x[train].mean(0), x[train].std(0) + 1e-3
        splits.append(((x[train] - mean) / std, y[train], (x[test] - mean) / std, y[test]))
    return splits


def build(hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def train_one(method: str, seed: int, data: tuple[torch.Tensor, ...], args: argparse.Namespace,
              c: float) -> dict:
    x_train, y_train, x_eval, y_eval = data
    model = build(args.hidden, seed)
    schedule = None
    if method != "dense":
        config = DSTEEConfig(sparsity=args.sparsity, update_interval=args.update_interval,
                             drop_fraction=args.drop_fraction, grow=method, c=c, seed=seed)
        sparsify(model, config)
        schedule = DSTEESchedule(model, get_sparsity_config(model))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay,
                                nesterov=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    order = torch.Generator().manual_seed(1000 + seed)  # same data order for every method of a seed
    if schedule is not None:
        schedule.on_train_begin(StepContext(model, optimizer, 0, args.steps))
    step_times: dict[bool, list[float]] = {True: [], False: []}  # without hooks, by "records gradients"
    hook_seconds = 0.0
    model.train()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        tic = time.perf_counter()
        capture = schedule is not None and schedule.is_update_step(step) and method != "set"
        idx = torch.randint(0, len(x_train), (args.batch_size,), generator=order)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        ctx = StepContext(model, optimizer, step, args.steps)
        hook = 0.0
        if schedule is not None:
            h = time.perf_counter()
            schedule.before_optimizer_step(ctx)
            hook += time.perf_counter() - h
        optimizer.step()
        if schedule is not None:
            h = time.perf_counter()
            schedule.after_optimizer_step(ctx)
            hook += time.perf_counter() - h
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        hook_seconds += hook
        step_times[capture].append(time.perf_counter() - tic - hook)
    train_seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        correct = int((model(x_eval).argmax(1) == y_eval).sum())
    result = {"method": method, "seed": seed, "c": c if method == "dst-ee" else None, "correct": correct,
              "evaluated": len(y_eval), "train_seconds": train_seconds,
              "step_ms": 1e3 * statistics.median(step_times[False])}
    if schedule is not None:
        capture_steps = step_times[True]
        capture_extra = 0.0
        if capture_steps:
            capture_extra = max(0.0, len(capture_steps) * (statistics.median(capture_steps)
                                                           - statistics.median(step_times[False])))
        result.update({"exploration_degree": schedule.exploration_degree(), "updates": len(schedule.history),
                       "hook_seconds": hook_seconds, "capture_seconds": capture_extra,
                       "overhead_pct": 100 * (hook_seconds + capture_extra) / train_seconds,
                       "sparsity": schedule.log_metrics()["dst/sparsity"]})
    return result


def label(run: dict, main_c: float) -> str:
    return run["method"] if run["c"] in (None, main_c) else f"dst-ee(c={run['c']:g})"


def per_seed(runs: list[dict]) -> dict[int, float]:
    """Accuracy (%) of each seed, pooled over its folds."""
    seeds = sorted({r["seed"] for r in runs})
    return {s: 100 * sum(r["correct"] for r in runs if r["seed"] == s)
            / sum(r["evaluated"] for r in runs if r["seed"] == s) for s in seeds}


def aggregate(name: str, runs: list[dict]) -> dict:
    acc = per_seed(runs)
    entry = {"method": name, "per_seed_accuracy": acc, "accuracy_mean": statistics.mean(acc.values()),
             "accuracy_std": statistics.stdev(acc.values()) if len(acc) > 1 else 0.0,
             "step_ms": statistics.median(r["step_ms"] for r in runs)}
    if "exploration_degree" in runs[0]:
        entry["exploration_degree"] = statistics.mean(r["exploration_degree"] for r in runs)
        entry["overhead_pct"] = 100 * sum(r["hook_seconds"] + r["capture_seconds"] for r in runs) / sum(
            r["train_seconds"] for r in runs)
        entry["sparsity"] = runs[0]["sparsity"]
    return entry


def markdown(summary: list[dict]) -> str:
    lines = ["| method | sparsity | accuracy % (mean ± std over seeds) | per seed | exploration degree R "
             "| mask-update overhead | median step (ms) |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        sparsity = f"{s['sparsity']:.2f}" if "sparsity" in s else "0"
        explore = f"{s['exploration_degree']:.3f}" if "exploration_degree" in s else "-"
        overhead = f"{s['overhead_pct']:.2f}%" if "overhead_pct" in s else "-"
        seeds = " / ".join(f"{a:.2f}" for a in s["per_seed_accuracy"].values())
        lines.append(f"| {s['method']} | {sparsity} | {s['accuracy_mean']:.2f} ± {s['accuracy_std']:.2f} | {seeds} "
                     f"| {explore} | {overhead} | {s['step_ms']:.3f} |")
    return "\n".join(lines)


def paired(summary: dict[str, dict], better: str, worse: str) -> dict:
    """Per-seed accuracy differences ``better - worse`` (same seeds, folds, initial weights and data order)."""
    diffs = [summary[better]["per_seed_accuracy"][s] - summary[worse]["per_seed_accuracy"][s]
             for s in summary[better]["per_seed_accuracy"]]
    return {"pair": f"{better} - {worse}", "mean": statistics.mean(diffs), "per_seed": diffs,
            "seeds_ahead_or_tied": sum(d >= 0 for d in diffs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--update-interval", type=int, default=50)
    parser.add_argument("--drop-fraction", type=float, default=0.3)
    parser.add_argument("--c", type=float, default=DSTEEConfig().c, help="DST-EE exploration weight (main table)")
    parser.add_argument("--c-grid", type=float, nargs="*", default=[1e-4, 1e-2],
                        help="extra c values for the sensitivity table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dst_digits_cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folds = load_folds(args.folds)
    rows = []
    for seed in args.seeds:
        for fold, data in enumerate(folds):
            for method in METHODS:
                for c in ([args.c, *args.c_grid] if method == "dst-ee" else [0.0]):
                    rows.append({**train_one(method, seed, data, args, c), "fold": fold})
            done = [r for r in rows if r["seed"] == seed and r["fold"] == fold]
            print(f"  seed {seed} fold {fold}: " + ", ".join(
                f"{label(r, args.c)} {100 * r['correct'] / r['evaluated']:.1f}" for r in done), flush=True)
    main_rows = {m: [r for r in rows if r["method"] == m and r["c"] in (None, args.c)] for m in METHODS}
    summary = {m: aggregate(m, main_rows[m]) for m in METHODS}
    sensitivity = [aggregate(f"dst-ee c={c:g}", [r for r in rows if r["method"] == "dst-ee" and r["c"] == c])
                   for c in [args.c, *args.c_grid]]
    comparisons = [paired(summary, "dst-ee", "rigl"), paired(summary, "rigl", "set"),
                   paired(summary, "dst-ee", "set")]
    mean = {m: summary[m]["accuracy_mean"] for m in METHODS}
    ordering_met = mean["dst-ee"] >= mean["rigl"] >= mean["set"]
    worst_overhead = max(summary[m]["overhead_pct"] for m in ("set", "rigl", "dst-ee"))
    meta = {"device": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "task": f"sklearn digits (1797 images), stratified {args.folds}-fold CV (random_state=0), accuracy "
                    "pooled over the folds per seed",
            "model": f"MLP 64-{args.hidden}-{args.hidden}-10", "sparsity": args.sparsity, "distribution": "erk",
            "steps": args.steps, "batch_size": args.batch_size,
            "optimizer": f"SGD nesterov momentum 0.9, lr {args.lr} cosine, weight decay {args.weight_decay}, "
                         "gradient clipping at 5", "update_interval": args.update_interval,
            "drop_fraction": args.drop_fraction, "schedule": "cosine, masks fixed after 75% of the steps",
            "c": args.c, "eps": 1.0, "seeds": args.seeds,
            "loop": "plain PyTorch loop calling DSTEESchedule hooks (the calls SparseTrainer makes)"}
    title = (f"DST-EE / RigL / SET on digits: MLP 64-{args.hidden}-{args.hidden}-10 at {args.sparsity:.0%} sparsity "
             f"(ERK), {args.steps} steps, update every {args.update_interval} steps, c={args.c:g}; "
             f"{len(args.seeds)} seeds x {args.folds}-fold CV; {meta['device']}, {args.threads} thread, "
             f"torch {meta['torch']}")
    table = markdown(list(summary.values()))
    table += "\n\nPaired per-seed differences (accuracy points):\n\n| pair | mean | per seed | seeds ahead or tied |\n"
    table += "|---|---|---|---|\n" + "\n".join(
        f"| {p['pair']} | {p['mean']:+.2f} | {' / '.join(f'{d:+.2f}' for d in p['per_seed'])} | "
        f"{p['seeds_ahead_or_tied']}/{len(p['per_seed'])} |" for p in comparisons)
    table += ("\n\nDST-EE sensitivity to c (reported, not used to pick c):\n\n" + markdown(sensitivity))
    table += (f"\n\nTarget DST-EE >= RigL >= SET (mean accuracy): {'met' if ordering_met else 'NOT met'}; "
              f"mask-update overhead <= 5%: {'met' if worst_overhead <= 5 else 'NOT met'} "
              f"(worst {worst_overhead:.2f}%)")
    write_results(args.out, title, table, {"meta": meta, "summary": list(summary.values()),
                                           "paired": comparisons, "sensitivity": sensitivity,
                                           "ordering_met": ordering_met, "runs": rows})


if __name__ == "__main__":
    main()
