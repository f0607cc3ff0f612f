"""Model registry and the (z, logits) seam."""

from otrobust.models import cnn  # noqa: F401  (registers the models)
from otrobust.models.latent import (
    LATENT_CHOICES,
    LatentHook,
    LatentModel,
    Normalize,
    latent_forward,
    unwrap,
)
from otrobust.models.registry import MODELS, create_model, register_model

__all__ = [
    "LATENT_CHOICES",
    "MODELS",
    "LatentHook",
    "LatentModel",
    "Normalize",
    "create_model",
    "latent_forward",
    "register_model",
    "unwrap",
]
