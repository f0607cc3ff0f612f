"""Any labelled image set stored as ``<root>/<split>/<class>/<image>`` (a folder or a ``.zip``).

Classes are the sub-folder names sorted alphabetically, numbered from 0, as in torchvision's
``ImageFolder``; the class list is the union over the ``train`` and ``test`` folders so that both
splits number the classes the same way. Images are read with Pillow.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from otrobust.data.base import DatasetSpec, ImageData, register_dataset
from otrobust.errors import OtrobustError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
GRAY_MODES = ("1", "L")

# (split, class, path): path is relative to the root folder, or an entry name inside the zip.
Entry = tuple[str, str, str]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _zip_of(root: Path) -> Path | None:
    """``root`` itself when it is a zip file, or the only zip file inside the folder ``root``."""
    if root.is_file() and root.suffix.lower() == ".zip":
        return root
    if root.is_dir():
        zips = sorted(root.glob("*.zip"))
        if len(zips) == 1:
            return zips[0]
    return None


def _dir_entries(root: Path) -> list[Entry]:
    entries = []
    for split in SPLITS:
        if (root / split).is_dir():
            for class_dir in (root / split).iterdir():
                if class_dir.is_dir():
                    entries += [(split, class_dir.name, p.relative_to(root).as_posix())
                                for p in class_dir.iterdir() if p.is_file() and _is_image(p.name)]
    return entries


def _zip_entries(names: list[str]) -> list[Entry]:
    """Entries named ``[prefix/]<split>/<class>/<image>`` in a zip's list of names."""
    entries = []
    for name in names:
        parts = PurePosixPath(name).parts
        if len(parts) >= 3 and parts[-3] in SPLITS and _is_image(parts[-1]):
            entries.append((parts[-3], parts[-2], name))
    return entries


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise OtrobustError(f"cannot open zip file {str(archive)!r} (corrupt? re-download it): "
                            f"{exc}") from None


def _locate(root: Path) -> Path:
    """``root`` when it holds <split>/ folders, else the zip file to read."""
    if root.is_dir() and any((root / s).is_dir() for s in SPLITS):
        return root
    archive = _zip_of(root)
    if archive is None:
        raise OtrobustError(f"no image folder at {str(root)!r}: expected {str(root)}/<train|test>/<class>/"
                            "<image>.png|jpg, or a .zip file holding that layout")
    return archive


@contextmanager
def _reader(source: Path) -> Iterator[tuple[list[Entry], Callable[[str], bytes]]]:
    """All image entries of a folder or zip, and a function reading one entry's bytes."""
    if source.is_dir():
        yield _dir_entries(source), lambda rel: (source / rel).read_bytes()
        return
    with _open_zip(source) as zf:
        yield _zip_entries(zf.namelist()), zf.read


def list_image_folder(root: str | Path, split: str) -> tuple[list[str], list[int], tuple[str, ...]]:
    """The images of ``split`` in loading order (by class, then path), their labels, and the class names."""
    source = _locate(Path(root).expanduser())
    with _reader(source) as (entries, _):
        return _split_listing(entries, split, str(source))


def _split_listing(entries: list[Entry], split: str,
                   where: str) -> tuple[list[str], list[int], tuple[str, ...]]:
    classes = tuple(sorted({c for _, c, _ in entries}))
    chosen = sorted((c, p) for s, c, p in entries if s == split)
    if not chosen:
        raise OtrobustError(f"no {split!r} images in {where!r}: expected {split}/<class>/<image>.png|jpg")
    number = {c: i for i, c in enumerate(classes)}
    return [p for _, p in chosen], [number[c] for c, _ in chosen], classes


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise OtrobustError("reading image folders needs Pillow: pip install pillow") from None
    return Image


def _decode(read: Callable[[str], bytes], name: str):
    Image = _pillow()
    try:
        img = Image.open(io.BytesIO(read(name)))
        img.load()
    except Exception as exc:  # truncated, bad zip CRC, not an image: OSError, BadZipFile, ...
        raise OtrobustError(f"cannot read image {name!r} (corrupt?): {type(exc).__name__}: {exc}") from None
    return img


def _to_array(images: list, names: list[str]) -> np.ndarray:
    """Decoded images -> (N, C, H, W) uint8: grayscale kept as one channel only if every image is gray."""
    size = images[0].size
    for img, name in zip(images, names, strict=True):
        if img.size != size:
            raise OtrobustError(f"image {name!r} is {img.size[0]}x{img.size[1]} but {names[0]!r} is "
                                f"{size[0]}x{size[1]}; resize the images to one size first")
    mode = "L" if all(img.mode in GRAY_MODES for img in images) else "RGB"
    arrays = [np.asarray(img.convert(mode), dtype=np.uint8) for img in images]
    stacked = np.stack(arrays)
    return stacked[:, None] if mode == "L" else stacked.transpose(0, 3, 1, 2)


def load_image_folder(root: str | Path | None, split: str) -> ImageData:
    """Read ``<root>/<split>/<class>/*.png|jpg|jpeg`` (root may also be a .zip, or hold exactly one)."""
    if root is None:
        raise OtrobustError("dataset 'folder' needs --data-dir pointing at <root>/<split>/<class>/ or a .zip")
    source = _locate(Path(root).expanduser())
    with _reader(source) as (entries, read):
        paths, labels, classes = _split_listing(entries, split, str(source))
        images = [_decode(read, p) for p in paths]
    x = torch.from_numpy(_to_array(images, paths).astype(np.float32) / 255.0)
    return ImageData(x, torch.tensor(labels, dtype=torch.int64), len(classes))


# The number of classes, channels and the image size depend on the folder: the zeros below mean
# "read them from the loaded ImageData" (data.num_classes, data.x.shape). needs_root is False
# only so that a .zip file, not just a folder, can be given as the root; the loader checks it.
FOLDER = register_dataset(DatasetSpec(
    name="folder", num_classes=0, in_channels=0, image_size=0, load=load_image_folder, needs_root=False,
    default_model="resnet18", default_eps=8 / 255,
))
