"""CIFAR-10 and CIFAR-100 from the python-pickle batches that the CIFAR site publishes.

The pickles are read with a restricted unpickler that can only rebuild numpy arrays, lists, dicts,
strings and numbers, so a tampered file cannot run code when it is loaded.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
import torch

from otrobust.data.base import DatasetSpec, ImageData, register_dataset
from otrobust.errors import OtrobustError

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle",
    "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon",
    "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)


def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    return _reconstruct, scalar


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR pickle may name: numpy array/scalar rebuilding and bytes decoding."""
    import codecs

    reconstruct, scalar = _numpy_reconstruct()
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except those needed to rebuild numpy arrays."""

    def find_class(self, module: str, name: str):
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise OtrobustError(f"refusing to load {module}.{name} from a data pickle: only numpy arrays, "
                                "lists, dicts, strings and numbers are allowed; re-download the file")
        return allowed[(module, name)]


def safe_load_pickle(path: Path) -> object:
    """Unpickle ``path`` (latin-1 for python-2 strings) with :class:`SafeUnpickler`."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding="latin1").load()
    except OtrobustError as exc:
        raise OtrobustError(f"unsafe pickle {str(path)!r}: {exc}") from None
    except Exception as exc:  # truncated or corrupt: EOFError, UnpicklingError, ValueError, ...
        raise OtrobustError(f"cannot read pickle {str(path)!r} (truncated or corrupt? re-download it): "
                            f"{type(exc).__name__}: {exc}") from None


def _get(batch: dict, key: str, path: Path):
    """``batch[key]`` whether the pickle stored str or bytes keys."""
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    keys = ", ".join(repr(k) for k in batch)
    raise OtrobustError(f"CIFAR batch {str(path)!r} has no {key!r} entry (keys: {keys}); is it a CIFAR file?")


def _as_array(value, what: str, path: Path) -> np.ndarray:
    """``value`` as a numpy array of plain (non-object) values; a ragged list or an odd object is an error."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise OtrobustError(f"CIFAR batch {str(path)!r}: {what} is not an array ({exc}); re-download it") from None
    if array.dtype.kind not in "biuf":  # strings, bytes, dicts, None, ints beyond int64 (object)
        raise OtrobustError(f"CIFAR batch {str(path)!r}: {what} holds {type(value).__name__} of "
                            f"{array.dtype} values, expected numbers; re-download it")
    return array


def read_cifar_batch(path: Path, label_key: str = "labels",
                     num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> images (N, 3, 32, 32) uint8 and labels (N,) int64.

    What the pickle gives is checked before it is used: 'data' uint8 (N, 3072), labels a flat list of N
    whole numbers (in 0..num_classes-1 when given); anything else is an OtrobustError naming the file."""
    batch = safe_load_pickle(path)
    if not isinstance(batch, dict):
        raise OtrobustError(f"CIFAR batch {str(path)!r} holds a {type(batch).__name__}, expected a dict")
    data = _as_array(_get(batch, "data", path), "'data'", path)
    labels = _as_array(_get(batch, label_key, path), repr(label_key), path)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise OtrobustError(f"CIFAR batch {str(path)!r}: 'data' is {data.dtype} {data.shape}, "
                            "expected uint8 (N, 3072)")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise OtrobustError(f"CIFAR batch {str(path)!r}: {label_key!r} is {labels.dtype} {labels.shape}, "
                            "expected a flat list of whole numbers")
    if len(labels) != len(data):
        raise OtrobustError(f"CIFAR batch {str(path)!r}: {len(data)} images but {len(labels)} labels")
    if len(labels) and num_classes is not None and not (0 <= labels.min() and labels.max() < num_classes):
        raise OtrobustError(f"CIFAR batch {str(path)!r}: {label_key!r} range {labels.min()}..{labels.max()}, "
                            f"expected 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _find_folder(root: Path, folder: str, marker: str) -> Path:
    """``root/folder`` or root itself when it is that folder (recognised by ``marker``)."""
    for d in (root / folder, root):
        if (d / marker).is_file():
            return d
    raise OtrobustError(f"no CIFAR files in {str(root)!r}: expected {str(root / folder / marker)!r}; "
                        "download the python version from the CIFAR site and unpack it there")


def _to_image_data(images: np.ndarray, labels: np.ndarray, num_classes: int) -> ImageData:
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    return ImageData(x, torch.from_numpy(labels), num_classes)


def load_cifar10(root: Path, split: str) -> ImageData:
    """CIFAR-10 ``split``; for "train", whichever of data_batch_1..5 exist, in order."""
    folder = _find_folder(root, CIFAR10_FOLDER, "batches.meta")
    names = CIFAR10_TRAIN_BATCHES if split == "train" else ("test_batch",)
    paths = [folder / n for n in names if (folder / n).is_file()]
    if not paths:
        raise OtrobustError(f"no CIFAR-10 {split} batches in {str(folder)!r}: expected "
                            f"{' or '.join(names)}")
    parts = [read_cifar_batch(p, num_classes=10) for p in paths]
    return _to_image_data(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), 10)


def load_cifar100(root: Path, split: str) -> ImageData:
    """CIFAR-100 ``split`` with its 100 fine labels."""
    folder = _find_folder(root, CIFAR100_FOLDER, "meta")
    path = folder / split
    if not path.is_file():
        raise OtrobustError(f"missing CIFAR-100 file {str(path)!r}")
    images, labels = read_cifar_batch(path, label_key="fine_labels", num_classes=100)
    return _to_image_data(images, labels, 100)


CIFAR10 = register_dataset(DatasetSpec(
    name="cifar10", num_classes=10, in_channels=3, image_size=32, load=load_cifar10, augment="crop-flip",
    default_model="resnet18", default_eps=8 / 255, class_names=CIFAR10_CLASSES,
))
CIFAR100 = register_dataset(DatasetSpec(
    name="cifar100", num_classes=100, in_channels=3, image_size=32, load=load_cifar100,
    augment="crop-flip", default_model="resnet18", default_eps=8 / 255, class_names=CIFAR100_CLASSES,
))
