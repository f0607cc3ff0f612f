"""The (z, logits) seam: built-in latent choices and the forward-hook wrapper for any nn.Module."""

import pytest
import torch
from torch import nn

from otrobust.errors import OtrobustError
from otrobust.models import LatentHook, create_model, latent_forward


def test_cw_cnn_latent_positions():
    x = torch.rand(3, 1, 28, 28)
    pen = create_model("cw-cnn", num_classes=10, in_channels=1, image_size=28)
    mid = create_model("cw-cnn", num_classes=10, in_channels=1, image_size=28, latent="middle")
    assert latent_forward(pen, x)[0].shape == (3, 200)
    assert latent_forward(mid, x)[0].shape == (3, 64 * 4 * 4)
    z, logits = latent_forward(pen, x)
    assert torch.allclose(pen.forward_head(z), logits)
    assert torch.allclose(pen(x), logits)


def test_hook_wrapper_on_any_module():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 7), nn.ReLU(), nn.Linear(7, 3))
    wrapped = LatentHook(net, "2")
    x = torch.rand(5, 1, 4, 4)
    z, logits = latent_forward(wrapped, x)
    assert z.shape == (5, 7) and logits.shape == (5, 3)
    assert torch.allclose(logits, net(x))
    assert torch.allclose(z, torch.relu(net[1](net[0](x))))
    assert wrapped(x).shape == (5, 3)


def test_hook_wrapper_rejects_unknown_layer():
    with pytest.raises(OtrobustError, match="no layer named"):
        LatentHook(nn.Sequential(nn.Linear(2, 2)), "fc9")


def test_unknown_model_and_latent_are_clear_errors():
    with pytest.raises(OtrobustError, match="unknown model"):
        create_model("nope", num_classes=10, in_channels=1, image_size=28)
    with pytest.raises(OtrobustError, match="unknown latent"):
        create_model("cw-cnn", num_classes=10, in_channels=1, image_size=28, latent="first")
