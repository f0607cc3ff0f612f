"""The training loop on tiny runs: run directory contents, best-by-validation, resume, init."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN

from otrobust import load_model
from otrobust.errors import OtrobustError
from otrobust.store import files
from otrobust.store.checkpoint import load_checkpoint
from otrobust.store.files import FAULT_ENV
from otrobust.training.config import TrainConfig
from otrobust.training.loop import train
from otrobust.training.setup import ot_weight_at, split_train_val

# No device key: TrainConfig's default ("auto") applies, as before.
TINY = {k: v for k, v in {**TINY_RUN, "train_size": 256, "val_size": 64, "epochs": 2, "batch_size": 64, "steps": 2,
                          "val_steps": 2}.items() if k != "device"}


def _tiny(tmp_path: Path, name: str, **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def test_run_directory_holds_config_metrics_and_checkpoints(tmp_path):
    cfg = _tiny(tmp_path, "run", method="got-trades-lm")
    last = train(cfg, show_progress=False, log=lambda s: None)
    run = tmp_path / "run"
    saved = json.loads((run / "config.json").read_text())
    assert saved["method"] == "got-trades-lm" and saved["eps"] == 0.2 and saved["model"] == "small-cnn"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert {"train_loss", "val_clean", "val_pgd", "ot", "ot_weight"} <= set(lines[0])
    assert lines[-1] == last
    _, meta, _ = load_checkpoint(run / "checkpoints" / "best.safetensors")
    best_epoch = max(lines, key=lambda r: (r["val_pgd"], r["val_clean"]))["epoch"]
    assert meta["epoch"] == best_epoch
    prov = json.loads((run / "provenance.jsonl").read_text().splitlines()[0])
    assert {"python", "torch", "otrobust", "argv", "seed"} <= set(prov)


def test_an_epochs_record_holds_the_learning_rate_it_trained_with(tmp_path):
    cfg = _tiny(tmp_path, "run", method="standard", epochs=4, lr=0.01, schedule="step")  # x 0.1 after epochs 2, 3
    train(cfg, show_progress=False, log=lambda s: None)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in lines] == pytest.approx([0.01, 0.01, 0.001, 0.0001])


def test_load_model_returns_a_plain_logits_module(tmp_path):
    train(_tiny(tmp_path, "run", method="standard", epochs=1), show_progress=False, log=lambda s: None)
    model = load_model(tmp_path / "run")
    x = torch.rand(4, 1, 8, 8)
    assert model(x).shape == (4, 10) and not model.training
    assert load_model(tmp_path / "run" / "checkpoints" / "last.safetensors")(x).shape == model(x).shape


def test_same_seed_gives_identical_runs(tmp_path):
    a = train(_tiny(tmp_path, "a", method="trades"), show_progress=False, log=lambda s: None)
    b = train(_tiny(tmp_path, "b", method="trades"), show_progress=False, log=lambda s: None)
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_existing_run_is_not_overwritten(tmp_path):
    train(_tiny(tmp_path, "run", method="standard", epochs=1), show_progress=False, log=lambda s: None)
    with pytest.raises(OtrobustError, match="already holds a run"):
        train(_tiny(tmp_path, "run", method="standard", epochs=1), show_progress=False, log=lambda s: None)


def test_killed_run_resumes_to_the_same_final_metrics(tmp_path):
    args = ["--dataset", "digits", "--train-size", "256", "--val-size", "64", "--epochs", "3", "--batch-size", "32",
            "--steps", "2", "--val-steps", "2", "--method", "got-trades-lm", "--checkpoint-every", "2",
            "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "otrobust", "train"]
    subprocess.run(cmd + args + ["--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + args + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "metrics.jsonl").exists() or not (killed / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and proc.poll() is None, "run finished or hung before the kill point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd + ["--resume", "--out", str(killed), "--no-progress"], check=True, env=env,
                   capture_output=True)
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    for r in full + resumed:
        r.pop("seconds")
    assert resumed == full
    w_full, _, _ = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.safetensors")
    w_res, _, _ = load_checkpoint(killed / "checkpoints" / "last.safetensors")
    assert all(torch.equal(w_full[k], w_res[k]) for k in w_full)


def test_init_from_checkpoint_and_architecture_mismatch(tmp_path):
    train(_tiny(tmp_path, "base", method="standard", epochs=1), show_progress=False, log=lambda s: None)
    train(_tiny(tmp_path, "ft", method="trades", epochs=1, init=str(tmp_path / "base")), show_progress=False,
          log=lambda s: None)
    with pytest.raises(OtrobustError, match="does not match"):
        train(_tiny(tmp_path, "bad", method="standard", epochs=1, latent="middle", init=str(tmp_path / "base")),
              show_progress=False, log=lambda s: None)


def test_ot_weight_warmup_and_validation_split():
    cfg = TrainConfig(ot_weight=10.0, ot_warmup_epochs=2.0)
    assert ot_weight_at(cfg, 0.0) == 0.0 and ot_weight_at(cfg, 1.0) == 5.0 and ot_weight_at(cfg, 3.0) == 10.0
    assert ot_weight_at(TrainConfig(ot_weight=3.0, ot_warmup_epochs=0.0), 0.0) == 3.0
    from otrobust.data import load_dataset

    data = load_dataset("digits", "train")
    tr, va = split_train_val(data, 100, 50)
    assert len(tr) == 100 and len(va) == 50
    assert torch.equal(va.x, data.x[-50:])


@pytest.mark.parametrize("optimizer, schedule", [("adam", "none"), ("sgd", "step")])
def test_a_new_learning_rate_on_resume_is_applied(tmp_path, monkeypatch, optimizer, schedule):
    import shutil

    from otrobust.training.stop_signals import Interrupted

    base = dict(method="standard", optimizer=optimizer, schedule=schedule, lr=1e-3, epochs=4)
    monkeypatch.setenv(FAULT_ENV, "validation:1:SIGINT")  # stop after epoch 1, as Ctrl-C would
    monkeypatch.setattr(files, "_fault_counts", {})
    with pytest.raises(Interrupted):
        train(_tiny(tmp_path, "a", **base), show_progress=False, log=lambda s: None)
    monkeypatch.delenv(FAULT_ENV)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    lines: list[str] = []
    kept = train(_tiny(tmp_path, "a", resume=True, **base), show_progress=False, log=lambda s: None)
    lowered = train(_tiny(tmp_path, "b", resume=True, **{**base, "lr": 1e-4}), show_progress=False,
                    log=lines.append)
    assert kept["epoch"] == lowered["epoch"] == 4 and kept["lr"] > 0
    assert lowered["lr"] == pytest.approx(kept["lr"] / 10)  # a schedule carries on at the new scale
    assert any("--lr 0.0001 (the checkpoint had 0.001)" in line for line in lines)
    assert lowered["train_loss"] != kept["train_loss"]
    assert json.loads((tmp_path / "b" / "config.json").read_text())["lr"] == 1e-4


def test_resuming_a_scheduled_run_for_more_epochs_is_refused(tmp_path):
    train(_tiny(tmp_path, "run", method="standard", schedule="cosine", epochs=1), show_progress=False,
          log=lambda s: None)
    with pytest.raises(OtrobustError, match="laid out over 1 epoch "):
        train(_tiny(tmp_path, "run", method="standard", schedule="cosine", epochs=3, resume=True),
              show_progress=False, log=lambda s: None)
    longer = train(_tiny(tmp_path, "flat", method="standard", epochs=1), show_progress=False, log=lambda s: None)
    assert longer["epoch"] == 1
    assert train(_tiny(tmp_path, "flat", method="standard", epochs=2, resume=True), show_progress=False,
                 log=lambda s: None)["epoch"] == 2  # without a schedule a run can be extended
