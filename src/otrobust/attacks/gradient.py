"""ℓ∞ / ℓ2 evasion attacks with one call shape: ``attack(model, x, y, ...) -> x_adv``.

Inputs are images in [0, 1]; every result stays inside the ε-ball and [0, 1]. ``y`` is whatever
labels the caller passes: the true labels by default everywhere in otrobust.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from otrobust.attacks._pieces import T, attack_chunk, attack_workers, map_pieces
from otrobust.errors import NoInputGradient, OtrobustError

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw", "dlr")


def _attack_in_pieces(model: nn.Module, x: torch.Tensor, attack: Callable[[slice], T], chunk: int | None,
                      workers: int | None) -> list[T]:
    """``attack(rows)`` on every piece of the batch ``x`` (``chunk`` and ``workers`` as in :func:`pgd`, resolved
    by device), with the model's weights out of autograd."""
    workers = attack_workers(workers, x)
    with frozen_parameters(model):
        return map_pieces(attack, len(x), attack_chunk(chunk, x, workers), workers)


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


@contextmanager
def frozen_parameters(model: nn.Module):
    """Take the model's parameters out of autograd for the block (their flags are restored after).

    An attack needs gradients w.r.t. its input only, so the weights' side of each step's graph is not
    recorded. No value changes (the same kernels compute the same input gradients); the time saved is
    small (1.02-1.08x per PGD step for the CW CNN on CPU, benchmarks/speed_options.py).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


class ExpectedLogits(nn.Module):
    """Expectation over transformation (EOT, Athalye et al. 2018): the mean logits of ``draws`` forwards of a
    randomised ``model``, so that a gradient attack follows the expected gradient rather than one draw's."""

    def __init__(self, model: nn.Module, draws: int):
        super().__init__()
        self.model, self.draws = model, draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x) for _ in range(self.draws)]).mean(0)


def with_eot(attack: Callable, draws: int) -> Callable:
    """``attack`` run against :class:`ExpectedLogits` of the model it is given."""
    return lambda model, x, y: attack(ExpectedLogits(model, draws), x, y)


def default_step_size(eps: float, steps: int) -> float:
    """The PGD step when none is given: ``2.5 · ε / steps`` (Madry et al.), so that ``steps`` steps can cross the
    ε-ball from its centre to its edge and back; ``steps`` = 0 is treated as 1.

    Examples:
        >>> default_step_size(8 / 255, 10) * 255     # PGD-10 at 8/255 steps by 2/255
        2.0
    """
    return 2.5 * eps / max(steps, 1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Project ``x_adv`` onto the ε-ball around ``x`` (ℓ∞ or ℓ2, per example) intersected with [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
        delta = delta * (eps / norms).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _whole_batch(x: torch.Tensor, shard: tuple[int, int] | None) -> tuple[torch.Tensor, slice]:
    """An uninitialised tensor shaped like the whole batch ``x`` is a shard of, and the rows of ``x`` in it.

    shard = (first row, rows in the whole batch), or None when ``x`` is the whole batch. Random starts are drawn
    for the whole batch and sliced, so every process of a data-parallel run draws exactly the numbers a single
    process would have drawn for its rows.
    """
    if shard is None:
        return torch.empty_like(x), slice(None)
    start, total = shard
    if not 0 <= start <= total - len(x):
        raise OtrobustError(f"shard {shard} does not hold the {len(x)} rows of this batch")
    fmt = torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    whole = torch.empty((total, *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=fmt)
    return whole, slice(start, start + len(x))


def _random_start(x: torch.Tensor, eps: float, norm: str, shard: tuple[int, int] | None = None) -> torch.Tensor:
    whole, rows = _whole_batch(x, shard)
    if norm == "linf":
        return x + whole.uniform_(-eps, eps)[rows]
    noise = whole.normal_()[rows]
    noise = noise / noise.flatten(1).norm(dim=1).view(-1, *[1] * (x.ndim - 1))
    radius = torch.rand(len(whole), device=x.device)[rows].view(-1, *[1] * (x.ndim - 1))
    return x + eps * radius * noise


def _ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return x_adv + step_size * grad.sign()
    g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
    return x_adv + step_size * grad / g_norm


def _step_and_project_(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, step_size: float, eps: float,
                       norm: str) -> torch.Tensor:
    """``project(_ascent_step(x_adv, grad, step_size, norm), x, eps, norm)`` computed in place in ``x_adv`` (and
    ``grad``), with the same arithmetic in the same order: the result is bit-identical, but an attack step
    allocates no image-sized buffers and launches fewer kernels. Both tensors must be the caller's to overwrite.
    """
    if any(stride == 0 and size > 1 for stride, size in zip(grad.stride(), grad.shape, strict=True)):
        grad = grad.clone()  # autograd may hand back a broadcast (stride-0) view, which cannot be written in place
    if norm == "linf":
        x_adv.add_(grad.sign_(), alpha=step_size)
    else:
        g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
        x_adv.add_(grad.mul_(step_size).div_(g_norm))
    delta = x_adv.sub_(x)
    if norm == "linf":
        delta.clamp_(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.ndim - 1))
        delta.mul_((eps / norms).clamp(max=1.0))
    return delta.add_(x).clamp_(0.0, 1.0)


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
        if logits.shape[1] < 3:
            raise OtrobustError(f"the dlr loss needs at least 3 classes, the model has {logits.shape[1]}; use cw")
        top = logits.sort(dim=1, descending=True).values
        return (other - true) / (top[:, 0] - top[:, 2] + 1e-12)
    raise OtrobustError(f"unknown attack loss {kind!r}; choose one of: {', '.join(LOSSES)}")


NO_GRADIENT = ("the model gives no input gradient: its output does not depend on the input in the autograd graph "
               "(its forward detaches the input, or runs under no_grad), so a gradient attack cannot move it and "
               "an accuracy under one would mean nothing; run otrobust audit on it, or attack it with square "
               "(black box)")


def input_gradient(value: torch.Tensor, x: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
    """The gradient of ``value.sum()`` with respect to ``x`` (an attack's ascent direction), like ``x``.

    Raises NoInputGradient when the model cut ``x`` out of the graph: autograd's own errors there ("does not
    require grad", "not used in the graph") would name neither the model nor the cause."""
    grad = (torch.autograd.grad(value.sum(), x, retain_graph=retain_graph, allow_unused=True)[0]
            if value.requires_grad else None)
    if grad is None:
        raise NoInputGradient(NO_GRADIENT)
    return grad


def require_input_gradient(model: nn.Module, x: torch.Tensor) -> None:
    """Raise NoInputGradient unless ``model``'s output on (the first image of) ``x`` has a gradient path to it:
    a cheap probe for attacks whose gradient steps run in code that is not otrobust's (AutoAttack)."""
    probe = x[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        input_gradient(model(probe).float(), probe)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Single-step attack (Goodfellow et al. 2015): one step of size ε along the gradient's sign."""
    x_adv = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_adv).float(), y)
    grad = input_gradient(loss, x_adv)
    return project(_ascent_step(x.detach(), grad, eps, norm), x, eps, norm).detach()


SCHEDULES = ("constant", "cosine", "step")


def step_sizes(step_size: float, steps: int, schedule: str = "constant") -> list[float]:
    """The step size of each of ``steps`` iterations: ``constant``; ``cosine`` (η·½(1 + cos πt/T), floored at
    η/10 so the last steps still move); ``step`` (η, then η/10 after half the steps, η/100 after three quarters)."""
    if schedule not in SCHEDULES:
        raise OtrobustError(f"unknown step-size schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return [step_size] * steps
    if schedule == "cosine":
        return [max(0.1, 0.5 * (1 + math.cos(math.pi * t / steps))) * step_size for t in range(steps)]
    return [step_size * (1.0 if t < steps / 2 else 0.1 if t < 3 * steps / 4 else 0.01) for t in range(steps)]


class PGDResult(NamedTuple):
    """What a PGD run leaves behind: the returned points and the attack loss along the way.

    x_adv: like x; loss: (restarts, steps + 1, B) float32, the per-example attack loss at every iterate
    (the random start first, the final iterate last), non-finite values kept as they came.
    """

    x_adv: torch.Tensor
    loss: torch.Tensor


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
        restarts: int = 1, random_start: bool = True, loss: str = "ce", norm: str = "linf",
        track_best: bool = True, schedule: str = "constant", shard: tuple[int, int] | None = None,
        chunk: int | None = None, workers: int | None = None) -> torch.Tensor:
    """Projected gradient ascent (Madry et al. 2018) on ``loss`` (``ce``, ``cw`` or ``dlr``) within the ε-ball.

    With ``track_best`` (evaluation), an example counts as broken if *any* iterate of *any* restart
    misclassified it, and that iterate is returned; without it (training), the last iterate.
    ``schedule`` shapes the step size over the iterations (see :func:`step_sizes`). ``shard = (first row,
    whole batch size)`` marks ``x`` as rows of a larger batch split across processes: the random start is
    drawn for the whole batch and sliced, so the result matches a single process attacking the whole batch.
    ``chunk``: images per piece, see :func:`attack_chunk` (random starts are drawn for the whole batch first);
    ``workers``: pieces attacked at the same time, see :func:`attack_workers`.
    x: (B, C, H, W) in [0, 1]; y: (B,) labels to move away from -> x_adv like x.
    """
    if not track_best:
        return _pgd(model, x, y, eps, step_size, steps, restarts, random_start, loss, norm, False, schedule,
                    trace=False, shard=shard, chunk=chunk, workers=workers).x_adv
    if shard is not None:
        raise OtrobustError("pgd(shard=...) is for training (track_best=False)")
    return pgd_trace(model, x, y, eps, step_size, steps, restarts=restarts, random_start=random_start,
                     loss=loss, norm=norm, schedule=schedule, chunk=chunk, workers=workers).x_adv


def pgd_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
              restarts: int = 1, random_start: bool = True, loss: str = "ce", norm: str = "linf",
              schedule: str = "constant", chunk: int | None = None, workers: int | None = None) -> PGDResult:
    """:func:`pgd` with best-so-far tracking that also returns the attack loss at every iterate (for audits)."""
    return _pgd(model, x, y, eps, step_size, steps, restarts, random_start, loss, norm, True, schedule, trace=True,
                chunk=chunk, workers=workers)


def _pgd(model, x, y, eps, step_size, steps, restarts, random_start, loss, norm, track_best, schedule,
         trace: bool, shard: tuple[int, int] | None = None, chunk: int | None = None,
         workers: int | None = None) -> PGDResult:
    if norm not in NORMS:
        raise OtrobustError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    sizes = step_sizes(step_size, steps, schedule)
    x = x.detach()
    # Every restart's start is drawn for the whole batch before any piece runs, so the random numbers (and
    # the attack) do not depend on the pieces.
    starts = [project(_random_start(x, eps, norm, shard), x, eps, norm) if random_start else x.clone()
              for _ in range(max(1, restarts))]
    parts = _attack_in_pieces(model, x, lambda rows: _pgd_steps(model, x[rows], y[rows], [s[rows] for s in starts],
                                                                sizes, eps, loss, norm, track_best, trace),
                              chunk, workers)
    if len(parts) == 1:
        return parts[0]
    return PGDResult(torch.cat([p.x_adv for p in parts]),
                     torch.cat([p.loss for p in parts], dim=2) if trace else torch.empty(0))


def _pgd_steps(model, x, y, starts, sizes, eps, loss, norm, track_best, trace: bool) -> PGDResult:
    # Everything below stays on the device: no .item(), no Python branching on tensor values, so the
    # step loop never waits for the accelerator.
    shape = (-1, *[1] * (x.ndim - 1))
    best = x.clone()
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    history: list[torch.Tensor] = []
    for start in starts:
        x_adv = start.clone()
        for size in sizes:
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            if track_best:
                fooled = logits.detach().argmax(1) != y
                best = torch.where((fooled & ~broken).view(shape), x_adv.detach(), best)
                broken |= fooled
            value = margin_loss(logits, y, loss)
            if trace:
                history.append(value.detach())
            grad = input_gradient(value, x_adv)
            x_adv = _step_and_project_(x_adv.detach(), grad, x, size, eps, norm)
        if not track_best:
            return PGDResult(x_adv.detach(), torch.empty(0))
        with torch.no_grad():
            logits = model(x_adv)
            fooled = logits.argmax(1) != y
            if trace:
                history.append(margin_loss(logits, y, loss))
        best = torch.where((fooled & ~broken).view(shape), x_adv, best)
        # Unbroken examples keep the last iterate (a valid point in the ball), not the clean input.
        best = torch.where((~broken & ~fooled).view(shape), x_adv, best)
        broken |= fooled
    losses = torch.stack(history).view(len(starts), len(sizes) + 1, len(x)) if trace else torch.empty(0)
    return PGDResult(best.detach(), losses)


def trades_adversary(model: nn.Module, x: torch.Tensor, eps: float, step_size: float, steps: int,
                     p_clean: torch.Tensor | None = None, norm: str = "linf",
                     shard: tuple[int, int] | None = None, chunk: int | None = None,
                     workers: int | None = None) -> torch.Tensor:
    """TRADES inner maximisation (Zhang et al. 2019): maximise ``KL(f(x) ‖ f(x'))`` from ``x + 0.001·N(0, I)``.

    p_clean: (B, M) clean probabilities if already computed (saves a forward pass); shard, chunk, workers: as in
    :func:`pgd`.
    """
    x = x.detach()
    p_clean = p_clean.detach() if p_clean is not None else None
    whole, rows = _whole_batch(x, shard)
    start = project(x + 0.001 * whole.normal_()[rows], x, eps, norm)

    def attack(piece: slice) -> torch.Tensor:
        x_adv, x_piece = start[piece].clone(), x[piece]
        if p_clean is None:
            with torch.no_grad():
                p_piece = model(x_piece).float().softmax(1)
        else:
            p_piece = p_clean[piece]
        for _ in range(steps):
            x_adv.requires_grad_(True)
            log_p_adv = model(x_adv).float().log_softmax(1)
            kl = F.kl_div(log_p_adv, p_piece, reduction="sum")
            grad = input_gradient(kl, x_adv)
            x_adv = _step_and_project_(x_adv.detach(), grad, x_piece, step_size, eps, norm)
        return x_adv.detach()

    parts = _attack_in_pieces(model, x, attack, chunk, workers)
    return parts[0] if len(parts) == 1 else torch.cat(parts)
