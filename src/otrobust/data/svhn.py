"""SVHN (cropped digits) from the official ``train_32x32.mat`` / ``test_32x32.mat`` MATLAB files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from otrobust.data.base import DatasetSpec, ImageData, register_dataset
from otrobust.errors import OtrobustError

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def _find_mat(root: Path, split: str) -> Path:
    name = SVHN_FILES[split]
    for d in (root, root / "svhn", root / "SVHN"):
        if (d / name).is_file():
            return d / name
    raise OtrobustError(f"missing SVHN file {str(root / name)!r}; download it from the SVHN site "
                        "(or with otrobust's download_dataset) and place it there")


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A ``*_32x32.mat`` file -> images (N, 3, 32, 32) uint8 and labels (N,) int64 with digit 0 as 0.

    The file stores X as (32, 32, 3, N) and y as (N, 1) with the digit 0 labelled 10.
    """
    try:
        from scipy.io import loadmat
    except ImportError:
        raise OtrobustError("reading SVHN needs scipy: pip install scipy") from None
    try:
        mat = loadmat(path)
    except Exception as exc:  # truncated or corrupt: ValueError, OSError, TypeError, ...
        raise OtrobustError(f"cannot read SVHN file {str(path)!r} (truncated or corrupt? re-download it): "
                            f"{type(exc).__name__}: {exc}") from None
    if "X" not in mat or "y" not in mat:
        raise OtrobustError(f"SVHN file {str(path)!r} has no 'X'/'y' arrays; is it a *_32x32.mat file?")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y):
        raise OtrobustError(f"SVHN file {str(path)!r}: X is {x.shape} and y has {len(y)} labels, "
                            "expected X (32, 32, 3, N) and N labels")
    y[y == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8), y


def load_svhn(root: Path, split: str) -> ImageData:
    """SVHN ``split`` ("train" or "test"; the 'extra' set is not used)."""
    images, labels = read_svhn_mat(_find_mat(root, split))
    return ImageData(torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels), 10)


SVHN = register_dataset(DatasetSpec(
    name="svhn", num_classes=10, in_channels=3, image_size=32, load=load_svhn, augment="none",
    default_model="resnet18", default_eps=8 / 255, class_names=tuple(str(d) for d in range(10)),
))
