"""Shared fixtures: the real datasets in the ``shared/data`` folder next to the project folder."""

from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


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
