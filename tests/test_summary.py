"""summary(): per-module rows and totals."""

from __future__ import annotations

from torch import nn

from hf_sparse import GreenformerConfig, sparsify, summary
from hf_sparse.summary import count_parameters, matmul_flops_per_token


def test_rows_and_totals_for_known_shapes():
    model = nn.Sequential(nn.Linear(100, 300), nn.ReLU(), nn.Linear(300, 100, bias=False))
    dense_params = count_parameters(model)
    sparsify(model, GreenformerConfig(rank=10))
    report = summary(model)
    assert [r.name for r in report.rows] == ["0", "2"]
    first, second = report.rows
    assert (first.params_before, first.params_after) == (100 * 300 + 300, 10 * 400 + 300)
    assert (first.flops_before, first.flops_after) == (2 * 100 * 300, 2 * 10 * 400)
    assert (second.params_before, second.params_after) == (30000, 4000)
    assert first.detail == "rank 10" and first.shape == "100->300" and first.kind == "LED"
    assert report.total_params_before == dense_params
    assert report.total_params_after == count_parameters(model) == 4300 + 4000
    assert abs(report.param_ratio - 8300 / dense_params) < 1e-12
    text = str(report)
    assert "whole model" in text and "rank 10" in text and "30,000" in text
    assert report.to_dict()["totals"]["params_after"] == 8300
    assert matmul_flops_per_token(model) == 2 * 10 * 400 * 2


def test_summary_of_dense_model_is_empty(gpt2):
    report = summary(gpt2.build())
    assert report.rows == [] and report.total_params_before == report.total_params_after


def test_conv_rows(tmp_path):
    model = sparsify(nn.Sequential(nn.Conv2d(8, 16, 3)), GreenformerConfig(rank=4))
    (row,) = summary(model).rows
    assert row.shape == "8->16 k3x3" and row.params_before == 16 * 8 * 9 + 16
    assert row.params_after == 4 * (16 + 72) + 16
