"""End to end: a GPT-2 with a wide MLP trained from scratch, full rank vs Cuttlefish (full rank until the stable
ranks settle, profiling, rank tracking, the switch, then low rank), same data, same steps, same seed.

The two models train in lockstep: every step runs the full-rank model and the Cuttlefish model on the same batch
(alternating which goes first), each timed on its own, so both see the same machine state; on a machine shared
with other work the *ratio* is what to read. The Cuttlefish side calls its schedule's hooks exactly where
``SparseTrainer`` does and applies the switch with the trainer's own ``apply_restructure``; its time includes
profiling, rank tracking and building the switch. Byte-level tokens from the bundled corpus.

    python benchmarks/bench_cuttlefish.py                              # 4 layers x 256, MLP 2048, 200 steps
    python benchmarks/bench_cuttlefish.py --steps 40 --n-layer 2       # smoke run
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from pathlib import Path

import torch
from common import cpu_name, write_results
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from hf_sparse import get_sparsity_config, sparsify
from hf_sparse.data import byte_blocks, demo_corpus
from hf_sparse.methods.cuttlefish import CuttlefishConfig, CuttlefishSchedule
from hf_sparse.summary import count_parameters
from hf_sparse.training import StepContext, apply_restructure


class Run:
    """One model with its AdamW (weight decay 0.01), one-cycle LR (10% warm-up), gradient clipping at 1."""

    def __init__(self, model: GPT2LMHeadModel, steps: int, lr: float) -> None:
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=lr, total_steps=steps,
                                                             pct_start=0.1)
        self.steps = steps
        self.seconds = 0.0
        self.step_seconds: list[float] = []
        self.losses: list[float] = []
        config = get_sparsity_config(model)
        self.schedule = CuttlefishSchedule(model, config.configs[0]) if config is not None else None

    def ctx(self, step: int) -> StepContext:
        return StepContext(self.model, self.optimizer, step, self.steps)

    def begin(self) -> None:
        start = time.perf_counter()
        if self.schedule is not None:
            self.schedule.on_train_begin(self.ctx(0))
        self.seconds += time.perf_counter() - start

    def train_step(self, step: int, batch: torch.Tensor) -> None:
        start = time.perf_counter()
        loss = self.model(input_ids=batch, labels=batch).loss
        reg = self.schedule.regularization_loss(self.model) if self.schedule is not None else None
        (loss if reg is None else loss + reg).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.schedule is not None:
            self.schedule.before_optimizer_step(self.ctx(step))
        self.optimizer.step()
        if self.schedule is not None:
            restructure = self.schedule.after_optimizer_step(self.ctx(step))
            if restructure is not None:
                apply_restructure(self.model, self.optimizer, restructure, scheduler=self.scheduler)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        self.step_seconds.append(elapsed)
        self.losses.append(loss.item())

    @torch.no_grad()
    def eval_loss(self, blocks: torch.Tensor, batch: int) -> float:
        self.model.eval()
        losses = [self.model(input_ids=blocks[i:i + batch], labels=blocks[i:i + batch]).loss.item()
                  for i in range(0, len(blocks), batch)]
        self.model.train()
        return sum(losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-inner", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--rank-check-interval", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--smoothing-window", type=int, default=3)
    parser.add_argument("--min-checks", type=int, default=3)
    parser.add_argument("--tau", type=float, default=1.5)
    parser.add_argument("--max-full-rank-fraction", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cuttlefish_cpu")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="also write the schedule's report (JSON + rank plot) here")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("hf_sparse").setLevel(logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    blocks = byte_blocks(demo_corpus(), args.seq)
    blocks = blocks[torch.randperm(len(blocks), generator=torch.Generator().manual_seed(args.seed))]
    n_eval = max(args.batch, len(blocks) // 10)
    held_out, train = blocks[:n_eval], blocks[n_eval:]
    config = GPT2Config(vocab_size=256, n_positions=args.seq, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=max(1, args.n_embd // 64), n_inner=args.n_inner, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=10, eos_token_id=10)
    cf_config = CuttlefishConfig(rank_check_interval=args.rank_check_interval, epsilon=args.epsilon, tau=args.tau,
                                 smoothing_window=args.smoothing_window, min_checks=args.min_checks,
                                 max_full_rank_fraction=args.max_full_rank_fraction)
    runs = {}
    for name in ("full rank", "cuttlefish"):
        torch.manual_seed(args.seed)
        model = GPT2LMHeadModel(config)
        if name == "cuttlefish":
            sparsify(model, cf_config)
        runs[name] = Run(model, args.steps, args.lr)
    dense, cuttlefish = runs["full rank"], runs["cuttlefish"]
    params_before = count_parameters(dense.model)
    for run in runs.values():
        run.begin()
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        batch = train[torch.randint(len(train), (args.batch,), generator=gen)]
        order = (dense, cuttlefish) if step % 2 else (cuttlefish, dense)
        for run in order:
            run.train_step(step, batch)
        if step % max(1, args.steps // 10) == 0 or step == args.steps:
            print(f"  step {step:5d}  full rank loss {dense.losses[-1]:.3f} ({dense.seconds:.0f} s)  cuttlefish loss "
                  f"{cuttlefish.losses[-1]:.3f} ({cuttlefish.seconds:.0f} s)", flush=True)

    schedule = cuttlefish.schedule
    switch = schedule.switch or {}
    e_step = switch.get("step")
    results = {}
    for name, run in runs.items():
        results[name] = {"train_seconds": run.seconds, "eval_loss": run.eval_loss(held_out, args.batch),
                         "params": count_parameters(run.model),
                         "tokens_per_s": args.steps * args.batch * args.seq / run.seconds}
    speedup = dense.seconds / cuttlefish.seconds
    tracking = schedule.tracking_seconds
    phase = {}
    if e_step is not None:
        before, after = slice(0, e_step), slice(e_step, None)
        phase = {"full_rank_phase_speedup": sum(dense.step_seconds[before]) / sum(cuttlefish.step_seconds[before]),
                 "low_rank_phase_speedup": sum(dense.step_seconds[after]) / sum(cuttlefish.step_seconds[after])}
    chosen = schedule.report()["chosen"] or {}
    decisions = schedule.decisions
    payload = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": results, "speedup": speedup,
        "rank_tracking_seconds": tracking, "rank_tracking_fraction": tracking / cuttlefish.seconds,
        "profiling_seconds": schedule.profiling_seconds, "switch_seconds": schedule.switch_seconds,
        "eval_loss_change": results["cuttlefish"]["eval_loss"] / results["full rank"]["eval_loss"] - 1,
        "param_reduction": params_before / results["cuttlefish"]["params"],
        "switch": {"step": e_step, "reason": switch.get("reason")}, "chosen": chosen, "decisions": decisions,
        "history_steps": [h["step"] for h in schedule.history], "phase": phase,
    }
    title = (f"{cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), torch "
             f"{torch.__version__}, fp32; GPT-2 {args.n_layer} layers x {args.n_embd} (MLP {args.n_inner}), sequence "
             f"{args.seq}, batch {args.batch}, {args.steps} steps from scratch (AdamW, one-cycle LR {args.lr}), "
             f"byte-level bundled corpus; both models trained in lockstep on the same batches; Cuttlefish "
             f"rank_check_interval={args.rank_check_interval}, epsilon={args.epsilon}, tau={args.tau}, "
             f"smoothing_window={args.smoothing_window}, min_checks={args.min_checks}")
    lines = ["| model | params | train seconds | tokens/s | held-out loss | held-out perplexity |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['params']:,} | {r['train_seconds']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['eval_loss']:.3f} | {math.exp(r['eval_loss']):.2f} |")
    factorized = [d for d in decisions if d["factorize"]]
    kept = [d for d in decisions if not d["factorize"]]
    ranks = switch.get("ranks", {})
    lines += [
        "",
        f"Cuttlefish vs full rank: **{speedup:.2f}x** end-to-end training time, held-out loss "
        f"{payload['eval_loss_change'] * 100:+.2f}%, {payload['param_reduction']:.2f}x fewer parameters.",
        f"Rank tracking {tracking:.2f} s ({payload['rank_tracking_fraction'] * 100:.2f}% of Cuttlefish's training "
        f"time, {len(schedule.history)} measurements), profiling {schedule.profiling_seconds:.2f} s, building "
        f"the switch {schedule.switch_seconds:.2f} s.",
        f"E: switch at step {e_step} of {args.steps} ({switch.get('reason')}).",
        f"K: factorized {', '.join(d['stack'] for d in factorized) or 'nothing'}; kept dense "
        f"{', '.join(d['stack'] for d in kept) or 'nothing'}.",
        "R: " + ", ".join(f"{n} {r}" for n, r in ranks.items()),
    ]
    if phase:
        lines.append(f"Per phase (same steps): full-rank phase {phase['full_rank_phase_speedup']:.2f}x (overheads), "
                     f"low-rank phase {phase['low_rank_phase_speedup']:.2f}x.")
    lines += ["", "| stack | speedup at chosen ranks (profiled) | factorized |", "|---|---|---|"]
    for d in decisions:
        speed = "n/a" if d["speedup"] is None else f"{d['speedup']:.2f}x"
        lines.append(f"| {d['stack']} | {speed} | {'yes' if d['factorize'] else 'no'} |")
    write_results(args.out, title, "\n".join(lines), payload)
    if args.report_dir is not None:
        schedule.save_report(str(args.report_dir))


if __name__ == "__main__":
    main()
