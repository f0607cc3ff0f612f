"""ℓ∞ / ℓ2 evasion attacks with one call shape: ``attack(model, x, y, ...) -> x_adv``.

Inputs are images in [0, 1]; every result stays inside the ε-ball and [0, 1]. ``y`` is whatever
labels the caller passes: the true labels by default everywhere in otrobust.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from otrobust.attacks._pieces import T, attack_chunk, attack_workers, map_pieces
from otrobust.attacks.norms import Norm, get_norm, whole_batch
from otrobust.errors import NoInputGradient, OtrobustError

LOSSES = ("ce", "cw", "dlr")


def _attack_in_pieces(model: nn.Module, x: torch.Tensor, attack: Callable[[slice], T], chunk: int | None,
                      workers: int | None) -> list[T]:
    """``attack(rows)`` on every piece of the batch ``x`` (``chunk`` and ``workers`` as in :class:`PGD`, resolved
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
    strategy = get_norm(norm)
    x = x.detach()
    x_adv = x.clone().requires_grad_(True)
    grad = input_gradient(F.cross_entropy(model(x_adv).float(), y), x_adv)
    return strategy.step_and_project_(x.clone(), grad, x, eps, eps)


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


class Iterate(NamedTuple):
    """One point of a projected gradient ascent. ``logits`` and ``loss`` (B,) are None at the last point of a run
    (no gradient is taken there). Its tensors are valid until the next iterate is drawn: the step overwrites them."""

    restart: int
    x_adv: torch.Tensor
    logits: torch.Tensor | None
    loss: torch.Tensor | None


def ascent(model: nn.Module, objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
           starts: list[torch.Tensor], sizes: list[float], norm: Norm, eps: float) -> Iterator[Iterate]:
    """Projected gradient ascent on ``objective(logits)`` (per example, (B,), or summed) from each of ``starts``:
    ``x_{t+1} = Π_{B_ε(x) ∩ [0,1]}(x_t + η_t · d(∇ objective))``, d the norm's steepest ascent direction.

    Yields every iterate of every start in order, the start first and the point after the last step last.
    Everything stays on the device: no .item(), no branching on tensor values, so the loop never waits for an
    accelerator.
    """
    for restart, start in enumerate(starts):
        x_adv = start.clone()
        for size in sizes:
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            value = objective(logits)
            yield Iterate(restart, x_adv.detach(), logits.detach(), value.detach())
            grad = input_gradient(value, x_adv)
            x_adv = norm.step_and_project_(x_adv.detach(), grad, x, size, eps)
        yield Iterate(restart, x_adv.detach(), None, None)


class PGDResult(NamedTuple):
    """What a best-iterate PGD run leaves behind: the returned points and the attack loss along the way.

    x_adv: like x; loss: (restarts, steps + 1, B) float32, the per-example attack loss at every iterate
    (the random start first, the final iterate last), non-finite values kept as they came.
    """

    x_adv: torch.Tensor
    loss: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class PGD:
    """Projected gradient descent (Madry et al. 2018): ``steps`` steps of ``step_size`` (η, shaped over the steps
    by ``schedule``, see :func:`step_sizes`) up ``loss`` (``ce``, ``cw`` or ``dlr``, see :func:`margin_loss`) in
    the ``norm`` ball of radius ``eps``, from a uniform random point of the ball (``random_start``) or from x,
    ``restarts`` times. ``chunk``: images per piece (see ``attack_chunk``); ``workers``: pieces attacked at the
    same time (see ``attack_workers``): they change the speed, not the attack.

    Called as ``attack(model, x, y) -> x_adv``, it is the evaluation attack (:func:`best_iterate`); training takes
    :func:`last_iterate`. x: (B, C, H, W) in [0, 1]; y: (B,) labels to move away from.
    """

    eps: float
    step_size: float
    steps: int
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    norm: str = "linf"
    schedule: str = "constant"
    chunk: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        get_norm(self.norm)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return best_iterate(self, model, x, y).x_adv

    def starts(self, x: torch.Tensor, shard: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """Every restart's starting point, drawn for the whole batch before any piece runs, so that the random
        numbers (and the attack) do not depend on the pieces; ``shard`` as in :func:`last_iterate`."""
        norm = get_norm(self.norm)
        return [norm.project_(norm.random_start(x, self.eps, shard), x, self.eps) if self.random_start
                else x.clone() for _ in range(max(1, self.restarts))]

    def iterates(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 starts: list[torch.Tensor]) -> Iterator[Iterate]:
        """This attack's :func:`ascent` on one piece (``x``, ``y`` and ``starts`` the piece's rows)."""
        sizes = step_sizes(self.step_size, self.steps, self.schedule)
        return ascent(model, lambda logits: margin_loss(logits, y, self.loss), x, starts, sizes,
                      get_norm(self.norm), self.eps)


def best_iterate(attack: PGD, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> PGDResult:
    """PGD for evaluation: an example counts as broken if *any* iterate of *any* restart misclassified it, and
    that iterate is returned (an unbroken one gets its last iterate); the loss of every iterate is kept."""
    step_sizes(attack.step_size, attack.steps, attack.schedule)  # a bad schedule fails before any piece runs
    x = x.detach()
    starts = attack.starts(x)
    parts = _attack_in_pieces(model, x, lambda rows: _keep_best(model, attack.iterates(
        model, x[rows], y[rows], [s[rows] for s in starts]), x[rows], y[rows], attack.loss), attack.chunk,
        attack.workers)
    if len(parts) == 1:
        return parts[0]
    return PGDResult(torch.cat([p.x_adv for p in parts]), torch.cat([p.loss for p in parts], dim=2))


def _keep_best(model: nn.Module, iterates: Iterator[Iterate], x: torch.Tensor, y: torch.Tensor,
               loss: str) -> PGDResult:
    shape = (-1, *[1] * (x.ndim - 1))
    best = x.clone()
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    history: list[torch.Tensor] = []
    runs = 0
    for it in iterates:
        if it.logits is None:  # the last point of a run: no gradient was taken, so evaluate it here
            runs += 1
            with torch.no_grad():
                logits = model(it.x_adv)
                fooled = logits.argmax(1) != y
                history.append(margin_loss(logits, y, loss))
            # Every example not broken before takes this point: the breaking iterate if it fools the model, else
            # the last iterate (a valid point in the ball), not the clean input.
            best = torch.where((~broken).view(shape), it.x_adv, best)
            broken |= fooled
            continue
        fooled = it.logits.argmax(1) != y
        best = torch.where((fooled & ~broken).view(shape), it.x_adv, best)
        broken |= fooled
        history.append(it.loss)
    return PGDResult(best.detach(), torch.stack(history).view(runs, len(history) // runs, len(x)))


def last_iterate(attack: PGD, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 shard: tuple[int, int] | None = None) -> torch.Tensor:
    """PGD for training: the last iterate of one run (Madry et al.'s inner maximisation). ``shard = (first row,
    whole batch size)`` marks ``x`` as rows of a larger batch split across processes: the random start is drawn
    for the whole batch and sliced, so the result matches a single process attacking the whole batch."""
    if attack.restarts != 1:
        raise OtrobustError(f"a training attack runs once (restarts = 1), not {attack.restarts} times; restarts "
                            "need the best-iterate attack")
    x = x.detach()
    starts = attack.starts(x, shard)
    parts = _attack_in_pieces(model, x, lambda rows: _last(attack.iterates(
        model, x[rows], y[rows], [s[rows] for s in starts])), attack.chunk, attack.workers)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _last(iterates: Iterator[Iterate]) -> torch.Tensor:
    for it in iterates:
        x_adv = it.x_adv
    return x_adv


@dataclass(frozen=True, kw_only=True)
class TradesAdversary:
    """TRADES inner maximisation (Zhang et al. 2019): maximise ``KL(f(x) ‖ f(x'))`` by ``steps`` steps of
    ``step_size`` in the ``norm`` ball of radius ``eps``, from ``x + 0.001·N(0, I)``; the last iterate.
    ``chunk``, ``workers`` as in :class:`PGD`.

    Called as ``adversary(model, x, p_clean=None, shard=None) -> x_adv``: p_clean (B, M) are the clean
    probabilities if already computed (saves a forward pass); shard as in :func:`last_iterate`.
    """

    eps: float
    step_size: float
    steps: int
    norm: str = "linf"
    chunk: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        get_norm(self.norm)

    def __call__(self, model: nn.Module, x: torch.Tensor, *, p_clean: torch.Tensor | None = None,
                 shard: tuple[int, int] | None = None) -> torch.Tensor:
        norm = get_norm(self.norm)
        x = x.detach()
        p_clean = p_clean.detach() if p_clean is not None else None
        whole, rows = whole_batch(x, shard)
        start = norm.project_(x + 0.001 * whole.normal_()[rows], x, self.eps)

        def attack(piece: slice) -> torch.Tensor:
            x_piece = x[piece]
            if p_clean is None:
                with torch.no_grad():
                    p_piece = model(x_piece).float().softmax(1)
            else:
                p_piece = p_clean[piece]

            def kl(logits: torch.Tensor) -> torch.Tensor:
                return F.kl_div(logits.float().log_softmax(1), p_piece, reduction="sum")

            return _last(ascent(model, kl, x_piece, [start[piece]], [self.step_size] * self.steps, norm, self.eps))

        parts = _attack_in_pieces(model, x, attack, self.chunk, self.workers)
        return parts[0] if len(parts) == 1 else torch.cat(parts)
