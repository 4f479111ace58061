"""The GPU kernel benchmark runs end to end on CPU (``--smoke``: Triton interpreter, tiny shapes), so a session
that is lent a GPU can run it as is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="Triton is not installed (pip install 'hf-sparse[triton]')")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_kernels_smoke_prints_every_table():
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_SPARSE_BACKEND": "auto", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "bench_kernels.py", "--smoke"], cwd=BENCHMARKS, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "### Whole PixelflyLinear" in out.stdout and "### Causal attention" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 6 + 4 + 1, out.stdout  # linear (2 dtypes x 3 densities), layer (2 x 2), attention
    assert not any("nan" in row.lower() for row in rows)
