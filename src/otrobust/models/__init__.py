"""Model registry and the (z, logits) seam."""

from otrobust.models import cnn, resnet, wideresnet  # noqa: F401  (registers the models)
from otrobust.models.latent import (
    LATENT_CHOICES,
    LatentHook,
    LatentModel,
    Normalize,
    latent_forward,
    unwrap,
)
from otrobust.models.registry import MODELS, create_model, register_model
from otrobust.models.resnet import ResNet, preact_resnet18, resnet18
from otrobust.models.wideresnet import WideResNet

__all__ = [
    "LATENT_CHOICES",
    "MODELS",
    "LatentHook",
    "LatentModel",
    "Normalize",
    "ResNet",
    "WideResNet",
    "create_model",
    "latent_forward",
    "preact_resnet18",
    "register_model",
    "resnet18",
    "unwrap",
]
