r"""The GOT optimal-transport regulariser (docs/method.md §1), as plain functions and one module.

Notation follows the paper: benign latents ``z_i`` and predictions ``p_i`` (rows, ``i = 1..B``),
adversarial ``z^a_j``, ``p^a_j`` (columns), ground cost ``C_ij``, entropic regularisation ``θ``
(``theta``), latent weight ``λ`` (``lam``). All OT arithmetic runs in float32, outside autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from otrobust.errors import OtrobustError

DX_CHOICES = ("cos", "l2")
DY_CHOICES = ("kl", "l1")
VARIANTS = ("s", "lm")
SOLVERS = ("semidual", "sinkhorn")
_MASKED_COST = 1e4  # added to cross-label costs for the Sinkhorn LM variant: exp(-1e4/θ) is exactly 0


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32; keep float64 (tests use it for finite differences)."""
    return t if t.dtype == torch.float64 else t.float()


def latent_distance(z: torch.Tensor, z_adv: torch.Tensor, dx: str = "cos") -> torch.Tensor:
    r"""Pairwise latent distance ``d_x(z_i, z^a_j)``: ``cos`` = ``1 − cos(z_i, z^a_j)``, ``l2`` = ``‖z_i − z^a_j‖₂``.

    z: (B, D), z_adv: (B_adv, D) -> (B, B_adv).
    """
    if dx == "cos":
        return 1.0 - F.normalize(z, dim=1) @ F.normalize(z_adv, dim=1).T
    if dx == "l2":
        sq = (z * z).sum(1, keepdim=True) + (z_adv * z_adv).sum(1)[None, :] - 2.0 * z @ z_adv.T
        return sq.clamp_min(1e-12).sqrt()  # clamp: the gradient of sqrt at 0 is infinite
    raise OtrobustError(f"unknown latent distance dx={dx!r}; choose one of: {', '.join(DX_CHOICES)}")


def label_distance(p: torch.Tensor, p_adv: torch.Tensor, dy: str = "kl") -> torch.Tensor:
    r"""Pairwise prediction distance ``d_y(p_i, p^a_j)``: ``kl`` = ``Σ_k p_ik (log p_ik − log p^a_jk)``, ``l1``.

    p: (B, M), p_adv: (B_adv, M), probability vectors -> (B, B_adv).
    """
    if dy == "kl":
        # p·log(max(p, 1e-30)), not xlogy(p, p): same value, but xlogy's gradient log(p) + 1 is -inf where a
        # softmax underflows to 0 (a logit gap over ~100 in float32), and times the softmax Jacobian it is NaN.
        neg_entropy = (p * p.clamp_min(1e-30).log()).sum(1, keepdim=True)
        return neg_entropy - p @ p_adv.clamp_min(1e-30).log().T
    if dy == "l1":
        return torch.cdist(p[None], p_adv[None], p=1)[0]
    raise OtrobustError(f"unknown label distance dy={dy!r}; choose one of: {', '.join(DY_CHOICES)}")


def ground_cost(z: torch.Tensor, z_adv: torch.Tensor, p: torch.Tensor, p_adv: torch.Tensor,
                dx: str = "cos", dy: str = "kl", lam: float = 1.0) -> torch.Tensor:
    r"""Ground cost ``C_ij = λ · d_x(z_i, z^a_j) + d_y(p_i, p^a_j)``.

    z: (B, D), z_adv: (B_adv, D), p: (B, M), p_adv: (B_adv, M) -> cost (B, B_adv), float32.

    Examples:
        A point and itself cost nothing; orthogonal latents with equal predictions cost ``λ · 1``:

        >>> z = torch.eye(2); p = torch.full((2, 3), 1 / 3)
        >>> ground_cost(z, z, p, p, lam=2.0)
        tensor([[0., 2.],
                [2., 0.]])
    """
    z, z_adv, p, p_adv = (_at_least_float32(t) for t in (z, z_adv, p, p_adv))
    return lam * latent_distance(z, z_adv, dx) + label_distance(p, p_adv, dy)


def label_mask(y: torch.Tensor, y_adv: torch.Tensor) -> torch.Tensor:
    """``1[y_i = y_j]`` as a bool matrix (B, B_adv): the LM variant's admissible pairs.

    Examples:
        >>> label_mask(torch.tensor([0, 1, 0]), torch.tensor([0, 1]))
        tensor([[ True, False],
                [False,  True],
                [ True, False]])
    """
    return y[:, None] == y_adv[None, :]


def semidual_ot(phi: torch.Tensor, cost: torch.Tensor, theta: float = 0.1,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""The paper's semi-dual entropic OT objective for a given potential (Genevay et al. 2016).

    ``W = (1/B) Σ_j −θ · log( (1/B) Σ_i m_ij · exp((φ_i − C_ij)/θ) ) + (1/B) Σ_i φ_i``

    phi: (B,) potential at the benign points; cost: (B, B_adv); mask: optional bool (B, B_adv),
    ``m_ij`` (LM variant), every column must hold a True. Maximised over ``phi`` it equals the
    regularised primal ``min_P <P, C> + θ·KL(P ‖ a⊗b)`` with uniform marginals. Returns a scalar.

    Examples:
        Under a constant cost every plan costs ``c`` and the independent plan has no KL, so ``W = c``; the
        zero potential (where training starts) already attains it, and so does :func:`sinkhorn_ot`:

        >>> cost = torch.full((3, 3), 0.5)
        >>> semidual_ot(torch.zeros(3), cost, theta=0.1)
        tensor(0.5000)
        >>> sinkhorn_ot(cost, theta=0.1)
        tensor(0.5000)

        Any other potential gives a lower bound (the potential is trained to maximise it):

        >>> bool(semidual_ot(torch.tensor([0.3, -0.1, 0.0]), cost) <= 0.5)
        True
    """
    phi, cost = _at_least_float32(phi), _at_least_float32(cost)
    n_benign = cost.shape[0]
    scores = (phi[:, None] - cost) / theta
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    inner = torch.logsumexp(scores, dim=0) - math.log(n_benign)
    return (-theta * inner).mean() + phi.mean()


def sinkhorn_ot(cost: torch.Tensor, theta: float = 0.1, mask: torch.Tensor | None = None,
                max_iter: int = 1000, tol: float = 1e-6) -> torch.Tensor:
    r"""Exact mini-batch entropic OT with uniform marginals, solved by POT's log-domain Sinkhorn.

    Returns ``<P*, C> + θ·KL(P* ‖ a⊗b)`` (the same quantity the semi-dual estimates). The gradient
    w.r.t. ``cost`` is the optimal plan ``P*`` (envelope theorem), so no gradient flows through the
    iterations. cost: (B, B_adv); mask: optional bool (B, B_adv), pairs outside it are forbidden.
    """
    import ot  # POT; imported here so that the semi-dual path does not pay for it

    cost = _at_least_float32(cost)
    if mask is not None:
        cost = cost + _MASKED_COST * (~mask).to(cost.dtype)
    a = torch.full((cost.shape[0],), 1.0 / cost.shape[0], dtype=cost.dtype, device=cost.device)
    b = torch.full((cost.shape[1],), 1.0 / cost.shape[1], dtype=cost.dtype, device=cost.device)
    res = ot.solve(cost, a, b, reg=theta, reg_type="KL", method="sinkhorn_log", max_iter=max_iter,
                   tol=tol, grad="envelope")
    return res.value


class GOTRegularizer(nn.Module):
    r"""The GOT term ``W_θ`` between benign and adversarial ``(z, p)``, owning the potential ``φ``.

    ``φ(z) = w·z + b`` is a linear layer on the benign latent (zero-initialised, so training starts
    from the soft-min cost). The min–max: the model *minimises* ``base + β·W``, ``φ`` *maximises* ``W``.
    Both get their gradients from the same backward pass; the training loop steps ``φ``'s own
    optimiser with ``maximize=True`` (see :meth:`potential_parameters`).

    Args:
        latent_dim: D, size of ``z``.
        variant: ``"s"`` (all pairs) or ``"lm"`` (label matching: only pairs with ``y_i = y_j``).
        solver: ``"semidual"`` (the paper's learned potential) or ``"sinkhorn"`` (exact, no parameters).
        theta: θ, the entropic regularisation (docs/method.md §1).
        lam: λ, the weight of the latent distance in the ground cost.
        dx: the latent distance, ``"cos"`` or ``"l2"``.
        dy: the prediction distance, ``"kl"`` or ``"l1"``.
        phi_grad: let the model's gradient flow through ``φ(z_i)`` (as the paper). False (the default, as
            ``TrainConfig.phi_grad``): the potential sees ``z`` detached and the model is reached through the
            cost only.

    Examples:
        >>> reg = GOTRegularizer(latent_dim=4, variant="lm")
        >>> z, logits, y = torch.randn(6, 4), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> w = reg(z, z + 0.1, logits, logits, y)          # a scalar: add beta * w to the loss
        >>> w.shape, [p.shape for p in reg.potential_parameters()]
        (torch.Size([]), [torch.Size([1, 4]), torch.Size([1])])
    """

    def __init__(self, latent_dim: int, variant: str = "lm", solver: str = "semidual", theta: float = 0.1,
                 lam: float = 1.0, dx: str = "cos", dy: str = "kl", phi_grad: bool = False):
        super().__init__()
        for name, value, choices in (("variant", variant, VARIANTS), ("solver", solver, SOLVERS),
                                     ("dx", dx, DX_CHOICES), ("dy", dy, DY_CHOICES)):
            if value not in choices:
                raise OtrobustError(f"unknown OT {name} {value!r}; choose one of: {', '.join(choices)}")
        if not theta > 0:
            raise OtrobustError(f"OT theta must be positive, got {theta}")
        self.variant, self.solver, self.theta, self.lam = variant, solver, theta, lam
        self.dx, self.dy, self.phi_grad = dx, dy, phi_grad
        self.phi = nn.Linear(latent_dim, 1) if solver == "semidual" else None
        if self.phi is not None:
            nn.init.zeros_(self.phi.weight)
            nn.init.zeros_(self.phi.bias)

    def potential_parameters(self) -> list[nn.Parameter]:
        """The parameters the training loop must *maximise* ``W`` over (empty for Sinkhorn)."""
        return list(self.phi.parameters()) if self.phi is not None else []

    def forward(self, z: torch.Tensor, z_adv: torch.Tensor, logits: torch.Tensor, logits_adv: torch.Tensor,
                y: torch.Tensor | None = None, y_adv: torch.Tensor | None = None) -> torch.Tensor:
        """``W_θ`` (scalar). z: (B, D), z_adv: (B_adv, D), logits: (B, M), logits_adv: (B_adv, M), y: (B,)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            z, z_adv = z.float(), z_adv.float()
            p, p_adv = logits.float().softmax(1), logits_adv.float().softmax(1)
            cost = ground_cost(z, z_adv, p, p_adv, self.dx, self.dy, self.lam)
            mask = None
            if self.variant == "lm":
                if y is None:
                    raise OtrobustError("the label-matching (lm) OT variant needs the labels y")
                mask = label_mask(y, y if y_adv is None else y_adv)
            if self.solver == "sinkhorn":
                return sinkhorn_ot(cost, self.theta, mask)
            phi = self.phi(z if self.phi_grad else z.detach()).squeeze(1)
            return semidual_ot(phi, cost, self.theta, mask)
