"""Property-based robustness of the CLI: random configs (random values, garbage strings included, for
random TrainConfig fields, through a config file or flags), corrupted files (byte flips and
truncations of a checkpoint, an IDX file plain or gzipped, a run's config.json), IDX headers with
random (negative, zero, oversized) fields and CIFAR pickles holding values of the wrong types. The only
outcomes allowed are a successful run or exit status 2 with one ``otrobust: error:`` line — never a
traceback — and an existing run's checkpoints always still load.

The library is fuzzed the same way with a trained model behind a random wrapper (identity, an input
detached from the graph, input rounding, input noise), evaluated under random attacks or audited: a
result, an OtrobustError, or (for a wrapper that masks gradients) an audit that fails.

The newer surfaces too: model files with random quirks (at import, in the factory, the forward and the output;
any float dtype; weights in any layout), which must give the reference classifier's exact clean accuracy or one
error line; randomly damaged recorded batches, which must give exactly the undamaged numbers; and ``report`` on
random run folders and per-example files, which must never put a control character on the terminal.

Runs are tiny (one or two epochs of a few dozen 8x8 or 28x28 images). Examples are derandomised so CI
sees the same cases every time; raise ``max_examples`` locally to search further.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, tiny_flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from otrobust.cli.main import main
from otrobust.data import load_dataset
from otrobust.errors import OtrobustError
from otrobust.evaluation.audit import audit_model
from otrobust.evaluation.audit_types import AuditSettings
from otrobust.evaluation.evaluate import build_attacks, evaluate_model
from otrobust.store.checkpoint import checkpoint_path, load_checkpoint, load_model
from otrobust.store.files import CHECKPOINT_DIR
from otrobust.training.config import TrainConfig, field_kind

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FEW = settings(FUZZ, max_examples=15)

TINY = TINY_RUN
TINY_FLAGS = tiny_flags()


def _cli(argv: list[str], passing: tuple[int, ...] = (0,)) -> tuple[int, str]:
    """Run the CLI in-process; fail on anything but an exit status in ``passing``, or exit 2 with exactly one
    error line."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(argv)
    lines = err.getvalue().strip().splitlines()
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("otrobust: error: "), err.getvalue()
    else:
        assert rc in passing, (rc, err.getvalue())
    return rc, err.getvalue()


def _assert_run_loads(run: Path) -> None:
    """Every checkpoint in a run directory is complete and loads."""
    for path in (run / CHECKPOINT_DIR).glob("*.safetensors"):
        load_checkpoint(path)


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
            load_checkpoint(checkpoint_path(run, "last"))
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
    original = checkpoint_path(base_run, "last").read_bytes()
    bad = _corrupt(original, *damage)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.safetensors"
        path.write_bytes(bad)
        try:  # the library call: a model or a clean error, nothing else
            load_model(path)
        except OtrobustError:
            pass
        if use == "resume":
            run = Path(tmp) / "run"
            shutil.copytree(base_run, run)
            checkpoint_path(run, "last").write_bytes(bad)
            _cli(["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"])
        elif use == "eval":
            _cli(["eval", str(path), "--n", "16", "--steps", "1", "--device", "cpu", "--no-progress"])
        else:
            _cli(["train", *TINY_FLAGS, "--method", "standard", "--init", str(path), "--out", str(Path(tmp) / "r")])
    assert checkpoint_path(base_run, "last").read_bytes() == original
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
        load_checkpoint(checkpoint_path(run, "last"))


def _idx_folder(folder: Path, n: int = 40, gz: bool = False) -> None:
    """An MNIST-layout folder of ``n`` 28x28 images; gzipped files hold four grey levels, so that their
    deflate stream is really compressed (random bytes would be stored as they are)."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 4, n * 784) * 85 if gz else rng.integers(0, 256, n * 784)
    images = struct.pack(">iiii", 2051, n, 28, 28) + pixels.astype(np.uint8).tobytes()
    labels = struct.pack(">ii", 2049, n) + rng.integers(0, 10, n).astype(np.uint8).tobytes()
    folder.mkdir(parents=True)
    for split in ("train", "t10k"):
        for name, raw in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)


def _train_mnist(data: Path, tmp: str) -> None:
    """Train on the folder ``data``: a run or one clean error line, and whatever was saved loads."""
    _cli(["train", *TINY_FLAGS, "--dataset", "mnist", "--data-dir", str(data), "--model", "small-cnn",
          "--method", "standard", "--train-size", "16", "--val-size", "8", "--out", str(Path(tmp) / "r")])
    _assert_run_loads(Path(tmp) / "r")


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
        _train_mnist(data, tmp)


@FEW
@given(damage=corruption, which=st.sampled_from(["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]))
def test_corrupted_gzipped_idx_file_trains_or_fails_cleanly(damage, which):
    """Flips in the gzip header, the deflate stream (zlib errors) or the CRC trailer, and truncations."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mnist"
        _idx_folder(data, gz=True)
        path = data / which
        path.write_bytes(_corrupt(path.read_bytes(), *damage))
        _train_mnist(data, tmp)


header_field = st.integers(-2**31, 2**31 - 1) | st.sampled_from([-2**31, -28, -1, 0, 1, 16, 28, 40, 2**31 - 1])


# Some headers that train, and negative ones whose product still matches the payload (40 * 784 bytes).
VALID_HEADER = st.just((2051, (40, 28, 28), 40, 40 * 784))
NEGATIVE_PAIRS = st.sampled_from([(40, -28, -28), (-40, -28, 28), (-40, 28, -28), (40, 28, 28)]).map(
    lambda dims: (2051, dims, 40, 40 * 784))


@FEW
@given(header=VALID_HEADER | NEGATIVE_PAIRS | st.tuples(st.sampled_from([2051, 2051, 2049, 0, -2051]),
                                       st.tuples(header_field, header_field, header_field), header_field,
                                       st.integers(0, 40 * 784 + 16)))
def test_random_idx_header_fields_train_or_fail_cleanly(header):
    """Negative, zero and oversized dimensions and counts, over a payload of any length."""
    magic, dims, labels, payload = header
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mnist"
        _idx_folder(data)
        (data / "train-images-idx3-ubyte").write_bytes(struct.pack(">iiii", magic, *dims) + bytes(payload))
        labels_file = data / "train-labels-idx1-ubyte"
        labels_file.write_bytes(struct.pack(">ii", 2049, labels) + labels_file.read_bytes()[8:])
        _train_mnist(data, tmp)


def _array(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


arrays = st.builds(_array, st.sampled_from([(40, 3072), (40,), (3072,), (0, 3072), (40, 3, 32, 32), (40, 2)]),
                   st.sampled_from(["uint8", "int64", "int8", "float32", "bool", "U1", "S1", "object"]))
pickle_values = st.one_of(
    arrays, st.text(max_size=5), st.binary(max_size=5), st.none(), st.booleans(), st.integers(-10**30, 10**30),
    st.floats(allow_nan=True), st.lists(st.integers(-3, 12), min_size=40, max_size=40),
    st.lists(st.one_of(st.integers(0, 9), st.text(max_size=2), st.none(), st.floats()), max_size=40),
    st.lists(st.lists(st.integers(0, 255), max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@FEW
@given(data=pickle_values | st.just(np.zeros((40, 3072), dtype=np.uint8)),
       labels=pickle_values | st.lists(st.integers(0, 9), min_size=40, max_size=40),
       key_type=st.sampled_from([str, bytes]), as_dict=st.booleans())
def test_cifar_pickles_with_values_of_the_wrong_types_train_or_fail_cleanly(data, labels, key_type, as_dict):
    k = (lambda s: s.encode()) if key_type is bytes else (lambda s: s)
    batch = {k("data"): data, k("labels"): labels} if as_dict else [data, labels]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cifar" / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["c"] * 10}))
        for name in ("data_batch_1", "test_batch"):
            (folder / name).write_bytes(pickle.dumps(batch))
        _cli(["train", *TINY_FLAGS, "--dataset", "cifar10", "--data-dir", str(folder.parent), "--model", "small-cnn",
              "--method", "standard", "--train-size", "16", "--val-size", "8", "--out", str(Path(tmp) / "r")])
        _assert_run_loads(Path(tmp) / "r")


# ---------------------------------------------------------------- models that hide their gradients
class _Wrapped(nn.Module):
    """A trained model behind one of WRAPPERS (its weights are not changed)."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x):
        if self.kind == "detach":
            x = x.detach()
        elif self.kind == "round":
            x = torch.round(x * 4) / 4
        elif self.kind == "noise":
            x = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
        return self.model(x)


WRAPPERS = ("identity", "detach", "round", "noise")
GRADIENT_FREE = {"square"}
TINY_AUDIT = dict(quick=True, steps=2, restarts=2, unbounded_steps=5, square_queries=20, aa_iter=2)


@pytest.mark.parametrize("kind", WRAPPERS)
@settings(FUZZ, max_examples=6)
@given(attacks=st.lists(st.sampled_from(["fgsm", "pgd", "pgd-cw", "apgd-ce", "square"]), min_size=1, max_size=2,
                        unique=True), eps=st.sampled_from([0.05, 0.3]), labels=st.sampled_from(["true", "predicted"]))
def test_wrapped_models_evaluate_or_fail_cleanly(trained_digits_model, kind, attacks, eps, labels):
    """A result, or for the one model without input gradients (detach) under a gradient attack, a clean error."""
    model, data = _Wrapped(trained_digits_model, kind), load_dataset("digits", "test", size=16)
    needs_gradient = bool(set(attacks) - GRADIENT_FREE)
    torch.manual_seed(0)
    try:
        result = evaluate_model(model, data, build_attacks(attacks, eps=eps, steps=2, aa_iter=2, aa_queries=10),
                                labels=labels)
    except OtrobustError as exc:
        assert kind == "detach" and needs_gradient and "no input gradient" in str(exc), exc
    else:
        assert not (kind == "detach" and needs_gradient)
        assert result.n == 16 and 0 <= result.accuracy("worst") <= 1


@pytest.mark.parametrize("kind", WRAPPERS)
@settings(FUZZ, max_examples=2)
@given(eps=st.sampled_from([0.1, 0.3]), n=st.integers(8, 24))
def test_wrapped_models_pass_or_fail_the_audit(trained_digits_model, kind, eps, n):
    """Always a report (never an exception), and a failed one for each wrapper that masks gradients."""
    model, data = _Wrapped(trained_digits_model, kind), load_dataset("digits", "test", size=n)
    torch.manual_seed(0)
    report = audit_model(model, data, AuditSettings.make(eps, **TINY_AUDIT))
    assert report.failed or kind == "identity", [(c.name, c.status) for c in report.checks]
    if kind == "detach":
        assert {c.name: c.status for c in report.checks}["gradients"] == "fail"


# ---------------------------------------------------------------- any model: random factories, files and weights
FACTORY_FILE = '''
import sys

import torch
from torch import nn

{import_quirk}


class Model(nn.Sequential):
    def forward(self, x):
        {forward_quirk}
        out = super().forward(x)
        {output_quirk}
        return out


def make(num_classes=10, in_channels=1, image_size=8):
    {factory_quirk}
    torch.manual_seed(0)
    model = Model(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))
    return model.to(torch.{dtype})
'''
IMPORT_QUIRKS = {"none": "", "exit": "sys.exit(3)", "exit-text": "sys.exit('needs a GPU')",
                 "argparse": "import argparse\nargparse.ArgumentParser().add_argument('--lr', required=True)\n"
                             "argparse.ArgumentParser().parse_args()",
                 "argparse-required": "import argparse\n_p = argparse.ArgumentParser()\n"
                                      "_p.add_argument('--lr', required=True)\n_p.parse_args()",
                 "raises": "raise ImportError('no such backend')", "prints": "print('loading')"}
FORWARD_QUIRKS = {"none": "pass", "in-place": "x.mul_(1.0)", "raises": "raise RuntimeError('CUDA out of memory')",
                  "exits": "sys.exit(1)", "detach": "x = x.detach()"}
OUTPUT_QUIRKS = {"none": "pass", "softmax": "out = out.softmax(1)", "int": "out = out.long()",
                 "tuple": "out = (out, out)", "nan": "out = out * float('nan')", "shape": "out = out[:, :3]",
                 "half-logits": "out = out.half().float()"}
FACTORY_QUIRKS = {"none": "pass", "raises": "raise ValueError('bad geometry')", "exits": "sys.exit(0)",
                  "meta": "torch.set_default_device('meta')", "not-a-module": "return 'model'"}
# What gives the reference linear classifier's own clean accuracy (everything else is a one-line error)
BENIGN = {"import": {"none", "prints", "argparse"}, "forward": {"none", "in-place"},
          "output": {"none", "softmax", "half-logits"}, "factory": {"none"}}


def _reference_clean(state: dict[str, torch.Tensor], dtype: str, data) -> float:
    """Clean accuracy of the linear classifier with ``state`` as a model of ``dtype`` holds it, in float32."""
    linear = nn.Linear(64, 10)
    linear.load_state_dict({k: v.to(getattr(torch, dtype)).float() for k, v in state.items()})
    with torch.no_grad():
        return float((linear(data.x.flatten(1)).argmax(1) == data.y).float().mean())


WEIGHTS = ("own", "plain", "sparse", "data-parallel", "float16", "meta", "wrong-shape")
BENIGN_WEIGHTS = WEIGHTS[:5]
QUIRKS = {"import": IMPORT_QUIRKS, "forward": FORWARD_QUIRKS, "output": OUTPUT_QUIRKS, "factory": FACTORY_QUIRKS}


@st.composite
def model_quirks(draw) -> tuple[dict[str, str], str, bool]:
    """(quirks, weights, benign): half the time only benign ones, else at least one that must be refused."""
    benign = draw(st.booleans())
    quirks = {k: draw(st.sampled_from(sorted(BENIGN[k]))) for k in QUIRKS}
    weights = draw(st.sampled_from(BENIGN_WEIGHTS))
    if not benign:
        bad = draw(st.sampled_from([*QUIRKS, "weights"]))
        if bad == "weights":
            weights = draw(st.sampled_from(WEIGHTS[5:]))
        else:
            quirks[bad] = draw(st.sampled_from(sorted(set(QUIRKS[bad]) - BENIGN[bad])))
        for k in QUIRKS:  # and any others
            if k != bad:
                quirks[k] = draw(st.sampled_from([quirks[k], *sorted(QUIRKS[k])]))
    return quirks, weights, all(quirks[k] in BENIGN[k] for k in QUIRKS) and weights in BENIGN_WEIGHTS


@FEW
@given(drawn=model_quirks(), dtype=st.sampled_from(["float32", "float64", "float16", "bfloat16"]),
       command=st.sampled_from(["eval", "eval", "audit"]))
def test_random_model_factories_give_the_right_number_or_one_line(drawn, dtype, command):
    """A model file with any mix of quirks (at import, in the factory, in the forward, in its output), of any float
    dtype, with weights in any layout: the reference classifier's exact clean accuracy, or one error line."""
    quirks, weights, benign = drawn
    torch.set_default_device(None)
    data = load_dataset("digits", "test", size=16)
    torch.manual_seed(0)
    state = {f"1.{k}": v for k, v in nn.Linear(64, 10).state_dict().items()}
    if weights != "own":
        torch.manual_seed(1)
        state = {f"1.{k}": v for k, v in nn.Linear(64, 10).state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        text = FACTORY_FILE.format(import_quirk=IMPORT_QUIRKS[quirks["import"]], dtype=dtype,
                                   forward_quirk=FORWARD_QUIRKS[quirks["forward"]],
                                   output_quirk=OUTPUT_QUIRKS[quirks["output"]],
                                   factory_quirk=FACTORY_QUIRKS[quirks["factory"]])
        (Path(tmp) / "m.py").write_text(text)
        stored = {"plain": state, "sparse": {k: v.to_sparse() for k, v in state.items()},
                  "data-parallel": {f"module.{k}": v for k, v in state.items()},
                  "meta": {k: v.to("meta") for k, v in state.items()},
                  "wrong-shape": {k: v[:5] for k, v in state.items()},
                  "float16": {k: v.half() for k, v in state.items()}}.get(weights)
        args = [command, "--model", f"{Path(tmp) / 'm.py'}:make", "--dataset", "digits", "--n", "16", "--device",
                "cpu", "--steps", "2"]
        if stored is not None:
            torch.save(stored, Path(tmp) / "w.pt")
            args += ["--weights", str(Path(tmp) / "w.pt")]
        if command == "eval":
            args += ["--json", str(Path(tmp) / "e.json"), "--no-progress"]
        else:
            args += ["--quick", "--restarts", "2", "--unbounded-steps", "3", "--square-queries", "10", "--aa-iter",
                     "2", "--out", str(Path(tmp) / "audit")]
        try:
            rc, err = _cli(args, passing=(0,) if command == "eval" else (0, 1))  # the audit exits 1 on a failed check
        finally:
            torch.set_default_device(None)  # the meta quirk sets it for the whole process
        assert (rc != 2) == benign, (quirks, dtype, weights, err)
        if rc != 2 and command == "eval":
            held = "float16" if weights == "float16" else dtype
            record = json.loads((Path(tmp) / "e.json").read_text())
            assert record["clean_accuracy"] == _reference_clean({k[2:]: v for k, v in state.items()}, held, data)


# ---------------------------------------------------------------- recorded batches, damaged at random
EVAL_ARGS = ["--n", "24", "--batch-size", "8", "--steps", "2", "--attack", "pgd", "fgsm", "--device", "cpu",
             "--no-progress"]


@pytest.fixture(scope="module")
def recorded_eval(base_run, tmp_path_factory) -> tuple[Path, dict]:
    """An evaluation's --json and its recorded batches (JSON.parts), and its record without timings."""
    folder = tmp_path_factory.mktemp("recorded")
    assert _cli(["eval", str(base_run), *EVAL_ARGS, "--json", str(folder / "e.json")])[0] == 0
    record = json.loads((folder / "e.json").read_text())
    record.pop("timing")
    return folder / "e.json.parts", record


@FEW
@given(damages=st.lists(st.tuples(st.integers(0, 2**31), corruption), min_size=1, max_size=4),
       settings_file=st.booleans())
def test_damaged_recorded_batches_give_the_same_numbers_or_one_line(base_run, recorded_eval, damages,
                                                                   settings_file):
    """Byte flips and truncations of any recorded batch (or of settings.json): the rerun reports exactly the
    numbers of the undamaged evaluation, or (a settings.json no longer ours) refuses in one line."""
    parts, expected = recorded_eval
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "e.json.parts"
        shutil.copytree(parts, copy)
        files = sorted((copy / "batches").glob("*.json")) + ([copy / "settings.json"] if settings_file else [])
        for which, damage in damages:
            path = files[which % len(files)]
            if path.stat().st_size:
                path.write_bytes(_corrupt(path.read_bytes(), *damage))
        rc, _ = _cli(["eval", str(base_run), *EVAL_ARGS, "--json", str(Path(tmp) / "e.json")])
        if rc == 0:
            record = json.loads((Path(tmp) / "e.json").read_text())
            record.pop("timing")
            assert record == expected
        else:
            assert settings_file


# ---------------------------------------------------------------- report on random folders and CSV files
json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)
hostile_text = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=12) | \
    st.sampled_from(["\x1b]0;pwned\x07", "\x1b[2J", "ok\rALL CHECKS PASSED", "\u202eevil", "$x^$"])
metrics_line = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries({"epoch": st.integers(-3, 10**12) | json_values},
                          optional={k: st.floats(allow_nan=True) | json_values
                                    for k in ("val_clean", "val_pgd", "seconds")}).map(json.dumps),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")))
config = st.fixed_dictionaries({}, optional={k: json_values | hostile_text for k in
                                             ("dataset", "model", "method", "norm", "eps", "epochs")})


@FEW
@given(name=hostile_text, cfg=config | json_values, metrics=st.lists(metrics_line, max_size=5),
       evals=st.none() | st.binary(max_size=40) | json_values.map(lambda v: json.dumps(v).encode()))
def test_report_on_random_run_folders_is_a_table_or_one_line(name, cfg, metrics, evals):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "runs" / name.strip(".") if name.strip(".") else Path(tmp) / "runs" / "x"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps(cfg))
        (run / "metrics.jsonl").write_text("\n".join(metrics) + "\n", errors="surrogateescape")
        if evals is not None:
            (run / "evals").mkdir()
            (run / "evals" / "e.json").write_bytes(evals)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc, err = _cli(["report", str(run), "--out", str(Path(tmp) / "r")])
        shown = out.getvalue() + err
        assert not any(c in shown for c in "\x1b\x07\r\u202e"), shown
        assert rc == 2 or (Path(tmp) / "r" / "report.csv").is_file()


@FEW
@given(content=st.binary(max_size=200) | st.lists(st.lists(hostile_text | st.sampled_from(["0", "1", ""]),
                                                           max_size=6), max_size=4).map(
    lambda rows: "\n".join(",".join(r) for r in [["index", "label", "clean_pred", "clean_correct", "pgd_success",
                                                  "pgd_pred"], *rows]).encode("utf-8", "surrogateescape")))
def test_report_on_random_per_example_files_is_a_table_or_one_line(content):
    with tempfile.TemporaryDirectory() as tmp:
        good = Path(tmp) / "a.csv"
        good.write_text("index,label,clean_pred,clean_correct,pgd_success,pgd_pred\n0,1,1,1,0,1\n")
        (Path(tmp) / "b.csv").write_bytes(content)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc, err = _cli(["report", str(good), str(Path(tmp) / "b.csv"), "--out", str(Path(tmp) / "d")])
        assert not any(c in out.getvalue() + err for c in "\x1b\x07\r\u202e")
