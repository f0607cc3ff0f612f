"""scikit-learn's bundled 8×8 handwritten digits: the embedded default, no files needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from otrobust.data.base import DatasetSpec, ImageData, register_dataset

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits_split(root: Path | None, split: str) -> ImageData:
    """A fixed stratified 80/20 split of the 1,797 digits; pixels 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=TEST_FRACTION,
                                           random_state=SPLIT_SEED, stratify=y)
    idx = idx_train if split == "train" else idx_test
    return ImageData(torch.from_numpy(x[idx]).unsqueeze(1), torch.from_numpy(y[idx]), 10)


DIGITS = register_dataset(DatasetSpec(
    name="digits", num_classes=10, in_channels=1, image_size=8, load=load_digits_split,
    # ε = 0.2 is 3.2 of the 16 grey steps: a full-ink pixel stays above 0.8 and blank paper below 0.2, but half the
    # ink pixels are faint (0 < v < 0.75), so at 0.3 the ball already holds images no one would call the same
    # digit, and no method trained here keeps accuracy far above chance (docs/training.md, "Defaults that train").
    # 1,437 training images: small batches and a small validation split leave enough steps per epoch.
    needs_root=False, default_model="small-cnn", default_eps=0.2, default_batch_size=32, default_val_size=200,
))
