"""The (z, logits) seam the OT term needs: one forward pass gives both.

Every built-in model is a :class:`LatentModel` split into ``forward_features`` (x -> z) and
``forward_head`` (z -> logits). Any other ``nn.Module`` gets the same seam from
:class:`LatentHook`, which captures a named layer's output with a forward hook.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from otrobust.errors import OtrobustError

LATENT_CHOICES = ("penultimate", "middle")


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` so that models take raw [0, 1] images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class LatentModel(nn.Module):
    """A classifier ``f = head ∘ features`` whose latent ``z = features(x)`` is a flat vector.

    Subclasses set ``self.latent_dim`` and implement ``forward_features`` / ``forward_head``.
    ``forward(x)`` returns logits ``(B, M)``; ``forward(x, with_latent=True)`` returns
    ``(z (B, D), logits (B, M))`` from the same pass (this keeps DDP wrappers working).
    """

    latent_dim: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, with_latent: bool = False):
        z = self.forward_features(x)
        logits = self.forward_head(z)
        return (z, logits) if with_latent else logits


class TappedResNet(LatentModel):
    """A residual network whose ``_trunk(x)`` returns (pooled middle-stage features, pooled final features) and
    whose ``fc`` maps the final features to logits. ``latent = "middle"`` taps the middle stage (the paper's Table 4):
    a tap, not a cut, so ``forward_head`` only exists for the penultimate latent."""

    latent: str
    fc: nn.Module

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        mid, pooled = self._trunk(x)
        return mid if self.latent == "middle" else pooled

    def forward_head(self, z: torch.Tensor) -> torch.Tensor:
        if self.latent == "middle":
            raise NotImplementedError("the 'middle' latent is a tap, not a cut: "
                                      "use model(x, with_latent=True)")
        return self.fc(z)

    def forward(self, x: torch.Tensor, with_latent: bool = False):
        mid, pooled = self._trunk(x)
        logits = self.fc(pooled)
        if not with_latent:
            return logits
        return (mid if self.latent == "middle" else pooled), logits


class LatentHook(nn.Module):
    """Wrap any classifier so that ``forward(x, with_latent=True)`` also returns a named layer's output.

    ``layer`` is a name from ``model.named_modules()`` (e.g. ``"avgpool"`` or ``"layer4.1"``);
    its output is flattened to ``(B, D)``.
    """

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        names = dict(model.named_modules())
        if layer not in names:
            sample = ", ".join(n for n in list(names)[1:12])
            raise OtrobustError(f"model has no layer named {layer!r}; some layer names: {sample}")
        self.model = model
        self.layer = layer
        self._captured: torch.Tensor | None = None
        names[layer].register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self._captured = output

    def forward(self, x: torch.Tensor, with_latent: bool = False):
        self._captured = None
        logits = self.model(x)
        if not with_latent:
            return logits
        if self._captured is None:
            raise OtrobustError(f"layer {self.layer!r} was not called in the forward pass")
        z = self._captured.flatten(1)
        self._captured = None
        return z, logits


def latent_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(z (B, D), logits (B, M))`` of a LatentModel, a LatentHook, or a DDP wrapper of one."""
    return model(x, with_latent=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying model of a DDP / torch.compile wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
