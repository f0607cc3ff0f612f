"""Run records and safe loading: checkpoints never execute code (a planted malicious pickle is refused
everywhere a checkpoint is read), damaged checkpoints are detected, every run directory records what
is needed to reproduce it, and evaluating one checkpoint twice gives identical numbers."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import tiny_flags

from otrobust import TrainConfig, load_model
from otrobust.cli.main import main
from otrobust.errors import OtrobustError
from otrobust.store.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from otrobust.store.files import CHECKPOINT_DIR, append_jsonl, atomic_write_text, read_jsonl, remove_stale_temp_files

TINY = tiny_flags(dataset=None)  # no --dataset flag: a --config file's dataset still applies


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *TINY, "--method", "got-trades-lm", "--eps", "8/255", "--seed", "3", "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------- malicious pickles
class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _plant(run_dir: Path, marker: Path) -> Path:
    """A run directory whose checkpoints are pickles (raw, and torch.save's zip); returns a ``.pt`` path."""
    folder = run_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True)
    (folder / "best.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    torch.save({"state_dict": _Payload(marker)}, folder / "last.safetensors")
    (run_dir / "config.json").write_text(json.dumps({"dataset": "digits", "method": "standard", "epochs": 2}))
    pt = run_dir / "model.pt"
    torch.save(_Payload(marker), pt)
    return pt


def test_the_planted_payload_is_live(tmp_path):
    """Control: unpickling the payload really creates its marker, so the tests below mean something."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()


def test_malicious_pickle_checkpoints_are_refused_everywhere(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    run_dir = tmp_path / "run"
    pt = _plant(run_dir, marker)
    for path in (run_dir, pt, run_dir / CHECKPOINT_DIR / "last.safetensors"):
        with pytest.raises(OtrobustError, match="not a valid otrobust checkpoint"):
            load_model(path)
    attempts = [
        ["eval", str(run_dir), "--n", "8", "--device", "cpu"],
        ["eval", str(pt), "--n", "8", "--device", "cpu"],
        ["train", *TINY, "--init", str(pt), "--out", str(tmp_path / "a")],
        ["train", *TINY, "--init", str(run_dir), "--out", str(tmp_path / "b")],
        ["train", "--resume", "--out", str(run_dir), "--no-progress", "--device", "cpu"],
    ]
    for argv in attempts:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a valid otrobust checkpoint" in err[0], (argv, err)
    assert not marker.exists()


def test_config_files_are_read_as_json_only(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "config.json"
    cfg.write_bytes(pickle.dumps(_Payload(marker)))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "cannot read config file" in capsys.readouterr().err and not marker.exists()


# ---------------------------------------------------------------- damage detection
def _flip(data: bytes, needle: bytes, replacement: bytes) -> bytes:
    assert data.count(needle) >= 1 and len(needle) == len(replacement)
    return data.replace(needle, replacement, 1)


def test_a_flipped_byte_in_weights_or_metadata_is_detected(run, tmp_path):
    data = checkpoint_path(run, "last").read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data[:header + 100] + bytes([data[header + 100] ^ 1]) + data[header + 101:])
    with pytest.raises(OtrobustError, match="checksum mismatch"):
        load_checkpoint(path)
    path.write_bytes(_flip(data, b'\\"epoch\\": 1', b'\\"epoch\\": 7'))  # still valid JSON, still parses
    with pytest.raises(OtrobustError, match="checksum mismatch"):
        load_checkpoint(path)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OtrobustError, match="not a valid otrobust checkpoint"):
        load_checkpoint(path)


def test_checkpoint_round_trip_keeps_nested_state(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    extra = {"optim": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                       "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]}, "none": None}
    save_checkpoint(tmp_path / "c.safetensors", state, {"epoch": 2}, extra)
    got_state, meta, got_extra = load_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(got_state["w"], state["w"]) and meta == {"epoch": 2}
    assert got_extra["optim"]["param_groups"] == extra["optim"]["param_groups"]
    assert torch.equal(got_extra["optim"]["state"][0]["exp_avg"], torch.ones(2)) and got_extra["none"] is None


def test_written_files_get_the_usual_permissions(tmp_path):
    """Temp files are private (0600); the renamed result must be readable like any file the user writes."""
    import os

    (tmp_path / "plain").write_text("x")
    atomic_write_text(tmp_path / "atomic.json", "{}")
    append_jsonl(tmp_path / "log.jsonl", {})
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["atomic.json"] == modes["log.jsonl"] == modes["plain"], modes
    assert os.access(tmp_path / "atomic.json", os.R_OK)


def test_torn_log_line_and_stale_temp_files(tmp_path):
    log = tmp_path / "metrics.jsonl"
    append_jsonl(log, {"epoch": 1})
    with open(log, "a") as f:
        f.write('{"epoch": 2, "tra')
    assert read_jsonl(log) == [{"epoch": 1}]
    (tmp_path / CHECKPOINT_DIR).mkdir()
    stale = [tmp_path / ".config.json.x1.tmp", tmp_path / CHECKPOINT_DIR / ".last.safetensors.x2.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert not any(p.exists() for p in stale) and log.exists()


# ---------------------------------------------------------------- reproducibility record
def test_run_directory_records_versions_config_seed_and_command_line(run):
    config = json.loads((run / "config.json").read_text())
    assert set(config) == set(TrainConfig().to_dict())
    assert config["eps"] == 8 / 255 and config["model"] == "small-cnn" and config["seed"] == 3
    assert config["step_size"] == pytest.approx(2.5 * (8 / 255) / 1)  # resolved, not left as null
    record = read_jsonl(run / "provenance.jsonl")[0]
    assert {"python", "torch", "numpy", "safetensors", "otrobust", "git_commit", "git_dirty", "platform", "cwd",
            "time", "torch_threads"} <= set(record)
    assert record["argv"] == ["otrobust", "train", *TINY, "--method", "got-trades-lm", "--eps", "8/255", "--seed",
                              "3", "--out", str(run)]
    assert record["seed"] == 3 and record["event"] == "start" and record["device"] == "cpu"
    assert record["config"] == config
    _, meta, _ = load_checkpoint(checkpoint_path(run, "best"))
    assert meta["config"] == config and meta["versions"]["torch"] == torch.__version__
    assert meta["architecture"] == {"model": "small-cnn", "num_classes": 10, "in_channels": 1, "image_size": 8,
                                    "latent": "penultimate", "dataset": "digits"}


def test_resume_appends_a_provenance_record(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["train", "--resume", "--out", str(copy), "--epochs", "2", "--no-progress"]) == 0
    records = read_jsonl(copy / "provenance.jsonl")
    assert [r["event"] for r in records] == ["start", "resume"] and records[1]["config"]["epochs"] == 2


def _all_keys(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _all_keys(v)}
    return {k for v in obj for k in _all_keys(v)} if isinstance(obj, list) else set()


def test_evaluating_a_checkpoint_twice_gives_identical_numbers(run, tmp_path, capsys):
    outputs = []
    for i in range(2):
        path = tmp_path / f"eval{i}.json"
        assert main(["eval", str(run), "--n", "48", "--steps", "3", "--restarts", "2", "--device", "cpu",
                     "--json", str(path), "--no-progress"]) == 0
        record = json.loads(path.read_text())
        timing = record.pop("timing")  # every wall-clock time is in this one object
        assert timing["seconds"] > 0 and set(timing["attack_seconds"]) == {"pgd"}
        assert "seconds" not in _all_keys(record)
        outputs.append(record)
    assert outputs[0] == outputs[1]
    assert outputs[0]["threat_model"]["n"] == 48 and 0 <= outputs[0]["clean_accuracy"] <= 1
