"""Numerical faults: a NaN/Inf in the loss or the OT term stops the run at the step it happens with one
line naming the epoch, step and term (the last good checkpoint kept), or is skipped and counted with
``--nan-policy skip``, in float32 and under bf16 training alike; the OT term stays finite under bfloat16
autocast with tiny θ and huge features."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from otrobust import ot
from otrobust.cli.main import main
from otrobust.data import DATASETS, ImageData, get_dataset_spec, load_dataset
from otrobust.ot import GOTRegularizer, semidual_ot
from otrobust.store.checkpoint import checkpoint_path, load_checkpoint
from otrobust.training import methods
from otrobust.training.setup import step_seed

STEPS_PER_EPOCH = 4
FLAGS = ["--dataset", "digits", "--train-size", str(16 * STEPS_PER_EPOCH), "--val-size", "16", "--batch-size", "16",
         "--steps", "1", "--val-steps", "1", "--epochs", "2", "--ot-warmup-epochs", "0", "--no-progress",
         "--device", "cpu"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("otrobust: error: "), err
    return err[0]


def _poisoned_at(base, calls: set[int], poison):
    """Wrap an objective so that ``poison(model, loss, logs) -> (loss, logs)`` applies at the given 1-based calls."""
    count = [0]

    def method(model, x, y, ctx):
        count[0] += 1
        loss, logs = base(model, x, y, ctx)
        return poison(model, loss, logs) if count[0] in calls else (loss, logs)

    return method


def _nan_at(base, calls: set[int], term: str):
    """Wrap an objective so that its ``term`` (and so the loss) is NaN at the given 1-based calls."""
    nan = torch.tensor(float("nan"))
    return _poisoned_at(base, calls, lambda model, loss, logs: (loss + nan, {**logs, term: nan}))


def _where(call: int) -> str:
    return f"epoch {(call - 1) // STEPS_PER_EPOCH + 1}, step {(call - 1) % STEPS_PER_EPOCH + 1}"


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_nan_loss_term_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, amp):
    call = STEPS_PER_EPOCH + 3  # epoch 2, step 3
    monkeypatch.setitem(methods.METHODS, "trades", _nan_at(methods.METHODS["trades"], {call}, "kl"))
    run = tmp_path / "run"
    assert main(["train", *FLAGS, "--method", "trades", "--amp", amp, "--out", str(run)]) == 2
    line = _one_error_line(capsys)
    assert f"non-finite kl at {_where(call)};" in line and "last.safetensors" in line
    weights, meta, _ = load_checkpoint(checkpoint_path(run, "last"))
    assert (meta["epoch"], meta["step"]) == (1, 0)  # the end of epoch 1, the last good state
    assert all(bool(t.isfinite().all()) for t in weights.values())


def test_nan_ot_term_is_named(tmp_path, monkeypatch, capsys):
    forward, count = GOTRegularizer.forward, [0]

    def nan_forward(self, *args, **kwargs):
        count[0] += 1
        w = forward(self, *args, **kwargs)
        return w * float("inf") if count[0] == 2 else w  # an Inf in the OT term makes loss and OT non-finite

    monkeypatch.setattr(GOTRegularizer, "forward", nan_forward)
    assert main(["train", *FLAGS, "--method", "got-pgd-lm", "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    assert re.search(rf"non-finite [a-z_, ]*\bot\b[a-z_, ]* at {_where(2)}; no checkpoint yet", line), line


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_nan_policy_skip_skips_the_batch_and_counts_it(tmp_path, monkeypatch, capsys, amp):
    calls = {2, STEPS_PER_EPOCH + 1, STEPS_PER_EPOCH + 4}  # one bad batch in epoch 1, two in epoch 2
    monkeypatch.setitem(methods.METHODS, "got-trades-s",
                        _nan_at(methods.METHODS["got-trades-s"], calls, "ot"))
    run = tmp_path / "run"
    assert main(["train", *FLAGS, "--method", "got-trades-s", "--nan-policy", "skip", "--amp", amp,
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert all(f"non-finite ot at {_where(c)}; batch skipped" in out for c in calls)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_batches"] for m in metrics] == [1, 2]
    assert all(bool(t.isfinite().all()) for t in load_checkpoint(checkpoint_path(run, "last"))[0].values())


def test_a_nan_pixel_stops_the_run_at_the_batch_holding_it(tmp_path, monkeypatch, capsys):
    digits = load_dataset("digits", "train")
    bad = 37  # an index inside --train-size
    x = digits.x.clone()
    x[bad, 0, 3, 4] = float("nan")
    spec = dataclasses.replace(get_dataset_spec("digits"), name="nan-digits",
                               load=lambda root, split: ImageData(x, digits.y, 10))
    monkeypatch.setitem(DATASETS, "nan-digits", spec)
    order = torch.randperm(16 * STEPS_PER_EPOCH, generator=torch.Generator().manual_seed(step_seed(0, 0, -1)))
    step = int((order == bad).nonzero()) // 16 + 1
    argv = ["train", *[f if f != "digits" else "nan-digits" for f in FLAGS], "--method", "trades", "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "stop")]) == 2
    assert f"at epoch 1, step {step};" in _one_error_line(capsys)
    assert main([*argv, "--out", str(tmp_path / "skip"), "--nan-policy", "skip"]) == 0
    metrics = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_batches"] for m in metrics] == [1]


# ---------------------------------------------------------------- the OT term under bfloat16 autocast
def _inputs(scale: float, b: int = 12, d: int = 32, m: int = 10, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, n, generator=g) * scale).bfloat16().requires_grad_() for n in (d, d, m, m)]


@pytest.mark.parametrize("dx", ["cos", "l2"])
@pytest.mark.parametrize("scale, theta", [(1.0, 1e-6), (1e2, 1e-3), (1e4, 1e-6), (1e15, 1e-3)])
def test_got_regularizer_is_finite_and_float32_under_bf16_autocast(dx, scale, theta):
    """Huge features and logits (softmax underflowing to exact zeros) with a tiny θ: value and every
    gradient stay finite, and the value matches a float64 computation on the same (bf16-rounded) inputs."""
    torch.manual_seed(0)
    reg = GOTRegularizer(32, variant="lm", theta=theta, dx=dx, phi_grad=True)
    with torch.no_grad():
        reg.phi.weight.normal_()
    y = torch.arange(12) % 10
    inputs = _inputs(scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = reg(*inputs, y)
    w.backward()
    assert w.dtype == torch.float32 and bool(torch.isfinite(w))
    assert all(bool(t.grad.isfinite().all()) for t in inputs)
    assert all(bool(p.grad.isfinite().all()) for p in reg.parameters())
    z, z_adv, logits, logits_adv = (t.detach().double() for t in inputs)
    cost = ot.ground_cost(z, z_adv, logits.softmax(1), logits_adv.softmax(1), dx, "kl", 1.0)
    phi = (z @ reg.phi.weight.detach().double().T + reg.phi.bias.detach().double()).squeeze(1)
    exact = semidual_ot(phi, cost, theta, ot.label_mask(y, y))
    assert torch.allclose(w.double(), exact, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("theta", [1e-8, 1e-3, 10.0])
def test_semidual_ot_is_finite_for_bf16_inputs_and_tiny_theta(theta):
    g = torch.Generator().manual_seed(1)
    phi = (torch.randn(16, generator=g) * 1e4).bfloat16().requires_grad_()
    cost = (torch.rand(16, 16, generator=g) * 1e4).bfloat16().requires_grad_()
    mask = ot.label_mask(torch.arange(16) % 3, torch.arange(16) % 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = semidual_ot(phi, cost, theta, mask)
    w.backward()
    assert w.dtype == torch.float32 and bool(torch.isfinite(w))
    assert bool(phi.grad.isfinite().all()) and bool(cost.grad.isfinite().all())
    exact = semidual_ot(phi.detach().double(), cost.detach().double(), theta, mask)
    assert torch.allclose(w.double(), exact, rtol=1e-5, atol=1e-2)


def test_kl_cost_gradient_is_finite_when_a_softmax_underflows():
    """A logit gap over ~104 makes float32 softmax probabilities exactly 0; the KL ground cost and its
    gradient must stay finite there (xlogy(p, p) would give NaN gradients)."""
    logits = torch.tensor([[200.0, 0.0, -50.0], [0.0, 1.0, 2.0]], requires_grad=True)
    logits_adv = torch.tensor([[0.0, 150.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    cost = ot.label_distance(logits.softmax(1), logits_adv.softmax(1), "kl")
    cost.sum().backward()
    assert bool(cost.isfinite().all()) and bool(logits.grad.isfinite().all()) and bool(logits_adv.grad.isfinite().all())
    p, q = logits.double().softmax(1), logits_adv.double().softmax(1)
    assert torch.allclose(cost[1, 1].double(), (p[1] * (p[1].log() - q[1].log())).sum(), atol=1e-5)


def _nan_gradient_at(base, calls: set[int]):
    """Wrap an objective so that at the given 1-based calls its loss stays finite but a weight's gradient is NaN:
    0 · sqrt(|w − w|) is 0, while its derivative is 0 · ∞."""

    def poison(model, loss, logs):
        w = next(model.parameters())
        return loss + 0.0 * torch.sqrt((w - w.detach()).abs().sum()), logs

    return _poisoned_at(base, calls, poison)


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_a_nan_gradient_under_a_finite_loss_stops_the_run(tmp_path, monkeypatch, capsys, amp):
    call = STEPS_PER_EPOCH + 2
    monkeypatch.setitem(methods.METHODS, "pgd-at", _nan_gradient_at(methods.METHODS["pgd-at"], {call}))
    run = tmp_path / "run"
    assert main(["train", *FLAGS, "--method", "pgd-at", "--amp", amp, "--out", str(run)]) == 2
    line = _one_error_line(capsys)
    assert f"non-finite gradient (the loss was finite) at {_where(call)}; the last good checkpoint" in line
    weights, meta, _ = load_checkpoint(checkpoint_path(run, "last"))
    assert (meta["epoch"], meta["step"]) == (1, 0) and all(bool(t.isfinite().all()) for t in weights.values())


def test_a_nan_gradient_is_skipped_and_counted_with_nan_policy_skip(tmp_path, monkeypatch, capsys):
    calls = {1, STEPS_PER_EPOCH + 3}
    monkeypatch.setitem(methods.METHODS, "got-pgd-lm", _nan_gradient_at(methods.METHODS["got-pgd-lm"], calls))
    run = tmp_path / "run"
    assert main(["train", *FLAGS, "--method", "got-pgd-lm", "--nan-policy", "skip", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert all(f"non-finite gradient (the loss was finite) at {_where(c)}; batch skipped" in out for c in calls)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_batches"] for m in metrics] == [1, 1]
    assert all(bool(t.isfinite().all()) for t in load_checkpoint(checkpoint_path(run, "last"))[0].values())
