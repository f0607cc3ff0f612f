"""Adversarial weight perturbation: its size per layer, exact restoration, and a GOT + AWP training run."""

import copy
import dataclasses
import json

import pytest
import torch
from conftest import TINY_RUN
from torch import nn

from otrobust.errors import OtrobustError
from otrobust.models import create_model
from otrobust.ot import GOTRegularizer
from otrobust.training.awp import awp_gamma_at, awp_offsets, perturbable_weights, with_awp
from otrobust.training.config import TrainConfig, validate
from otrobust.training.loop import train
from otrobust.training.methods import StepContext, adversarial_examples, get_method

GAMMA = 5e-3


def _setup(model_name="small-cnn", method="got-trades-lm", seed=0):
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=10, in_channels=1, image_size=8)
    reg = GOTRegularizer(model.latent_dim, variant="lm") if method.startswith("got-") else None
    ctx = StepContext(eps=0.3, step_size=0.1, steps=2, regularizer=reg, ot_weight=1.0)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    return model, ctx, x, y


@pytest.mark.parametrize("method", ["got-trades-lm", "pgd-at", "mart"])
def test_perturbation_has_relative_size_gamma_in_every_layer(method):
    model, ctx, x, y = _setup(method=method)
    ctx.x_adv = adversarial_examples(method, model, x, y, ctx)
    offsets = awp_offsets(get_method(method), model, x, y, ctx, GAMMA)
    weights = perturbable_weights(model)
    assert set(offsets) == set(weights) and all(w.ndim > 1 for w in weights.values())
    assert not any(name.endswith("bias") for name in offsets)
    for name, w in weights.items():
        assert torch.allclose(offsets[name].norm(), GAMMA * w.detach().norm(), rtol=1e-5), name


def test_perturbation_ascends_the_loss():
    model, ctx, x, y = _setup(method="trades")
    method = get_method("trades")
    ctx.x_adv = adversarial_examples("trades", model, x, y, ctx)
    offsets = awp_offsets(method, model, x, y, ctx, GAMMA)
    before = float(method(model, x, y, ctx)[0].detach())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in offsets:
                p += offsets[name]
    assert float(method(model, x, y, ctx)[0].detach()) > before


def _awp_step(model, ctx, x, y, lr, method_name="got-trades-lm"):
    """One optimiser step of the AWP-wrapped objective; returns the loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    torch.manual_seed(1)
    loss, logs = with_awp(get_method(method_name), method_name)(model, x, y, ctx)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss, logs


def test_weights_are_restored_exactly_without_an_optimiser_step():
    _, ctx, x, y = _setup(method="trades")
    torch.manual_seed(0)  # a tiny model with batch norm: the extra pass must leave no statistics behind
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    plain = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    ctx.awp_gamma = GAMMA
    _, logs = _awp_step(model, ctx, x, y, lr=0.0, method_name="trades")
    assert torch.allclose(logs["awp"], torch.tensor(GAMMA), rtol=1e-4)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
    _awp_step(plain, dataclasses.replace(ctx, awp_gamma=0.0), x, y, lr=0.0, method_name="trades")
    tracked = [k for k in before if k.endswith("num_batches_tracked")]
    assert tracked and all(torch.equal(model.state_dict()[k], plain.state_dict()[k]) for k in tracked)


def test_step_applies_the_gradient_taken_at_the_perturbed_weights():
    model, ctx, x, y = _setup()
    method = get_method("got-trades-lm")
    reference = copy.deepcopy(model)
    ctx.awp_gamma = GAMMA
    torch.manual_seed(1)
    fixed = dataclasses.replace(ctx, x_adv=adversarial_examples("got-trades-lm", reference, x, y, ctx))
    offsets = awp_offsets(method, reference, x, y, fixed, GAMMA)
    original = {n: p.detach().clone() for n, p in reference.named_parameters()}
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name in offsets:
                p += offsets[name]
    loss_ref, _ = method(reference, x, y, fixed)
    grads = dict(zip(original, torch.autograd.grad(loss_ref, list(reference.parameters())), strict=True))

    loss, _ = _awp_step(model, ctx, x, y, lr=0.1)
    assert torch.allclose(loss, loss_ref, rtol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.detach(), original[name] - 0.1 * grads[name], atol=1e-6), name


# No device key: TrainConfig's default ("auto") applies, as before.
TINY = {k: v for k, v in {**TINY_RUN, "train_size": 64, "val_size": 32, "batch_size": 32, "steps": 2}.items()
        if k != "device"}


def test_got_trades_lm_with_awp_trains(tmp_path):
    awp = train(TrainConfig(**TINY, method="got-trades-lm", awp_gamma=GAMMA, out=str(tmp_path / "awp")),
                show_progress=False, log=lambda s: None)
    lines = [json.loads(s) for s in (tmp_path / "awp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in lines)
    plain = train(TrainConfig(**TINY, method="got-trades-lm", out=str(tmp_path / "plain")), show_progress=False,
                  log=lambda s: None)
    assert awp["train_loss"] != plain["train_loss"]  # the perturbation changed the updates
    # With the warm-up covering the whole run AWP never switches on: exactly the plain run.
    warm = train(TrainConfig(**TINY, method="got-trades-lm", awp_gamma=GAMMA, awp_warmup_epochs=1,
                             out=str(tmp_path / "warm")), show_progress=False, log=lambda s: None)
    warm.pop("seconds"), plain.pop("seconds")
    assert warm == plain


def test_awp_settings_are_checked():
    assert awp_gamma_at(GAMMA, 1.0, 0.5) == 0.0 and awp_gamma_at(GAMMA, 1.0, 1.0) == GAMMA
    with pytest.raises(OtrobustError, match="awp-gamma"):
        validate(TrainConfig(awp_gamma=-1.0))
    with pytest.raises(OtrobustError, match="awp-warmup-epochs"):
        validate(TrainConfig(awp_warmup_epochs=-1.0))


def test_awp_flags_reach_the_config():
    from otrobust.cli.main import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--awp-gamma", "5e-3", "--awp-warmup-epochs", "1"])
    cfg = config_from_args(args)
    assert cfg.awp_gamma == GAMMA and cfg.awp_warmup_epochs == 1.0
