"""Bad input through ``otrobust.cli.main``: every mistake is exit status 2 and exactly one stderr line
``otrobust: error: ...`` (no traceback) — flags, config files, data folders, IDX files, checkpoints of
another architecture, and a disk that fills up while a checkpoint is written (the old one survives); recorded
batches that are not ours, outputs that would destroy an input, a closed pipe and an ASCII-only terminal, models
under test that misbehave, and ``report`` on damaged, foreign or hostile files."""

from __future__ import annotations

import csv
import dataclasses
import errno
import gzip
import io
import json
import os
import pickle
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_flags

from otrobust.cli.main import main
from otrobust.data import DATASETS, ImageData, get_dataset_spec, load_dataset
from otrobust.store import files
from otrobust.store.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from otrobust.store.files import CHECKPOINT_DIR, TEMP_SUFFIX, append_jsonl, atomic_write_bytes, read_jsonl

TINY = tiny_flags(dataset=None)  # no --dataset flag: a --config file's dataset still applies


def _fails(capsys, argv: list[str], match: str) -> str:
    """Run the CLI; assert exit 2 and one ``otrobust: error:`` line containing ``match``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("otrobust: error: "), err
    assert match.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A finished one-epoch digits run (small-cnn, 10 classes)."""
    run = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", *TINY, "--method", "standard", "--out", str(run)]) == 0
    return run


@pytest.fixture
def three_class_digits(monkeypatch) -> str:
    """A registered dataset like digits but with 3 classes (labels 0..2 only)."""
    full = load_dataset("digits", "train")
    keep = full.y < 3
    spec = dataclasses.replace(get_dataset_spec("digits"), name="digits3", num_classes=3,
                               load=lambda root, split: ImageData(full.x[keep], full.y[keep], 3))
    monkeypatch.setitem(DATASETS, "digits3", spec)
    return "digits3"


# ---------------------------------------------------------------- flags and config values
@pytest.mark.parametrize("flags, match", [
    (["--method", "got-sinkhorn"], "invalid choice"),
    (["--eps", "1.5"], "outside [0, 1]"),
    (["--eps", "-0.1"], "--eps"),
    (["--eps", "8/0"], "cannot read '8/0' as a number"),
    (["--eps", "abc"], "cannot read 'abc'"),
    (["--lr", "nan"], "finite"),
    (["--ot-weight", "inf"], "finite"),
    (["--lr", "0"], "--lr must be positive"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--epochs", "two"], "whole number"),
    (["--batch-size", "-4"], "--batch-size must be positive"),
    (["--steps", "-1"], "--steps must be >= 0"),
    (["--momentum", "-0.5"], "--momentum must be >= 0"),
    (["--attack-chunk", "-1"], "--attack-chunk must be >= 0"),
    (["--attack-workers", "0"], "--attack-workers must be >= 1"),
    (["--forward-chunk", "-3"], "--forward-chunk must be >= 0"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**70)], "--seed"),
    (["--theta", "0"], "--theta must be positive"),
    (["--train-size", "0"], "--train-size must be positive"),
    (["--val-size", "100000"], "leaves no training images"),
    (["--nan-policy", "ignore"], "invalid choice"),
    (["--norm", "l3"], "invalid choice"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--model", "vit"], "unknown model 'vit'"),
    (["--model", "cw-cnn"], "cannot be used with --dataset digits"),
    (["--device", "gpu0"], "--device 'gpu0'"),
    (["--device", "cuda:3"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--init", "/nonexistent/ckpt.safetensors"], "no run directory or checkpoint"),
])
def test_bad_train_flags(tmp_path, capsys, flags, match):
    _fails(capsys, ["train", *TINY, *flags, "--out", str(tmp_path / "run")], match)
    assert not checkpoint_path(tmp_path / "run", "last").exists()


def test_eps_as_a_fraction_is_parsed(tmp_path, capsys):
    assert main(["train", *TINY, "--method", "standard", "--eps", "8/255", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["eps"] == 8 / 255


@pytest.mark.parametrize("content, match", [
    ('{"method": "free-at"}', "--method 'free-at' is not one of"),
    ('{"epochs": "many"}', "--epochs must be a whole number"),
    ('{"lr": [0.1]}', "--lr must be a number"),
    ('{"resume": "yes"}', "--resume must be true or false"),
    ('{"eps": "3/0"}', "cannot read '3/0'"),
    ('{"learning_rate": 0.1}', "unknown config field(s): learning_rate"),
    ('[1, 2]', "must hold a JSON object"),
    ('{"epochs": 2', "cannot read config file"),
    (b'\xff\xfe{', "cannot read config file"),
    ("epochs: 2\nmethod: trades\n", "a YAML file must be named .yaml or .yml"),  # YAML in a .json file
    ("epochs = 2\n", "must be JSON"),  # TOML
])
def test_bad_config_files(tmp_path, capsys, content, match):
    path = tmp_path / "cfg.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    _fails(capsys, ["train", "--config", str(path), "--out", str(tmp_path / "run")], match)


@pytest.mark.parametrize("content, match", [
    ("method: free-at\n", "--method 'free-at' is not one of"),
    ("epochs: many\n", "--epochs must be a whole number"),
    ("lr: [0.1]\n", "--lr must be a number"),
    ("resume: yes\n", "--resume must be true or false"),  # YAML 1.1 would read yes as true; settings are 1.2
    ("eps: 3/0\n", "cannot read '3/0'"),
    ("learning_rate: 0.1\n", "unknown config field(s): learning_rate"),
    ("- 1\n- 2\n", "must hold a YAML mapping"),
    ("", "must hold a YAML mapping"),
    ("1: 2\n", "setting names must be text"),
    ("epochs: [2\n", "cannot read config file"),
    (b"\xff\xfe{", "cannot read config file"),
    ("epochs: 2\n---\nepochs: 3\n", "but found another document"),
    ("a: &x [1]\nb: *x\n", "aliases (*name) are not read"),
    ("epochs: !!python/object/apply:os.getpid []\n", "could not determine a constructor"),
    ('{"epochs": 2', "cannot read config file"),
])
def test_bad_yaml_config_files(tmp_path, capsys, content, match):
    """YAML gets the checks and one-line errors of JSON, and a few of its own (tags, aliases, documents)."""
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    _fails(capsys, ["train", "--config", str(path), "--out", str(tmp_path / "run")], match)
    assert not (tmp_path / "run").exists()


def test_config_file_values_are_coerced(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"eps": "8/255", "epochs": 1.0, "method": "standard"}))
    assert main(["train", "--config", str(path), *TINY, "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["eps"] == 8 / 255 and saved["epochs"] == 1 and isinstance(saved["epochs"], int)


def test_missing_config_and_resume_without_a_run(tmp_path, capsys):
    _fails(capsys, ["train", "--config", str(tmp_path / "none.json")], "cannot read config file")
    _fails(capsys, ["train", "--resume", "--out", str(tmp_path / "nothing")], "config.json' not found")


def test_training_into_an_existing_run_needs_resume(digits_run, capsys):
    before = checkpoint_path(digits_run, "last").read_bytes()
    _fails(capsys, ["train", *TINY, "--method", "standard", "--out", str(digits_run)], "already holds a run")
    assert checkpoint_path(digits_run, "last").read_bytes() == before


# ---------------------------------------------------------------- resuming without the last checkpoint
def _snapshot(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


@pytest.fixture
def two_epoch_run(tmp_path) -> Path:
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--method", "standard", "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("deleted", ["last", "checkpoints"])
def test_resume_after_the_last_checkpoint_was_deleted_is_refused(two_epoch_run, capsys, deleted):
    import shutil

    run = two_epoch_run
    if deleted == "last":
        checkpoint_path(run, "last").unlink()
    else:
        shutil.rmtree(run / CHECKPOINT_DIR)
    before = _snapshot(run)
    line = _fails(capsys, ["train", "--resume", "--out", str(run), "--epochs", "3"], "has no checkpoints/last")
    assert "metrics.jsonl with 2 logged epochs" in line and "nothing was changed" in line
    assert ("best.safetensors (epoch" in line) == (deleted == "last")
    assert "move or delete" in line
    # nor does a plain train into that folder start over
    _fails(capsys, ["train", *TINY, "--method", "standard", "--out", str(run)], "would start from epoch 1")
    assert _snapshot(run) == before  # the history and the best checkpoint are intact


def test_a_run_killed_before_its_first_last_checkpoint_still_resumes(tmp_path, capsys):
    """Killed between writing epoch 1's best and last checkpoint: nothing is logged yet, so starting again
    loses nothing (and writes the same best checkpoint)."""
    run = tmp_path / "run"
    assert main(["train", *TINY, "--method", "standard", "--out", str(run)]) == 0
    checkpoint_path(run, "last").unlink()
    (run / "metrics.jsonl").write_text("")
    best = load_checkpoint(checkpoint_path(run, "best"))[0]
    assert main(["train", "--resume", "--out", str(run)]) == 0
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1]
    again = load_checkpoint(checkpoint_path(run, "best"))[0]
    assert again.keys() == best.keys() and all(torch.equal(again[k], best[k]) for k in best)


def test_resume_with_fewer_epochs_than_trained_is_refused_and_changes_nothing(two_epoch_run, capsys):
    before = _snapshot(two_epoch_run)
    line = _fails(capsys, ["train", "--resume", "--out", str(two_epoch_run), "--epochs", "1"],
                  "with --epochs 1: it has trained 2 epochs already")
    assert "nothing was changed" in line
    assert _snapshot(two_epoch_run) == before  # config.json still says 2 epochs


def test_demo_epochs_zero_and_a_demo_of_another_length_are_refused(tmp_path, capsys):
    _fails(capsys, ["demo", "--epochs", "0", "--out", str(tmp_path / "demo")], "--epochs must be at least 1")
    assert not (tmp_path / "demo").exists()
    # an interrupted demo of 1 epoch: its standard run is there, the others not yet
    assert main(["train", *TINY, "--method", "standard", "--out", str(tmp_path / "demo" / "standard")]) == 0
    before = _snapshot(tmp_path / "demo")
    line = _fails(capsys, ["demo", "--epochs", "2", "--out", str(tmp_path / "demo")],
                  "holds a demo run of 1 epochs, not 2")
    assert "finish it with --epochs 1" in line
    assert _snapshot(tmp_path / "demo") == before


def test_resume_with_init_is_refused(digits_run, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", *TINY, "--method", "standard", "--seed", "1", "--out", str(other)]) == 0
    before = _snapshot(digits_run)
    line = _fails(capsys, ["train", "--resume", "--init", str(other), "--out", str(digits_run), "--epochs", "2"],
                  f"--resume and --init {other} cannot go together")
    assert "started from fresh weights" in line
    assert _snapshot(digits_run) == before


def test_resume_with_the_init_the_run_started_from_is_accepted(digits_run, tmp_path, capsys):
    run = tmp_path / "tuned"
    flags = ["train", *TINY, "--method", "standard", "--init", str(digits_run), "--out", str(run)]
    assert main(flags) == 0
    assert main([*flags, "--resume", "--epochs", "2"]) == 0  # the same command again, with --resume
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("method, inputs", [("pgd-at", "randomly perturbed inputs"), ("got-trades-lm", "clean inputs"),
                                            ("standard", None)])
def test_zero_training_steps_for_an_adversarial_method_warn(tmp_path, capsys, method, inputs):
    assert main(["train", *TINY, "--steps", "0", "--method", method, "--out", str(tmp_path / "r")]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: --steps 0")]
    if inputs is None:
        assert not warnings
    else:
        assert len(warnings) == 1 and inputs in warnings[0] and f"--method {method}" in warnings[0]


# ---------------------------------------------------------------- data folders and IDX files
def _write_idx(folder: Path, n: int = 48, labels: np.ndarray | None = None, gz: bool = False) -> None:
    """A tiny MNIST-layout data folder (train and test), images 28x28 of random bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n).astype(np.uint8) if labels is None else labels.astype(np.uint8)
    images = struct.pack(">iiii", 2051, n, 28, 28) + rng.integers(0, 256, n * 784).astype(np.uint8).tobytes()
    label_bytes = struct.pack(">ii", 2049, n) + y.tobytes()
    for split in ("train", "t10k"):
        for name, raw in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", label_bytes)):
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)


MNIST = ["--dataset", "mnist", "--model", "small-cnn", "--method", "standard"]


def test_data_dir_missing_or_without_files(tmp_path, capsys):
    _fails(capsys, ["train", *TINY, *MNIST, "--out", str(tmp_path / "r")], "needs --data-dir")
    _fails(capsys, ["train", *TINY, *MNIST, "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
           "does not exist")
    (tmp_path / "empty").mkdir()
    _fails(capsys, ["train", *TINY, *MNIST, "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "r")],
           "missing data file")


def _special(tmp_path: Path, kind: str) -> Path:
    """A path that is not a folder or a regular file: a file, a FIFO or /dev/zero (reading it never ends)."""
    if kind == "file":
        (tmp_path / "plain").write_text("not a folder")
        return tmp_path / "plain"
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe")
        return tmp_path / "pipe"
    return Path("/dev/zero")


@pytest.mark.parametrize("kind, what", [("file", "is a file, not a folder"), ("fifo", "is a named pipe (FIFO)"),
                                        ("zero", "is a character device")])
def test_data_dir_that_is_not_a_folder_says_what_it_is(tmp_path, capsys, kind, what):
    path = _special(tmp_path, kind)
    _fails(capsys, ["train", *TINY, *MNIST, "--data-dir", str(path), "--out", str(tmp_path / "r")], what)


@pytest.mark.parametrize("kind, what", [("fifo", "is a named pipe (FIFO), not a checkpoint file"),
                                        ("zero", "is a character device, not a checkpoint file")])
def test_checkpoint_that_is_a_fifo_or_a_device_says_what_it_is(tmp_path, capsys, kind, what):
    path = _special(tmp_path, kind)
    _fails(capsys, ["eval", str(path), "--n", "8", "--device", "cpu"], what)
    _fails(capsys, ["train", *TINY, "--method", "standard", "--init", str(path), "--out", str(tmp_path / "r")], what)


@pytest.mark.parametrize("kind, what", [("fifo", "it is a named pipe (FIFO), not a file"),
                                        ("zero", "it is a character device, not a file")])
def test_config_file_that_is_a_fifo_or_a_device(tmp_path, capsys, kind, what):
    _fails(capsys, ["train", "--config", str(_special(tmp_path, kind)), "--out", str(tmp_path / "r")], what)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_file(tmp_path, capsys, gz):
    data = tmp_path / "mnist"
    _write_idx(data, gz=gz)
    images = data / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    images.write_bytes(images.read_bytes()[:-100])
    _fails(capsys, ["train", *TINY, *MNIST, "--data-dir", str(data), "--out", str(tmp_path / "r")],
           str(images.name))


@pytest.mark.parametrize("dims, match", [
    ((1000, -28, -28), "each must be at least 1"),  # (-28)(-28) > 0: the size check alone passes
    ((48, 0, 28), "each must be at least 1"),
    ((2**31 - 1, 2**31 - 1, 2**31 - 1), "header says"),  # larger than any file: no overflow, no allocation
])
def test_idx_header_fields_are_validated(tmp_path, capsys, dims, match):
    data = tmp_path / "mnist"
    _write_idx(data)
    images = data / "train-images-idx3-ubyte"
    images.write_bytes(struct.pack(">iiii", 2051, *dims) + bytes(1000 * 784))
    line = _fails(capsys, ["train", *TINY, *MNIST, "--data-dir", str(data), "--out", str(tmp_path / "r")], match)
    assert images.name in line


def _flip_to_zlib_error(compressed: bytes) -> bytes:
    """``compressed`` with one byte of its deflate stream XORed so that zlib itself fails (not the CRC check)."""
    for pos in range(len(compressed) // 2, len(compressed) - 8):
        bad = bytearray(compressed)
        bad[pos] ^= 0xFF
        try:
            gzip.decompress(bytes(bad))
        except zlib.error:
            return bytes(bad)
        except (OSError, EOFError):
            continue
    raise AssertionError("no byte flip gave a zlib.error")


def test_corrupt_deflate_stream_in_a_gzipped_idx_file(tmp_path, capsys):
    data = tmp_path / "mnist"
    _write_idx(data, gz=True)
    images = data / "train-images-idx3-ubyte.gz"
    # Compressible pixels (random bytes would be stored, not deflated, and only fail the CRC check).
    pixels = np.random.default_rng(0).integers(0, 4, 48 * 784).astype(np.uint8).tobytes()
    images.write_bytes(_flip_to_zlib_error(gzip.compress(struct.pack(">iiii", 2051, 48, 28, 28) + pixels)))
    _fails(capsys, ["train", *TINY, *MNIST, "--data-dir", str(data), "--out", str(tmp_path / "r")],
           f"cannot read IDX file {str(images)!r}")


def test_labels_out_of_range(tmp_path, capsys):
    data = tmp_path / "mnist"
    _write_idx(data, labels=np.array([1, 12] * 24))
    _fails(capsys, ["train", *TINY, *MNIST, "--data-dir", str(data), "--out", str(tmp_path / "r")],
           "labels out of range")


def test_a_valid_tiny_idx_folder_trains(tmp_path, capsys):
    data = tmp_path / "mnist"
    _write_idx(data, gz=True)
    assert main(["train", *TINY, *MNIST, "--data-dir", str(data), "--out", str(tmp_path / "r")]) == 0


def test_images_of_the_wrong_size_for_the_dataset(tmp_path, capsys):
    data = tmp_path / "mnist"
    data.mkdir()
    n = 48
    (data / "train-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 8, 8) + bytes(n * 64))
    (data / "train-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + bytes(n))
    _fails(capsys, ["train", *TINY, *MNIST, "--data-dir", str(data), "--out", str(tmp_path / "r")],
           "expected (1, 28, 28)")


# ---------------------------------------------------------------- CIFAR pickles holding the wrong types
def _cifar_folder(root: Path, batch: dict) -> Path:
    """A CIFAR-10 folder whose data_batch_1 and test_batch are ``batch`` (pickled as given)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["c"] * 10}))
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


CIFAR_IMAGES = np.zeros((48, 3072), dtype=np.uint8)


@pytest.mark.parametrize("labels, match", [
    (["3"] * 48, "expected numbers"),  # numbers as strings are refused too: a CIFAR file never holds them
    (["cat"] * 48, "expected numbers"),
    ([b"\x01"] * 48, "expected numbers"),
    ([[1, 2], [3]] * 24, "not an array"),
    ([0.5] * 48, "flat list of whole numbers"),
    (np.zeros((48, 2), dtype=np.int64), "flat list of whole numbers"),
    ([2**70] * 48, "expected numbers"),
    ([None] * 48, "expected numbers"),
    ({"a": 1}, "expected numbers"),
    ([-1] * 48, "expected 0..9"),
    ([10] * 48, "expected 0..9"),
])
def test_cifar_labels_of_the_wrong_type_or_range(tmp_path, capsys, labels, match):
    root = _cifar_folder(tmp_path / "cifar", {"data": CIFAR_IMAGES, "labels": labels})
    line = _fails(capsys, ["train", *TINY, "--dataset", "cifar10", "--model", "small-cnn", "--method", "standard",
                           "--data-dir", str(root), "--out", str(tmp_path / "r")], match)
    assert "data_batch_1" in line and "'labels'" in line


@pytest.mark.parametrize("data", ["pixels", None, {"x": 1}, [[0] * 3072, [0] * 5], np.zeros((48, 3072))])
def test_cifar_data_of_the_wrong_type(tmp_path, capsys, data):
    root = _cifar_folder(tmp_path / "cifar", {"data": data, "labels": [0] * 48})
    line = _fails(capsys, ["train", *TINY, "--dataset", "cifar10", "--model", "small-cnn", "--method", "standard",
                           "--data-dir", str(root), "--out", str(tmp_path / "r")], "'data'")
    assert "data_batch_1" in line


# ---------------------------------------------------------------- checkpoints of another architecture
def test_init_from_another_architecture_or_class_count(digits_run, tmp_path, capsys, three_class_digits):
    _fails(capsys, ["train", *TINY, "--method", "standard", "--latent", "middle", "--init", str(digits_run),
                    "--out", str(tmp_path / "a")], "holds a small-cnn model with 10 classes")
    _fails(capsys, ["train", *TINY, "--method", "standard", "--dataset", three_class_digits, "--init",
                    str(digits_run), "--out", str(tmp_path / "b")], "10 classes")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("flags, match", [
    (["--model", "wrn-16-1"], "--model 'wrn-16-1'"),
    (["--latent", "middle"], "--latent 'middle'"),
    (["--method", "trades"], "--method 'trades'"),
    (["--dataset", "digits3"], "--dataset 'digits3'"),
])
def test_resume_with_another_architecture_leaves_the_run_intact(digits_run, capsys, three_class_digits, flags,
                                                                 match):
    files = {p: p.read_bytes() for p in [*digits_run.rglob("*")] if p.is_file()}
    line = _fails(capsys, ["train", "--resume", "--out", str(digits_run), "--epochs", "2", *flags], match)
    assert "cannot resume" in line
    assert {p: p.read_bytes() for p in files} == files  # config.json, checkpoints and logs untouched


def test_resume_with_a_checkpoint_from_another_run(digits_run, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", *TINY, "--method", "standard", "--latent", "middle", "--out", str(other)]) == 0
    run = tmp_path / "run"
    assert main(["train", *TINY, "--method", "standard", "--out", str(run)]) == 0
    # config.json says penultimate, the checkpoint holds a latent=middle model
    checkpoint_path(run, "last").write_bytes(checkpoint_path(other, "last").read_bytes())
    _fails(capsys, ["train", "--resume", "--out", str(run), "--epochs", "2"], "cannot resume")


def test_eval_of_a_model_on_a_dataset_with_other_classes(tmp_path, capsys, three_class_digits):
    run = tmp_path / "run3"
    assert main(["train", *TINY, "--method", "standard", "--dataset", three_class_digits, "--out", str(run)]) == 0
    _fails(capsys, ["eval", str(run), "--dataset", "digits", "--n", "8", "--steps", "1", "--device", "cpu"],
           "do not fit dataset 'digits'")


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run, data folder): a one-epoch small-cnn run on a tiny 28x28 MNIST-layout folder."""
    root = tmp_path_factory.mktemp("mnist")
    _write_idx(root / "data")
    assert main(["train", *TINY, *MNIST, "--data-dir", str(root / "data"), "--out", str(root / "run")]) == 0
    return root / "run", root / "data"


AUDIT = ["--n", "8", "--quick", "--steps", "2", "--restarts", "2", "--device", "cpu"]


@pytest.mark.parametrize("command", ["eval", "audit"])
def test_eval_and_audit_on_images_of_another_size(digits_run, mnist_run, tmp_path, capsys, command):
    run, data = mnist_run
    extra = ["--n", "8", "--steps", "1", "--device", "cpu"] if command == "eval" else AUDIT
    line = _fails(capsys, [command, str(digits_run), "--dataset", "mnist", "--data-dir", str(data), *extra,
                           *(["--out", str(tmp_path / "a")] if command == "audit" else [])], "8x8")
    assert "28x28" in line and "do not fit dataset 'mnist'" in line
    line = _fails(capsys, [command, str(run), "--dataset", "digits", *extra,
                           *(["--out", str(tmp_path / "b")] if command == "audit" else [])], "28x28")
    assert "do not fit dataset 'digits'" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _image_folder(root: Path, size: int, classes: int = 3, per_class: int = 8) -> Path:
    from PIL import Image

    rng = np.random.default_rng(size)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_a_folder_run_can_be_evaluated_and_audited(tmp_path, capsys):
    data = _image_folder(tmp_path / "images", 12)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--train-size", "16", "--val-size", "8", "--dataset", "folder", "--data-dir",
                 str(data), "--model", "small-cnn", "--method", "standard", "--out", str(run)]) == 0
    _, meta, _ = load_checkpoint(checkpoint_path(run, "best"))
    assert {k: meta["architecture"][k] for k in ("num_classes", "in_channels", "image_size")} == \
        {"num_classes": 3, "in_channels": 3, "image_size": 12}
    capsys.readouterr()
    assert main(["eval", str(run), "--n", "8", "--steps", "1", "--device", "cpu", "--no-progress"]) == 0
    assert "n = 8" in capsys.readouterr().out
    assert main(["audit", str(run), *AUDIT, "--out", str(tmp_path / "audit")]) in (0, 1)
    assert (tmp_path / "audit" / "audit.json").exists()
    other = _image_folder(tmp_path / "larger", 16)
    _fails(capsys, ["eval", str(run), "--data-dir", str(other), "--n", "8", "--device", "cpu"], "16x16 images")


def test_autoattack_on_too_few_classes(tmp_path, capsys, three_class_digits):
    """The reference's DLR losses need a 3rd / 4th class: an error naming the attacks that do not need them in
    eval, those attacks left out (and named) in the audit."""
    run = tmp_path / "run3"
    assert main(["train", *TINY, "--method", "standard", "--dataset", three_class_digits, "--out", str(run)]) == 0
    line = _fails(capsys, ["eval", str(run), "--attack", "autoattack", "--n", "8", "--aa-iter", "2",
                           "--aa-queries", "5", "--device", "cpu"], "cannot attack a model with 3 classes")
    assert "apgd-t" in line and "use apgd-ce, fab, square or pgd-cw" in line
    assert main(["eval", str(run), "--attack", "apgd-dlr", "apgd-ce", "--n", "8", "--aa-iter", "2", "--device",
                 "cpu", "--no-progress"]) == 0  # 3 classes are enough for the untargeted DLR loss
    assert main(["audit", str(run), *AUDIT, "--out", str(tmp_path / "audit")]) in (0, 1)
    checks = {c["name"]: c for c in json.loads((tmp_path / "audit" / "audit.json").read_text())["checks"]}
    assert checks["autoattack"]["evidence"]["left_out_for_too_few_classes"] == ["apgd-t"]


def test_eval_of_a_checkpoint_whose_weights_do_not_fit_its_record(digits_run, tmp_path, capsys):
    weights, meta, extra = load_checkpoint(checkpoint_path(digits_run, "best"))
    meta["architecture"]["num_classes"] = 3  # the record lies: the weights have 10 outputs
    bad = tmp_path / "liar.safetensors"
    save_checkpoint(bad, weights, meta, extra)
    _fails(capsys, ["eval", str(bad), "--n", "8", "--device", "cpu"], "do not fit that architecture")


def _poisoned(digits_run: Path, tmp_path: Path, how: str) -> Path:
    """The digits run's best checkpoint with NaN weights everywhere, or one inf bias in the output layer."""
    weights, meta, extra = load_checkpoint(checkpoint_path(digits_run, "best"))
    if how == "nan":
        weights = {k: torch.full_like(v, float("nan")) for k, v in weights.items()}
    else:
        bias = next(k for k in weights if k.endswith("bias") and k.startswith("head"))
        weights[bias] = weights[bias].clone()
        weights[bias][3] = float("inf")
    path = tmp_path / f"{how}.safetensors"
    save_checkpoint(path, weights, meta, extra)
    return path


@pytest.mark.parametrize("how", ["nan", "inf-bias"])
def test_eval_of_a_checkpoint_with_non_finite_weights(digits_run, tmp_path, capsys, how):
    path = _poisoned(digits_run, tmp_path, how)
    _fails(capsys, ["eval", str(path), "--n", "8", "--steps", "1", "--device", "cpu", "--json",
                    str(tmp_path / "e.json")], "non-finite logits")
    assert not (tmp_path / "e.json").exists()
    # the audit reports them instead: a failed gradients check, exit status 1
    assert main(["audit", str(path), *AUDIT, "--out", str(tmp_path / "audit")]) == 1
    checks = {c["name"]: c["status"] for c in json.loads((tmp_path / "audit" / "audit.json").read_text())["checks"]}
    assert checks["gradients"] == "fail"


@pytest.mark.parametrize("flags, match", [
    (["--n", "0"], "--n must be >= 1"),
    (["--steps", "-2"], "--steps must be >= 0"),
    (["--steps", "0"], "--steps 0 is too few for pgd"),  # it used to report the random start's accuracy
    (["--steps", "0", "--attack", "fgsm", "pgd-cw"], "too few for pgd-cw"),
    (["--restarts", "0"], "--restarts must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--attack-workers", "0"], "--attack-workers must be >= 1"),
    (["--eps", "3"], "outside [0, 1]"),
    (["--attack", "cw-l0"], "cw-l0"),
    (["--labels", "guessed"], "invalid choice"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--device", "gpu0"], "gpu0"),
    (["--normalize", "0.5", "0.5"], "--normalize is for a --model"),  # the checkpoint normalises inside already
])
def test_bad_eval_flags(digits_run, capsys, flags, match):
    _fails(capsys, ["eval", str(digits_run), "--n", "8", *flags], match)


def test_eval_of_missing_or_empty_paths(tmp_path, capsys):
    _fails(capsys, ["eval", str(tmp_path / "nope")], "no run directory or checkpoint")
    (tmp_path / "empty").mkdir()
    _fails(capsys, ["eval", str(tmp_path / "empty")], "holds no checkpoint")
    (tmp_path / "text.safetensors").write_text("not a checkpoint")
    _fails(capsys, ["eval", str(tmp_path / "text.safetensors")], "not a valid otrobust checkpoint")


# ---------------------------------------------------------------- an audit folder that cannot be written
def _no_audit(*args, **kwargs):
    raise AssertionError("the audit ran although its --out cannot be written")


def test_audit_out_on_a_read_only_file_system_is_refused_before_any_check(digits_run, tmp_path, capsys,
                                                                          monkeypatch):
    import otrobust.evaluation.audit

    monkeypatch.setattr(otrobust.evaluation.audit, "audit_model", _no_audit)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    _fails(capsys, ["audit", str(digits_run), *AUDIT, "--out", str(tmp_path / "ro")], "file system is read-only")
    monkeypatch.undo()
    monkeypatch.setattr(otrobust.evaluation.audit, "audit_model", _no_audit)
    (tmp_path / "file").write_text("")
    _fails(capsys, ["audit", str(digits_run), *AUDIT, "--out", str(tmp_path / "file" / "audit")], "could not write")


def test_audit_report_on_a_full_disk_keeps_the_verdict(digits_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(files, "fault_point", _disk_full("write", 1))
    capsys.readouterr()
    assert main(["audit", str(digits_run), *AUDIT, "--out", str(tmp_path / "audit")]) == 2
    captured = capsys.readouterr()
    assert "Verdict:" in captured.out and "| gradients |" in captured.out  # printed before the write failed
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("otrobust: error: could not write") and "the disk is full" in last
    assert "Traceback" not in captured.err
    assert not list((tmp_path / "audit").glob(f"*{TEMP_SUFFIX}"))


# ---------------------------------------------------------------- a disk that fills up
def _disk_full(phase_to_fail: str, nth: int):
    calls = [0]

    def fault_point(phase: str) -> None:  # called half-way through each write
        if phase == phase_to_fail:
            calls[0] += 1
            if calls[0] == nth:
                raise OSError(errno.ENOSPC, "No space left on device")

    return fault_point


# The first append of a resumed run goes to provenance.jsonl, the second to metrics.jsonl; its first
# atomic write is config.json; its first checkpoint write is epoch 2's best or last.
@pytest.mark.parametrize("phase, nth, file", [("checkpoint", 1, "safetensors"), ("append", 2, "metrics.jsonl"),
                                              ("write", 1, "config.json")])
def test_disk_full_during_a_write_keeps_the_previous_files(tmp_path, capsys, monkeypatch, phase, nth, file):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--method", "got-pgd-lm", "--out", str(run)]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "provenance.jsonl"}
    monkeypatch.setattr(files, "fault_point", _disk_full(phase, nth))
    line = _fails(capsys, ["train", "--resume", "--out", str(run), "--epochs", "2"], "the disk is full")
    assert file in line
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "provenance.jsonl"}
    assert after[run / "metrics.jsonl"] == before[run / "metrics.jsonl"]  # a failed append is cut back
    assert not list(run.rglob(f"*{TEMP_SUFFIX}"))
    if phase != "append":  # no checkpoint of epoch 2 reached the disk
        assert {p: b for p, b in after.items() if p.suffix == ".safetensors"} == \
            {p: b for p, b in before.items() if p.suffix == ".safetensors"}
    for which in ("best", "last"):
        load_checkpoint(checkpoint_path(run, which))
    monkeypatch.undo()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2"]) == 0  # space freed: it carries on
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_disk_full_in_fsync_and_unwritable_folder(tmp_path, monkeypatch):
    from otrobust.errors import OtrobustError

    target = tmp_path / "ckpt.safetensors"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OtrobustError, match="the disk is full"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]
    monkeypatch.undo()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OtrobustError, match="could not write"):
        atomic_write_bytes(blocker / "sub" / "x.json", b"{}")
    with pytest.raises(OtrobustError, match="could not write"):
        append_jsonl(blocker / "metrics.jsonl", {"a": 1})


class _ClosedPipe:
    """A stdout whose reader has gone (``otrobust ... | head``)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass


def test_a_closed_pipe_ends_quietly_with_the_shells_status(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["reproduce"]) == 141


# ---------------------------------------------------------------- recorded batches (--cache) that are not ours
EVAL_QUICK = ["--n", "16", "--batch-size", "8", "--steps", "1", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("content, match", [
    ('{"model_type": "bert", "hidden_size": 768}', "not otrobust's record of an evaluation"),
    ('{"key": "abc"}', "not otrobust's record"),  # a key alone is not our format
    ('{"format": "otrobust-eval-batches-1", "key": ', "not otrobust's record"),  # ours, truncated
    (b'\xff\xfe\x00garbage', "not otrobust's record"),
    ('[1, 2, 3]', "not otrobust's record"),
])
def test_a_cache_folder_with_a_foreign_or_corrupt_settings_json_is_refused_and_left_alone(digits_run, tmp_path, capsys,
                                                                                         content, match):
    cache = tmp_path / "cache"
    (cache / "batches").mkdir(parents=True)
    (cache / "settings.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    (cache / "batches" / "pgd-000000000.json").write_text("someone else's")
    before = _snapshot(cache)
    _fails(capsys, ["eval", str(digits_run), *EVAL_QUICK, "--cache", str(cache)], match)
    assert _snapshot(cache) == before


def test_a_cache_folder_holding_a_batches_folder_of_its_own_is_refused(digits_run, tmp_path, capsys):
    (tmp_path / "cache" / "batches").mkdir(parents=True)
    (tmp_path / "cache" / "batches" / "pgd-000000000.json").write_text("not ours")
    _fails(capsys, ["eval", str(digits_run), *EVAL_QUICK, "--cache", str(tmp_path / "cache")],
           "holds a batches folder without otrobust's settings.json")
    assert (tmp_path / "cache" / "batches" / "pgd-000000000.json").read_text() == "not ours"
    (tmp_path / "file").write_text("x")
    _fails(capsys, ["eval", str(digits_run), *EVAL_QUICK, "--cache", str(tmp_path / "file")], "is a file, not a folder")
    assert (tmp_path / "file").read_text() == "x"


def test_a_changed_evaluation_removes_only_its_own_records(digits_run, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["eval", str(digits_run), *EVAL_QUICK, "--cache", str(cache)]) == 0
    (cache / "batches" / "notes.txt").write_text("the user's")
    assert main(["eval", str(digits_run), *EVAL_QUICK, "--steps", "2", "--cache", str(cache)]) == 0
    assert "starting afresh" in capsys.readouterr().out
    assert (cache / "batches" / "notes.txt").read_text() == "the user's"
    assert len(list((cache / "batches").glob("pgd-*.json"))) == 2


# ---------------------------------------------------------------- an output that would destroy an input
@pytest.mark.parametrize("flag, victim", [("--json", "checkpoints/best.safetensors"), ("--json", "config.json"),
                                          ("--per-example", "metrics.jsonl"), ("--robustbench", "config.json"),
                                          ("--per-example", "checkpoints/last.safetensors")])
def test_an_eval_output_naming_an_input_of_the_run_is_refused(digits_run, capsys, flag, victim):
    before = _snapshot(digits_run)
    extra = ["--attack", "autoattack"] if flag == "--robustbench" else []
    line = _fails(capsys, ["eval", str(digits_run), *EVAL_QUICK, *extra, flag, str(digits_run / victim)],
                  "is an input of this command")
    assert f"choose another {flag}" in line
    assert _snapshot(digits_run) == before


def test_an_evaluation_written_into_the_run_folder_may_be_written_again(digits_run, tmp_path, capsys):
    out = tmp_path / "run"
    import shutil

    shutil.copytree(digits_run, out)
    for _ in range(2):
        assert main(["eval", str(out), *EVAL_QUICK, "--json", str(out / "eval.json")]) == 0


def test_an_eval_output_naming_the_model_file_weights_or_another_output_is_refused(tmp_path, capsys):
    (tmp_path / "m.py").write_text("from torch import nn\n\ndef f():\n    return nn.Sequential(nn.Flatten(), "
                                   "nn.Linear(64, 10))\n")
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).state_dict(), tmp_path / "w.pt")
    before = _snapshot(tmp_path)
    model = ["eval", "--model", f"{tmp_path / 'm.py'}:f", "--dataset", "digits", *EVAL_QUICK]
    _fails(capsys, [*model, "--json", str(tmp_path / "m.py")], "is an input of this command")
    _fails(capsys, [*model, "--weights", str(tmp_path / "w.pt"), "--per-example", str(tmp_path / "w.pt")],
           "is an input of this command")
    _fails(capsys, [*model, "--json", str(tmp_path / "out.txt"), "--per-example", str(tmp_path / "out.txt")],
           "--json and --per-example name the same file")
    assert _snapshot(tmp_path) == before


def test_an_eval_output_overwriting_a_data_file_is_refused(mnist_run, tmp_path, capsys):
    run, data = mnist_run
    before = _snapshot(data)
    _fails(capsys, ["eval", str(run), *EVAL_QUICK, "--json", str(data / "t10k-labels-idx1-ubyte")],
           "is a file of the data folder")
    assert _snapshot(data) == before


def test_training_into_a_folder_with_another_programs_config_json_is_refused(tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text('{"architectures": ["BertModel"], "hidden_size": 768}')
    _fails(capsys, ["train", *TINY, "--method", "standard", "--out", str(out)], "not an otrobust run's settings")
    assert (out / "config.json").read_text() == '{"architectures": ["BertModel"], "hidden_size": 768}'
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_a_closed_pipe_still_writes_the_evaluations_files(digits_run, tmp_path, monkeypatch):
    """``otrobust eval ... | head``: the reader is gone before the first line; the work is done and its files are
    written, then the command ends with the shell's status for a closed pipe."""
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["eval", str(digits_run), *EVAL_QUICK, "--json", str(tmp_path / "e.json"), "--per-example",
                 str(tmp_path / "e.csv")]) == 141
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 16
    assert len((tmp_path / "e.csv").read_text().splitlines()) == 17


def test_a_closed_pipe_in_a_real_process(digits_run, tmp_path):
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "otrobust", "eval", str(digits_run), *EVAL_QUICK, "--json",
                             str(tmp_path / "e.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # as head does once it has its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err and "Exception ignored" not in err, err
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 16


def _ascii_stdout() -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")


def test_an_ascii_only_stdout_neither_crashes_nor_loses_the_audit(digits_run, tmp_path, monkeypatch, capsys):
    """A C locale or a Windows console cannot print "ε": the audit still writes its report and prints its
    verdict with the character escaped; the report command too."""
    stdout = _ascii_stdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["audit", str(digits_run), *AUDIT, "--out", str(tmp_path / "audit")]) in (0, 1)
    assert (tmp_path / "audit" / "audit.json").is_file()
    assert main(["report", str(digits_run), "--out", str(tmp_path / "report")]) == 0
    stdout.flush()
    text = stdout.buffer.getvalue().decode("ascii")
    assert "Verdict" in text and "\\u" in text and (tmp_path / "report" / "report.md").is_file()


# ---------------------------------------------------------------- a model under test that misbehaves
BAD_MODELS = '''
import torch
from torch import nn


def linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def on_meta():
    with torch.device("meta"):
        return linear()


class Raises(nn.Module):
    def forward(self, x):
        raise ValueError("this forward always fails")


class Exits(nn.Module):
    def forward(self, x):
        raise SystemExit(4)


class Ints(nn.Sequential):
    def forward(self, x):
        return (super().forward(x) * 10).long()


class Complex(nn.Sequential):
    def forward(self, x):
        return super().forward(x).to(torch.complex64)


def raises():
    return Raises()


def exits():
    return Exits()


def ints():
    return Ints(nn.Flatten(), nn.Linear(64, 10))


def complex_logits():
    return Complex(nn.Flatten(), nn.Linear(64, 10))


def factory_exits():
    raise SystemExit("no GPU, giving up")
'''


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad-models")
    (folder / "models.py").write_text(BAD_MODELS)
    (folder / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (folder / "parses.py").write_text("import argparse\nparser = argparse.ArgumentParser()\n"
                                      "parser.add_argument('--lr', type=float, required=True)\n"
                                      "args = parser.parse_args()\n")
    (folder / "unknown_flag.py").write_text("import argparse\nargparse.ArgumentParser().parse_args()\n\n"
                                            "def f():\n    raise AssertionError('never called')\n")
    torch.save({"1.weight": torch.zeros(10, 64, device="meta"), "1.bias": torch.zeros(10)}, folder / "meta.pt")
    return folder


@pytest.mark.parametrize("command", ["eval", "audit"])
@pytest.mark.parametrize("factory, extra, match", [
    ("models.py:on_meta", [], "returned a model on the meta device"),
    ("models.py:raises", [], "forward failed on a batch of 8 images: ValueError: this forward always fails"),
    ("models.py:exits", [], "forward failed on a batch of 8 images: it called sys.exit(4)"),
    ("models.py:ints", [], "returns int64 outputs; attacks need floating-point logits"),
    ("models.py:complex_logits", [], "returns complex64 outputs"),
    ("models.py:factory_exits", [], "failed: it called sys.exit('no GPU, giving up')"),
    ("exits.py:f", [], "it called sys.exit(3) when imported; guard the file's script code"),
    ("parses.py:f", [], "the following arguments are required: --lr"),
    ("models.py:linear", ["--weights", "{dir}/meta.pt"], "holds tensors on the meta device"),
])
def test_a_model_that_misbehaves_is_one_line(bad_models, tmp_path, capsys, command, factory, extra, match):
    """Each is refused in one line by eval and by the audit (which eval's messages send the user to)."""
    more = ["--steps", "1", "--no-progress"] if command == "eval" else [*AUDIT, "--out", str(tmp_path / "audit")]
    _fails(capsys, [command, "--model", f"{bad_models / factory}", "--dataset", "digits", "--device", "cpu",
                    *[e.format(dir=bad_models) for e in extra], *more, "--n", "8"], match)


def test_a_model_file_that_parses_the_command_line_at_import_sees_none(bad_models, capsys):
    """It runs as `python FILE.py` would, without otrobust's arguments: argparse with no required flag passes."""
    _fails(capsys, ["eval", "--model", f"{bad_models / 'unknown_flag.py'}:g", "--dataset", "digits", "--n", "16",
                    "--device", "cpu"], "defines no 'g'")


# ---------------------------------------------------------------- report on damaged, foreign or hostile files
def _per_example(path: Path, rows: int = 4, header: str = "index,label,clean_pred,clean_correct,pgd_success,pgd_pred"
                 ) -> Path:
    path.write_text(header + "\n" + "".join(f"{i},1,1,1,0,1\n" for i in range(rows)))
    return path


@pytest.mark.parametrize("content, match", [
    (b"index,label,clean_pred,clean_correct\n0,1,\xff\xfe,1\n", "is not UTF-8 text (byte"),
    ("index,label,clean_pred,clean_correct\n0,1,1," + "9" * 200_000 + "\n", "as CSV: field larger than field limit"),
    ("index,label,clean_pred,clean_correct\n0,1,1\n", "row 2 of"),  # a value short
    ("index,label,clean_pred,clean_correct\n0,1,1,1,1\n", "another number of values"),  # one too many
    ('index,label\n"0,1\n', "is not a per-example file"),
    ("", "is not a per-example file"),
])
def test_report_on_a_damaged_per_example_file_is_one_line(tmp_path, capsys, content, match):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    _fails(capsys, ["report", str(_per_example(tmp_path / "good.csv")), str(bad), "--out", str(tmp_path / "r")],
           match)


def test_report_on_an_oversized_per_example_file_reads_none_of_it(tmp_path, capsys, monkeypatch):
    from otrobust.reporting import per_example

    monkeypatch.setattr(per_example, "MAX_BYTES", 2**20)
    big = _per_example(tmp_path / "big.csv", rows=120_000)
    _fails(capsys, ["report", str(_per_example(tmp_path / "a.csv")), str(big), "--out", str(tmp_path / "r")],
           "far larger than a per-example file")
    os.mkfifo(tmp_path / "pipe.csv")  # would block a reader
    _fails(capsys, ["report", str(tmp_path / "a.csv"), str(tmp_path / "pipe.csv")], "is a named pipe (FIFO)")


def _fake_run(folder: Path, config: object, metrics: str, evals: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text(metrics)
    if evals is not None:
        (folder / "evals").mkdir()
        (folder / "evals" / "pgd-1.json").write_bytes(evals)
    return folder


ODD_METRICS = ['{"epoch": 1, "val_clean": "high", "val_pgd": null, "seconds": [1]}\n',
               '{"epoch": "2", "val_clean": 0.5}\n[1, 2]\n{"epoch": 1e308, "val_clean": 0.1}\n',
               '{"epoch": 99999999999, "val_pgd": 0.2, "val_clean": 0.3}\n{"epoch": true, "val_clean": 0.4}\n',
               '{"epoch": 1, "val_clean": NaN, "val_pgd": Infinity, "seconds": -1e400}\n', "\x00\xff garbage\n"]
ODD_CONFIGS = [{"method": ["trades"], "eps": "abc", "dataset": {"a": 1}, "epochs": None},
               {"eps": 1e308, "norm": 3}, {}, {"method": "standard", "eps": True}]


@pytest.mark.parametrize("metrics, config", list(zip(ODD_METRICS, [*ODD_CONFIGS, ODD_CONFIGS[0]], strict=True)))
def test_report_on_run_folders_with_unexpected_values_shows_them_as_missing(tmp_path, capsys, metrics, config):
    run = _fake_run(tmp_path / "run", config, metrics, evals=b'{"not": "a list"')
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert "| run |" in captured.out and "skipped" in captured.out and not captured.err
    assert (tmp_path / "r" / "report.csv").is_file()


def test_report_escapes_control_characters_from_run_folders_and_csv_files(tmp_path, capsys):
    """A shared folder must not retitle or clear the terminal, nor print fake lines, through report."""
    evil = "\x1b]0;pwned\x07\x1b[2J\rALL CHECKS PASSED\n"
    run = _fake_run(tmp_path / f"run{evil.strip()}", {"method": evil, "dataset": "digits", "eps": 0.3},
                    json.dumps({"epoch": 1, "val_clean": 0.5, "val_pgd": 0.25}) + "\n",
                    evals=json.dumps([{"evaluation": evil, "metric": "pgd", "accuracy": 1.0}]).encode())
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\\x1b]0;pwned\\x07" in out
    assert "\x1b" not in (tmp_path / "r" / "report.md").read_text()
    attack = "pgd\x1b]0;pwned\x07\x1b[2J"  # a CSV line ends at a line break: no \r here
    header = f"index,label,clean_pred,clean_correct,{attack}_success,{attack}_pred"
    a, b = _per_example(tmp_path / "a.csv", header=header), _per_example(tmp_path / f"b{evil.strip()}.csv",
                                                                         header=header)
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\\x1b" in out
    _fails(capsys, ["report", str(tmp_path / f"none{evil.strip()}.csv"), str(a)], "does not exist")
    assert "\x1b" not in capsys.readouterr().err


def test_report_on_a_folder_whose_name_is_not_utf8(tmp_path, capsys):
    name = os.fsdecode(b"run-\xff\xfe")
    run = _fake_run(tmp_path / name, {"method": "trades", "dataset": "digits"},
                    json.dumps({"epoch": 1, "val_clean": 0.5, "val_pgd": 0.25, "seconds": 3}) + "\n")
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    assert "run-\\udcff\\udcfe" in capsys.readouterr().out
    assert b"run-\xff\xfe" in (tmp_path / "r" / "report.csv").read_bytes()  # the folder's own bytes


@pytest.mark.parametrize("method, scores, best", [
    ("standard", [(0.9, 0.1), (0.8, 0.5)], 1),  # standard training keeps the best clean accuracy
    ("trades", [(0.6, 0.5), (0.7, 0.5), (0.7, 0.5), (0.9, 0.4)], 2),  # PGD first, then clean; the first of a tie
])
def test_report_best_epoch_is_the_epoch_training_kept(tmp_path, capsys, method, scores, best):
    metrics = "".join(json.dumps({"epoch": i, "val_clean": c, "val_pgd": p}) + "\n"
                      for i, (c, p) in enumerate(scores, 1))
    run = _fake_run(tmp_path / "run", {"method": method, "dataset": "digits"}, metrics)
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    row = next(csv.DictReader(io.StringIO((tmp_path / "r" / "report.csv").read_text())))
    assert int(row["best_epoch"]) == best


def test_report_best_epoch_matches_the_best_checkpoint_of_a_real_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "3", "--method", "standard", "--out", str(run)]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    row = next(csv.DictReader(io.StringIO((tmp_path / "r" / "report.csv").read_text())))
    assert int(row["best_epoch"]) == load_checkpoint(checkpoint_path(run, "best"))[1]["epoch"]



@pytest.mark.parametrize("seeds", ["1000000000", "1001", "0", "-3"])
def test_reproduce_seeds_out_of_bounds_is_one_line_at_once(tmp_path, capsys, seeds):
    import time

    started = time.perf_counter()
    _fails(capsys, ["reproduce", "mnist-study", "--seeds", seeds, "--dry-run", "--out", str(tmp_path)],
           f"--seeds must be between 1 and 1000, got {seeds}")
    assert time.perf_counter() - started < 10 and not any(tmp_path.iterdir())
