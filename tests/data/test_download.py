import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from otrobust.data import download, download_dataset, load_dataset
from otrobust.errors import OtrobustError

CIFAR10_MEMBERS = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


def _cifar10_archive(path: Path) -> Path:
    """A tiny archive in the official layout: cifar-10-batches-py/ with two images per batch."""
    with tarfile.open(path, "w:gz") as archive:
        for i, member in enumerate(CIFAR10_MEMBERS):
            batch = {"data": np.full((2, 3072), i, dtype=np.uint8), "labels": [i % 10, 1]}
            payload = pickle.dumps({"label_names": ["x"] * 10} if member == "batches.meta" else batch)
            _add(archive, f"cifar-10-batches-py/{member}", payload)
    return path


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture
def fast_timeout(monkeypatch):
    monkeypatch.setattr(download, "TIMEOUT_S", 3)


def test_offline_failure_is_one_clear_error(tmp_path: Path, fast_timeout):
    start = time.monotonic()
    with pytest.raises(OtrobustError) as info:
        download_dataset("cifar10", tmp_path / "data", source="http://127.0.0.1:9/x")
    message = str(info.value)
    assert time.monotonic() - start < 10
    assert "download of http://127.0.0.1:9/x failed" in message and "offline" in message
    assert "cifar-10-python.tar.gz" in message and "by hand" in message and str(tmp_path / "data") in message
    assert "\n" not in message
    assert _leftovers(tmp_path / "data") == []


def test_local_archive_is_verified_and_unpacked(tmp_path: Path):
    archive = _cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    folder = download_dataset("cifar10", root, source=str(archive), md5=_md5(archive))
    assert folder == root / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR10_MEMBERS)
    assert _leftovers(root) == ["cifar-10-batches-py"]  # no staging folder left
    train = load_dataset("cifar10", "train", root)
    assert len(train) == 10 and train.y[::2].tolist() == [1, 2, 3, 4, 5]
    # Already in place: nothing is fetched, even from an unreachable source.
    assert download_dataset("cifar10", root, source="http://127.0.0.1:9/x") == folder


def test_file_url_source(tmp_path: Path):
    archive = _cifar10_archive(tmp_path / "a.tar.gz")
    folder = download_dataset("cifar10", tmp_path / "data", source=archive.as_uri(), md5=_md5(archive))
    assert (folder / "test_batch").is_file()


def test_checksum_mismatch_installs_nothing(tmp_path: Path):
    archive = _cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    root = tmp_path / "data"
    with pytest.raises(OtrobustError, match="checksum mismatch for cifar-10-python.tar.gz.*c58f3010"):
        download_dataset("cifar10", root, source=str(archive))  # the official md5 cannot match
    assert _leftovers(root) == []


def test_archive_without_the_expected_folder_or_with_unsafe_paths(tmp_path: Path):
    wrong = tmp_path / "wrong.tar.gz"
    with tarfile.open(wrong, "w:gz") as archive:
        _add(archive, "something/else", b"x")
    with pytest.raises(OtrobustError, match="does not hold cifar-10-batches-py/"):
        download_dataset("cifar10", tmp_path / "d1", source=str(wrong), md5=_md5(wrong))
    assert _leftovers(tmp_path / "d1") == []
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as archive:
        _add(archive, "../escaped", b"x")
    with pytest.raises(OtrobustError, match="unsafe entry '../escaped'"):
        download_dataset("cifar10", tmp_path / "d2", source=str(evil), md5=_md5(evil))
    assert not (tmp_path / "escaped").exists() and _leftovers(tmp_path / "d2") == []


def _idx_gz(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def test_idx_files_are_gunzipped_into_mnist_raw(tmp_path: Path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("t10k", 3)):
        _idx_gz(mirror / f"{split}-images-idx3-ubyte.gz", 2051, rng.integers(0, 256, (n, 28, 28), np.uint8))
        _idx_gz(mirror / f"{split}-labels-idx1-ubyte.gz", 2049, np.arange(n, dtype=np.uint8))
    official = download.REMOTES["mnist"]
    files = tuple((name, _md5(mirror / name)) for name, _ in official.files)
    monkeypatch.setitem(download.REMOTES, "mnist", dataclasses.replace(official, files=files))
    folder = download_dataset("mnist", tmp_path / "data", source=str(mirror))
    assert folder == tmp_path / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in folder.iterdir()) == sorted(n.removesuffix(".gz") for n, _ in files)
    assert load_dataset("mnist", "test", tmp_path / "data").y.tolist() == [0, 1, 2]


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(OtrobustError, match="cannot download dataset 'imagenet'"):
        download_dataset("imagenet", tmp_path)
    with pytest.raises(OtrobustError, match="one-file dataset"):
        download_dataset("svhn", tmp_path, md5="0" * 32)
    with pytest.raises(OtrobustError, match="give source as a folder"):
        download_dataset("mnist", tmp_path, source="http://127.0.0.1:9/one-file.gz")
    with pytest.raises(OtrobustError, match="neither a file, a folder nor a URL"):
        download_dataset("cifar10", tmp_path, source=str(tmp_path / "nope.tar.gz"))
