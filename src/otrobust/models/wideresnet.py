"""Wide residual networks (Zagoruyko & Komodakis 2016), WRN-depth-k, for 32×32 images.

A 3×3 stem with 16 channels, then three groups of ``(depth - 4) / 6`` pre-activation blocks with
16k, 32k and 64k channels (strides 1, 2, 2), BN-ReLU, global average pooling and a linear layer.
Inputs are raw [0, 1] images; a :class:`Normalize` layer inside the model standardises them.

Latent layers (``latent=``):

- ``penultimate``: the pooled final features, ``z: (B, 64k)`` (640 for WRN-34-10); the head is the
  final linear layer, so ``forward_head(forward_features(x))`` equals ``forward(x)``.
- ``middle``: the output of the second group (``block2``), globally average-pooled, ``z: (B, 32k)``.
  It is a tap on the way to the logits: ``forward(x, with_latent=True)`` returns it with the logits
  of the same pass, and ``forward_head`` is not available.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from otrobust.errors import OtrobustError
from otrobust.models.latent import TappedResNet
from otrobust.models.registry import register_model
from otrobust.models.resnet import default_normalization


class WideBlock(nn.Module):
    """BN-ReLU-conv3×3-(dropout)-BN-ReLU-conv3×3 plus a shortcut (1×1 conv when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride=stride,
                                                                           bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = F.relu(self.bn2(out))
        out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + skip


class WideResNet(TappedResNet):
    """WRN-``depth``-``widen_factor``; ``depth`` must be 6n + 4."""

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3,
                 latent: str = "penultimate", dropout: float = 0.0, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise OtrobustError(f"WideResNet depth must be 6n + 4 (e.g. 16, 28, 34), got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.num_classes = num_classes
        self.latent = latent
        self.normalize = default_normalization(in_channels, mean, std)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        groups, cin = [], 16
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            groups.append(nn.Sequential(*[WideBlock(cin if j == 0 else width, width, stride if j == 0 else 1,
                                                    dropout) for j in range(n)]))
            cin = width
        self.block1, self.block2, self.block3 = groups
        self.final_bn = nn.Sequential(nn.BatchNorm2d(widths[2]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(widths[2], num_classes)
        self.latent_dim = widths[1] if latent == "middle" else widths[2]
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convolutions, unit BN, zero biases: the original WRN initialisation."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled block2 output (B, 32k) and pooled final features (B, 64k)."""
        mid = self.block2(self.block1(self.stem(self.normalize(x))))
        out = self.final_bn(self.block3(mid))
        return F.adaptive_avg_pool2d(mid, 1).flatten(1), F.adaptive_avg_pool2d(out, 1).flatten(1)


def _factory(depth: int, widen_factor: int):
    def build(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, latent: str = "penultimate",
              dropout: float = 0.0, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> WideResNet:
        return WideResNet(depth, widen_factor, num_classes, in_channels, latent, dropout, mean, std)

    blocks = (depth - 4) // 6
    build.__doc__ = f"WRN-{depth}-{widen_factor}: {blocks} blocks per group, widths ×{widen_factor}."
    return build


wrn_34_10 = register_model("wrn-34-10")(_factory(34, 10))
wrn_28_10 = register_model("wrn-28-10")(_factory(28, 10))
wrn_16_1 = register_model("wrn-16-1")(_factory(16, 1))  # tiny, for tests
