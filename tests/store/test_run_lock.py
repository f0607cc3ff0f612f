"""One writer per run directory: a second live run on the same --out is refused; stale locks are taken over."""

from __future__ import annotations

import subprocess
import sys

import pytest

from otrobust.cli.main import main
from otrobust.store.lock import LOCK_NAME, lock_owner, run_lock

FLAGS = ["train", "--dataset", "digits", "--method", "standard", "--train-size", "32", "--val-size", "16",
         "--batch-size", "16", "--epochs", "1", "--val-steps", "1", "--no-progress", "--device", "cpu"]


@pytest.fixture
def live_python():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_on_a_locked_directory_is_refused_and_changes_nothing(tmp_path, live_python, capsys):
    run = tmp_path / "run"
    assert main([*FLAGS, "--out", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    (run / LOCK_NAME).write_text(f"{live_python}\n")
    assert main([*FLAGS, "--out", str(run), "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"another otrobust process (pid {live_python}) is writing to" in err[0]
    after = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    assert after == before and lock_owner(run / LOCK_NAME) == live_python  # not ours: left alone


def test_a_stale_lock_from_a_killed_run_is_taken_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(f"{_dead_pid()}\n")
    assert main([*FLAGS, "--out", str(run)]) == 0
    assert (run / "checkpoints" / "last.safetensors").is_file() and not (run / LOCK_NAME).exists()


def test_a_run_that_fails_on_bad_input_leaves_no_directory(tmp_path, capsys):
    run = tmp_path / "never"
    assert main([*FLAGS, "--dataset", "mnist", "--data-dir", str(tmp_path / "missing"), "--out", str(run)]) == 2
    assert not run.exists()


def test_the_lock_is_held_during_the_block_and_released_after(tmp_path):
    with run_lock(tmp_path / "r") as path:
        assert path.exists() and lock_owner(path) is not None
    assert not (tmp_path / "r").exists()  # created by the lock and left empty: removed
