"""Datasets by name, read from their standard on-disk layouts, and device-side batching."""

from otrobust.data import cifar, digits, folder, idx, svhn  # noqa: F401  (registers the datasets)
from otrobust.data.base import (
    DATASETS,
    DatasetSpec,
    ImageData,
    get_dataset_spec,
    load_dataset,
    register_dataset,
)
from otrobust.data.cifar import load_cifar10, load_cifar100, read_cifar_batch, safe_load_pickle
from otrobust.data.download import download_dataset
from otrobust.data.folder import list_image_folder, load_image_folder
from otrobust.data.loader import iterate_batches, random_crop_flip
from otrobust.data.svhn import load_svhn, read_svhn_mat

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ImageData",
    "download_dataset",
    "get_dataset_spec",
    "iterate_batches",
    "list_image_folder",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_image_folder",
    "load_svhn",
    "random_crop_flip",
    "read_cifar_batch",
    "read_svhn_mat",
    "register_dataset",
    "safe_load_pickle",
]
