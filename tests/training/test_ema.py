"""Weight averaging (``--ema``): the warm-up of the decay, the average against a hand computation (batch-norm
statistics included), that it is what validation scores and what the checkpoints hold, that it leaves training
unchanged, and resuming: a run keeps its setting, a checkpoint from before averaging existed starts one."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import TINY_RUN
from torch import nn

from otrobust.cli.main import main
from otrobust.errors import OtrobustError
from otrobust.store.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from otrobust.training import loop
from otrobust.training.config import TrainConfig
from otrobust.training.ema import WeightAverage, ema_decay_at
from otrobust.training.loop import Trainer, train
from otrobust.training.setup import build_model, resolve

# wrn-16-1 has batch norm: its running statistics are averaged too. 4 steps per epoch, 2 epochs.
RUN = {**TINY_RUN, "model": "wrn-16-1", "method": "pgd-at", "train_size": 64, "epochs": 2, "ema": 0.9}
QUIET = dict(show_progress=False, log=lambda text: None)


def test_the_decay_warms_up_then_stays_at_the_setting():
    assert [ema_decay_at(0.999, t) for t in range(3)] == [0.1, 2 / 11, 3 / 12]
    assert ema_decay_at(0.99, 889) < 0.99 and ema_decay_at(0.99, 890) == 0.99 == ema_decay_at(0.99, 10**6)
    assert ema_decay_at(0.5, 0) == 0.1 and ema_decay_at(0.5, 8) == 0.5


def test_the_average_follows_the_formula_for_weights_and_batch_norm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    ema = WeightAverage(model, decay=0.6)
    expected = {k: v.clone().double() for k, v in model.state_dict().items()}
    for t in range(12):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(4, 1, 5, 5))  # moves the running mean and variance
        ema.update(model)
        decay = min(0.6, (1 + t) / (10 + t))
        for k, v in model.state_dict().items():
            expected[k] = v.double() if not v.is_floating_point() else decay * expected[k] + (1 - decay) * v.double()
    got = ema.model.state_dict()
    assert ema.updates == 12 and not ema.model.training
    assert not any(p.requires_grad for p in ema.model.parameters())
    for k, v in expected.items():
        assert torch.allclose(got[k].double(), v, rtol=1e-6, atol=1e-6), k
    assert got["1.num_batches_tracked"] == 12  # integer buffers: copied
    assert not torch.allclose(got["1.running_mean"], model.state_dict()["1.running_mean"])  # averaged, not copied


def _states(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_validation_scores_the_average_and_the_checkpoints_hold_it(tmp_path, monkeypatch):
    """The raw weights after every step, averaged by hand, are what validation saw and what best/last hold; the
    raw weights travel in the checkpoint for resuming."""
    raw_after_step, validated = [], []
    step = Trainer.step

    def recording_step(self, x, y, epoch, i):
        done = step(self, x, y, epoch, i)
        raw_after_step.append(_states(self.plain))
        return done

    validate = loop.validate_epoch

    def recording_validate(model, *args):
        validated.append(_states(model))
        return validate(model, *args)

    monkeypatch.setattr(Trainer, "step", recording_step)
    monkeypatch.setattr(loop, "validate_epoch", recording_validate)
    cfg = TrainConfig(**RUN, out=str(tmp_path / "run"))
    train(cfg, **QUIET)

    average = {k: v.double() for k, v in build_model(resolve(cfg), torch.device("cpu"))[0].state_dict().items()}
    per_epoch = []
    for t, raw in enumerate(raw_after_step):
        decay = min(0.9, (1 + t) / (10 + t))
        average = {k: decay * average[k] + (1 - decay) * v.double() if v.is_floating_point() else v.double()
                   for k, v in raw.items()}
        if (t + 1) % 4 == 0:
            per_epoch.append(average)
    assert len(raw_after_step) == 8 and len(validated) == len(per_epoch) == 2

    def same(state, want):
        return all(torch.allclose(state[k].double(), want[k], rtol=1e-5, atol=1e-6) for k in want)

    assert all(same(v, want) for v, want in zip(validated, per_epoch, strict=True))
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(history, key=lambda r: (r["val_pgd"], r["val_clean"]))["epoch"]
    best, best_meta, _ = load_checkpoint(checkpoint_path(tmp_path / "run", "best"))
    last, _, state = load_checkpoint(checkpoint_path(tmp_path / "run", "last"))
    assert best_meta["epoch"] == best_epoch and same(best, per_epoch[best_epoch - 1]) and same(last, per_epoch[-1])
    assert all(torch.equal(state["raw"][k], raw_after_step[-1][k]) for k in raw_after_step[-1])
    assert not same({k: v.double() for k, v in state["raw"].items()}, per_epoch[-1])  # the average is not the raw
    assert state["ema_updates"] == 8


def test_averaging_leaves_training_unchanged(tmp_path):
    """Same seed with and without --ema: the same raw weights and training figures; only the scored weights
    differ."""
    train(TrainConfig(**RUN, out=str(tmp_path / "ema")), **QUIET)
    train(TrainConfig(**{**RUN, "ema": 0.0}, out=str(tmp_path / "plain")), **QUIET)
    plain, _, plain_state = load_checkpoint(checkpoint_path(tmp_path / "plain", "last"))
    _, _, ema_state = load_checkpoint(checkpoint_path(tmp_path / "ema", "last"))
    assert "raw" not in plain_state  # without --ema the checkpoint is as it always was
    assert all(torch.equal(ema_state["raw"][k], plain[k]) for k in plain)
    logs = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("ema", "plain")}
    for a, b in zip(logs["ema"], logs["plain"], strict=True):
        assert (a["train_loss"], a["train_acc"]) == (b["train_loss"], b["train_acc"])


def test_resume_keeps_the_setting_and_a_checkpoint_from_before_averaging_starts_one(tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["train", "--dataset", "digits", "--train-size", "32", "--val-size", "16", "--batch-size", "16",
             "--steps", "1", "--val-steps", "1", "--device", "cpu", "--no-progress", "--out", str(run)]
    assert main([*flags, "--epochs", "1", "--ema", "0.9"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--epochs", "2", "--ema", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "--ema 0.0" in err

    # A run saved before --ema existed: no "ema" in its settings, no raw weights in its checkpoint.
    old = tmp_path / "old"
    assert main([*flags[:-1], str(old), "--epochs", "1"]) == 0
    for which in ("last", "best"):
        weights, meta, extra = load_checkpoint(checkpoint_path(old, which))
        del meta["config"]["ema"]
        save_checkpoint(checkpoint_path(old, which), weights, meta, extra)
    saved = json.loads((old / "config.json").read_text())
    del saved["ema"]
    (old / "config.json").write_text(json.dumps(saved))
    assert main(["train", "--resume", "--out", str(old), "--epochs", "2", "--ema", "0.9"]) == 0
    _, meta, state = load_checkpoint(checkpoint_path(old, "last"))
    assert meta["epoch"] == 2 and state["ema_updates"] == 2 and set(state["raw"]) == set(weights)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(OtrobustError, match=r"--ema must be a decay in \[0, 1\)"):
        resolve(dataclasses.replace(TrainConfig(), ema=decay))


def test_presets_take_ema_through_set(tmp_path):
    from otrobust.experiments.planning import parse_overrides, plan
    from otrobust.experiments.presets import PRESETS

    planned = plan(PRESETS["table1"], "smoke", tmp_path, overrides=parse_overrides(["ema=0.999"]))
    assert planned and all(p.config.ema == 0.999 for p in planned)
