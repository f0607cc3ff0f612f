"""Small CNNs: the Carlini–Wagner 'standard' MNIST CNN and a tiny CNN for 8×8 digits."""

from __future__ import annotations

from torch import nn

from otrobust.models.latent import LatentModel
from otrobust.models.registry import register_model


class SplitCNN(LatentModel):
    """A conv trunk, then fully connected layers; the latent is either the flattened trunk output
    (``middle``: the last max-pool, the paper's Table 4) or the last hidden FC layer (``penultimate``)."""

    def __init__(self, trunk: nn.Sequential, trunk_dim: int, hidden: list[int], num_classes: int,
                 latent: str):
        super().__init__()
        fc: list[nn.Module] = []
        width = trunk_dim
        for h in hidden:
            fc += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.num_classes = num_classes
        self.latent = latent
        if latent == "middle":
            self.features = nn.Sequential(trunk, nn.Flatten())
            self.head = nn.Sequential(*fc, nn.Linear(width, num_classes))
            self.latent_dim = trunk_dim
        else:
            self.features = nn.Sequential(trunk, nn.Flatten(), *fc)
            self.head = nn.Linear(width, num_classes)
            self.latent_dim = width

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, z):
        return self.head(z)


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True)]


@register_model("cw-cnn")
def cw_cnn(num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
           latent: str = "penultimate") -> SplitCNN:
    """Carlini & Wagner (2017) MNIST CNN: conv32-conv32-pool-conv64-conv64-pool-fc200-fc200-fc10."""
    trunk = nn.Sequential(*_conv(in_channels, 32), *_conv(32, 32), nn.MaxPool2d(2),
                          *_conv(32, 64), *_conv(64, 64), nn.MaxPool2d(2))
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"cw-cnn needs images of at least 14 pixels, got {image_size}")
    return SplitCNN(trunk, 64 * side * side, [200, 200], num_classes, latent)


@register_model("small-cnn")
def small_cnn(num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
              latent: str = "penultimate") -> SplitCNN:
    """A tiny CNN for 8×8 digits: conv32-conv32-pool-conv64-pool-fc128-fc10 (padding keeps 8→4→2)."""
    trunk = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )
    side = image_size // 4
    return SplitCNN(trunk, 64 * side * side, [128], num_classes, latent)
