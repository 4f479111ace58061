"""Two processes (torchrun, gloo, CPU): every rank switches at the same step with the same ranks and the same
profiling decision, and ends with identical weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]


def test_two_processes_switch_identically(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           str(ROOT / "tests" / "methods" / "cuttlefish" / "ddp_worker.py"), str(tmp_path)]
    # run by path from a neutral directory: hf_sparse must come from the install (the source tree lacks
    # hf_sparse.kernels, which the install maps from kernels/)
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert runs[0]["world_size"] == 2
    assert runs[0]["switch"]["step"] is not None and runs[0]["switch"]["plan"]
    assert runs[0]["switch"] == runs[1]["switch"]
    assert runs[0]["history"] == runs[1]["history"]
    # timings differ between processes; rank 0's table (and so the decision) is what both used
    assert runs[0]["profile"] == runs[1]["profile"]
    weights = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys() and any("u_weight" in k for k in weights[0])
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0, msg=key)
