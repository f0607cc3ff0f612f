import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from otrobust.data import DATASETS, load_dataset
from otrobust.data.svhn import read_svhn_mat
from otrobust.errors import OtrobustError

scipy_io = pytest.importorskip("scipy.io")


def _write_mat(path: Path, n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny file in the official layout: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10
    scipy_io.savemat(path, {"X": x, "y": y})
    return x, y


def test_svhn_layout_and_label_ten_is_zero(tmp_path: Path):
    x, y = _write_mat(tmp_path / "train_32x32.mat", n=12)
    data = load_dataset("svhn", "train", tmp_path)
    assert data.x.shape == (12, 3, 32, 32) and data.num_classes == 10
    expected_y = torch.from_numpy(y.reshape(-1).astype(np.int64) % 10)
    assert torch.equal(data.y, expected_y)
    assert data.y.tolist().count(0) == 1  # the one label 10
    # pixel (image i, channel c, row h, column w) is X[h, w, c, i]
    i, c, h, w = 7, 2, 5, 30
    assert float(data.x[i, c, h, w]) == pytest.approx(x[h, w, c, i] / 255.0)
    assert torch.equal(data.x, torch.from_numpy(x.transpose(3, 2, 0, 1).astype(np.float32) / 255))


def test_svhn_spec():
    spec = DATASETS["svhn"]
    assert (spec.num_classes, spec.in_channels, spec.image_size, spec.augment) == (10, 3, 32, "none")
    assert spec.default_model == "resnet18" and spec.default_eps == pytest.approx(8 / 255)


def test_missing_file_names_it(tmp_path: Path):
    with pytest.raises(OtrobustError, match="test_32x32.mat"):
        load_dataset("svhn", "test", tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file_is_a_clear_error(tmp_path: Path, damage: str):
    path = tmp_path / "test_32x32.mat"
    _write_mat(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not a mat file" * 50)
    with pytest.raises(OtrobustError, match="test_32x32.mat"):
        read_svhn_mat(path)


def test_wrong_arrays_are_a_clear_error(tmp_path: Path):
    path = tmp_path / "train_32x32.mat"
    scipy_io.savemat(path, {"images": np.zeros((2, 2))})
    with pytest.raises(OtrobustError, match="no 'X'/'y'"):
        read_svhn_mat(path)


def test_missing_scipy_says_how_to_install(tmp_path: Path, monkeypatch):
    path = tmp_path / "train_32x32.mat"
    _write_mat(path)
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `import scipy.io` fail
    with pytest.raises(OtrobustError, match="pip install scipy"):
        read_svhn_mat(path)
