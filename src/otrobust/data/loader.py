"""Batches straight from device tensors, with augmentation as whole-batch tensor ops."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from otrobust.data.base import ImageData


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4,
                     flip: bool = True) -> torch.Tensor:
    """Pad-``pad`` random crop (zero padding) and random horizontal flip of a batch ``(B, C, H, W)``."""
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=generator.device
                        if generator is not None else "cpu").to(dev)
    rows = (off[0, :, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (off[1, :, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = padded[torch.arange(b, device=dev)[:, None, None, None],
                 torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(b, generator=generator, device=generator.device if generator is not None
                          else "cpu").to(dev) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    return out


def iterate_batches(data: ImageData, batch_size: int, *, shuffle: bool = False,
                    generator: torch.Generator | None = None, device: torch.device | str | None = None,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x (B, C, H, W), y (B,))`` batches on ``device``, the last one smaller when ``batch_size`` does not
    divide the data; the order depends only on ``generator``. Augmentation is the caller's (the training loop
    draws it per step, so that a resumed run repeats it)."""
    x, y = data.x, data.y
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    n = len(y)
    order = torch.randperm(n, generator=generator).to(x.device) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
        yield xb, yb
