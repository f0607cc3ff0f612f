import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from otrobust.data import list_image_folder, load_dataset, load_image_folder
from otrobust.errors import OtrobustError

Image = pytest.importorskip("PIL.Image")


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _make_folder(root: Path, layout: dict[str, dict[str, int]], gray: bool = False, size: int = 6,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``layout[split][class]`` random PNGs; return the pixels by relative path."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, classes in layout.items():
        for name, count in classes.items():
            for i in range(count):
                shape = (size, size) if gray else (size, size, 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                rel = f"{split}/{name}/img_{i}.png"
                _save(root / rel, pixels)
                written[rel] = pixels
    return written


def _zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*.png")):
            zf.write(p, prefix + p.relative_to(folder).as_posix())
    return archive


LAYOUT = {"train": {"dog": 2, "cat": 3, "bird": 1}, "test": {"cat": 1, "dog": 2}}


def test_classes_sorted_and_pixels_exact(tmp_path: Path):
    written = _make_folder(tmp_path / "imgs", LAYOUT)
    data = load_image_folder(tmp_path / "imgs", "train")
    paths, labels, classes = list_image_folder(tmp_path / "imgs", "train")
    assert classes == ("bird", "cat", "dog")
    assert labels == [0, 1, 1, 1, 2, 2] and data.y.tolist() == labels
    assert data.x.shape == (6, 3, 6, 6) and data.num_classes == 3
    for k, rel in enumerate(paths):
        assert torch.equal(data.x[k], torch.from_numpy(written[rel]).permute(2, 0, 1).float() / 255)


def test_test_split_numbers_classes_like_train(tmp_path: Path):
    _make_folder(tmp_path, LAYOUT)
    test = load_image_folder(tmp_path, "test")  # has no 'bird' folder
    assert test.num_classes == 3 and test.y.tolist() == [1, 2, 2]


@pytest.mark.parametrize("prefix", ["", "data/"])
def test_zip_file_gives_the_same_data(tmp_path: Path, prefix: str):
    _make_folder(tmp_path / "imgs", LAYOUT)
    archive = _zip_folder(tmp_path / "imgs", tmp_path / "imgs.zip", prefix)
    expected = load_image_folder(tmp_path / "imgs", "train")
    for root in (archive, tmp_path):  # the zip itself, or a folder holding only that zip
        data = load_dataset("folder", "train", root)
        assert torch.equal(data.x, expected.x) and torch.equal(data.y, expected.y)


def test_grayscale_stays_one_channel_and_mixed_becomes_rgb(tmp_path: Path):
    written = _make_folder(tmp_path / "g", {"train": {"a": 2, "b": 1}}, gray=True)
    data = load_image_folder(tmp_path / "g", "train")
    assert data.x.shape == (3, 1, 6, 6)
    assert torch.equal(data.x[0, 0], torch.from_numpy(written["train/a/img_0.png"]).float() / 255)
    _save(tmp_path / "g" / "train" / "c" / "color.png", np.zeros((6, 6, 3), dtype=np.uint8))
    mixed = load_image_folder(tmp_path / "g", "train")
    assert mixed.x.shape == (4, 3, 6, 6)
    assert torch.equal(mixed.x[0, 1], mixed.x[0, 0])  # gray -> RGB repeats the channel


def test_different_sizes_are_refused(tmp_path: Path):
    _make_folder(tmp_path, {"train": {"a": 1}})
    _save(tmp_path / "train" / "b" / "big.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(OtrobustError, match="big.png.*one size"):
        load_image_folder(tmp_path, "train")


def test_missing_split_and_missing_folder(tmp_path: Path):
    _make_folder(tmp_path, {"train": {"a": 1}})
    with pytest.raises(OtrobustError, match="no 'test' images"):
        load_image_folder(tmp_path, "test")
    with pytest.raises(OtrobustError, match="no image folder"):
        load_image_folder(tmp_path / "train", "train")
    with pytest.raises(OtrobustError, match="needs --data-dir"):
        load_dataset("folder", "train", None)


def test_corrupt_image_and_zip(tmp_path: Path):
    _make_folder(tmp_path / "imgs", {"train": {"a": 1}})
    (tmp_path / "imgs" / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(OtrobustError, match="broken.png"):
        load_image_folder(tmp_path / "imgs", "train")
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"PK not a zip")
    with pytest.raises(OtrobustError, match="bad.zip"):
        load_image_folder(bad_zip, "train")


def test_missing_pillow_says_how_to_install(tmp_path: Path, monkeypatch):
    _make_folder(tmp_path, {"train": {"a": 1}})
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(OtrobustError, match="pip install pillow"):
        load_image_folder(tmp_path, "train")
