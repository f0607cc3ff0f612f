"""Property-based robustness of the CLI: random configs (random values, garbage strings included, for
random TrainConfig fields, through a config file or flags) and corrupted files (byte flips and
truncations of a checkpoint, an IDX file, a run's config.json). The only outcomes allowed are a
successful run or exit status 2 with one ``otrobust: error:`` line — never a traceback — and an
existing run's checkpoints always still load.

Runs are tiny (one or two epochs of a few dozen 8x8 or 28x28 images). Examples are derandomised so CI
sees the same cases every time; raise ``max_examples`` locally to search further.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otrobust import runs
from otrobust.cli import main
from otrobust.config import TrainConfig, field_kind
from otrobust.errors import OtrobustError

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FEW = settings(FUZZ, max_examples=15)

TINY = {"dataset": "digits", "train_size": 32, "val_size": 16, "batch_size": 16, "steps": 1, "val_steps": 1,
        "epochs": 1, "device": "cpu"}
TINY_FLAGS = [x for k, v in TINY.items() for x in (f"--{k.replace('_', '-')}", str(v))] + ["--no-progress"]


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in-process; fail on anything but exit 0, or exit 2 with exactly one error line."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(argv)
    lines = err.getvalue().strip().splitlines()
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("otrobust: error: "), err.getvalue()
    else:
        assert rc == 0, (rc, err.getvalue())
    return rc, err.getvalue()


def _assert_run_loads(run: Path) -> None:
    """Every checkpoint in a run directory is complete and loads."""
    for path in (run / runs.CHECKPOINT_DIR).glob("*.safetensors"):
        runs.load_checkpoint(path)


# ---------------------------------------------------------------- random configs
# Values that keep a *valid* run tiny; anything outside these ranges is invalid and must fail cleanly.
SMALL_INTS = {"epochs": (-1, 2), "steps": (-1, 2), "val_steps": (-1, 2), "batch_size": (-1, 40),
              "train_size": (-1, 40), "val_size": (-1, 24), "checkpoint_every": (-1, 3)}
CHEAP_MODELS = ("small-cnn", "cw-cnn", "wrn-16-1")
NOT_FUZZED = {"out", "resume"}  # where the run goes is the test's choice

garbage = st.one_of(st.text(max_size=12), st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
                    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
                    st.sampled_from(["8/255", "1/0", "nan", "-inf", "1e999", "", " ", "\n", "²", "cuda:7", "meta"]))


def _plausible(f: dataclasses.Field) -> st.SearchStrategy:
    """Mostly valid values of the field's type (edge values included, so some still fail validation)."""
    kind, _ = field_kind(f)
    choices = f.metadata.get("choices")
    if f.name == "model":
        return st.sampled_from(CHEAP_MODELS)
    if f.name == "dataset":
        return st.sampled_from(["digits", "digits", "digits", "mnist"])
    if f.name == "device":
        return st.sampled_from(["cpu", "auto", "cpu:0"])
    if choices:
        return st.sampled_from(choices)
    if kind == "bool":
        return st.booleans()
    if kind == "int":
        lo, hi = SMALL_INTS.get(f.name, (0, 2**62))
        return st.integers(8 if f.name == "batch_size" else max(lo, 1), hi) | st.sampled_from([lo, 0])
    if kind == "float":
        return st.floats(0, 1) | st.sampled_from([0.0, 1e-30, 1e30, "8/255", "1e-3"])
    return st.none() if f.name in ("init", "data_dir") else st.text(max_size=12)


def _too_big(name: str, value) -> bool:
    """Would ``value`` read as a number above the cheap range of a cost field (or None = all data)?"""
    if name not in SMALL_INTS:
        return False
    if value is None:
        return name == "train_size"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except ValueError:
        return False
    return number > SMALL_INTS[name][1]


FIELDS = [f for f in dataclasses.fields(TrainConfig) if f.name not in NOT_FUZZED]
plausible_config = st.fixed_dictionaries({}, optional={f.name: _plausible(f) for f in FIELDS})
garbage_fields = st.dictionaries(st.sampled_from([f.name for f in FIELDS]), garbage, max_size=2)


def _flag_args(values: dict) -> list[str]:
    args = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool) and field_kind(next(f for f in FIELDS if f.name == name))[0] == "bool":
            args.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            args += [flag, value if isinstance(value, str) else json.dumps(value)]
    return args


@FUZZ
@given(plausible=plausible_config, bad=garbage_fields, via=st.sampled_from(["file", "flags"]))
def test_random_configs_run_or_fail_cleanly(plausible, bad, via):
    values = {k: v for k, v in {**plausible, **bad}.items() if not _too_big(k, v)}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        if via == "file":
            path = Path(tmp) / "cfg.json"
            path.write_text(json.dumps({**TINY, **values}))
            argv = ["train", "--config", str(path), "--out", str(run), "--no-progress"]
        else:
            argv = ["train", *TINY_FLAGS, *_flag_args(values), "--out", str(run)]
        rc, _ = _cli(argv)
        if rc == 0:
            runs.load_checkpoint(runs.checkpoint_path(run, "last"))
        _assert_run_loads(run)


# ---------------------------------------------------------------- corrupted files
def _corrupt(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    """XOR bytes at (position mod length) with non-zero masks, then optionally truncate to ``cut`` mod length."""
    out = bytearray(data)
    for pos, mask in flips:
        out[pos % len(out)] ^= mask
    return bytes(out[: cut % len(out)] if cut is not None else out)


corruption = st.tuples(st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), max_size=3),
                       st.one_of(st.none(), st.integers(0, 2**31))).filter(lambda c: c[0] or c[1] is not None)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fuzz") / "base"
    assert _cli(["train", *TINY_FLAGS, "--method", "standard", "--out", str(run)])[0] == 0
    return run


@FEW
@given(damage=corruption, use=st.sampled_from(["eval", "init", "resume"]))
def test_corrupted_checkpoint_is_refused_or_harmless(base_run, damage, use):
    original = runs.checkpoint_path(base_run, "last").read_bytes()
    bad = _corrupt(original, *damage)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.safetensors"
        path.write_bytes(bad)
        try:  # the library call: a model or a clean error, nothing else
            runs.load_model(path)
        except OtrobustError:
            pass
        if use == "resume":
            run = Path(tmp) / "run"
            shutil.copytree(base_run, run)
            runs.checkpoint_path(run, "last").write_bytes(bad)
            _cli(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"])
        elif use == "eval":
            _cli(["eval", str(path), "--n", "16", "--steps", "1", "--device", "cpu", "--no-progress"])
        else:
            _cli(["train", *TINY_FLAGS, "--method", "standard", "--init", str(path), "--out", str(Path(tmp) / "r")])
    assert runs.checkpoint_path(base_run, "last").read_bytes() == original
    _assert_run_loads(base_run)


@FEW
@given(damage=corruption)
def test_corrupted_run_config_json_resumes_or_fails_cleanly(base_run, damage):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(base_run, run)
        config = run / "config.json"
        config.write_bytes(_corrupt(config.read_bytes(), *damage))
        _cli(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"])
        _assert_run_loads(run)
        runs.load_checkpoint(runs.checkpoint_path(run, "last"))


def _idx_folder(folder: Path, n: int = 40) -> None:
    rng = np.random.default_rng(1)
    images = struct.pack(">iiii", 2051, n, 28, 28) + rng.integers(0, 256, n * 784).astype(np.uint8).tobytes()
    labels = struct.pack(">ii", 2049, n) + rng.integers(0, 10, n).astype(np.uint8).tobytes()
    folder.mkdir(parents=True)
    for split in ("train", "t10k"):
        (folder / f"{split}-images-idx3-ubyte").write_bytes(images)
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(labels)


@FEW
@given(damage=corruption, which=st.sampled_from(["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]),
       header=st.booleans())
def test_corrupted_idx_file_trains_or_fails_cleanly(damage, which, header):
    flips, cut = damage
    if header:  # aim the flips at the header, where they matter most
        flips = [(pos % 16, mask) for pos, mask in flips]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mnist"
        _idx_folder(data)
        path = data / which
        path.write_bytes(_corrupt(path.read_bytes(), flips, cut))
        _cli(["train", *TINY_FLAGS, "--dataset", "mnist", "--data-dir", str(data), "--model", "small-cnn",
              "--method", "standard", "--train-size", "16", "--val-size", "8", "--out", str(Path(tmp) / "r")])
        _assert_run_loads(Path(tmp) / "r")
