import os
import pickle
import shlex
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from otrobust.data import DATASETS, list_image_folder, load_dataset, load_image_folder
from otrobust.data.cifar import CIFAR10_CLASSES, load_cifar10, read_cifar_batch
from otrobust.errors import OtrobustError

CANONICAL_FIRST_TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


@pytest.fixture(scope="module")
def cifar_dir(shared_data: Path) -> Path:
    d = shared_data / "cifar10"
    if not (d / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"CIFAR-10 batches not found at {d / 'cifar-10-batches-py'}")
    return d


@pytest.fixture(scope="module")
def cifar_test(cifar_dir: Path):
    return load_dataset("cifar10", "test", cifar_dir)


def _first1000_order(cifar_dir: Path) -> list[tuple[int, int, str]]:
    path = cifar_dir / "cifar10_test_first1000_order.txt"
    if not path.is_file():
        pytest.skip(f"missing {path}")
    rows = [line.split() for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return [(int(i), int(label), name) for i, label, name in rows]


def _write_batch(path: Path, images: np.ndarray, labels: list[int], key_type=str, label_key="labels"):
    path.parent.mkdir(parents=True, exist_ok=True)
    k = (lambda s: s.encode()) if key_type is bytes else (lambda s: s)
    with open(path, "wb") as f:
        pickle.dump({k("data"): images.reshape(len(images), -1), k(label_key): labels,
                     k("batch_label"): k("made in a test")}, f)


def test_cifar10_test_split_matches_canonical_labels(cifar_test):
    assert cifar_test.x.shape == (10000, 3, 32, 32)
    assert cifar_test.x.dtype == torch.float32
    assert 0.0 <= float(cifar_test.x.min()) and float(cifar_test.x.max()) <= 1.0
    assert cifar_test.y[:10].tolist() == CANONICAL_FIRST_TEST_LABELS
    assert torch.bincount(cifar_test.y).tolist() == [1000] * 10


def test_cifar10_train_reads_the_batches_present_and_the_folder_itself(cifar_dir: Path):
    train = load_cifar10(cifar_dir / "cifar-10-batches-py", "train")  # root = the batches folder
    assert len(train) == 8000 and train.num_classes == 10
    labels_file = cifar_dir / "cifar10_train_labels.txt"
    if labels_file.is_file():
        canonical = [int(v) for v in labels_file.read_text().split("\n")[1:8001]]
        assert train.y.tolist() == canonical


def test_cifar10_spec():
    spec = DATASETS["cifar10"]
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (10, 3, 32)
    assert spec.augment == "crop-flip" and spec.default_model == "resnet18"
    assert spec.default_eps == pytest.approx(8 / 255)
    assert spec.class_names == CIFAR10_CLASSES


def _sample(order, per_class: int = 5):
    """The first ``per_class`` canonical test images of every class."""
    chosen, counts = [], {}
    for index, label, name in order:
        if counts.get(label, 0) < per_class:
            counts[label] = counts.get(label, 0) + 1
            chosen.append((index, label, name))
    return chosen


def test_png_folder_matches_pickle_on_canonical_indices(cifar_dir: Path, cifar_test, tmp_path: Path):
    """50 PNGs of the test zip, read as a zip and as an extracted folder, equal the pickled images."""
    big_zip = cifar_dir / "cifar10_test_png.zip"
    if not big_zip.is_file():
        pytest.skip(f"missing {big_zip}")
    sample = _sample(_first1000_order(cifar_dir))
    small_zip = tmp_path / "sample.zip"
    with zipfile.ZipFile(big_zip) as src, zipfile.ZipFile(small_zip, "w") as dst:
        for _, _, name in sample:
            dst.writestr(name, src.read(name))
    with zipfile.ZipFile(small_zip) as zf:
        zf.extractall(tmp_path / "extracted")
    by_path = {name: (index, label) for index, label, name in sample}
    for root in (small_zip, tmp_path / "extracted"):
        paths, labels, classes = list_image_folder(root, "test")
        data = load_image_folder(root, "test")
        assert classes == CIFAR10_CLASSES
        canonical = torch.tensor([by_path[p][0] for p in paths])
        assert labels == [by_path[p][1] for p in paths]
        assert torch.equal(data.y, cifar_test.y[canonical])
        assert torch.equal(data.x, cifar_test.x[canonical])


def test_full_test_zip_lists_10000_images_in_class_order(cifar_dir: Path):
    big_zip = cifar_dir / "cifar10_test_png.zip"
    if not big_zip.is_file():
        pytest.skip(f"missing {big_zip}")
    paths, labels, classes = list_image_folder(big_zip, "test")
    assert len(paths) == 10000 and classes == CIFAR10_CLASSES
    label_of = dict(zip(paths, labels, strict=True))
    assert all(label_of[name] == label for _, label, name in _first1000_order(cifar_dir))


@pytest.mark.parametrize("key_type", [str, bytes])
def test_pickles_with_str_or_bytes_keys_load(tmp_path: Path, key_type):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    folder = tmp_path / "cifar-10-batches-py"
    _write_batch(folder / "data_batch_2", images, [0, 9, 3, 3], key_type)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    data = load_dataset("cifar10", "train", tmp_path)  # only data_batch_2 exists
    assert data.y.tolist() == [0, 9, 3, 3]
    assert torch.equal(data.x, torch.from_numpy(images).float() / 255)


def test_cifar100_reads_fine_labels(tmp_path: Path):
    images = np.zeros((3, 3, 32, 32), dtype=np.uint8)
    folder = tmp_path / "cifar-100-python"
    _write_batch(folder / "train", images, [19, 29, 99], bytes, label_key="fine_labels")
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": []}))
    data = load_dataset("cifar100", "train", tmp_path)
    assert data.num_classes == 100 and data.y.tolist() == [19, 29, 99]
    with pytest.raises(OtrobustError, match="missing CIFAR-100 file"):
        load_dataset("cifar100", "test", tmp_path)


def test_no_train_batches_is_a_clear_error(tmp_path: Path):
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({"label_names": []}))
    with pytest.raises(OtrobustError, match="no CIFAR-10 train batches"):
        load_dataset("cifar10", "train", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OtrobustError, match="no CIFAR files"):
        load_dataset("cifar10", "train", tmp_path / "empty")


class _RunsShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({"data": _RunsShell(f"touch {shlex.quote(str(marker))}"), "labels": []}))
    with pytest.raises(OtrobustError, match="refusing to load .*system"):
        read_cifar_batch(path)
    assert not marker.exists()


def test_truncated_pickle_names_the_file(tmp_path: Path):
    path = tmp_path / "data_batch_1"
    _write_batch(path, np.zeros((2, 3, 32, 32), dtype=np.uint8), [1, 2])
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(OtrobustError, match="data_batch_1.*truncated or corrupt"):
        read_cifar_batch(path)


def test_wrong_shape_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({"data": np.zeros((2, 10), dtype=np.uint8), "labels": [0, 1]}, f)
    with pytest.raises(OtrobustError, match=r"expected uint8 \(N, 3072\)"):
        read_cifar_batch(path)
