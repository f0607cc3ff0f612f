"""Crash safety of ``otrobust train``: SIGKILL at seeded random points (mid-step, mid-checkpoint-write,
mid-validation, mid-log-append, mid-config-write), and SIGINT/SIGTERM. Every resumed run must end with exactly the
metrics and checkpoint tensors of an uninterrupted run with the same seed, and every checkpoint file
present after a kill must load.

The kills use the ``OTROBUST_TEST_KILL_AT=PHASE:N[:SIGNAL]`` hook (``fault_point``): the process
signals itself the N-th time it reaches PHASE, which hits a checkpoint half written or a validation in
progress exactly, every time. Subprocesses run on one CPU thread so that their arithmetic is identical.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from otrobust.cli.main import main
from otrobust.errors import OtrobustError
from otrobust.store import files
from otrobust.store.checkpoint import checkpoint_path, load_checkpoint
from otrobust.store.files import CHECKPOINT_DIR, FAULT_ENV, TEMP_SUFFIX, fault_point

EPOCHS, STEPS_PER_EPOCH, CHECKPOINT_EVERY = 3, 4, 2
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
TRAIN_FLAGS = ["--dataset", "digits", "--model", "small-cnn", "--epochs", str(EPOCHS), "--train-size",
               str(16 * STEPS_PER_EPOCH), "--val-size", "16", "--batch-size", "16", "--steps", "1", "--val-steps", "1",
               "--checkpoint-every", str(CHECKPOINT_EVERY), "--ot-warmup-epochs", "1", "--device", "cpu",
               "--no-progress"]
TIMEOUT = 300


# ---------------------------------------------------------------- running the CLI in a subprocess
def _env(kill: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    if kill:
        env[FAULT_ENV] = kill
    return env


def _start(run: Path, method: str, kill: str | None = None, resume: bool = False,
           extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """A fresh run takes every flag (``extra`` last); a resumed one only ``--resume --out`` (the rest comes from
    config.json)."""
    flags = ["--resume", "--out", str(run), "--no-progress"] if resume else [*TRAIN_FLAGS, "--method", method,
                                                                              "--out", str(run), *extra]
    return subprocess.Popen([sys.executable, "-m", "otrobust", "train", *flags], env=_env(kill),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, err


def _run(run: Path, method: str, kill: str | None = None, resume: bool = False,
         extra: tuple[str, ...] = ()) -> tuple[int, str]:
    return _finish(_start(run, method, kill, resume, extra))


# ---------------------------------------------------------------- checks
def _progress(run: Path) -> tuple[int, int]:
    """(steps, validations) a resumed process still has to do, from the last checkpoint."""
    last = checkpoint_path(run, "last")
    if not last.exists():
        return TOTAL_STEPS, EPOCHS
    _, meta, _ = load_checkpoint(last)
    return TOTAL_STEPS - (meta["epoch"] * STEPS_PER_EPOCH + meta["step"]), EPOCHS - meta["epoch"]


def _pick_kill(rng: random.Random, run: Path, phase: str) -> str | None:
    """``phase:N`` with N drawn among the points the next process is sure to reach (None if there are none)."""
    steps, validations = _progress(run)
    checkpoints = max(math.ceil(steps / CHECKPOINT_EVERY), 1 if validations else 0)
    # On start every process rewrites config.json, config.yaml and metrics.jsonl and appends to provenance.jsonl.
    reachable = {"step": steps, "validation": validations, "append": validations + 1, "checkpoint": checkpoints,
                 "write": 3}[phase]
    return f"{phase}:{rng.randint(1, reachable)}" if reachable else None


def _assert_checkpoints_load(run: Path) -> None:
    """Every checkpoint file present is complete; a temp file is all a kill mid-write may leave."""
    folder = run / CHECKPOINT_DIR
    for path in folder.glob("*.safetensors") if folder.is_dir() else []:
        load_checkpoint(path)  # raises OtrobustError on a torn or corrupt file
    for path in folder.iterdir() if folder.is_dir() else []:
        assert path.suffix == ".safetensors" or path.name.endswith(TEMP_SUFFIX), path


def _metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        r.pop("seconds")  # wall-clock time is the one thing allowed to differ
    return records


def _assert_same_run(run: Path, reference: Path) -> None:
    assert _metrics(run) == _metrics(reference)
    assert len(_metrics(run)) == EPOCHS
    for which in ("best", "last"):
        a, b = checkpoint_path(run, which), checkpoint_path(reference, which)
        got, want = load_file(a), load_file(b)
        assert sorted(got) == sorted(want)
        assert all(torch.equal(got[k], want[k]) for k in want), f"{which}: tensors differ"
        with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:  # non-tensor optimiser state
            assert fa.metadata()["state"] == fb.metadata()["state"]
    for folder in (run, run / CHECKPOINT_DIR):
        assert not list(folder.glob(f"*{TEMP_SUFFIX}")), f"stale temp files left in {folder}"


class References:
    """Uninterrupted runs, one per method (and ``extra`` flags), started in the background on first use and
    shared."""

    def __init__(self, root: Path):
        self.root, self.procs = root, {}

    @staticmethod
    def _name(method: str, extra: tuple[str, ...]) -> str:
        return "_".join((method, *extra)).replace("-", "")

    def start(self, method: str, extra: tuple[str, ...] = ()) -> None:
        name = self._name(method, extra)
        if name not in self.procs:
            self.procs[name] = _start(self.root / name, method, extra=extra)

    def get(self, method: str, extra: tuple[str, ...] = ()) -> Path:
        self.start(method, extra)
        name = self._name(method, extra)
        proc = self.procs[name]
        if proc.returncode is None:
            rc, err = _finish(proc)
            assert rc == 0, err
        return self.root / name


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> References:
    refs = References(tmp_path_factory.mktemp("reference"))
    yield refs
    for proc in refs.procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _kill_chain(run: Path, method: str, phases: list[str], rng: random.Random,
                extra: tuple[str, ...] = ()) -> list[str]:
    """Kill a run once per phase (at a random reachable point), resuming in between; finish it."""
    kills, resume = [], False
    for phase in phases:
        kill = _pick_kill(rng, run, phase)
        if kill is None:
            continue
        rc, err = _run(run, method, kill, resume, extra)
        assert rc == -signal.SIGKILL, f"{kill}: expected the process to be killed, got exit {rc}\n{err}"
        _assert_checkpoints_load(run)
        kills.append(kill)
        resume = (run / "config.json").exists()
    rc, err = _run(run, method, resume=resume)
    assert rc == 0, f"resuming after {kills} failed:\n{err}"
    return kills


# ---------------------------------------------------------------- fast subset (CI)
def test_sigkill_mid_checkpoint_validation_and_step_resumes_exactly(tmp_path, references):
    method = "got-trades-lm"
    references.start(method)  # in parallel with the killed runs
    kills = _kill_chain(tmp_path / "run", method, ["checkpoint", "validation", "step"], random.Random(1))
    assert [k.split(":")[0] for k in kills] == ["checkpoint", "validation", "step"]
    _assert_same_run(tmp_path / "run", references.get(method))


def test_sigkill_with_weight_averaging_resumes_to_the_same_average(tmp_path, references):
    """--ema: the average (the checkpoints' model weights), its update count and the raw weights (kept with the
    optimiser state) all survive a kill mid-step and mid-validation exactly."""
    method, extra = "trades", ("--ema", "0.9")
    references.start(method, extra)
    kills = _kill_chain(tmp_path / "run", method, ["step", "validation"], random.Random(3), extra)
    assert [k.split(":")[0] for k in kills] == ["step", "validation"]
    reference = references.get(method, extra)
    _assert_same_run(tmp_path / "run", reference)
    averaged, _, state = load_checkpoint(checkpoint_path(reference, "last"))
    assert state["ema_updates"] == TOTAL_STEPS and set(state["raw"]) == set(averaged)
    assert not all(torch.equal(state["raw"][k], averaged[k]) for k in averaged)  # the two are kept apart


def _inprocess_flags(method: str) -> list[str]:
    return [*TRAIN_FLAGS, "--method", method, "--epochs", "2"]


@pytest.fixture(scope="module")
def inprocess_reference(tmp_path_factory) -> Path:
    """An uninterrupted two-epoch TRADES run trained in this process (same threads as the runs it is compared to)."""
    ref = tmp_path_factory.mktemp("inprocess") / "ref"
    assert main(["train", *_inprocess_flags("trades"), "--out", str(ref)]) == 0
    return ref


@pytest.mark.parametrize("signame, at, stopped_at", [("SIGINT", "step:3", (0, 3)),
                                                     ("SIGTERM", "validation:1", (1, 0))])
def test_sigint_and_sigterm_save_a_checkpoint_exit_128_plus_signal_and_resume_exactly(
        tmp_path, monkeypatch, capsys, signame, at, stopped_at, inprocess_reference):
    """In-process through ``cli.main``: the signal arrives mid-step or mid-validation; exit 130 or 143."""
    flags = _inprocess_flags("trades")
    monkeypatch.setenv(FAULT_ENV, f"{at}:{signame}")
    monkeypatch.setattr(files, "_fault_counts", {})
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    capsys.readouterr()
    assert main(["train", *flags, "--out", str(tmp_path / "run")]) == 128 + getattr(signal, signame)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"otrobust: stopped by signal {getattr(signal, signame).value}")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    _, meta, _ = load_checkpoint(checkpoint_path(tmp_path / "run", "last"))
    assert (meta["epoch"], meta["step"]) == stopped_at
    monkeypatch.delenv(FAULT_ENV)
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert _metrics(tmp_path / "run") == _metrics(inprocess_reference)
    got, want = (load_file(checkpoint_path(d, "last")) for d in (tmp_path / "run", inprocess_reference))
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_sigterm_during_reproduce_is_one_line_and_exit_143(tmp_path, monkeypatch, capsys):
    """``reproduce`` trains through the same loop: a signal there ends it like ``train`` (no traceback)."""
    monkeypatch.setenv(FAULT_ENV, "step:1:SIGTERM")
    monkeypatch.setattr(files, "_fault_counts", {})
    capsys.readouterr()
    assert main(["reproduce", "fig6", "--scale", "smoke", "--out", str(tmp_path), "--device", "cpu"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"otrobust: stopped by signal {signal.SIGTERM.value}"), err


def test_resuming_a_finished_run_changes_nothing(tmp_path, capsys):
    flags = [*_inprocess_flags("standard"), "--epochs", "1"]
    assert main(["train", *flags, "--out", str(tmp_path / "run")]) == 0
    last = checkpoint_path(tmp_path / "run", "last")
    before = last.read_bytes()
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert last.read_bytes() == before and len(_metrics(tmp_path / "run")) == 1


def test_fault_hook_rejects_a_malformed_spec(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "somewhere:1")
    with pytest.raises(OtrobustError, match="PHASE:N"):
        fault_point("step")


# ---------------------------------------------------------------- the full randomised suite
SLOW_METHODS = ("got-trades-lm", "got-pgd-s", "trades")
PHASES = ("step", "checkpoint", "validation", "append", "write")


@pytest.mark.slow
def test_sigkill_at_24_random_points_resumes_exactly(tmp_path, references):
    """Eight chains of three kills (random phase, random point), over a GOT-TRADES, a GOT-PGD and TRADES."""
    for method in SLOW_METHODS:
        references.start(method)
    rng = random.Random(2024)
    plans = [(method, i, [rng.choice(PHASES) for _ in range(3)], rng.randrange(2**32))
             for method in SLOW_METHODS for i in range(3)][:8]

    def chain(plan) -> list[str]:
        method, i, phases, seed = plan
        run = tmp_path / f"{method}-{i}"
        kills = _kill_chain(run, method, phases, random.Random(seed))
        _assert_same_run(run, references.get(method))
        return kills

    with ThreadPoolExecutor(max_workers=2) as pool:
        kills = [k for ks in pool.map(chain, plans) for k in ks]
    assert len(kills) >= 20, kills
    assert {k.split(":")[0] for k in kills} >= {"step", "checkpoint", "validation"}


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_external_signal_saves_a_checkpoint_and_exits_128_plus_signal(tmp_path, references, signame):
    """A real signal from outside: the run pauses itself (SIGSTOP) at a step, receives the signal, continues."""
    method = "got-pgd-s"
    references.start(method)
    run = tmp_path / "run"
    proc = _start(run, method, kill=f"step:{random.Random(signame).randint(1, TOTAL_STEPS - 1)}:SIGSTOP")
    os.waitpid(proc.pid, os.WUNTRACED)  # returns once the process has stopped itself
    proc.send_signal(getattr(signal, signame))
    proc.send_signal(signal.SIGCONT)
    rc, err = _finish(proc)
    assert rc == 128 + getattr(signal, signame), err  # 130 after SIGINT, 143 after SIGTERM
    assert err.strip().splitlines()[-1].startswith("otrobust: stopped by signal")
    _assert_checkpoints_load(run)
    rc, err = _run(run, method, resume=True)
    assert rc == 0, err
    _assert_same_run(run, references.get(method))
