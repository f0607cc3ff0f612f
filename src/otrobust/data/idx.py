"""MNIST and Fashion-MNIST from IDX files (gzipped or not), in torchvision's layout or a flat folder."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from otrobust.data.base import DatasetSpec, ImageData, register_dataset
from otrobust.errors import OtrobustError

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
PREFIXES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_raw(path: Path) -> bytes:
    """The file's bytes, gunzipped for ``.gz``; any read or decompression failure is one OtrobustError."""
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path) as f:
            return f.read()
    # zlib.error is neither OSError nor EOFError: a corrupt deflate stream raises it from read()
    except (OSError, EOFError, zlib.error) as exc:
        raise OtrobustError(f"cannot read IDX file {str(path)!r} (truncated or corrupt? re-download it): "
                            f"{exc}") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file: the magic number must be ``magic``, every dimension in the header at least 1, and
    the file exactly as long as the header says; anything else is an OtrobustError naming the file."""
    raw = _read_raw(path)
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    kind = "image" if magic == IMAGES_MAGIC else "label"
    if len(raw) < header or struct.unpack(">i", raw[:4])[0] != magic:
        raise OtrobustError(f"corrupt IDX file {str(path)!r}: not an IDX {kind} file (bad header)")
    dims = struct.unpack(">" + "i" * ndim, raw[4:header])
    if min(dims) < 1:
        raise OtrobustError(f"corrupt IDX file {str(path)!r}: its header gives the {kind} dimensions as {dims}; "
                            "each must be at least 1 (re-download the file)")
    expected = header + math.prod(dims)  # Python ints: no overflow for huge header values
    if len(raw) != expected:
        raise OtrobustError(f"corrupt IDX file {str(path)!r}: header says {dims} "
                            f"({expected} bytes) but the file holds {len(raw)} bytes")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _candidates(root: Path, folder: str, prefix: str) -> list[Path]:
    """Files named ``prefix`` (optionally ``.gz``, or ``.firstN[.gz]`` subsets) in root or root/folder/raw."""
    found = []
    for d in (root / folder / "raw", root):
        if d.is_dir():
            found += sorted(p for p in d.iterdir() if p.name.startswith(prefix) and p.is_file())
        if found:
            break
    return found


def _find(root: Path, folder: str, prefix: str) -> Path:
    found = _candidates(root, folder, prefix)
    if not found:
        raise OtrobustError(f"missing data file: no {prefix}[.gz] in {str(root)!r} "
                            f"or {str(root / folder / 'raw')!r}")
    exact = [p for p in found if p.name in (prefix, prefix + ".gz")]
    return (exact or found)[0]


def _load_idx_split(root: Path, folder: str, split: str, num_classes: int = 10) -> ImageData:
    img_prefix, lab_prefix = PREFIXES[split]
    images = read_idx(_find(root, folder, img_prefix), IMAGES_MAGIC)
    label_files = _candidates(root, folder, lab_prefix)
    if not label_files:
        _find(root, folder, lab_prefix)  # raises the missing-file error
    labels = [read_idx(p, LABELS_MAGIC) for p in label_files]
    # Prefer a label file of the same length; else a longer one whose prefix is the subset's labels.
    same = [lab for lab in labels if len(lab) == len(images)]
    longer = [lab for lab in labels if len(lab) > len(images)]
    if same:
        y = same[0]
    elif longer:
        y = longer[0][: len(images)]
    else:
        raise OtrobustError(f"{len(images)} images in {str(root)!r} but only {max(map(len, labels))} "
                            f"labels in {', '.join(p.name for p in label_files)}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return ImageData(x, torch.from_numpy(y.astype(np.int64)), num_classes)


MNIST = register_dataset(DatasetSpec(
    name="mnist", num_classes=10, in_channels=1, image_size=28,
    load=lambda root, split: _load_idx_split(root, "MNIST", split),
))
FASHION_MNIST = register_dataset(DatasetSpec(
    name="fashion-mnist", num_classes=10, in_channels=1, image_size=28, default_eps=0.1,
    load=lambda root, split: _load_idx_split(root, "FashionMNIST", split),
    class_names=("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "boot"),
))
