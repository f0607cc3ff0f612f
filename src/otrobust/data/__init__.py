"""Datasets by name, read from their standard on-disk layouts, and device-side batching."""

from otrobust.data import digits, idx  # noqa: F401  (registers the datasets)
from otrobust.data.base import DATASETS, DatasetSpec, ImageData, get_dataset_spec, load_dataset, register_dataset
from otrobust.data.loader import iterate_batches, random_crop_flip

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ImageData",
    "get_dataset_spec",
    "iterate_batches",
    "load_dataset",
    "random_crop_flip",
    "register_dataset",
]
