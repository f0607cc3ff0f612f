"""ℓ∞ / ℓ2 evasion attacks with one call shape: ``attack(model, x, y, ...) -> x_adv``.

Inputs are images in [0, 1]; every result stays inside the ε-ball and [0, 1]. ``y`` is whatever
labels the caller passes: the true labels by default everywhere in otrobust.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from otrobust.errors import OtrobustError

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw", "dlr")


@contextmanager
def bn_mode(model: nn.Module, mode: str = "eval"):
    """Put the model in ``eval`` or ``train`` mode for the block, then restore every module's flag."""
    if mode not in ("eval", "train"):
        raise OtrobustError(f"unknown batch-norm mode {mode!r}; use 'eval' or 'train'")
    saved = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Project ``x_adv`` onto the ε-ball around ``x`` (ℓ∞ or ℓ2, per example) intersected with [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
        delta = delta * (eps / norms).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return x + torch.empty_like(x).uniform_(-eps, eps)
    noise = torch.randn_like(x)
    noise = noise / noise.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1))
    radius = torch.rand(len(x), device=x.device).view(-1, *[1] * (x.ndim - 1))
    return x + eps * radius * noise


def _ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return x_adv + step_size * grad.sign()
    g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
    return x_adv + step_size * grad / g_norm


def margin_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Per-example attack loss (B,) to maximise: ``ce``, ``cw`` (max other logit − true logit), or ``dlr``
    (Croce & Hein 2020: the CW margin divided by ``z_π1 − z_π3``, scale-invariant)."""
    if kind == "ce":
        return F.cross_entropy(logits.float(), y, reduction="none")
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    if kind == "cw":
        return other - true
    if kind == "dlr":
        top = logits.sort(dim=1, descending=True).values
        return (other - true) / (top[:, 0] - top[:, 2] + 1e-12)
    raise OtrobustError(f"unknown attack loss {kind!r}; choose one of: {', '.join(LOSSES)}")


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Single-step attack (Goodfellow et al. 2015): one step of size ε along the gradient's sign."""
    x_adv = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_adv).float(), y)
    (grad,) = torch.autograd.grad(loss, x_adv)
    return project(_ascent_step(x.detach(), grad, eps, norm), x, eps, norm).detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
        restarts: int = 1, random_start: bool = True, loss: str = "ce", norm: str = "linf",
        track_best: bool = True) -> torch.Tensor:
    """Projected gradient ascent (Madry et al. 2018) on ``loss`` within the ε-ball.

    With ``track_best`` (evaluation), an example counts as broken if *any* iterate of *any* restart
    misclassified it, and that iterate is returned; without it (training), the last iterate.
    x: (B, C, H, W) in [0, 1]; y: (B,) labels to move away from -> x_adv like x.
    """
    if norm not in NORMS:
        raise OtrobustError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    x = x.detach()
    best = x.clone()
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(max(1, restarts)):
        x_adv = project(_random_start(x, eps, norm), x, eps, norm) if random_start else x.clone()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            if track_best:
                fooled = logits.detach().argmax(1) != y
                best = torch.where((fooled & ~broken).view(-1, *[1] * (x.ndim - 1)), x_adv.detach(), best)
                broken |= fooled
            (grad,) = torch.autograd.grad(margin_loss(logits, y, loss).sum(), x_adv)
            x_adv = project(_ascent_step(x_adv.detach(), grad, step_size, norm), x, eps, norm)
        if not track_best:
            return x_adv.detach()
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) != y
        best = torch.where((fooled & ~broken).view(-1, *[1] * (x.ndim - 1)), x_adv, best)
        # Unbroken examples keep the last iterate (a valid point in the ball), not the clean input.
        best = torch.where((~broken & ~fooled).view(-1, *[1] * (x.ndim - 1)), x_adv, best)
        broken |= fooled
    return best.detach()


def trades_adversary(model: nn.Module, x: torch.Tensor, eps: float, step_size: float, steps: int,
                     p_clean: torch.Tensor | None = None, norm: str = "linf") -> torch.Tensor:
    """TRADES inner maximisation (Zhang et al. 2019): maximise ``KL(f(x) ‖ f(x'))`` from ``x + 0.001·N(0, I)``.

    p_clean: (B, M) clean probabilities if already computed (saves a forward pass).
    """
    x = x.detach()
    if p_clean is None:
        with torch.no_grad():
            p_clean = model(x).float().softmax(1)
    p_clean = p_clean.detach()
    x_adv = project(x + 0.001 * torch.randn_like(x), x, eps, norm)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        log_p_adv = model(x_adv).float().log_softmax(1)
        kl = F.kl_div(log_p_adv, p_clean, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = project(_ascent_step(x_adv.detach(), grad, step_size, norm), x, eps, norm)
    return x_adv.detach()
