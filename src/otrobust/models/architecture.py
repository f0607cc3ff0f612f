"""``Architecture``: what rebuilds a registered model, as a checkpoint records it.

Every place that rebuilds a model from a checkpoint (loading, the audit's surrogate, the cost model) goes
through :meth:`Architecture.build`, and every checkpoint writes :meth:`Architecture.to_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from otrobust.errors import OtrobustError
from otrobust.models.registry import create_model

_KINDS = {"model": str, "num_classes": int, "in_channels": int, "image_size": int, "latent": str, "dataset": str}


@dataclass(frozen=True)
class Architecture:
    """A registered model name and the data geometry it is built for (``image_size`` in pixels, square)."""

    model: str
    num_classes: int
    in_channels: int
    image_size: int
    latent: str = "penultimate"
    dataset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: Any, source: str) -> Architecture:
        """The record of a checkpoint ``source``, checked field by field (OtrobustError naming the bad one)."""
        if not isinstance(record, dict):
            raise OtrobustError(f"checkpoint {source!r} does not record its architecture")
        for name, kind in _KINDS.items():
            value = record.get(name)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and not 0 < value <= 100_000):
                raise OtrobustError(f"checkpoint {source!r} has a bad architecture record: {name}={value!r}")
        return cls(**{name: record[name] for name in _KINDS})

    def build(self) -> nn.Module:
        """A freshly initialised model (on the current default device); ValueError if the geometry is impossible
        for the architecture (e.g. too deep for the image size)."""
        return create_model(self.model, num_classes=self.num_classes, in_channels=self.in_channels,
                            image_size=self.image_size, latent=self.latent)

    def describe(self) -> str:
        return (f"a {self.model} model with {self.num_classes} classes and {self.in_channels} input channels "
                f"(latent {self.latent})")
