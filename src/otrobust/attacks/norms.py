"""The threat model's norm as a small strategy: where an attack starts, how it steps, how it projects.

Each operation is written once, for ℓ∞ (:class:`Linf`) and ℓ2 (:class:`L2`), and works in place on tensors the
caller owns: an attack step then allocates no image-sized buffers. ``project`` is the out-of-place form for
callers that keep their input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from otrobust.errors import OtrobustError


def _per_example(t: torch.Tensor) -> tuple[int, ...]:
    """The shape that broadcasts one value per example over ``t``: (B, 1, 1, ...)."""
    return (-1, *[1] * (t.ndim - 1))


def whole_batch(x: torch.Tensor, shard: tuple[int, int] | None) -> tuple[torch.Tensor, slice]:
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


@dataclass(frozen=True)
class Norm:
    """An ℓp threat model: the ε-ball around each image, intersected with the [0, 1] box."""

    name: str

    def random_start(self, x: torch.Tensor, eps: float, shard: tuple[int, int] | None = None) -> torch.Tensor:
        """A random point of the ε-ball around each image of ``x`` (not yet clipped to [0, 1]), drawn for the whole
        batch that ``shard`` marks ``x`` as a part of (see :func:`whole_batch`)."""
        raise NotImplementedError

    def step_(self, x_adv: torch.Tensor, grad: torch.Tensor, step_size: float) -> None:
        """``x_adv += step_size · d``, d the steepest ascent direction of unit norm along ``grad``; overwrites both."""
        raise NotImplementedError

    def clip_(self, delta: torch.Tensor, eps: float) -> None:
        """Shrink each example's ``delta`` into the ε-ball, in place."""
        raise NotImplementedError

    def project_(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        """``x_adv`` projected onto the ε-ball around ``x`` intersected with [0, 1], computed in ``x_adv``."""
        delta = x_adv.sub_(x)
        self.clip_(delta, eps)
        return delta.add_(x).clamp_(0.0, 1.0)

    def step_and_project_(self, x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, step_size: float,
                          eps: float) -> torch.Tensor:
        """One attack step, ``Π(x_adv + step_size · d)``, computed in ``x_adv`` (and ``grad``): both tensors must be
        the caller's to overwrite."""
        if any(stride == 0 and size > 1 for stride, size in zip(grad.stride(), grad.shape, strict=True)):
            grad = grad.clone()  # autograd may hand back a broadcast (stride-0) view, which cannot be written in place
        self.step_(x_adv, grad, step_size)
        return self.project_(x_adv, x, eps)


class Linf(Norm):
    """ℓ∞: uniform start in the box of side 2ε, signed-gradient step, clamp."""

    def random_start(self, x, eps, shard=None):
        whole, rows = whole_batch(x, shard)
        return x + whole.uniform_(-eps, eps)[rows]

    def step_(self, x_adv, grad, step_size):
        x_adv.add_(grad.sign_(), alpha=step_size)

    def clip_(self, delta, eps):
        delta.clamp_(-eps, eps)


class L2(Norm):
    """ℓ2: start uniform in direction with a uniform radius, normalised-gradient step, rescale onto the ball."""

    def random_start(self, x, eps, shard=None):
        whole, rows = whole_batch(x, shard)
        noise = whole.normal_()[rows]
        noise = noise / noise.flatten(1).norm(dim=1).view(_per_example(x))
        radius = torch.rand(len(whole), device=x.device)[rows].view(_per_example(x))
        return x + eps * radius * noise

    def step_(self, x_adv, grad, step_size):
        g_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(_per_example(grad))
        x_adv.add_(grad.mul_(step_size).div_(g_norm))

    def clip_(self, delta, eps):
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(_per_example(delta))
        delta.mul_((eps / norms).clamp(max=1.0))


NORMS: dict[str, Norm] = {"linf": Linf("linf"), "l2": L2("l2")}


def get_norm(name: str) -> Norm:
    """The strategy of norm ``name``; an unknown name is an :class:`OtrobustError` listing the known ones."""
    if name not in NORMS:
        raise OtrobustError(f"unknown norm {name!r}; choose one of: {', '.join(NORMS)}")
    return NORMS[name]


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """Project ``x_adv`` onto the ε-ball around ``x`` (ℓ∞ or ℓ2, per example) intersected with [0, 1]."""
    return get_norm(norm).project_(x_adv.clone(), x, eps)
