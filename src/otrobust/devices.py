"""The device a command runs on, from its ``--device`` setting: shared by training and evaluation."""

from __future__ import annotations

import torch

from otrobust.errors import OtrobustError


def pick_device(name: str) -> torch.device:
    """The device a ``--device`` value names: ``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` or
    ``cuda:N``; anything else, or a CUDA device that is not there, is an OtrobustError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OtrobustError(f"--device {name} asked for, but no CUDA device is available")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise OtrobustError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OtrobustError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    return device
