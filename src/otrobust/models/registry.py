"""MODELS: every built-in architecture by name, all built with the same keyword arguments."""

from __future__ import annotations

from collections.abc import Callable

from otrobust.errors import OtrobustError
from otrobust.models.latent import LATENT_CHOICES, LatentModel

MODELS: dict[str, Callable[..., LatentModel]] = {}
"""Every built-in architecture's factory by name (``cw-cnn``, ``resnet18``, ...); :func:`register_model` adds one."""


def register_model(name: str):
    """Decorator: add a factory ``f(num_classes, in_channels, image_size, latent) -> LatentModel``."""

    def add(factory):
        MODELS[name] = factory
        return factory

    return add


def create_model(name: str, *, num_classes: int, in_channels: int, image_size: int,
                 latent: str = "penultimate", **kwargs) -> LatentModel:
    """Build a registered model; raises OtrobustError naming the valid choices."""
    if name not in MODELS:
        raise OtrobustError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    if latent not in LATENT_CHOICES:
        raise OtrobustError(f"unknown latent layer {latent!r}; choose one of: {', '.join(LATENT_CHOICES)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                        latent=latent, **kwargs)
