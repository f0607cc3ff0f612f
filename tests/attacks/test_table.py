"""The attack table: every entry keeps the threat model's invariants, on a model with batch norm and one without."""

import pytest
import torch
from torch import nn

from otrobust.attacks.autoattack import GRADIENT_FREE
from otrobust.attacks.table import (
    ATTACK_NAMES,
    ATTACK_SPECS,
    BLACK_BOX_STAGES,
    Budget,
    Family,
    attack_spec,
    for_randomized_model,
    pgd_spec,
)
from otrobust.errors import OtrobustError

EPS = {"linf": 0.1, "l2": 0.5}
# A few steps, iterations and queries: these tests check invariants, not strength.
TINY = dict(steps=2, aa_iter=2, aa_queries=8, aa_targets=2)


def plain_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10)).eval()


MODELS = {"plain": plain_model, "batch-norm": bn_model}


def batch(model: nn.Module, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images, two on the box's faces (the projection must clip), labelled with the model's own predictions:
    every image is clean-correct, so that AutoAttack's stages attack them all."""
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x[0], x[1] = 0.0, 1.0
    was_training = model.training
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    model.train(was_training)
    return x, y


def distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    d = (a - b).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def state(model: nn.Module) -> tuple[list[bool], list[bool], list[torch.Tensor]]:
    """Every module's mode, every parameter's requires_grad flag and value."""
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.detach().clone() for p in model.parameters()])


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_attack_stays_in_the_ball_and_the_box(name, norm, model_name):
    model = MODELS[model_name]()
    x, y = batch(model)
    torch.manual_seed(0)
    x_adv = attack_spec(name).build(Budget(eps=EPS[norm], norm=norm, **TINY))(model, x, y)
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert bool((distance(x_adv, x, norm) <= EPS[norm] * (1 + 1e-5)).all())


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_attack_leaves_the_models_mode_and_weights_as_they_were(name, model_name, mode):
    model = MODELS[model_name]()
    x, y = batch(model)
    model.train(mode == "train")
    model[1].requires_grad_(False)  # a module the user froze stays frozen
    before = state(model)
    torch.manual_seed(0)
    attack_spec(name).build(Budget(eps=0.1, **TINY))(model, x, y)
    after = state(model)
    assert after[:2] == before[:2]
    assert all(torch.equal(a, b) for a, b in zip(after[2], before[2], strict=True))


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_every_attack_in_pieces_equals_the_attack_on_the_whole_batch(name, model_name):
    spec = attack_spec(name)
    if spec.reference_code:
        pytest.skip("AutoAttack's reference code attacks the batch it is given as one and reseeds itself on every "
                    "call: it has no pieces")
    model = MODELS[model_name]()
    x, y = batch(model, 9)
    budget = dict(eps=0.1, **TINY)
    torch.manual_seed(0)
    whole = spec.build(Budget(**budget, chunk=0, workers=1))(model, x, y)
    if spec.pgd_like:  # pieces of 2 images on 2 workers; the random starts are drawn for the whole batch first
        torch.manual_seed(0)
        pieces = spec.build(Budget(**budget, chunk=2, workers=2))(model, x, y)
    else:  # a single step draws nothing: the batch attacked in two calls
        attack = spec.build(Budget(**budget))
        pieces = torch.cat([attack(model, x[:4], y[:4]), attack(model, x[4:], y[4:])])
    torch.testing.assert_close(pieces, whole, rtol=0, atol=1e-5)


def test_the_budget_resolves_the_step_size_once_and_checks_its_fields():
    assert Budget(eps=0.3, steps=10).step_size == pytest.approx(0.075)
    assert Budget(eps=0.3, steps=10, step_size=0.01).step_size == 0.01
    with pytest.raises(OtrobustError, match="unknown norm"):
        Budget(eps=0.3, norm="l1")
    with pytest.raises(OtrobustError, match="eps must be >= 0"):
        Budget(eps=-0.1)
    with pytest.raises(OtrobustError, match="schedule"):
        Budget(eps=0.3, schedule="linear")


def test_the_table_answers_what_callers_ask():
    assert [n for n in ATTACK_NAMES if ATTACK_SPECS[n].pgd_like] == ["pgd", "pgd-cw", "pgd-dlr"]
    assert [pgd_spec(loss).name for loss in ("ce", "cw", "dlr")] == ["pgd", "pgd-cw", "pgd-dlr"]
    assert {n for n in ATTACK_NAMES if ATTACK_SPECS[n].family is Family.GRADIENT} == {"fgsm", "pgd", "pgd-cw",
                                                                                       "pgd-dlr"}
    assert [n for n in ATTACK_NAMES if ATTACK_SPECS[n].family is Family.BLACK_BOX] == ["square"]
    assert for_randomized_model("autoattack") == "autoattack-rand" and for_randomized_model("pgd") == "pgd"
    # The black-box family is exactly what the AutoAttack adapter runs without asking for a gradient.
    assert set(BLACK_BOX_STAGES) == set(GRADIENT_FREE)
    assert all(spec.stages for spec in ATTACK_SPECS.values() if spec.reference_code)
    budget = Budget(eps=0.3, steps=40, restarts=2, aa_iter=7)
    assert attack_spec("pgd-cw").describe(budget) == "40 steps of 0.01875, 2 restarts"
    assert attack_spec("autoattack").describe(budget) == "7 iterations, 5000 queries"
    assert attack_spec("pgd").cost(40) == 81 and attack_spec("autoattack-fast").cost(40) > attack_spec("pgd").cost(40)
    with pytest.raises(OtrobustError, match="unknown attack 'deepfool'"):
        attack_spec("deepfool")
