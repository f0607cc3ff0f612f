"""ResNet-18 for 32×32 images (He et al. 2016) and its pre-activation variant (He et al. 2016b).

The CIFAR variant: a 3×3 stride-1 stem without max-pool, then four stages of two residual blocks
(64, 128, 256, 512 channels; strides 1, 2, 2, 2), global average pooling and one linear layer.
Inputs are raw [0, 1] images; a :class:`Normalize` layer inside the model standardises them.

Latent layers (``latent=``):

- ``penultimate``: the globally average-pooled output of the last stage, ``z: (B, 512)``; the head
  is the final linear layer, so ``forward_head(forward_features(x))`` equals ``forward(x)``.
- ``middle``: the output of the third stage (``layer3``), globally average-pooled, ``z: (B, 256)``.
  It is a tap on the way to the logits, not a cut: ``forward(x, with_latent=True)`` returns it
  together with the logits of the same pass, and ``forward_head`` is not available.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from otrobust.models.latent import Normalize, TappedResNet
from otrobust.models.registry import register_model

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def default_normalization(in_channels: int, mean: Sequence[float] | None,
                          std: Sequence[float] | None) -> Normalize:
    """CIFAR statistics for 3-channel inputs, the identity otherwise, unless ``mean``/``std`` are given."""
    if mean is None:
        mean = CIFAR_MEAN if in_channels == 3 else (0.0,) * in_channels
    if std is None:
        std = CIFAR_STD if in_channels == 3 else (1.0,) * in_channels
    return Normalize(mean, std)


def _shortcut(cin: int, cout: int, stride: int, with_bn: bool) -> nn.Module | None:
    """A 1×1 projection when the shape changes, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout)) if with_bn else conv


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride, with_bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv, plus the shortcut (taken after the first BN-ReLU when projecting)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = _shortcut(cin, cout, stride, with_bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class ResNet(TappedResNet):
    """A CIFAR-style ResNet with blocks ``block`` repeated ``num_blocks`` times per stage."""

    def __init__(self, block: type[nn.Module], num_blocks: Sequence[int], num_classes: int = 10,
                 in_channels: int = 3, latent: str = "penultimate", preact: bool = False,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.latent = latent
        self.normalize = default_normalization(in_channels, mean, std)
        self.stem = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        # Post-activation nets normalise right after the stem; pre-activation ones before the pool.
        self.stem_bn = nn.Identity() if preact else nn.Sequential(nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        widths, stages, cin = (64, 128, 256, 512), [], 64
        for i, (width, n) in enumerate(zip(widths, num_blocks, strict=True)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*[block(cin if j == 0 else width, width, stride if j == 0 else 1)
                                          for j in range(n)]))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.final_bn = nn.Sequential(nn.BatchNorm2d(512), nn.ReLU(inplace=True)) if preact else nn.Identity()
        self.fc = nn.Linear(512, num_classes)
        self.latent_dim = 256 if latent == "middle" else 512

    def _trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled layer3 output (B, 256) and pooled final features (B, 512)."""
        out = self.stem_bn(self.stem(self.normalize(x)))
        mid = self.layer3(self.layer2(self.layer1(out)))
        out = self.final_bn(self.layer4(mid))
        return F.adaptive_avg_pool2d(mid, 1).flatten(1), F.adaptive_avg_pool2d(out, 1).flatten(1)


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, latent: str = "penultimate",
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> ResNet:
    """ResNet-18, CIFAR variant (BasicBlock ×[2, 2, 2, 2]); any image size ≥ 8 works (global pooling)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, latent, preact=False,
                  mean=mean, std=std)


@register_model("preact-resnet18")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                    latent: str = "penultimate", mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> ResNet:
    """Pre-activation ResNet-18 (PreActBlock ×[2, 2, 2, 2]), a common adversarial-training baseline."""
    return ResNet(PreActBlock, (2, 2, 2, 2), num_classes, in_channels, latent, preact=True,
                  mean=mean, std=std)
