"""The AutoAttack adapter: call shape, threat model, versions, and the reference's warnings surfaced."""

import logging
from pathlib import Path

import pytest
import torch
from conftest import Noisy
from torch import nn

from otrobust.attacks import autoattack as aa
from otrobust.data import ImageData, load_dataset
from otrobust.errors import OtrobustError
from otrobust.evaluation.evaluate import EvalOptions, build_attacks, evaluate_model
from otrobust.models import create_model

CHEAP = dict(n_iter=5, n_queries=30)  # a few iterations: these tests check plumbing, not strength


class Probabilities(nn.Module):
    """Returns softmax probabilities instead of logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "test", size=24)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.6)])
def test_standard_autoattack_stays_in_the_threat_model(trained_digits_model, digits, norm, eps):
    attack = aa.autoattack(eps, norm, **CHEAP)
    assert attack.attacks == ("apgd-ce", "apgd-t", "fab-t", "square") and not attack.standard
    x_adv = attack(trained_digits_model, digits.x, digits.y)
    delta = (x_adv - digits.x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((size <= eps + 1e-5).all()) and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    with torch.no_grad():
        robust = trained_digits_model(x_adv).argmax(1) == digits.y
        clean = trained_digits_model(digits.x).argmax(1) == digits.y
    assert not bool((robust & ~clean).any())  # an attack never repairs a mistake
    assert float(robust.float().mean()) < float(clean.float().mean())
    assert attack.warnings == []
    assert any("robust accuracy" in m for m in attack.messages)


def test_versions_and_single_attacks():
    assert aa.autoattack(0.3, version="fast").attacks == ("apgd-ce", "apgd-t")
    rand = aa.autoattack(0.3, version="rand")
    assert rand.attacks == ("apgd-ce", "apgd-dlr") and rand.eot_iter == 20 and rand.standard
    assert aa.single_attack("fab", 0.3).attacks == ("fab-t",)
    assert aa.single_attack("square", 0.3).attacks == ("square",)
    with pytest.raises(OtrobustError, match="version"):
        aa.autoattack(0.3, version="plus")
    with pytest.raises(OtrobustError, match="component"):
        aa.single_attack("deepfool", 0.3)
    with pytest.raises(OtrobustError, match="norms"):
        aa.autoattack(0.3, "l1")


def test_randomised_model_is_reported(trained_digits_model, digits):
    attack = aa.single_attack("apgd-ce", 0.1, **CHEAP)
    attack(Noisy(trained_digits_model), digits.x, digits.y)
    assert any("randomized defense" in w for w in attack.warnings)
    assert any("changed between" in w for w in attack.warnings)
    assert all(aa.is_severe(w) for w in attack.warnings if "randomized" in w)


def test_probability_outputs_are_reported(trained_digits_model, digits):
    attack = aa.single_attack("apgd-ce", 0.1, **CHEAP)
    attack(Probabilities(trained_digits_model), digits.x, digits.y)
    assert any("probability distribution" in w for w in attack.warnings)


def test_output_is_captured_and_global_state_restored(trained_digits_model, digits, capsys):
    logger = logging.getLogger("auto-attack")
    level, propagate = logger.level, logger.propagate
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    aa.single_attack("square", 0.1, n_queries=20)(trained_digits_model, digits.x, digits.y)
    assert torch.equal(torch.rand(3), expected)  # the reference re-seeds torch; the caller's stream is untouched
    assert (logger.level, logger.propagate) == (level, propagate)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_seeded_runs_repeat(trained_digits_model, digits):
    a = aa.autoattack(0.1, version="fast", seed=3, **CHEAP)(trained_digits_model, digits.x, digits.y)
    b = aa.autoattack(0.1, version="fast", seed=3, **CHEAP)(trained_digits_model, digits.x, digits.y)
    assert torch.equal(a, b)


def test_evaluate_model_collects_autoattack_warnings(trained_digits_model, digits):
    attacks = build_attacks(["autoattack-fast", "fab"], eps=0.1, aa_iter=3)
    res = evaluate_model(Noisy(trained_digits_model), digits, attacks, batch_size=12)
    assert any("randomized" in w for w in res.warnings["autoattack-fast"])
    # one line per finding, not one per batch
    assert len([w for w in res.warnings["autoattack-fast"] if "randomized" in w]) == 1


def test_only_the_adapter_imports_the_reference_package():
    src = Path(__file__).resolve().parents[2] / "src" / "otrobust"
    users = [p.relative_to(src).as_posix() for p in src.rglob("*.py") if "pyautoattack" in p.read_text()]
    assert users == ["attacks/autoattack.py"]


def test_colour_images_in_the_channels_last_layout_of_otrobust_eval():
    # evaluate_model hands attacks channels-last batches; the reference code flattens gradients with .view,
    # which 3-channel channels-last tensors do not allow.
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_channels=3, image_size=32).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)  # all correct and a tiny ε, so every attack of the suite runs on them
    result = evaluate_model(model, ImageData(x, y, 10), {"autoattack": aa.autoattack(1e-5, "linf", **CHEAP)},
                            batch_size=4, device="cpu", options=EvalOptions(nhwc=True))
    assert result.accuracy("clean") == 1.0 and 0.0 <= result.accuracy("autoattack") <= 1.0


def test_autoattack_records_which_attack_broke_which_point(trained_digits_model):
    data = load_dataset("digits", "test", size=64)
    attack = aa.autoattack(0.15, **CHEAP)
    res = evaluate_model(trained_digits_model, data, {"autoattack": attack}, batch_size=32)
    stages = res.stages["autoattack"]
    assert list(stages) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert torch.equal(stages["clean"], res.clean)
    masks = list(stages.values())
    for before, after in zip(masks, masks[1:], strict=False):
        assert not bool((after & ~before).any())  # a later attack never repairs a broken point
    assert torch.equal(masks[-1], res.per_attack["autoattack"])  # the last stage is AutoAttack's verdict
    assert masks[1].sum() < masks[0].sum()  # APGD-CE breaks some digits at this radius
    accs = res.stage_accuracies("autoattack")
    assert accs["square"] == pytest.approx(res.accuracy("autoattack"))
