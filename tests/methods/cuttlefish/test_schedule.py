"""CuttlefishSchedule driven by hand (no Trainer): when it switches, what it builds, optimizer state, Frobenius
decay, checkpoint state and the report."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_sparse import get_sparsity_config, sparse_layers, sparsify
from hf_sparse.methods.cuttlefish import CuttlefishConfig, CuttlefishSchedule
from hf_sparse.methods.greenformer.layers import LED
from hf_sparse.registry import SCHEDULES
from hf_sparse.summary import count_parameters
from hf_sparse.training import StepContext, apply_restructure

from ...conftest import TINY_MODELS


def lm_batches(n: int = 64, seq: int = 16, seed: int = 0) -> torch.Tensor:
    """Arithmetic token sequences (learnable): start + k * position, mod 63, shifted past the pad id."""
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 63, (n, 1), generator=gen)
    step = torch.randint(1, 4, (n, 1), generator=gen)
    return (start + step * torch.arange(seq)) % 63 + 1


class Driver:
    """A minimal training loop calling the schedule's hooks as SparseTrainer does."""

    def __init__(self, config: CuttlefishConfig, max_steps: int, steps_per_epoch: int | None = None,
                 lr: float = 1e-2, seed: int = 0) -> None:
        self.model = sparsify(TINY_MODELS["gpt2"].build(seed=seed).train(), config)
        self.schedule = CuttlefishSchedule(self.model, get_sparsity_config(self.model))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0)
        self.max_steps, self.steps_per_epoch = max_steps, steps_per_epoch
        self.data = lm_batches()
        self.gen = torch.Generator().manual_seed(seed)
        self.losses: list[float] = []
        self.restructures: list = []
        self.step = 0

    def ctx(self, step: int) -> StepContext:
        return StepContext(self.model, self.optimizer, step, self.max_steps,
                           epoch=step / self.steps_per_epoch if self.steps_per_epoch else 0.0)

    def apply(self, restructure) -> None:
        if restructure is not None:
            self.restructures.append((self.step, restructure))
            apply_restructure(self.model, self.optimizer, restructure)

    def run(self, until: int | None = None, autocast: torch.dtype | None = None) -> "Driver":
        """Train to step ``until``; ``autocast``: forward passes under CPU autocast in that dtype (hooks outside,
        as in the Trainer)."""
        if self.step == 0:
            self.schedule.on_train_begin(self.ctx(0))
        while self.step < (until or self.max_steps):
            batch = self.data[torch.randint(len(self.data), (8,), generator=self.gen)]
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                loss = self.model(input_ids=batch, labels=batch).loss
            reg = self.schedule.regularization_loss(self.model)
            (loss if reg is None else loss + reg).backward()
            self.losses.append(loss.item())
            self.step += 1
            self.schedule.before_optimizer_step(self.ctx(self.step))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.apply(self.schedule.after_optimizer_step(self.ctx(self.step)))
            if self.steps_per_epoch and self.step % self.steps_per_epoch == 0:
                self.apply(self.schedule.on_epoch_end(self.ctx(self.step)))
        return self


def test_registered_schedule():
    assert SCHEDULES["cuttlefish"] is CuttlefishSchedule and CuttlefishSchedule.restructures


def test_switches_once_every_rank_has_settled():
    # epsilon is huge: every layer counts as settled as soon as min_checks (2 checks at steps 2 and 4) are in
    driver = Driver(CuttlefishConfig(tau=0, rank_check_interval=2, smoothing_window=2, min_checks=2, epsilon=100.0),
                    max_steps=12)
    dense_params = count_parameters(driver.model)
    driver.run()
    schedule = driver.schedule
    assert [s for s, _ in driver.restructures] == [4]
    assert schedule.switch["step"] == 4 and schedule.switch["reason"] == "converged"
    assert [h["step"] for h in schedule.history] == [0, 2, 4]  # tracking stops after the switch
    ranks = schedule.history[-1]["ranks"]
    layers = sparse_layers(driver.model)
    assert layers and all(isinstance(m, LED) and m.rank == ranks[n] for n, m in layers.items())
    # only layers whose rank saves parameters: r (m + n) < m n
    for name, info in schedule.layers.items():
        m, n = info["shape"]
        assert (name in layers) == (ranks[name] * (m + n) < m * n)
    assert count_parameters(driver.model) == schedule.switch["params_after"] < dense_params
    plan = get_sparsity_config(driver.model).plan
    assert plan == {n: m.to_spec() for n, m in layers.items()} == schedule.switch["plan"]
    assert schedule.log_metrics()["cuttlefish/switch_step"] == 4.0
    # training continues in the factorized model and the loss keeps falling
    assert sum(driver.losses[-3:]) < sum(driver.losses[3:6])


def test_ranks_never_settle_forces_the_switch():
    config = CuttlefishConfig(tau=0, rank_check_interval=3, smoothing_window=1, min_checks=1, epsilon=1e-9,
                              max_full_rank_fraction=0.5)
    driver = Driver(config, max_steps=10).run()
    assert driver.schedule.switch["step"] == 5 and driver.schedule.switch["reason"].startswith("forced")
    assert [h["step"] for h in driver.schedule.history] == [0, 3, 5]
    assert driver.schedule.forced_step(10) == 5
    assert CuttlefishSchedule(driver.model, CuttlefishConfig(max_full_rank_fraction=1.0)).forced_step(10) is None


def test_epoch_interval_checks_at_epoch_ends():
    config = CuttlefishConfig(tau=0, rank_check_interval="epoch", smoothing_window=1, min_checks=2, epsilon=100.0,
                              max_full_rank_fraction=1.0)
    driver = Driver(config, max_steps=12, steps_per_epoch=3).run()
    assert [h["step"] for h in driver.schedule.history] == [0, 3, 6]
    assert [s for s, _ in driver.restructures] == [6]
    assert driver.schedule.history[-1]["epoch"] == 2.0


def test_no_stack_worth_factorizing_keeps_training_full_rank():
    config = CuttlefishConfig(tau=1e6, rank_check_interval=2, smoothing_window=1, min_checks=1, epsilon=100.0,
                              candidate_rank_ratios=[0.5], profile_repeats=1)
    driver = Driver(config, max_steps=6).run()
    schedule = driver.schedule
    assert schedule.switched and schedule.switch["step"] == 2 and schedule.switch["plan"] == {}
    assert not driver.restructures and not sparse_layers(driver.model)
    assert get_sparsity_config(driver.model).plan == {}
    # profiling ran at the first step with the shapes the layers really saw, then removed its hooks
    assert schedule.input_shapes["transformer.h.0.mlp.c_fc"] == [8, 16, 32]
    assert all(not driver.model.get_submodule(n)._forward_pre_hooks for n in schedule.layers)
    decisions = {d["stack"]: d for d in schedule.decisions}
    assert not any(d["factorize"] for d in decisions.values())
    fc = next(s for s in schedule.profile if s["stack"] == "transformer.h.*.mlp.c_fc")
    assert fc["dense_seconds"] > 0 and [c["rank"] for c in fc["candidates"]] == [16]


def test_profiling_times_layers_in_the_mixed_precision_training_uses(monkeypatch):
    """Forward passes under bf16 autocast: the candidates are timed under the same autocast (float32 timings
    would misjudge where factorizing pays off), recorded in the state and the report."""
    from hf_sparse.methods.cuttlefish import controller

    seen = []
    original = controller.profile_stacks

    def spy(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original(*args, **kwargs)

    monkeypatch.setattr(controller, "profile_stacks", spy)
    config = CuttlefishConfig(tau=1e6, rank_check_interval=2, smoothing_window=1, min_checks=1, epsilon=100.0,
                              candidate_rank_ratios=[0.5], profile_repeats=1)
    driver = Driver(config, max_steps=2).run(autocast=torch.bfloat16)
    assert seen == [(True, torch.bfloat16)]
    assert driver.schedule.autocast_dtype == "bfloat16" and driver.schedule.report()["profiled_autocast"] == "bfloat16"
    restored = CuttlefishSchedule(driver.model, get_sparsity_config(driver.model))
    restored.load_state_dict(driver.schedule.state_dict(), driver.model)
    assert restored.autocast_dtype == "bfloat16"
    plain = Driver(config, max_steps=2).run()
    assert plain.schedule.autocast_dtype is None and seen[-1][0] is False


def switch_at_4(**kwargs) -> Driver:
    """A run switching at step 4 (every layer counts as settled); the Restructure is kept, not applied."""
    config = CuttlefishConfig(tau=0, rank_check_interval=4, smoothing_window=1, min_checks=1, epsilon=100.0, **kwargs)
    driver = Driver(config, max_steps=8)
    driver.apply = lambda r: r and driver.restructures.append((driver.step, r))
    return driver


def test_optimizer_state_projection_and_lr_decay():
    driver = switch_at_4(factorized_lr_decay=0.5)
    captured = {}
    original = driver.schedule._switch

    def spy(ctx, reason):
        for name in driver.schedule.layers:
            dense = driver.model.get_submodule(name)
            captured[name] = ({k: v.clone() for k, v in driver.optimizer.state[dense.weight].items()},
                              {k: v.clone() for k, v in driver.optimizer.state[dense.bias].items()})
        return original(ctx, reason)

    driver.schedule._switch = spy
    driver.run(until=4)
    (_, restructure), = driver.restructures
    assert restructure.lr_scale == 0.5
    name, layer = next(iter(restructure.replacements.items()))
    dense_state, bias_state = captured[name]
    dense_m = dense_state["exp_avg"].t()  # Conv1D state is (in, out): as an (out, in) matrix
    dense_v = dense_state["exp_avg_sq"].t()
    u, v = layer.u_weight.detach(), layer.v_weight.detach()
    state_u, state_v = restructure.optimizer_state[layer.u_weight], restructure.optimizer_state[layer.v_weight]
    torch.testing.assert_close(state_u["exp_avg"], dense_m @ v.t())
    torch.testing.assert_close(state_v["exp_avg"], u.t() @ dense_m)
    torch.testing.assert_close(state_u["exp_avg_sq"], dense_v @ v.square().t())
    torch.testing.assert_close(state_v["exp_avg_sq"], u.square().t() @ dense_v)
    assert (state_u["exp_avg_sq"] >= 0).all() and int(state_u["step"]) == 4
    torch.testing.assert_close(restructure.optimizer_state[layer.bias]["exp_avg"], bias_state["exp_avg"])

    fresh = switch_at_4(project_optimizer_state=False).run(until=4)
    (_, restructure), = fresh.restructures
    layer = next(iter(restructure.replacements.values()))
    assert layer.u_weight not in restructure.optimizer_state and layer.bias in restructure.optimizer_state
    assert restructure.lr_scale == 1.0 and not restructure.no_weight_decay


def test_frobenius_decay_value_and_weight_decay_exclusion():
    driver = switch_at_4(frobenius_decay=0.01)
    assert driver.schedule.regularization_loss(driver.model) is None  # full rank: nothing to decay
    assert driver.schedule.no_weight_decay_names(driver.model) == set()
    driver.run(until=4)
    (_, restructure), = driver.restructures
    apply_restructure(driver.model, driver.optimizer, restructure)
    layers = sparse_layers(driver.model)
    expected = 0.005 * sum((m.u_weight @ m.v_weight).square().sum() for m in layers.values())
    got = driver.schedule.regularization_loss(driver.model)
    torch.testing.assert_close(got, expected)
    names = {f"{n}.{p}" for n in layers for p in ("u_weight", "v_weight")}
    assert driver.schedule.no_weight_decay_names(driver.model) == names == restructure.no_weight_decay
    got.backward()
    layer = next(iter(layers.values()))
    product = (layer.u_weight @ layer.v_weight).detach()
    torch.testing.assert_close(layer.u_weight.grad, 0.01 * product @ layer.v_weight.detach().t())


def test_state_round_trip_rebuilds_structure_and_reloads(tmp_path):
    config = CuttlefishConfig(tau=0, rank_check_interval=4, smoothing_window=1, min_checks=1, epsilon=100.0)
    driver = Driver(config, max_steps=8).run()
    assert driver.schedule.switch["plan"]
    state = driver.schedule.state_dict()
    weights = driver.model.state_dict()
    # a fresh dense model + schedule, restored as on resume: the factorized layers come back, weights fit
    model = sparsify(TINY_MODELS["gpt2"].build(seed=1).train(), config)
    schedule = CuttlefishSchedule(model, get_sparsity_config(model))
    schedule.load_state_dict(state, model)
    assert {n: m.to_spec() for n, m in sparse_layers(model).items()} == driver.schedule.switch["plan"]
    model.load_state_dict(weights)
    assert schedule.history == driver.schedule.history and schedule.switch == driver.schedule.switch
    assert get_sparsity_config(model).plan == driver.schedule.switch["plan"]
    with pytest.raises(ValueError, match="version"):
        schedule.load_state_dict({**state, "version": 99}, model)
    # save + plain from_pretrained rebuilds the factorized model
    driver.model.eval().save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert sparse_layers(reloaded).keys() == sparse_layers(driver.model).keys()
    ids = lm_batches(2)
    torch.testing.assert_close(reloaded(input_ids=ids).logits, driver.model(input_ids=ids).logits)
    # a schedule built on the reloaded model knows it has switched: no tracking, only Frobenius decay
    again = CuttlefishSchedule(reloaded, get_sparsity_config(reloaded))
    assert again.switched and again.factorized_names() == list(driver.schedule.switch["plan"])


def test_report_files(tmp_path):
    config = CuttlefishConfig(tau=0, rank_check_interval=2, smoothing_window=1, min_checks=2, epsilon=100.0)
    driver = Driver(config, max_steps=10).run()
    driver.schedule.save_report(str(tmp_path))
    report = json.loads((tmp_path / "cuttlefish_report.json").read_text())
    assert report["chosen"]["E_step"] == 4
    assert report["chosen"]["R_ranks"] == driver.schedule.switch["ranks"]
    assert report["chosen"]["K_factorized_stacks"] == [s["stack"] for s in report["stacks"] if s["factorize"]]
    assert [h["step"] for h in report["history"]] == [0, 2, 4]
    assert report["config"]["method"] == "cuttlefish" and "plan" in report["switch"]
    assert math.isfinite(report["seconds"]["rank_tracking"])
    png = (tmp_path / "cuttlefish_ranks.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
