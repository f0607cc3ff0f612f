"""ImageData (tensors in memory) and the DATASETS registry."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from otrobust.errors import OtrobustError, path_kind


@dataclass
class ImageData:
    """A labelled image set held in memory.

    x: (N, C, H, W) float32 in [0, 1]; y: (N,) int64 in [0, num_classes).
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __post_init__(self):
        if self.x.ndim != 4 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise OtrobustError(f"images {tuple(self.x.shape)} and labels {tuple(self.y.shape)} do not match")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise OtrobustError(
                f"labels out of range: found {int(self.y.min())}..{int(self.y.max())}, "
                f"expected 0..{self.num_classes - 1}")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: torch.Tensor | slice) -> ImageData:
        """The examples at ``index`` (a slice or a LongTensor)."""
        return ImageData(self.x[index], self.y[index], self.num_classes)

    def first(self, n: int | None) -> ImageData:
        """The first ``n`` examples (all when n is None); RobustBench-style subsets."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise OtrobustError(f"subset size must be positive, got {n}")
        return self.take(slice(0, n))


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: shape, classes, the paper's augmentation, and how to read a split."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    load: Callable[[Path | None, str], ImageData]  # (root, "train" | "test") -> ImageData
    augment: str = "none"  # "none" | "crop-flip" (pad-4 random crop + horizontal flip)
    needs_root: bool = True
    default_model: str = "cw-cnn"
    default_eps: float = 0.3
    default_batch_size: int = 128
    default_val_size: int = 500
    class_names: tuple[str, ...] = field(default=())


DATASETS: dict[str, DatasetSpec] = {}
"""Every dataset otrobust reads, by name (``digits``, ``mnist``, ``cifar10``, ...), as a :class:`DatasetSpec`."""


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def get_dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise OtrobustError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def load_dataset(name: str, split: str, root: str | Path | None = None, size: int | None = None) -> ImageData:
    """Read ``split`` ("train" or "test") of a registered dataset, keeping the first ``size`` examples."""
    spec = get_dataset_spec(name)
    if split not in ("train", "test"):
        raise OtrobustError(f"unknown split {split!r}; use 'train' or 'test'")
    if spec.needs_root:
        if root is None:
            raise OtrobustError(f"dataset {name!r} needs --data-dir pointing at its files")
        root = Path(root).expanduser()
        kind = path_kind(root)
        if kind != "a folder":
            what = "does not exist" if kind == "missing" else f"is {kind}, not a folder"
            raise OtrobustError(f"--data-dir {str(root)!r} {what}; point it at the folder holding the {name} files")
    data = spec.load(Path(root) if root is not None else None, split)
    return data.first(size)


def data_fingerprint(root: str | Path | None) -> str | None:
    """SHA-256 (first 16 hex digits) over every regular file under ``root``: relative path and contents.

    What a run was trained on, independent of where the folder is: two copies of one dataset agree, another
    dataset (or an edited file) differs. None for a bundled dataset (``root`` None). Hidden files are skipped.
    """
    if root is None:
        return None
    root = Path(root).expanduser()
    if not root.is_dir():
        return None
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                          for part in p.relative_to(root).parts))
    stamp = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _fingerprint(str(root.resolve()), stamp)


@functools.lru_cache(maxsize=16)
def _fingerprint(root: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for rel, _, _ in stamp:
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        with open(Path(root) / rel, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
