"""IDX reading: the real MNIST files, both layouts, and clear errors for missing or corrupt files."""

import gzip
import shutil
import struct

import numpy as np
import pytest

from otrobust.data import load_dataset
from otrobust.errors import OtrobustError


def test_real_mnist_test_set(shared_data):
    test = load_dataset("mnist", "test", shared_data / "mnist")
    assert test.x.shape == (10000, 1, 28, 28)
    assert 0.0 <= float(test.x.min()) and float(test.x.max()) <= 1.0
    assert test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # the largest class share of the MNIST test set is 11.35 % (digit 1)
    assert int(np.bincount(test.y.numpy()).max()) == 1135


def test_real_mnist_train_subset_takes_matching_labels(shared_data):
    train = load_dataset("mnist", "train", shared_data / "mnist", size=5000)
    assert len(train) == 5000
    assert train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_real_fashion_mnist(shared_data):
    test = load_dataset("fashion-mnist", "test", shared_data / "fashion-mnist", size=100)
    assert test.x.shape == (100, 1, 28, 28)


def _write_idx(folder, n=5, gz=True, corrupt=False):
    images = struct.pack(">iiii", 2051, n, 28, 28) + bytes(range(256)) * 0 + np.zeros(n * 784, np.uint8).tobytes()
    labels = struct.pack(">ii", 2049, n) + bytes(n)
    if corrupt:
        images = images[:-10]
    for name, raw in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        if gz:
            with gzip.open(folder / (name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            (folder / name).write_bytes(raw)


def test_torchvision_layout_uncompressed(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw, gz=False)
    assert len(load_dataset("mnist", "test", tmp_path)) == 5


def test_truncated_file_is_a_clear_error(tmp_path):
    _write_idx(tmp_path, corrupt=True)
    with pytest.raises(OtrobustError, match="corrupt IDX file .*t10k-images"):
        load_dataset("mnist", "test", tmp_path)


def test_bad_magic_is_a_clear_error(tmp_path, shared_data):
    shutil.copy(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-images-idx3-ubyte.gz")
    shutil.copy(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz", tmp_path)
    with pytest.raises(OtrobustError, match="bad header"):
        load_dataset("mnist", "test", tmp_path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(OtrobustError, match="missing data file: no t10k-images"):
        load_dataset("mnist", "test", tmp_path)
    with pytest.raises(OtrobustError, match="does not exist"):
        load_dataset("mnist", "test", tmp_path / "nowhere")


def test_digits_split_is_deterministic_and_disjoint():
    a, b = load_dataset("digits", "train"), load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert (a.x == b.x).all() and len(a) + len(test) == 1797
    assert 0.0 <= float(a.x.min()) and float(a.x.max()) <= 1.0
