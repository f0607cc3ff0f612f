"""``--tensorboard``: the event files a run writes, read back with TensorBoard's own reader; without the package
the flag is one line naming the install command."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import tiny_flags

from otrobust.cli.main import main
from otrobust.store.events import EVENTS_DIR, INSTALL

STEPS_PER_EPOCH, EPOCHS = 2, 2
FLAGS = tiny_flags(method="got-trades-lm", epochs=EPOCHS, train_size=16 * STEPS_PER_EPOCH)


def test_events_hold_every_step_and_every_epoch(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package (pip install otrobust[tensorboard]) is not "
                        "installed; it reads the event files back")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["train", *FLAGS, "--tensorboard", "--out", str(run)]) == 0
    events = EventAccumulator(str(run / EVENTS_DIR))
    events.Reload()
    per_step = {"train/loss", "train/ot", "train/ot_weight", "train/eps", "train/lr"}
    per_epoch = {"val/clean", "val/pgd", "epoch/train_loss", "epoch/train_acc", "epoch/ot"}
    assert set(events.Tags()["scalars"]) == per_step | per_epoch
    steps = list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    for tag in per_step:
        assert [e.step for e in events.Scalars(tag)] == steps, tag
    assert all(e.value > 0 for e in events.Scalars("train/loss"))
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([1e-3] * len(steps))
    eps = [e.value for e in events.Scalars("train/eps")]  # the ε warm-up over the first two epochs
    assert eps == sorted(eps) and eps[0] < eps[-1] <= 0.2 + 1e-6
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for tag, key in (("val/clean", "val_clean"), ("val/pgd", "val_pgd"), ("epoch/ot", "ot")):
        points = events.Scalars(tag)
        assert [e.step for e in points] == [r["epoch"] * STEPS_PER_EPOCH for r in history]
        assert [e.value for e in points] == pytest.approx([r[key] for r in history], rel=1e-6)


def test_a_resumed_log_replaces_the_steps_logged_past_the_checkpoint(tmp_path):
    """A process killed after step 5 but checkpointed at step 2: the next one logs from step 3 again."""
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from otrobust.store.events import EventLog

    first = EventLog(tmp_path)
    for step in range(1, 6):
        first.scalars({"train/loss": float(step)}, step)
    first.close()
    resumed = EventLog(tmp_path, first_step=3)
    for step in range(3, 7):
        resumed.scalars({"train/loss": 10.0 * step}, step)
    resumed.close()
    events = EventAccumulator(str(tmp_path / EVENTS_DIR))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0),
                                                                          (5, 50.0), (6, 60.0)]


def test_without_tensorboard_the_flag_is_one_line_naming_the_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were absent
    capsys.readouterr()
    assert main(["train", *FLAGS, "--tensorboard", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("otrobust: error: --tensorboard") and INSTALL in err[0]
    assert not (tmp_path / "run").exists()
