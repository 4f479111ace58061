"""SVD-LLM / ASVD / FWSVD solvers and budget allocation through sparsify."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from hf_sparse import GreenformerConfig, get_sparsity_config, sparse_layers, sparsify
from hf_sparse.calibration import collect_stats
from hf_sparse.methods.greenformer.allocation import allocate_sensitivity
from hf_sparse.methods.greenformer.solvers import svd_factors


class Net(nn.Module):
    def __init__(self, n_in: int = 24, hidden: int = 32) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, hidden)
        self.act = nn.ReLU()
        self.proj = nn.Linear(hidden, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


def _anisotropic_inputs(n_in: int = 24, tokens: int = 400, seed: int = 0, dead: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=gen) * torch.logspace(0, -2, n_in)[:, None]
    x = torch.randn(tokens, n_in, generator=gen) @ mix
    if dead is not None:
        x[:, dead] = 0
    return x


def _output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(x.double() @ (w.double() - w_hat.double()).T).item()


@pytest.mark.parametrize("rank", [2, 6, 12])
def test_svd_llm_output_error_equals_dropped_whitened_singular_values(rank):
    torch.manual_seed(0)
    model = Net()
    w = model.fc.weight.detach().clone()
    x = _anisotropic_inputs()
    sparsify(model, GreenformerConfig(rank=rank, solver="svd-llm", target_modules=["fc"]),
             calibration_data=[{"x": x[:200]}, {"x": x[200:]}])
    w_hat = model.fc.dense_weight().detach()
    chol = torch.linalg.cholesky(x.double().T @ x.double())
    s = torch.linalg.svdvals(w.double() @ chol)
    expected = s[rank:].square().sum().sqrt().item()
    assert _output_error(x, w, w_hat) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    u, v = svd_factors(w, rank)
    assert _output_error(x, w, w_hat) <= _output_error(x, w, u @ v) * (1 + 1e-6)


def test_svd_llm_jitter_fallback_on_singular_gram(caplog):
    torch.manual_seed(0)
    model = Net()
    x = _anisotropic_inputs(dead=3)
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        sparsify(model, GreenformerConfig(rank=4, solver="svd-llm", target_modules=["fc"]), calibration_data=[{"x": x}])
    assert "not positive definite" in caplog.text and "jitter" in caplog.text
    assert torch.isfinite(model.fc.dense_weight()).all()
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("solver", ["asvd", "fwsvd"])
def test_scaled_solvers_minimize_their_weighted_error(gpt2, solver):
    model = gpt2.build()
    batches = [{"input_ids": torch.randint(1, 64, (4, 12), generator=torch.Generator().manual_seed(i))}
               for i in range(3)]
    name = "transformer.h.0.mlp.c_fc"
    (stats,) = list(collect_stats(model, [name], batches, fisher=solver == "fwsvd", progress=False))
    w = model.get_submodule(name).weight.detach().T.double().clone()  # Conv1D: (in, out) -> (out, in)
    scale = stats[name].abs_mean.pow(0.5) if solver == "asvd" else stats[name].fisher.sum(0).sqrt()
    sparsify(model, GreenformerConfig(rank=6, solver=solver, target_modules=[name]), calibration_data=batches)
    w_hat = model.get_submodule(name).dense_weight().detach().double()
    u, v = svd_factors(w, 6)
    weighted = torch.linalg.matrix_norm((w - w_hat) * scale).item()
    plain = torch.linalg.matrix_norm((w - u @ v) * scale).item()
    assert weighted <= plain * (1 + 1e-5)
    assert weighted < plain


@pytest.mark.parametrize("allocation", ["uniform", "stable_rank", "sensitivity"])
@pytest.mark.parametrize("param_ratio", [0.3, 0.5])
def test_budget_is_met_within_one_percent(llama_calibration, allocation, param_ratio):
    build, batches = llama_calibration
    model = build()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    total = sum(model.get_submodule(n).weight.numel() for n in names)
    cfg = GreenformerConfig(param_ratio=param_ratio, allocation=allocation, solver="svd-llm",
                            sensitivity_ratios=[0.2, 0.4, 0.6, 0.8])
    sparsify(model, cfg, calibration_data=batches)
    kept = 0
    for n in names:
        module = model.get_submodule(n)
        kept += module.weight.numel() if isinstance(module, nn.Linear) else module.u_weight.numel() + \
            module.v_weight.numel()
    achieved = kept / total
    assert abs(achieved - param_ratio) <= 0.01 * param_ratio
    report = get_sparsity_config(model).allocation_report
    assert report["achieved_param_ratio"] == pytest.approx(achieved)
    assert report["allocation"] == allocation and report["target_param_ratio"] == param_ratio


def test_sensitivity_gives_rank_to_the_sensitive_layer():
    shapes = [(64, 64), (64, 64)]
    sensitive = {r: 10.0 / r for r in range(1, 32)}
    robust = {r: 0.1 / r for r in range(1, 32)}
    ranks = allocate_sensitivity(shapes, [sensitive, robust], 0.4)
    assert ranks[0] > ranks[1]


def test_data_aware_run_is_deterministic(llama_calibration):
    build, batches = llama_calibration
    cfg = GreenformerConfig(param_ratio=0.5, allocation="sensitivity", solver="svd-llm",
                            sensitivity_ratios=[0.25, 0.5, 0.75])
    first, second = sparsify(build(), cfg, calibration_data=batches), sparsify(build(), cfg, calibration_data=batches)
    assert get_sparsity_config(first).plan == get_sparsity_config(second).plan
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                 strict=True))


def test_missing_calibration_fails_before_touching_the_model(gpt2, tmp_path):
    model = gpt2.build()
    with pytest.raises(ValueError, match="calibration_data is required"):
        sparsify(model, GreenformerConfig(rank=4, solver="svd-llm"))
    assert not sparse_layers(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="calibration data"):
        AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=GreenformerConfig(rank=4, solver="asvd"))


def test_sensitivity_failure_restores_the_model(llama_calibration, monkeypatch):
    build, batches = llama_calibration
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}
    from hf_sparse.methods.greenformer import model as glue

    real = glue.calibration_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(glue, "calibration_loss", flaky)
    with pytest.raises(RuntimeError, match="interrupted"):
        sparsify(model, GreenformerConfig(param_ratio=0.5, allocation="sensitivity"), calibration_data=batches)
    assert not sparse_layers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_conv_layers_fall_back_to_plain_svd(caplog):
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 6, 5))
    with caplog.at_level(logging.INFO, logger="hf_sparse"):
        sparsify(model, GreenformerConfig(rank=2, solver="asvd"), calibration_data=[{"input": torch.randn(3, 4, 8)}])
    assert "plain SVD" in caplog.text and len(sparse_layers(model)) == 2


def test_config_validation_for_new_fields():
    with pytest.raises(ValueError, match="exclusive"):
        GreenformerConfig(rank=4, param_ratio=0.5)
    with pytest.raises(ValueError, match="param_ratio"):
        GreenformerConfig(allocation="stable_rank")
    with pytest.raises(ValueError, match="SVD-family"):
        GreenformerConfig(param_ratio=0.5, allocation="sensitivity", solver="snmf")
    with pytest.raises(ValueError, match="param_ratio"):
        GreenformerConfig(param_ratio=1.0)
    with pytest.raises(ValueError, match="asvd_alpha"):
        GreenformerConfig(asvd_alpha=3.0)
    with pytest.raises(ValueError, match="sensitivity_ratios"):
        GreenformerConfig(param_ratio=0.5, sensitivity_ratios=[0.5, 1.5])
    with pytest.raises(ValueError, match="max_layers_per_pass"):
        GreenformerConfig(max_layers_per_pass=0)
    assert GreenformerConfig(solver="fwsvd").needs_calibration
    assert not GreenformerConfig(param_ratio=0.5, allocation="stable_rank").needs_calibration
