import functools

import pytest
import torch

from otrobust.errors import OtrobustError
from otrobust.models import LATENT_CHOICES, MODELS, LatentModel, create_model

# (in_channels, image_size) each model is built for; anything not listed takes CIFAR-sized input.
INPUT_SHAPES = {"cw-cnn": (1, 28), "small-cnn": (1, 8)}
CIFAR_SHAPE = (3, 32)
# Tens of millions of parameters: one small forward each, no backward, to keep the suite fast.
LARGE = {"wrn-34-10", "wrn-28-10"}
# The latent sizes documented for the residual networks.
LATENT_DIMS = {
    "resnet18": {"penultimate": 512, "middle": 256},
    "preact-resnet18": {"penultimate": 512, "middle": 256},
    "wrn-34-10": {"penultimate": 640, "middle": 320},
    "wrn-28-10": {"penultimate": 640, "middle": 320},
    "wrn-16-1": {"penultimate": 64, "middle": 32},
}


def _create(name: str, latent: str) -> LatentModel:
    channels, size = INPUT_SHAPES.get(name, CIFAR_SHAPE)
    torch.manual_seed(0)
    return create_model(name, num_classes=7, in_channels=channels, image_size=size, latent=latent)


# Small models are built once per (name, latent) and shared; tests set train/eval mode themselves.
# Large ones are built afresh so that their memory is freed after each test.
_cached = functools.cache(_create)


def _build(name: str, latent: str = "penultimate") -> tuple[LatentModel, torch.Tensor]:
    channels, size = INPUT_SHAPES.get(name, CIFAR_SHAPE)
    model = _create(name, latent) if name in LARGE else _cached(name, latent)
    return model, torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("latent", LATENT_CHOICES)
def test_forward_gives_latent_and_logits(name: str, latent: str):
    model, x = _build(name, latent)
    assert isinstance(model, LatentModel)
    if name in LATENT_DIMS:
        assert model.latent_dim == LATENT_DIMS[name][latent]
    if name in LARGE and latent == "middle":
        return  # one forward per large model; wrn-16-1 runs the same WideResNet code with both latents
    model.eval()
    with torch.no_grad():
        z, logits = model(x, with_latent=True)
        if name not in LARGE:
            assert torch.allclose(model(x), logits, atol=1e-5)
    assert logits.shape == (2, 7) and model.num_classes == 7
    assert z.shape == (2, model.latent_dim)
    assert torch.isfinite(z).all() and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(set(MODELS) - LARGE))
def test_gradient_flows_to_the_input(name: str):
    model, x = _build(name)
    model.train()
    x.requires_grad_(True)
    z, logits = model(x, with_latent=True)
    (logits.logsumexp(1).sum() + z.pow(2).sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(set(MODELS) - LARGE))
def test_head_of_features_is_the_forward_pass(name: str):
    model, x = _build(name)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.forward_head(model.forward_features(x)), model(x), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "preact-resnet18", "wrn-16-1"])
def test_middle_latent_is_a_tap_of_the_same_pass(name: str):
    model, x = _build(name, "middle")
    model.eval()
    with torch.no_grad():
        z, logits = model(x, with_latent=True)
        assert torch.allclose(model.forward_features(x), z, atol=1e-6)
        assert torch.allclose(model(x), logits, atol=1e-6)
    with pytest.raises(NotImplementedError, match="with_latent=True"):
        model.forward_head(z)


def test_inputs_are_normalised_inside_the_model():
    model = create_model("resnet18", num_classes=10, in_channels=3, image_size=32, mean=(0.5, 0.5, 0.5),
                         std=(0.25, 0.25, 0.25))
    x = torch.full((1, 3, 4, 4), 0.75)
    assert torch.allclose(model.normalize(x), torch.ones_like(x))


def test_unknown_names_are_clear_errors():
    with pytest.raises(OtrobustError, match="unknown model 'resnet-9000'"):
        create_model("resnet-9000", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(OtrobustError, match="unknown latent layer"):
        create_model("resnet18", num_classes=10, in_channels=3, image_size=32, latent="first")
    from otrobust.models.wideresnet import WideResNet

    with pytest.raises(OtrobustError, match="6n \\+ 4"):
        WideResNet(depth=20)
