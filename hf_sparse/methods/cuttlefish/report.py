"""Cuttlefish's human-readable outputs: a JSON report and a plot of the rank trajectories.

The plot has one panel per layer stack: the scaled stable rank of every layer against the optimizer step, the
switch step as a vertical line and each factorized layer's chosen rank as a marker (like figures 2-3 of the paper).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

REPORT_JSON = "cuttlefish_report.json"
REPORT_PNG = "cuttlefish_ranks.png"


def write_report(report: dict[str, Any], output_dir: str | os.PathLike) -> tuple[str, str]:
    """Write ``cuttlefish_report.json`` and ``cuttlefish_ranks.png`` into ``output_dir``; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, REPORT_JSON)
    with open(json_path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, default=_jsonable)
        fh.write("\n")
    png_path = os.path.join(output_dir, REPORT_PNG)
    plot_ranks(report, png_path)
    return json_path, png_path


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _short_name(name: str) -> str:
    """The layer indices of ``name`` (``h.3.mlp.c_fc`` -> ``3``), or the name itself when it has none."""
    numbers = re.findall(r"(?:^|\.)(\d+)(?=\.|$)", name)
    return ".".join(numbers) if numbers else name


def plot_ranks(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Rank trajectories per stack with the switch marked (a matplotlib ``Figure``; pyplot's state is untouched)."""
    from matplotlib.figure import Figure

    history = report.get("history", [])
    stacks = report.get("stacks") or [{"stack": "layers", "layers": list(report.get("layers", {}))}]
    switch = report.get("switch") or {}
    chosen = switch.get("ranks", {})
    cols = min(3, max(1, len(stacks)))
    rows = math.ceil(len(stacks) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    steps = [h["step"] for h in history]
    for ax, stack in zip(axes.flat, stacks, strict=False):
        for name in stack["layers"]:
            ranks = [h["ranks"].get(name) for h in history]
            (line,) = ax.plot(steps, ranks, marker=".", linewidth=1, label=_short_name(name))
            if name in chosen and switch.get("step") is not None:
                ax.plot([switch["step"]], [chosen[name]], marker="o", color=line.get_color())
        if switch.get("step") is not None:
            ax.axvline(switch["step"], color="black", linestyle="--", linewidth=1)
        factorized = stack.get("factorize")
        suffix = "" if factorized is None else (" (factorized)" if factorized else " (kept dense)")
        ax.set_title(f"{stack['stack']}{suffix}", fontsize=8)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("scaled stable rank")
        ax.grid(alpha=0.3)
        if 1 < len(stack["layers"]) <= 12:
            ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(stacks):]:
        ax.axis("off")
    title = "Cuttlefish rank trajectories"
    if switch.get("step") is not None:
        title += f" - switch at step {switch['step']} ({switch.get('reason', '')})"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
