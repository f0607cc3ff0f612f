"""The OT regulariser against known answers: direct formulas, POT, finite differences, Proposition 3.1."""

import numpy as np
import ot as pot
import pytest
import torch

from otrobust.ot import (
    GOTRegularizer,
    ground_cost,
    label_mask,
    semidual_ot,
    sinkhorn_ot,
)


def _random_problem(seed: int, b: int = 8, d: int = 5, m: int = 4):
    g = torch.Generator().manual_seed(seed)
    z, z_adv = torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)
    p = torch.randn(b, m, generator=g, dtype=torch.float64).softmax(1)
    p_adv = torch.randn(b, m, generator=g, dtype=torch.float64).softmax(1)
    return z, z_adv, p, p_adv


@pytest.mark.parametrize("dx", ["cos", "l2"])
@pytest.mark.parametrize("dy", ["kl", "l1"])
def test_ground_cost_matches_direct_formula(dx, dy):
    z, z_adv, p, p_adv = _random_problem(0)
    lam = 0.7
    cost = ground_cost(z, z_adv, p, p_adv, dx=dx, dy=dy, lam=lam)
    expected = np.zeros((len(z), len(z_adv)))
    for i in range(len(z)):
        for j in range(len(z_adv)):
            a, b = z[i].numpy(), z_adv[j].numpy()
            d_x = 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b) if dx == "cos" else np.linalg.norm(a - b)
            pi, pj = p[i].numpy(), p_adv[j].numpy()
            d_y = np.sum(pi * (np.log(pi) - np.log(pj))) if dy == "kl" else np.abs(pi - pj).sum()
            expected[i, j] = lam * d_x + d_y
    assert cost.shape == (len(z), len(z_adv))
    assert np.allclose(cost.double().numpy(), expected, atol=1e-5)


def test_ground_cost_is_zero_on_identical_pairs():
    z, _, p, _ = _random_problem(1)
    assert torch.allclose(ground_cost(z, z, p, p).diagonal(), torch.zeros(len(z), dtype=z.dtype), atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_sinkhorn_matches_numpy_pot(seed):
    rng = np.random.default_rng(seed)
    n, theta = 12, 0.1
    cost = rng.uniform(0, 2, (n, n))
    a = b = np.full(n, 1 / n)
    plan = pot.sinkhorn(a, b, cost, theta, method="sinkhorn_log", numItermax=10_000, stopThr=1e-12)
    nz = plan > 0
    expected = (plan * cost).sum() + theta * (plan[nz] * np.log(plan[nz] / np.outer(a, b)[nz])).sum()
    got = sinkhorn_ot(torch.tensor(cost), theta, max_iter=10_000, tol=1e-12)
    assert abs(float(got) - expected) / abs(expected) <= 1e-4


def test_sinkhorn_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    n, theta, h = 6, 0.5, 1e-5
    cost = torch.tensor(rng.uniform(0, 1, (n, n)), requires_grad=True)
    sinkhorn_ot(cost, theta, max_iter=10_000, tol=1e-13).backward()
    for i, j in [(0, 0), (1, 3), (5, 2)]:
        plus, minus = cost.detach().clone(), cost.detach().clone()
        plus[i, j] += h
        minus[i, j] -= h
        fd = (float(sinkhorn_ot(plus, theta, max_iter=10_000, tol=1e-13))
              - float(sinkhorn_ot(minus, theta, max_iter=10_000, tol=1e-13))) / (2 * h)
        assert abs(float(cost.grad[i, j]) - fd) < 1e-6


def _maximise_free_potential(cost, theta, mask=None, iters=3000):
    phi = torch.zeros(cost.shape[0], dtype=cost.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([phi], lr=1, max_iter=iters, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -semidual_ot(phi, cost, theta, mask).double()
        loss.backward()
        return loss

    opt.step(closure)
    return float(semidual_ot(phi.detach(), cost, theta, mask))


@pytest.mark.parametrize("seed", range(3))
def test_semidual_with_free_potential_equals_regularised_primal(seed):
    rng = np.random.default_rng(seed)
    n, theta = 10, 0.1
    cost = torch.tensor(rng.uniform(0, 1, (n, n)))
    dual = _maximise_free_potential(cost, theta)
    a = np.full(n, 1 / n)
    plan = pot.sinkhorn(a, a, cost.numpy(), theta, method="sinkhorn_log", numItermax=20_000, stopThr=1e-13)
    primal = (plan * cost.numpy()).sum() + theta * (plan * np.log(plan / np.outer(a, a))).sum()
    assert abs(dual - primal) / abs(primal) <= 1e-3


def test_linear_potential_gives_no_larger_value_than_free_potential():
    torch.manual_seed(0)
    z, z_adv, p, p_adv = (t.float() for t in _random_problem(3, b=10))
    cost = ground_cost(z, z_adv, p, p_adv)
    best_free = _maximise_free_potential(cost.double(), 0.1)
    reg = GOTRegularizer(z.shape[1], variant="s")
    opt = torch.optim.Adam(reg.potential_parameters(), lr=0.05, maximize=True)
    logits, logits_adv = p.log(), p_adv.log()
    for _ in range(300):
        opt.zero_grad()
        w = reg(z, z_adv, logits, logits_adv)
        w.backward()
        opt.step()
    assert float(reg(z, z_adv, logits, logits_adv).detach()) <= best_free + 1e-5


def test_label_matching_differs_from_standard_only_when_labels_differ():
    z, z_adv, p, p_adv = (t.float() for t in _random_problem(4))
    logits, logits_adv = p.log(), p_adv.log()
    s = GOTRegularizer(z.shape[1], variant="s")
    lm = GOTRegularizer(z.shape[1], variant="lm")
    mixed = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    same = torch.zeros(8, dtype=torch.long)
    assert not torch.allclose(s(z, z_adv, logits, logits_adv, mixed), lm(z, z_adv, logits, logits_adv, mixed))
    assert torch.allclose(s(z, z_adv, logits, logits_adv, same), lm(z, z_adv, logits, logits_adv, same))
    sk_s = GOTRegularizer(z.shape[1], variant="s", solver="sinkhorn")
    sk_lm = GOTRegularizer(z.shape[1], variant="lm", solver="sinkhorn")
    assert not torch.allclose(sk_s(z, z_adv, logits, logits_adv, mixed), sk_lm(z, z_adv, logits, logits_adv, mixed))
    assert torch.allclose(sk_s(z, z_adv, logits, logits_adv, same), sk_lm(z, z_adv, logits, logits_adv, same),
                          atol=1e-5)


def test_label_mask_keeps_the_diagonal():
    y = torch.tensor([3, 1, 3, 0])
    mask = label_mask(y, y)
    assert mask.diagonal().all()
    assert int(mask.sum()) == 4 + 2


@pytest.mark.parametrize("seed", range(4))
def test_proposition_3_1_exact_ot(seed):
    """W_d(Q_d^h, Q_a^h) >= lam * W_dx(Q_d, Q_a) for exact OT (d = lam*d_x + d_y, d_y >= 0)."""
    z, z_adv, p, p_adv = _random_problem(seed, b=9)
    lam = 2.0
    a = np.full(9, 1 / 9)
    full = pot.emd2(a, a, ground_cost(z, z_adv, p, p_adv, lam=lam).double().numpy())
    latent_only = pot.emd2(a, a, (1 - torch.nn.functional.normalize(z, dim=1)
                                  @ torch.nn.functional.normalize(z_adv, dim=1).T).numpy())
    assert full >= lam * latent_only - 1e-9


def test_regularizer_runs_in_float32_under_autocast():
    z, z_adv, p, p_adv = (t.float() for t in _random_problem(5))
    reg = GOTRegularizer(z.shape[1], theta=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = reg(z.bfloat16() * 1e3, z_adv.bfloat16() * 1e3, (p.log() * 50).bfloat16(), p_adv.log().bfloat16(),
                torch.zeros(8, dtype=torch.long))
    assert w.dtype == torch.float32
    assert torch.isfinite(w)


def test_gradient_reaches_the_model_through_the_cost_and_optionally_phi():
    z, z_adv, p, p_adv = (t.float() for t in _random_problem(6))
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    for phi_grad in (False, True):
        reg = GOTRegularizer(z.shape[1], phi_grad=phi_grad)
        torch.nn.init.normal_(reg.phi.weight)
        zz = z.clone().requires_grad_(True)
        reg(zz, z_adv, p.log(), p_adv.log(), y).backward()
        assert zz.grad is not None and zz.grad.abs().sum() > 0
        assert reg.phi.weight.grad.abs().sum() > 0
