"""Attacks: threat-model invariants, loss definitions, schedules, best-so-far tracking, strength ordering."""

import pytest
import torch
from torch import nn

from otrobust.attacks.gradient import PGD, TradesAdversary, best_iterate, fgsm, last_iterate, margin_loss, step_sizes
from otrobust.attacks.norms import project
from otrobust.data import load_dataset
from otrobust.errors import OtrobustError
from otrobust.evaluation.evaluate import evaluate_model


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    d = (a - b).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


ATTACKS = {
    "fgsm": lambda m, x, y, eps, norm: fgsm(m, x, y, eps, norm=norm),
    "pgd-ce": lambda m, x, y, eps, norm: PGD(eps=eps, step_size=eps / 4, steps=7, restarts=2, norm=norm)(m, x, y),
    "pgd-cw-cosine": lambda m, x, y, eps, norm: PGD(eps=eps, step_size=eps / 4, steps=7, loss="cw", norm=norm,
                                                    schedule="cosine")(m, x, y),
    "pgd-dlr-step": lambda m, x, y, eps, norm: PGD(eps=eps, step_size=eps / 4, steps=7, loss="dlr", norm=norm,
                                                   schedule="step")(m, x, y),
    "pgd-last-iterate": lambda m, x, y, eps, norm: last_iterate(PGD(eps=eps, step_size=eps / 4, steps=7, norm=norm),
                                                                m, x, y),
    "trades": lambda m, x, y, eps, norm: TradesAdversary(eps=eps, step_size=eps / 4, steps=5, norm=norm)(m, x),
}


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_stay_in_the_ball_and_the_box(name, norm, eps):
    model = tiny_model()
    torch.manual_seed(1)
    x = torch.rand(16, 1, 8, 8)
    x[:4] = 0.0  # images on the box's faces: the projection must clip
    x[4:8] = 1.0
    y = torch.randint(0, 10, (16,))
    x_adv = ATTACKS[name](model, x, y, eps, norm)
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert bool((distance(x_adv, x, norm) <= eps * (1 + 1e-5)).all())


def test_project_is_the_identity_inside_the_ball():
    x = torch.full((2, 1, 4, 4), 0.5)
    inside = x + 0.01
    assert torch.equal(project(inside, x, 0.1, "linf"), inside)
    assert torch.allclose(project(x + 1.0, x, 0.1, "linf"), x + 0.1)
    far = x + torch.randn_like(x)
    assert bool((distance(project(far, x, 0.3, "l2"), x, "l2") <= 0.3 + 1e-6).all())


def test_margin_losses_on_known_logits():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.5]])
    y = torch.tensor([0, 0])
    assert torch.allclose(margin_loss(logits, y, "cw"), torch.tensor([1.0 - 3.0, 2.0 - 0.0]))
    # DLR = (max other - true) / (top1 - top3)
    assert torch.allclose(margin_loss(logits, y, "dlr"), torch.tensor([-2.0 / 3.0, 2.0 / 1.5]))
    assert torch.allclose(margin_loss(logits, y, "ce"), nn.functional.cross_entropy(logits, y, reduction="none"))
    # DLR is scale-invariant, which is why it sees through logit scaling
    assert torch.allclose(margin_loss(1e3 * logits, y, "dlr"), margin_loss(logits, y, "dlr"), rtol=1e-4)
    with pytest.raises(OtrobustError, match="3 classes"):
        margin_loss(logits[:, :2], y, "dlr")
    with pytest.raises(OtrobustError, match="unknown attack loss"):
        margin_loss(logits, y, "hinge")


def test_step_size_schedules():
    assert step_sizes(0.1, 4, "constant") == [0.1] * 4
    assert step_sizes(1.0, 4, "step") == [1.0, 1.0, 0.1, 0.01]
    cosine = step_sizes(1.0, 10, "cosine")
    assert cosine[0] == 1.0 and all(a >= b for a, b in zip(cosine, cosine[1:], strict=False))
    assert min(cosine) == pytest.approx(0.1)
    with pytest.raises(OtrobustError, match="schedule"):
        step_sizes(1.0, 4, "linear")


def test_pgd_trace_records_the_loss_at_every_iterate(trained_digits_model):
    data = load_dataset("digits", "test", size=32)
    torch.manual_seed(0)
    attack = PGD(eps=0.1, step_size=0.025, steps=6, restarts=2)
    res = best_iterate(attack, trained_digits_model, data.x, data.y)
    assert res.loss.shape == (2, 7, 32)
    assert bool(torch.isfinite(res.loss).all())
    # Ascent: on a trained model the mean loss ends well above where it started.
    assert float(res.loss[0, -1].mean()) > float(res.loss[0, 0].mean())
    torch.manual_seed(0)
    assert torch.equal(res.x_adv, attack(trained_digits_model, data.x, data.y))


def _accuracy(model, data, attack) -> torch.Tensor:
    torch.manual_seed(0)
    return evaluate_model(model, data, {"a": attack}).per_attack["a"]


def test_pgd_lowers_a_trained_models_accuracy_below_fgsm(trained_digits_model):
    data = load_dataset("digits", "test")
    eps = 0.1
    fgsm_acc = _accuracy(trained_digits_model, data, lambda m, x, y: fgsm(m, x, y, eps)).float().mean()
    pgd_acc = _accuracy(trained_digits_model, data, PGD(eps=eps, step_size=eps / 8, steps=20)).float().mean()
    clean = evaluate_model(trained_digits_model, data).accuracy("clean")
    assert float(pgd_acc) < float(fgsm_acc) < clean


def test_restarts_and_best_iterate_never_raise_accuracy(trained_digits_model):
    """Same seed: restart 1 of a 4-restart run is the 1-restart run, so every example broken by the
    latter is broken by the former; and the best iterate is never worse than the last one."""
    data = load_dataset("digits", "test", size=120)
    eps = 0.08
    one = _accuracy(trained_digits_model, data, PGD(eps=eps, step_size=eps / 4, steps=10, restarts=1))
    four = _accuracy(trained_digits_model, data, PGD(eps=eps, step_size=eps / 4, steps=10, restarts=4))
    last = _accuracy(trained_digits_model, data, lambda m, x, y: last_iterate(
        PGD(eps=eps, step_size=eps / 4, steps=10, restarts=1), m, x, y))
    assert not bool((four & ~one).any())
    assert not bool((one & ~last).any())
    assert float(four.float().mean()) <= float(one.float().mean()) < 1.0


def test_pgd_does_not_synchronise_inside_the_step_loop(monkeypatch):
    """No .item(), bool(), int(), float() or .tolist() on tensors while attacking: no waiting for the device."""
    model = tiny_model()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the attack")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    out = PGD(eps=0.1, step_size=0.02, steps=5, restarts=2, loss="dlr", schedule="cosine")(model, x, y)
    out_l2 = best_iterate(PGD(eps=0.5, step_size=0.1, steps=5, norm="l2"), model, x, y).x_adv
    monkeypatch.undo()
    assert out.shape == x.shape and out_l2.shape == x.shape


def test_unknown_norm_is_a_one_line_error():
    with pytest.raises(OtrobustError, match="unknown norm"):
        PGD(eps=0.1, step_size=0.01, steps=2, norm="l1")(tiny_model(), torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))


PIECES = {
    "pgd-restarts": lambda m, x, y, c, w: PGD(eps=0.1, step_size=0.025, steps=6, restarts=3, chunk=c,
                                              workers=w)(m, x, y),
    "pgd-trace": lambda m, x, y, c, w: best_iterate(PGD(eps=0.1, step_size=0.025, steps=6, restarts=2, chunk=c,
                                                        workers=w), m, x, y),
    "pgd-training": lambda m, x, y, c, w: last_iterate(PGD(eps=0.1, step_size=0.025, steps=6, chunk=c, workers=w),
                                                       m, x, y),
    "trades": lambda m, x, y, c, w: TradesAdversary(eps=0.1, step_size=0.025, steps=6, chunk=c, workers=w)(m, x),
}


@pytest.mark.parametrize("name", list(PIECES))
def test_attacking_in_pieces_gives_the_attack_on_the_whole_batch(trained_digits_model, name):
    data = load_dataset("digits", "test")
    x, y = data.x[:50], data.y[:50]
    results = {}
    # (images per piece, worker threads): one after the other, and at the same time on 2 or 3 workers
    for chunk, workers in ((0, 1), (16, 1), (50, 1), (7, 1), (16, 2), (7, 3)):
        torch.manual_seed(3)
        results[chunk, workers] = PIECES[name](trained_digits_model, x, y, chunk, workers)
    whole = results.pop((0, 1))
    for got in results.values():
        if name == "pgd-trace":
            assert got.loss.shape == whole.loss.shape == (2, 7, 50)
            torch.testing.assert_close(got.loss, whole.loss, rtol=1e-4, atol=1e-4)
            got, want = got.x_adv, whole.x_adv
        else:
            want = whole
        assert got.shape == want.shape
        # Pieces change only the floating-point summation order inside the kernels.
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_workers_repeat_their_result_exactly():
    model, x, y = tiny_model(), torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,))
    runs = []
    for _ in range(3):
        torch.manual_seed(1)
        runs.append(PGD(eps=0.1, step_size=0.02, steps=4, chunk=5, workers=3)(model, x, y))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_workers_see_the_callers_grad_mode_and_autocast_and_leave_its_threads():
    from otrobust.attacks._pieces import map_pieces

    threads = torch.get_num_threads()

    def state(rows):
        return rows, torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        seen = map_pieces(state, 10, 3, 2)
    assert [s[0] for s in seen] == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert all(s[1:] == (False, True, torch.bfloat16) for s in seen)
    assert all(s[1:3] == (True, False) for s in map_pieces(state, 10, 3, 2))
    assert torch.get_num_threads() == threads


def test_pieces_inside_a_worker_run_there():
    from otrobust.attacks._pieces import map_pieces

    outer = map_pieces(lambda rows: map_pieces(lambda inner: inner.stop - inner.start, 6, 2, 2), 4, 1, 2)
    assert outer == [[2, 2, 2]] * 4


def test_an_error_in_a_worker_reaches_the_caller():
    from otrobust.attacks._pieces import map_pieces

    def fail(rows):
        if rows.start == 4:
            raise OtrobustError("piece 4 failed")
        return rows

    with pytest.raises(OtrobustError, match="piece 4 failed"):
        map_pieces(fail, 8, 2, 2)


def test_pieces_draw_the_same_random_starts():
    model, x, y = tiny_model(), torch.rand(21, 1, 8, 8), torch.randint(0, 10, (21,))
    starts = []
    for chunk in (0, 4):
        torch.manual_seed(0)
        starts.append(PGD(eps=0.1, step_size=0.02, steps=0, restarts=2, chunk=chunk)(model, x, y))
    assert torch.equal(*starts)


def test_default_pieces_by_device_and_bad_values():
    from otrobust.attacks._pieces import CPU_ATTACK_CHUNK, MIN_WORKER_CHUNK, attack_chunk, attack_workers

    x = torch.zeros(300, 1, 8, 8)
    assert attack_chunk(None, x) == CPU_ATTACK_CHUNK == 128 and attack_chunk(0, x) == 300 and attack_chunk(5, x) == 5
    # on a CPU the batch is split evenly over the workers, within [MIN_WORKER_CHUNK, CPU_ATTACK_CHUNK]
    assert attack_chunk(None, x[:128], workers=2) == 64 and attack_chunk(None, x[:129], workers=2) == 65
    assert attack_chunk(None, x[:128], workers=16) == MIN_WORKER_CHUNK == 32
    assert attack_chunk(None, x, workers=2) == 128 and attack_chunk(None, x[:20], workers=2) == 32
    assert attack_workers(None, x) == torch.get_num_threads() and attack_workers(3, x) == 3
    with pytest.raises(OtrobustError, match="attack chunk"):
        PGD(eps=0.1, step_size=0.02, steps=1, chunk=-1)(tiny_model(), x[:4], torch.zeros(4, dtype=torch.long))
    with pytest.raises(OtrobustError, match="attack workers"):
        PGD(eps=0.1, step_size=0.02, steps=1, workers=0)(tiny_model(), x[:4], torch.zeros(4, dtype=torch.long))
