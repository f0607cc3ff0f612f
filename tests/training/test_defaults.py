"""Out of the box every method trains: the defaults leave chance level on the bundled digits, and a run that
cannot learn says so, in float32 and in bf16."""

import pytest

from otrobust.training.config import TrainConfig
from otrobust.training.loop import train
from otrobust.training.methods import METHODS
from otrobust.training.setup import chance_warning


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_leaves_chance_level_with_the_defaults(tmp_path, method):
    lines: list[str] = []
    last = train(TrainConfig(dataset="digits", method=method, epochs=3, out=str(tmp_path / method)),
                 show_progress=False, log=lines.append)
    # 20 of 200 validation digits are the commonest class: a constant prediction scores about 10 %.
    assert last["val_clean"] > 0.5, (method, last)
    assert not any("chance level" in line for line in lines), lines


def test_bf16_training_leaves_chance_level_with_the_defaults(tmp_path):
    lines: list[str] = []
    last = train(TrainConfig(dataset="digits", method="standard", epochs=3, amp="bf16", out=str(tmp_path)),
                 show_progress=False, log=lines.append)
    assert last["val_clean"] > 0.5, last
    assert not any("chance level" in line for line in lines), lines


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_a_run_that_cannot_learn_is_told_so(tmp_path, amp):
    lines: list[str] = []
    last = train(TrainConfig(dataset="digits", method="pgd-at", epochs=1, lr=1e-12, amp=amp, train_size=256,
                             out=str(tmp_path / "stuck")), show_progress=False, log=lines.append)
    warning = [line for line in lines if "accuracy is at chance level" in line]
    assert len(warning) == 1 and "after 1 epoch:" in warning[0] and "--eps-warmup-epochs" in warning[0], lines
    assert f"{100 * last['val_clean']:.1f} %" in warning[0]


def test_chance_level_is_the_commonest_class_share():
    import torch

    cfg = TrainConfig(method="got-trades-lm", eps=0.3, ot_weight=1.0)
    labels = torch.tensor([0] * 6 + [1] * 4)  # a constant prediction scores 60 %
    assert chance_warning(cfg, 2, 0.64, labels) is not None  # within 5 points: not learnt
    assert chance_warning(cfg, 2, 0.70, labels) is None
    assert "--ot-weight" in chance_warning(cfg, 2, 0.1, labels)
    assert "--ot-weight" not in chance_warning(TrainConfig(method="trades", eps=0.3), 2, 0.1, labels)
