"""The speed options change how fast, not what: in-place attack updates, sharded random starts, channels-last,
autocast, torch.compile, and their flags."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from conftest import TINY_RUN

from otrobust.attacks import gradient
from otrobust.attacks.gradient import PGD, TradesAdversary, frozen_parameters, last_iterate
from otrobust.attacks.norms import get_norm, project
from otrobust.cli.main import build_parser, config_from_args
from otrobust.errors import OtrobustError
from otrobust.models import create_model
from otrobust.ot import GOTRegularizer
from otrobust.store.checkpoint import load_checkpoint
from otrobust.training.config import TrainConfig
from otrobust.training.loop import train
from otrobust.training.methods import METHODS, StepContext
from otrobust.training.setup import training_precision, use_channels_last

CPU = torch.device("cpu")


def _ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    """The ascent step as the papers write it, out of place: the reference for the in-place update."""
    if norm == "linf":
        return x_adv + step_size * grad.sign()
    g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
    return x_adv + step_size * grad / g_norm


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return create_model("small-cnn", num_classes=10, in_channels=1, image_size=8).eval()


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.3, 0.05), ("l2", 1.0, 0.3)])
def test_in_place_attack_update_is_bit_identical_to_the_formula(norm, eps, step):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    x_adv = (x + 0.4 * torch.randn(16, 1, 8, 8, generator=g)).clamp(0, 1)
    grad = torch.randn(16, 1, 8, 8, generator=g)
    grad[0] = 0.0  # sign(0) = 0 and the ℓ2 norm clamp
    expected = project(_ascent_step(x_adv, grad, step, norm), x, eps, norm)
    got = get_norm(norm).step_and_project_(x_adv.clone(), grad.clone(), x, step, eps)
    assert torch.equal(got, expected)


def test_attacks_freeze_the_weights_only_while_they_run(monkeypatch):
    model = _model()
    list(model.parameters())[1].requires_grad_(False)  # a parameter the user froze stays frozen
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(any(p.requires_grad for p in m.parameters())))
    torch.manual_seed(0)
    frozen = PGD(eps=0.3, step_size=0.1, steps=2)(model, x, y)
    assert seen and not any(seen)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    with pytest.raises(RuntimeError, match="boom"), frozen_parameters(model):
        raise RuntimeError("boom")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    # Same kernels, same input gradients: freezing changes no value.
    monkeypatch.setattr(gradient, "frozen_parameters", contextlib.nullcontext)
    torch.manual_seed(0)
    tracked = PGD(eps=0.3, step_size=0.1, steps=2)(model, x, y)
    assert torch.equal(frozen, tracked)


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.0)])
def test_a_shard_gets_the_random_start_the_whole_batch_would_give_it(norm, eps):
    model = _model()
    x, y = torch.rand(12, 1, 8, 8), torch.arange(12) % 10
    torch.manual_seed(3)
    attack = PGD(eps=eps, step_size=0.1, steps=0, norm=norm)
    whole = last_iterate(attack, model, x, y)
    torch.manual_seed(3)
    part = last_iterate(attack, model, x[5:9], y[5:9], shard=(5, 12))
    assert torch.equal(part, whole[5:9])
    torch.manual_seed(4)  # no steps: a sign() of near-zero gradients would amplify batch-size rounding
    adversary = TradesAdversary(eps=eps, step_size=0.1, steps=0, norm=norm)
    whole = adversary(model, x)
    torch.manual_seed(4)
    part = adversary(model, x[:7], shard=(0, 12))
    assert torch.equal(part, whole[:7])
    with pytest.raises(OtrobustError, match="shard"):
        last_iterate(PGD(eps=eps, step_size=0.1, steps=1), model, x[:4], y[:4], shard=(10, 12))


def test_channels_last_gives_the_same_step_within_float_tolerance():
    def step(channels_last: bool):
        model = _model().train()
        reg = GOTRegularizer(model.latent_dim, variant="lm")
        x, y = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        ctx = StepContext(eps=0.3, step_size=0.1, steps=0, regularizer=reg, reuse_clean=True, ot_weight=2.0)
        torch.manual_seed(2)
        loss, _ = METHODS["got-trades-lm"](model, x, y, ctx)
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    loss_a, grads_a = step(False)
    loss_b, grads_b = step(True)
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads_a, grads_b, strict=True))


def test_bf16_autocast_keeps_the_ot_term_in_float32():
    model = _model().train()
    reg = GOTRegularizer(model.latent_dim, variant="lm")
    ctx = StepContext(eps=0.3, step_size=0.1, steps=1, regularizer=reg, reuse_clean=True, ot_weight=2.0)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = METHODS["got-trades-lm"](model, x, y, ctx)
    assert logs["ot"].dtype == torch.float32 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_amp_and_channels_last_resolve_per_device():
    dtype = {amp: training_precision(amp, CPU).dtype for amp in ("off", "bf16", "fp16")}
    assert dtype == {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    assert use_channels_last("auto") and use_channels_last("on") and not use_channels_last("off")


def test_speed_flags_parse_into_the_config():
    args = build_parser().parse_args(["train", "--amp", "bf16", "--channels-last", "on", "--compile",
                                      "--ot-scope", "local"])
    cfg = config_from_args(args)
    assert (cfg.amp, cfg.channels_last, cfg.compile, cfg.ot_scope) == ("bf16", "on", True, "local")
    defaults = TrainConfig()
    assert (defaults.amp, defaults.channels_last, defaults.compile, defaults.ot_scope) == ("auto", "auto", False,
                                                                                            "global")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--amp", "fp8"])


TINY = {**TINY_RUN, "train_size": 128, "val_size": 64, "batch_size": 64, "method": "got-trades-lm"}


def _quiet_train(cfg):
    return train(cfg, show_progress=False, log=lambda text: None)


def test_fp16_with_loss_scaling_and_channels_last_train_and_resume_without_them(tmp_path):
    out = tmp_path / "run"
    small = dict(TINY, train_size=64, val_size=32, val_steps=0)  # half-precision convolutions are slow on CPU
    first = _quiet_train(TrainConfig(**small, amp="fp16", channels_last="on", out=str(out)))
    assert all(v == v for v in first.values())  # no NaN in the metrics
    # Checkpoints are format-independent: resume in float32, contiguous.
    _quiet_train(TrainConfig(**{**small, "epochs": 2}, out=str(out), resume=True))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    weights, _, _ = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert all(t.is_contiguous() and torch.isfinite(t).all() for t in weights.values())


@pytest.mark.slow
def test_compiled_training_matches_eager_within_float_tolerance(tmp_path):
    cfg = dict(TINY, steps=0)
    eager = _quiet_train(TrainConfig(**cfg, out=str(tmp_path / "eager")))
    compiled = _quiet_train(TrainConfig(**cfg, compile=True, out=str(tmp_path / "compiled")))
    for key in ("train_loss", "ot", "val_clean"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-5)
    a, _, _ = load_checkpoint(tmp_path / "eager" / "checkpoints" / "last.safetensors")
    b, _, _ = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)
