"""A surrogate for the audit's transfer check: a copy of the model's architecture trained the standard
(non-robust) way for a few epochs, whose attacks are then tried on the model under test."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from otrobust.data.base import ImageData
from otrobust.data.loader import iterate_batches


def train_surrogate(model: nn.Module, data: ImageData, epochs: int, *, seed: int = 0, batch_size: int = 128,
                    lr: float = 1e-3, device="cpu") -> nn.Module:
    """Standard (non-robust) training of ``model`` for a few epochs: a cheap surrogate for transfer attacks."""
    torch.manual_seed(seed)
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed + epoch)
        for x, y in iterate_batches(data, batch_size, shuffle=True, generator=gen, device=device):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()
