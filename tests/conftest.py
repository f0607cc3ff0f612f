"""Shared fixtures: the real datasets in the ``shared/data`` folder next to the project folder, a trained digits
run, and the tiny run settings (``TINY_RUN``, ``tiny_flags``) and the randomised ``Noisy`` model that test files
import with ``from conftest import``."""

import os
from pathlib import Path

# ``--amp auto`` trains in bf16 on a CPU with AMX. Capping oneDNN below AMX makes it float32 on every machine, in
# this process and the subprocesses the tests start, so no test depends on the processor that runs it; the tests
# of that choice mock the capability query and lift the cap (tests/training/test_precision.py).
os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE_BF16"

import pytest
import torch
from torch import nn

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()

# The one tiny training run the tests share; files that need other sizes write ``{**TINY_RUN, <changes>}``.
TINY_RUN = {"dataset": "digits", "train_size": 32, "val_size": 16, "batch_size": 16, "steps": 1, "val_steps": 1,
            "epochs": 1, "device": "cpu"}


def tiny_flags(**overrides) -> list[str]:
    """``TINY_RUN`` with ``overrides`` as ``otrobust train`` flags, in dict order, then ``--no-progress``.

    An override of ``None`` leaves that flag out, so the default (or a ``--config`` file's value) applies."""
    settings = {k: v for k, v in {**TINY_RUN, **overrides}.items() if v is not None}
    return [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))] + ["--no-progress"]


class Noisy(nn.Module):
    """A randomised model (or defence): Gaussian noise on the input at every call."""

    def __init__(self, model: nn.Module, sigma: float = 0.3):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model(x + self.sigma * torch.randn_like(x))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<project>/../shared/data``; tests using it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def trained_digits_run(tmp_path_factory) -> Path:
    """Run directory of a small-cnn trained normally on the bundled digits for a few seconds (~90 % clean)."""
    from otrobust.training.config import TrainConfig
    from otrobust.training.loop import train

    out = tmp_path_factory.mktemp("digits-standard")
    train(TrainConfig(dataset="digits", method="standard", epochs=6, val_size=100, val_steps=0, seed=0,
                      out=str(out)), show_progress=False, log=lambda text: None)
    return out


@pytest.fixture(scope="session")
def trained_digits_model(trained_digits_run):
    """The model of ``trained_digits_run`` in eval mode; shared, so tests must not change its weights."""
    from otrobust.store.checkpoint import load_model

    return load_model(trained_digits_run)
