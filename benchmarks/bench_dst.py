"""DST-EE vs RigL vs SET (vs dense): accuracy, exploration degree, mask-update overhead, on two small CPU tasks.

Every network is trained from scratch at 90% sparsity (ERK over its weight layers) with the same initial weights
and mask, data order, steps, optimizer and LR schedule for every method of a seed; only the growth rule (and,
with ``--task mnist1d``, the validation-selected mask-update settings) differs. Training is a plain PyTorch loop
calling ``DSTEESchedule``'s hooks exactly where ``SparseTrainer`` calls them (after backward and clipping / right
after ``optimizer.step()``).

``--task digits`` (default): scikit-learn's digits (1797 8x8 images, ships with scikit-learn), an MLP
64-hidden-hidden-10, fixed settings (update interval, drop fraction, ``c`` from the command line, not tuned).
Digits is small, so each seed runs a stratified 5-fold cross-validation and its accuracy is pooled over all 1797
held-out predictions; ``--c-grid`` adds a sensitivity table for other values of ``c``, reported, never selected.

``--task mnist1d``: MNIST-1D (Greydanus 2020; 4000 train / 1000 test sequences of length 40, 10 classes),
generated procedurally by the ``mnist1d`` package (``make_dataset`` with its default arguments, seed 42; no
download; ``pip install mnist1d``). Harder than digits: MLPs stay near 60-70%, a small CNN gets over 90%.
``--arch cnn`` (default: the MNIST-1D paper's 1D CNN, three stride-2 convolutions and a linear head,
``--channels`` wide) or ``mlp`` (40-hidden-hidden-10). Protocol:

1. selection: a stratified 20% validation split is carved from the 4000 training sequences (the test set is
   never looked at). Each sparse method trains on the other 80% for every setting of the same grid
   ``--update-intervals`` x ``--drop-fractions`` (DST-EE also over ``--c-values``, its extra hyper-parameter),
   for the ``--tune-seeds``, and keeps the setting with the best mean validation accuracy;
2. test: each method with its selected setting (dense: nothing to select) trains on all 4000 training sequences
   for every seed of ``--seeds``, and is evaluated once on the 1000 test sequences. The table gives mean, std,
   per-seed values and per-seed paired differences (same initial weights, mask and data order within a seed).
   A control row runs DST-EE with ``c`` fixed at the config default, selected over the schedule grid only (the
   same selection budget as SET and RigL).

``--shared-schedule`` instead gives all sparse methods one update interval / drop fraction (the grid point whose
validation accuracy, averaged over the three methods at their best there, is highest; DST-EE's ``c`` is still
selected), so that only the growth rule differs. ``--reuse FILE.json`` takes the runs of an earlier result file
with the same settings instead of training them again (runs are deterministic; timings come from that file).

Overhead: wall time inside the schedule's hooks (gradient collection, mask updates, bookkeeping) plus the extra
backward time of the steps that record dense gradients, as a share of the training time (forward, backward,
optimizer and hooks; evaluation excluded). One thread (the models are far too small for more).

    python benchmarks/bench_dst.py                          # digits, hidden 256, 3000 steps, seeds 0 1 2, 5 folds
    python benchmarks/bench_dst.py --c-grid 1e-4 1e-2 --update-interval 100
    python benchmarks/bench_dst.py --task mnist1d           # 1D CNN (64 channels), 6000 steps, test seeds 0-9
    python benchmarks/bench_dst.py --task mnist1d --shared-schedule --reuse benchmarks/results/dst_mnist1d_cpu.json \
        --out benchmarks/results/dst_mnist1d_shared_cpu
    python benchmarks/bench_dst.py --task mnist1d --arch mlp --out benchmarks/results/dst_mnist1d_mlp_cpu
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import cpu_name, write_results
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import nn

from hf_sparse import get_sparsity_config, sparsify
from hf_sparse.methods.dst import DSTEEConfig, DSTEESchedule
from hf_sparse.training import StepContext

METHODS = ("dense", "set", "rigl", "dst-ee")
SPARSE = ("set", "rigl", "dst-ee")
Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_train, y_train, x_eval, y_eval


# -- data -------------------------------------------------------------------------------------------------------
def load_folds(folds: int) -> list[Data]:
    """Digits: ``(x_train, y_train, x_eval, y_eval)`` per stratified fold, features standardized on the train part."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    splits = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(x.numpy(), y.numpy()):
        train, test = torch.as_tensor(train), torch.as_tensor(test)
        mean, std = x[train].mean(0), x[train].std(0) + 1e-3
        splits.append(((x[train] - mean) / std, y[train], (x[test] - mean) / std, y[test]))
    return splits


def load_mnist1d(val_fraction: float) -> tuple[Data, Data]:
    """MNIST-1D generated locally: ``(selection split, test split)``. The selection split trains on 80% of the
    4000 training sequences and evaluates on the other (stratified) 20%; the test split trains on all 4000 and
    evaluates on the 1000 test sequences. Inputs ``(n, 40)`` float32 (the generator already standardizes them)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # optional benchmark dependency
        raise SystemExit("--task mnist1d needs the mnist1d package: pip install mnist1d") from err
    data = make_dataset(get_dataset_args())  # procedural, seed 42 (the package's default arguments)
    x, y = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"], dtype=torch.long)
    x_test, y_test = torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"], dtype=torch.long)
    fit, val = train_test_split(torch.arange(len(y)).numpy(), test_size=val_fraction, stratify=y.numpy(),
                                random_state=0)
    fit, val = torch.as_tensor(fit), torch.as_tensor(val)
    return (x[fit], y[fit], x[val], y[val]), (x, y, x_test, y_test)


# -- models -----------------------------------------------------------------------------------------------------
def mlp(n_in: int, hidden: int) -> Callable[[int], nn.Module]:
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 10))
    return build


def cnn1d(channels: int) -> Callable[[int], nn.Module]:
    """MNIST-1D's CNN: input ``(n, 40)`` -> ``(n, 1, 40)`` -> 19 -> 10 -> 5 positions -> linear to 10 classes."""
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, channels, 5, 2, 1), nn.ReLU(),
                             nn.Conv1d(channels, channels, 3, 2, 1), nn.ReLU(),
                             nn.Conv1d(channels, channels, 3, 2, 1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(channels * 5, 10))
    return build


# -- one run ----------------------------------------------------------------------------------------------------
def train_one(method: str, seed: int, data: Data, build: Callable[[int], nn.Module], args: argparse.Namespace,
              update_interval: int, drop_fraction: float, c: float) -> dict:
    x_train, y_train, x_eval, y_eval = data
    model = build(seed)
    schedule = None
    if method != "dense":
        config = DSTEEConfig(sparsity=args.sparsity, update_interval=update_interval, drop_fraction=drop_fraction,
                             grow=method, c=c, seed=seed)
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
    sparse = schedule is not None
    result = {"method": method, "seed": seed, "c": c if method == "dst-ee" else None,
              "update_interval": update_interval if sparse else None,
              "drop_fraction": drop_fraction if sparse else None, "correct": correct, "evaluated": len(y_eval),
              "train_seconds": train_seconds, "step_ms": 1e3 * statistics.median(step_times[False])}
    if sparse:
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


# -- summaries --------------------------------------------------------------------------------------------------
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
        entry["overhead_pct_max_run"] = max(r["overhead_pct"] for r in runs)
        entry["sparsity"] = runs[0]["sparsity"]
    return entry


def markdown(summary: list[dict], settings: dict[str, str] | None = None) -> str:
    extra = " setting |" if settings else ""
    lines = [f"| method |{extra} sparsity | accuracy % (mean ± std over seeds) | per seed | exploration degree R "
             "| mask-update overhead | median step (ms) |", "|---|" + ("---|" if settings else "") + "---|" * 6]
    for s in summary:
        sparsity = f"{s['sparsity']:.2f}" if "sparsity" in s else "0"
        explore = f"{s['exploration_degree']:.3f}" if "exploration_degree" in s else "-"
        overhead = f"{s['overhead_pct']:.2f}%" if "overhead_pct" in s else "-"
        seeds = " / ".join(f"{a:.2f}" for a in s["per_seed_accuracy"].values())
        setting = f" {settings.get(s['method'], '-')} |" if settings else ""
        lines.append(f"| {s['method']} |{setting} {sparsity} | {s['accuracy_mean']:.2f} ± {s['accuracy_std']:.2f} "
                     f"| {seeds} | {explore} | {overhead} | {s['step_ms']:.3f} |")
    return "\n".join(lines)


def paired(summary: dict[str, dict], better: str, worse: str) -> dict:
    """Per-seed accuracy differences ``better - worse`` (same seeds, folds, initial weights and data order)."""
    diffs = [summary[better]["per_seed_accuracy"][s] - summary[worse]["per_seed_accuracy"][s]
             for s in summary[better]["per_seed_accuracy"]]
    sem = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return {"pair": f"{better} - {worse}", "mean": statistics.mean(diffs), "sem": sem, "per_seed": diffs,
            "seeds_ahead_or_tied": sum(d >= 0 for d in diffs)}


def paired_table(comparisons: list[dict]) -> str:
    table = ("Paired per-seed differences (accuracy points; sem = std of the differences / sqrt(seeds)):\n\n"
             "| pair | mean ± sem | per seed | seeds ahead or tied |\n|---|---|---|---|\n")
    return table + "\n".join(
        f"| {p['pair']} | {p['mean']:+.2f} ± {p['sem']:.2f} | {' / '.join(f'{d:+.2f}' for d in p['per_seed'])} | "
        f"{p['seeds_ahead_or_tied']}/{len(p['per_seed'])} |" for p in comparisons)


def verdict(summary: dict[str, dict]) -> tuple[bool, float, str]:
    mean = {m: summary[m]["accuracy_mean"] for m in METHODS}
    ordering_met = mean["dst-ee"] >= mean["rigl"] >= mean["set"]
    worst_overhead = max(summary[m]["overhead_pct"] for m in SPARSE)
    text = (f"Target DST-EE >= RigL >= SET (mean accuracy): {'met' if ordering_met else 'NOT met'}; "
            f"mask-update overhead <= 5%: {'met' if worst_overhead <= 5 else 'NOT met'} "
            f"(worst {worst_overhead:.2f}%)")
    return ordering_met, worst_overhead, text


def base_meta(args: argparse.Namespace) -> dict:
    return {"device": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "sparsity": args.sparsity, "distribution": "erk", "steps": args.steps, "batch_size": args.batch_size,
            "optimizer": f"SGD nesterov momentum 0.9, lr {args.lr} cosine, weight decay {args.weight_decay}, "
                         "gradient clipping at 5", "schedule": "cosine drop fraction, masks fixed after 75% of "
                         "the steps", "eps": 1.0,
            "loop": "plain PyTorch loop calling DSTEESchedule hooks (the calls SparseTrainer makes)"}


# -- digits -----------------------------------------------------------------------------------------------------
def run_digits(args: argparse.Namespace) -> None:
    folds = load_folds(args.folds)
    build = mlp(64, args.hidden)
    rows = []
    for seed in args.seeds:
        for fold, data in enumerate(folds):
            for method in METHODS:
                for c in ([args.c, *args.c_grid] if method == "dst-ee" else [0.0]):
                    rows.append({**train_one(method, seed, data, build, args, args.update_interval,
                                             args.drop_fraction, c), "fold": fold})
            done = [r for r in rows if r["seed"] == seed and r["fold"] == fold]
            print(f"  seed {seed} fold {fold}: " + ", ".join(
                f"{label(r, args.c)} {100 * r['correct'] / r['evaluated']:.1f}" for r in done), flush=True)
    main_rows = {m: [r for r in rows if r["method"] == m and r["c"] in (None, args.c)] for m in METHODS}
    summary = {m: aggregate(m, main_rows[m]) for m in METHODS}
    sensitivity = [aggregate(f"dst-ee c={c:g}", [r for r in rows if r["method"] == "dst-ee" and r["c"] == c])
                   for c in [args.c, *args.c_grid]]
    comparisons = [paired(summary, "dst-ee", "rigl"), paired(summary, "rigl", "set"),
                   paired(summary, "dst-ee", "set")]
    ordering_met, _, text = verdict(summary)
    meta = {**base_meta(args),
            "task": f"sklearn digits (1797 images), stratified {args.folds}-fold CV (random_state=0), accuracy "
                    "pooled over the folds per seed",
            "model": f"MLP 64-{args.hidden}-{args.hidden}-10", "update_interval": args.update_interval,
            "drop_fraction": args.drop_fraction, "c": args.c, "seeds": args.seeds}
    title = (f"DST-EE / RigL / SET on digits: MLP 64-{args.hidden}-{args.hidden}-10 at {args.sparsity:.0%} sparsity "
             f"(ERK), {args.steps} steps, update every {args.update_interval} steps, c={args.c:g}; "
             f"{len(args.seeds)} seeds x {args.folds}-fold CV; {meta['device']}, {args.threads} thread, "
             f"torch {meta['torch']}")
    table = markdown(list(summary.values())) + "\n\n" + paired_table(comparisons)
    table += ("\n\nDST-EE sensitivity to c (reported, not used to pick c):\n\n" + markdown(sensitivity))
    table += "\n\n" + text
    write_results(args.out, title, table, {"meta": meta, "summary": list(summary.values()),
                                           "paired": comparisons, "sensitivity": sensitivity,
                                           "ordering_met": ordering_met, "runs": rows})


# -- MNIST-1D ---------------------------------------------------------------------------------------------------
def setting_name(method: str, setting: tuple[int, float, float]) -> str:
    ui, df, c = setting
    return f"interval {ui}, drop {df:g}" + (f", c {c:g}" if method == "dst-ee" else "")


REUSE_KEYS = ("steps", "batch_size", "optimizer", "model", "sparsity", "task")


def run_key(phase: str, method: str, seed: int, setting: tuple[int, float, float]) -> tuple:
    sparse = method != "dense"
    return (phase, method, seed, setting[0] if sparse else None, setting[1] if sparse else None,
            setting[2] if method == "dst-ee" else None)


def load_reuse(path: Path | None, meta: dict) -> dict[tuple, dict]:
    """Runs of an earlier MNIST-1D result file with the same task, model and training settings, by
    ``run_key`` (runs are deterministic given these, so they are reused instead of trained again)."""
    if path is None:
        return {}
    old = json.loads(path.read_text())
    for key in REUSE_KEYS:
        if old["meta"].get(key) != meta[key]:
            raise SystemExit(f"--reuse {path}: {key} differs ({old['meta'].get(key)!r} vs {meta[key]!r})")
    cache = {}
    for phase, runs in (("select", old["selection_runs"]), ("test", old["runs"] + old.get("fixed_c_runs", []))):
        for r in runs:
            cache[run_key(phase, r["method"], r["seed"], (r["update_interval"], r["drop_fraction"], r["c"]))] = r
    return cache


def run_mnist1d(args: argparse.Namespace) -> None:
    select_data, test_data = load_mnist1d(args.val_fraction)
    if args.arch == "mlp":
        build, model_name = mlp(40, args.hidden), f"MLP 40-{args.hidden}-{args.hidden}-10"
    else:
        build, model_name = cnn1d(args.channels), (f"1D CNN conv(1->{args.channels},k5,s2) "
                                                   f"conv({args.channels}->{args.channels},k3,s2) x2, linear "
                                                   f"{5 * args.channels}->10")
    schedules = list(itertools.product(args.update_intervals, args.drop_fractions))
    n_select = len(select_data[1])
    task = (f"MNIST-1D (mnist1d.make_dataset, default arguments, seed 42): {len(test_data[1])} train / "
            f"{len(test_data[3])} test; selection on a stratified {args.val_fraction:.0%} validation split of the "
            f"training set ({n_select} fit / {len(select_data[3])} validation, random_state=0)")
    cache = load_reuse(args.reuse, {**base_meta(args), "task": task, "model": model_name})
    reused = 0

    def run(phase: str, method: str, seed: int, setting: tuple[int, float, float]) -> dict:
        nonlocal reused
        hit = cache.get(run_key(phase, method, seed, setting))
        if hit is not None:
            reused += 1
            return hit
        return train_one(method, seed, select_data if phase == "select" else test_data, build, args, *setting)

    grid = {m: [(ui, df, c) for ui, df in schedules for c in (args.c_values if m == "dst-ee" else [0.0])]
            for m in SPARSE}
    # 1. selection on the validation split
    selection_rows, selection, val_scores = [], {}, {}
    for method in SPARSE:
        scores = val_scores[method] = []
        for setting in grid[method]:
            runs = [run("select", method, seed, setting) for seed in args.tune_seeds]
            selection_rows += runs
            acc = statistics.mean(100 * r["correct"] / r["evaluated"] for r in runs)
            scores.append((acc, setting))
            print(f"  select {method:6s} {setting_name(method, setting):30s} val {acc:.2f}", flush=True)
        selection[method] = max(scores, key=lambda s: s[0])[1]  # first best in grid order on ties
    if args.shared_schedule:  # one schedule for all: best mean over the methods of their best validation accuracy
        def best_at(method: str, schedule: tuple[int, float]) -> tuple[float, tuple[int, float, float]]:
            return max((x for x in val_scores[method] if x[1][:2] == schedule), key=lambda x: x[0])

        shared = max(schedules, key=lambda sch: statistics.mean(best_at(m, sch)[0] for m in SPARSE))
        selection = {m: best_at(m, shared)[1] for m in SPARSE}
        print(f"  shared schedule: {setting_name('set', (*shared, 0.0))}", flush=True)
    # 2. test runs with the selected settings
    rows = []
    for seed in args.seeds:
        for method in METHODS:
            setting = selection.get(method, (1, 0.5, 0.0))  # dense ignores the setting
            rows.append(run("test", method, seed, setting))
        done = [r for r in rows if r["seed"] == seed]
        print(f"  test seed {seed}: " + ", ".join(f"{r['method']} {100 * r['correct'] / r['evaluated']:.1f}"
                                                   for r in done), flush=True)
    # control with DST-EE's tuning budget equal to the others': c fixed at the config default, same schedule grid
    fixed_c = DSTEEConfig().c
    fixed_name = f"dst-ee (c={fixed_c:g} fixed)"
    fixed_rows = []
    if fixed_c in args.c_values:
        fixed = max(((statistics.mean(100 * r["correct"] / r["evaluated"] for r in selection_rows
                                      if r["method"] == "dst-ee" and r["c"] == s[2]
                                      and (r["update_interval"], r["drop_fraction"]) == s[:2]), s)
                     for s in grid["dst-ee"] if s[2] == fixed_c
                     and (not args.shared_schedule or s[:2] == selection["dst-ee"][:2])), key=lambda x: x[0])[1]
        selection[fixed_name] = fixed
        if fixed == selection["dst-ee"]:
            fixed_rows = [r for r in rows if r["method"] == "dst-ee"]
        else:
            fixed_rows = [run("test", "dst-ee", seed, fixed) for seed in args.seeds]
            print("  fixed-c control: " + ", ".join(f"{100 * r['correct'] / r['evaluated']:.1f}" for r in fixed_rows),
                  flush=True)
    summary = {m: aggregate(m, [r for r in rows if r["method"] == m]) for m in METHODS}
    if fixed_rows:
        summary[fixed_name] = aggregate(fixed_name, fixed_rows)
    comparisons = [paired(summary, "dst-ee", "rigl"), paired(summary, "rigl", "set"),
                   paired(summary, "dst-ee", "set")]
    if fixed_rows:
        comparisons.append(paired(summary, fixed_name, "rigl"))
    ordering_met, _, text = verdict(summary)
    sel_table = ["| method | setting | validation accuracy % (mean over tune seeds) | per tune seed | R | overhead |",
                 "|---|---|---|---|---|---|"]
    for method in SPARSE:
        for setting in grid[method]:
            runs = [r for r in selection_rows if r["method"] == method
                    and (r["update_interval"], r["drop_fraction"], r["c"] or 0.0) == setting]
            accs = [100 * r["correct"] / r["evaluated"] for r in runs]
            mark = " **selected**" if setting == selection[method] else ""
            sel_table.append(f"| {method} | {setting_name(method, setting)}{mark} | {statistics.mean(accs):.2f} | "
                             f"{' / '.join(f'{a:.2f}' for a in accs)} | "
                             f"{statistics.mean(r['exploration_degree'] for r in runs):.3f} | "
                             f"{statistics.mean(r['overhead_pct'] for r in runs):.2f}% |")
    meta = {**base_meta(args), "task": task, "model": model_name, "shared_schedule": args.shared_schedule,
            "reused_runs": reused, "grid": {m: [list(s) for s in g] for m, g in grid.items()},
            "tune_seeds": args.tune_seeds, "selected": {m: list(s) for m, s in selection.items()},
            "seeds": args.seeds}
    title = (f"DST-EE / RigL / SET on MNIST-1D: {model_name} at {args.sparsity:.0%} sparsity (ERK), {args.steps} "
             f"steps, batch {args.batch_size}; " + ("one update interval / drop fraction shared by all methods, and "
             "DST-EE's c, selected" if args.shared_schedule else "update interval / drop fraction (and DST-EE's c) "
             "selected per method") + f" on a validation split; {len(args.seeds)} test seeds; {meta['device']}, "
             f"{args.threads} thread, torch {meta['torch']}")
    command = "python benchmarks/bench_dst.py " + " ".join(args.argv)
    shared_note = " (shared schedule)" if args.shared_schedule else ""
    settings = {m: setting_name("dst-ee" if m.startswith("dst-ee") else m, s) for m, s in selection.items()}
    table = (f"Command: `{command}`\n\n{meta['task']}. Optimizer: {meta['optimizer']}; drop-fraction schedule: "
             f"{meta['schedule']}.\n\nTest accuracy (each method with its validation-selected "
             f"setting{shared_note}):\n\n"
             + markdown(list(summary.values()), settings) + "\n\n" + paired_table(comparisons) + "\n\n" + text
             + (f"\n\n`{fixed_name}`: a control giving DST-EE the same selection budget as SET and RigL (the "
                "schedule grid only, c at the config default); the `dst-ee` row selects c as well." if fixed_rows
                else "")
             + f"\n\nSelection ({len(args.tune_seeds)} tune seeds {args.tune_seeds}, trained on the {n_select} fit "
               "sequences, scored on the validation split; the test set is not used):\n\n" + "\n".join(sel_table))
    write_results(args.out, title, table, {"meta": meta, "summary": list(summary.values()), "paired": comparisons,
                                           "ordering_met": ordering_met, "runs": rows, "fixed_c_runs": fixed_rows,
                                           "selection_runs": selection_rows})


def main() -> None:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("digits", "mnist1d"), default="digits")
    parser.add_argument("--arch", choices=("mlp", "cnn"), default="cnn", help="mnist1d only (digits: MLP)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--channels", type=int, default=64, help="CNN width (mnist1d --arch cnn)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=None, help="default: digits 3000, mnist1d 6000")
    parser.add_argument("--batch-size", type=int, default=None, help="default: digits 64, mnist1d 128")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: digits 0 1 2, mnist1d 0..9")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/dst_digits_cpu or dst_mnist1d_cpu (no suffix)")
    digits = parser.add_argument_group("digits (fixed settings)")
    digits.add_argument("--update-interval", type=int, default=50)
    digits.add_argument("--drop-fraction", type=float, default=0.3)
    digits.add_argument("--c", type=float, default=DSTEEConfig().c, help="DST-EE exploration weight (main table)")
    digits.add_argument("--c-grid", type=float, nargs="*", default=[1e-4, 1e-2],
                        help="extra c values for the sensitivity table")
    digits.add_argument("--folds", type=int, default=5)
    mnist = parser.add_argument_group("mnist1d (settings selected on a validation split)")
    mnist.add_argument("--update-intervals", type=int, nargs="+", default=[50, 200])
    mnist.add_argument("--drop-fractions", type=float, nargs="+", default=[0.3, 0.5])
    mnist.add_argument("--c-values", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2])
    mnist.add_argument("--tune-seeds", type=int, nargs="+", default=[100, 101, 102])
    mnist.add_argument("--val-fraction", type=float, default=0.2)
    mnist.add_argument("--shared-schedule", action="store_true",
                       help="one update interval / drop fraction for all sparse methods (the grid point with the best "
                            "validation accuracy averaged over the methods); DST-EE's c is still selected")
    mnist.add_argument("--reuse", type=Path, default=None,
                       help="JSON of an earlier mnist1d run with the same settings: its runs are reused, not retrained")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    mnist1d = args.task == "mnist1d"
    args.steps = args.steps or (6000 if mnist1d else 3000)
    args.batch_size = args.batch_size or (128 if mnist1d else 64)
    args.seeds = args.seeds if args.seeds is not None else (list(range(10)) if mnist1d else [0, 1, 2])
    args.out = args.out or Path(__file__).parent / "results" / ("dst_mnist1d_cpu" if mnist1d else "dst_digits_cpu")
    torch.set_num_threads(args.threads)
    run_mnist1d(args) if mnist1d else run_digits(args)


if __name__ == "__main__":
    main()
