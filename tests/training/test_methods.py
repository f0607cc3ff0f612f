"""Every training objective gives a finite loss with gradients; GOT = base + beta * W."""

import pytest
import torch
from torch import nn

from otrobust.models import create_model
from otrobust.ot import GOTRegularizer
from otrobust.training.method_registry import base_method, ot_variant
from otrobust.training.methods import METHODS, StepContext, _attack_pieces, get_method


def _setup(method: str, latent: str = "penultimate"):
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, latent=latent)
    variant = ot_variant(method)
    reg = GOTRegularizer(model.latent_dim, variant=variant) if variant else None
    ctx = StepContext(eps=0.2, step_size=0.05, steps=3, regularizer=reg, reuse_clean=True, ot_weight=2.0)
    x = torch.rand(16, 1, 8, 8)
    y = torch.arange(16) % 10
    return model, reg, ctx, x, y


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_a_finite_differentiable_loss(method):
    model, reg, ctx, x, y = _setup(method)
    loss, logs = METHODS[method](model, x, y, ctx)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logs["logits"].shape == (16, 10)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    if reg is not None:
        assert reg.phi.weight.grad is not None
        assert "ot" in logs


@pytest.mark.parametrize("method", ["got-pgd-lm", "got-trades-s"])
def test_got_is_base_plus_weighted_ot_term(method):
    model, reg, ctx, x, y = _setup(method)
    torch.manual_seed(1)
    loss, logs = METHODS[method](model, x, y, ctx)
    torch.manual_seed(1)
    base, _ = METHODS[base_method(method)](model, x, y, ctx)
    assert torch.allclose(loss, base + ctx.ot_weight * logs["ot"], atol=1e-5)


def test_reusing_the_clean_pass_does_not_change_trades():
    model, _, ctx, x, y = _setup("trades")
    torch.manual_seed(3)
    a, _ = METHODS["trades"](model, x, y, ctx)
    ctx.reuse_clean = False
    torch.manual_seed(3)
    b, _ = METHODS["trades"](model, x, y, ctx)
    assert torch.allclose(a, b, atol=1e-5)


def test_method_names_and_helpers():
    assert base_method("got-trades-lm") == "trades" and base_method("got-pgd-s") == "pgd-at"
    assert ot_variant("got-pgd-lm") == "lm" and ot_variant("trades") is None
    with pytest.raises(Exception, match="unknown method"):
        get_method("nope")


def test_attack_pieces_are_off_when_the_attack_uses_batch_statistics():
    with_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    without = nn.Sequential(nn.Conv2d(1, 4, 3))
    ctx = StepContext(eps=0.1, step_size=0.02, steps=2, attack_chunk=16, attack_workers=2)
    on = {"chunk": 16, "workers": 2}
    assert _attack_pieces(with_bn, ctx) == on and _attack_pieces(without, ctx) == on
    ctx.attack_bn = "train"
    assert _attack_pieces(with_bn, ctx) == {"chunk": 0, "workers": 1} and _attack_pieces(without, ctx) == on


def _loss_and_grads(method, model, reg, ctx, x, y):
    torch.manual_seed(1)
    loss, _ = METHODS[method](model, x, y, ctx)
    params = list(model.parameters()) + (list(reg.parameters()) if reg is not None else [])
    return loss.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("method", list(METHODS))
def test_forward_pieces_give_the_loss_and_gradients_of_the_whole_batch(method):
    model, reg, ctx, x, y = _setup(method)
    ctx.forward_chunk = 0
    want_loss, want = _loss_and_grads(method, model, reg, ctx, x, y)
    for chunk in (5, 8):
        ctx.forward_chunk = chunk
        got_loss, got = _loss_and_grads(method, model, reg, ctx, x, y)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_forward_pieces_never_split_a_batch_norm_batch():
    from otrobust.training.methods import _forward

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 3)).train()
    x = torch.rand(12, 1, 8, 8)
    whole = _forward(model, x, StepContext(eps=0.1, step_size=0.02, steps=1, forward_chunk=0))[1]
    pieces = _forward(model, x, StepContext(eps=0.1, step_size=0.02, steps=1, forward_chunk=4))[1]
    assert torch.equal(whole, pieces)  # batch statistics over all 12 images in both
    no_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 3))
    calls = []
    no_bn.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    _forward(no_bn, x, StepContext(eps=0.1, step_size=0.02, steps=1, forward_chunk=5))
    assert calls == [5, 5, 2]
