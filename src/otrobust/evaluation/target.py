"""The model under test and its test images, from :class:`~otrobust.evaluation.command_settings.ModelSettings`: an
otrobust checkpoint, or any model (a factory, a weights file, normalisation folded in front).

:func:`check_model` is what runs before any attack: logits of the right shape, two forwards that agree (or a
model declared randomised), outputs that are not probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from otrobust.data import ImageData, get_dataset_spec, load_dataset
from otrobust.errors import OtrobustError
from otrobust.evaluation.command_settings import ModelSettings
from otrobust.models.external import UserModel, build_external, dtypes_cast, load_factory, writes_into_input
from otrobust.models.latent import Normalize
from otrobust.store.checkpoint import checkpoint_architecture, load_model_with_meta
from otrobust.store.weights import load_into, load_state_dict_file

CHECK_IMAGES = 16  # images the pre-attack checks forward


@dataclass
class Target:
    """A model in eval mode on its device ([0, 1] images in, logits out) and the test images to attack.

    ``fresh`` builds a newly initialised model of the same architecture (the audit's transfer surrogate);
    ``files`` are the files the model comes from (what a cache of its results depends on)."""

    model: nn.Module
    test: ImageData
    dataset: str
    data_dir: str | None
    description: str
    architecture: str
    fresh: Callable[[], nn.Module]
    files: list[Path]
    checkpoint: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # how the model was made evaluable (a cast, a copied input)


def load_target(settings: ModelSettings, device: torch.device | str) -> Target:
    """The model and the first ``settings.n`` test images; OtrobustError in one line when they do not fit."""
    if settings.model is not None:
        return _external(settings, device)
    model, meta, ckpt = load_model_with_meta(settings.path, device)
    arch = checkpoint_architecture(meta, str(ckpt))
    trained = meta.get("config", {})
    dataset = settings.dataset or arch.dataset
    get_dataset_spec(dataset)  # an unknown name is refused before any file is read
    data_dir = settings.data_dir or (trained.get("data_dir") if dataset == trained.get("dataset") else None)
    test = load_dataset(dataset, "test", data_dir, size=settings.n)
    _check_geometry(test, dataset, (arch.num_classes, arch.in_channels, arch.image_size, arch.image_size),
                    f"the model was trained on {arch.dataset!r}")
    model = _normalized(model, settings.normalize, arch.in_channels, device)
    return Target(model, test, dataset, data_dir, f"{arch.model} from {ckpt}", arch.model, arch.build, [ckpt],
                  ckpt, meta)


def _external(settings: ModelSettings, device) -> Target:
    factory = load_factory(settings.model)
    test = load_dataset(settings.dataset, "test", settings.data_dir, size=settings.n)
    size = settings.input_size or list(test.x.shape[1:])
    channels, height = (size[0], size[1]) if len(size) == 3 else (test.x.shape[1], size[0])
    classes = settings.num_classes or test.num_classes
    width = size[2] if len(size) == 3 else height
    _check_geometry(test, settings.dataset, (classes, channels, height, width), f"--model {settings.model} takes")

    def build() -> nn.Module:
        return build_external(factory, num_classes=classes, in_channels=channels, image_size=height,
                              name=settings.model)

    built = build()
    cast = dtypes_cast(built)  # before load_into, which takes the file's values into the model's dtypes
    where, _, name = settings.model.rpartition(":")
    files = [Path(where).expanduser()] if where.endswith(".py") else []
    if settings.weights:
        load_into(built, load_state_dict_file(settings.weights), settings.weights)
        files.append(Path(settings.weights).expanduser())
    model = UserModel(built).to(device).eval()
    notes = [f"its {' and '.join(cast)} weights are evaluated in float32 (attacks and their gradients need it)"
             ] if cast else []
    if writes_into_input(model, test.x[:CHECK_IMAGES].to(device)):
        model.copy_input = True
        notes.append("it writes into its input, so each forward is given a copy (the test images stay intact)")
    copy_input = model.copy_input

    def fresh() -> nn.Module:
        return UserModel(build(), copy_input)

    model = _normalized(model, settings.normalize, channels, device)
    what = settings.model + (f" with weights {settings.weights}" if settings.weights else " (its own weights)")
    return Target(model, test, settings.dataset, settings.data_dir, "; ".join([what, *notes]), name, fresh, files,
                  notes=notes)


def _check_geometry(test: ImageData, dataset: str, want: tuple[int, int, int, int], who: str) -> None:
    found = (test.num_classes, *test.x.shape[1:])
    if tuple(found) != tuple(want):
        raise OtrobustError(f"{who} {_geometry(want)}, but the {dataset!r} test images are {_geometry(found)}: "
                            f"they do not fit dataset {dataset!r}; pass the --dataset (and --data-dir) it was made for")


def _geometry(shape) -> str:
    classes, channels, height, width = shape
    return f"{classes} classes, {channels}-channel {height}x{width} images"


def _normalized(model: nn.Module, normalize: list[float] | None, channels: int, device) -> nn.Module:
    """``model`` behind ``(x - mean) / std`` (one value each, or one per channel), so that attacks and ε stay in
    [0, 1] pixel units."""
    if normalize is None:
        return model
    half = len(normalize) // 2
    mean, std = normalize[:half], normalize[half:]
    if half not in (1, channels):
        raise OtrobustError(f"--normalize gives {half} means and {half} stds for {channels}-channel images; give "
                            f"one of each or {channels} of each")
    mean, std = (mean * channels, std * channels) if half == 1 else (mean, std)
    return nn.Sequential(Normalize(mean, std), model).to(device).eval()


def check_model(model: nn.Module, x: torch.Tensor, num_classes: int, randomized: bool = False) -> list[str]:
    """Checks before any attack on a few images ``x``: OtrobustError for outputs that are not ``(N,
    num_classes)`` logits or two forwards that differ (unless ``randomized``); returns warnings (outputs that
    look like probabilities: a softmax at the end makes gradients vanish, as AutoAttack's own checks warn)."""
    x = x[:CHECK_IMAGES]
    with torch.no_grad():
        first, second = model(x), model(x)
    if not isinstance(first, torch.Tensor):
        raise OtrobustError(f"the model returns a {type(first).__name__}; it must return a logits tensor "
                            f"(N, {num_classes})")
    if not first.is_floating_point():
        raise OtrobustError(f"the model returns {str(first.dtype).removeprefix('torch.')} outputs; attacks need "
                            "floating-point logits: return the scores before any argmax, rounding or cast")
    if tuple(first.shape) != (len(x), num_classes):
        raise OtrobustError(f"the model returns shape {tuple(first.shape)} for {len(x)} images; expected logits "
                            f"({len(x)}, {num_classes}) (--num-classes sets the number of classes)")
    # NaN compares equal here: non-finite logits are evaluate_model's error (and the audit's finding).
    if not randomized and not torch.allclose(first, second, rtol=1e-4, atol=1e-5, equal_nan=True):
        raise OtrobustError("two forwards of the same images differ: the model is randomised (or in training "
                            "mode); deterministic attacks would overestimate its robustness: pass --randomized to "
                            "attack it with the EOT variants")
    warnings = []
    first = first.float()
    if (first >= 0).all() and (first <= 1).all() and torch.allclose(first.sum(1), torch.ones(len(x)), atol=1e-3):
        warnings.append("the model's outputs are probabilities (each row is >= 0 and sums to 1): a softmax at the "
                        "end flattens the gradients attacks follow and overstates robustness; return the logits "
                        "before it")
    elif (first <= 0).all() and torch.allclose(first.exp().sum(1), torch.ones(len(x)), atol=1e-3):
        warnings.append("the model's outputs are log-probabilities: fine if computed as log_softmax, but a log of "
                        "a softmax that underflows hides the gradient; run otrobust audit")
    return warnings
