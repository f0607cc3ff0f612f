"""Adversarial weight perturbation (AWP, Wu et al. 2020) as an add-on to any training objective.

At each training step, once the method's adversary has crafted ``x_adv`` with the current weights ``w``:

1. ``g = ∇_w L(w; x, x_adv)``, the gradient of the method's own loss on those fixed examples, and the
   perturbation ``v_l = γ · ‖w_l‖ · g_l / ‖g_l‖`` for every layer ``l`` (one ascent step, layer-wise
   relative size ``γ``, the paper's ``gamma``);
2. the loss is computed again at ``w + v`` (same ``x_adv``); its gradient, taken at ``w + v``, is what
   the optimiser applies to ``w``.

Layers are the weight tensors with more than one dimension (convolution kernels, linear matrices);
biases and batch-norm parameters are not perturbed, as in the reference implementation.

The weights are never changed in place: the perturbed pass runs through
:func:`torch.func.functional_call` with ``w + v``, so "removing" the perturbation is exact by
construction. The reference implementation steps the optimiser at ``w + v`` and then subtracts ``v``;
for SGD without weight decay the two updates are identical, otherwise they differ only in the
weight-decay term (here it decays ``w``, there ``w + v``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from otrobust.models.latent import unwrap
from otrobust.training.methods import StepContext, adversarial_examples


def perturbable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters AWP perturbs: trainable weight tensors with ndim > 1, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad and p.ndim > 1}


def weight_perturbation(weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor | None],
                        gamma: float) -> dict[str, torch.Tensor]:
    """``v_l = γ · ‖w_l‖ · g_l / ‖g_l‖`` per layer (zero where the gradient is missing or zero); detached."""
    out = {}
    for name, w in weights.items():
        g = grads.get(name)
        g_norm = g.norm() if g is not None else None
        if g is None or not float(g_norm) > 0:
            out[name] = torch.zeros_like(w)
            continue
        out[name] = (gamma * w.detach().norm() / g_norm * g).detach()
    return out


@contextmanager
def frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (batch-norm running statistics) on exit, so an extra pass leaves no trace."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


class PerturbedModel(nn.Module):
    """``model`` evaluated at weights ``w + v`` without modifying it; gradients reach ``w``.

    ``offsets`` maps ``id(parameter)`` of ``model`` (or of the module inside a DDP / compile wrapper) to ``v``.
    """

    def __init__(self, model: nn.Module, offsets: dict[int, torch.Tensor]):
        super().__init__()
        self.inner = model
        self._offsets = offsets

    def forward(self, *args, **kwargs):
        params = {name: p + self._offsets[id(p)] for name, p in self.inner.named_parameters()
                  if id(p) in self._offsets}
        return torch.func.functional_call(self.inner, params, args, kwargs)


def awp_offsets(method: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext,
                gamma: float) -> dict[str, torch.Tensor]:
    """The perturbation ``v`` (by parameter name of the unwrapped model) maximising ``method``'s loss.

    ``ctx.x_adv`` should hold the already-crafted adversarial examples; batch-norm statistics are left
    untouched by this extra pass.
    """
    base = unwrap(model)
    weights = perturbable_weights(base)
    with frozen_buffers(base):  # restored after the backward pass, which may still read the statistics
        loss, _ = method(base, x, y, ctx)
        grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
    return weight_perturbation(weights, dict(zip(weights, grads, strict=True)), gamma)


def with_awp(method: Callable, method_name: str) -> Callable:
    """``method`` with adversarial weight perturbation of size ``ctx.awp_gamma`` (off while it is 0).

    Same signature as every objective: ``(model, x, y, ctx) -> (loss, logs)``; ``logs["awp"]`` is the
    perturbation's norm relative to the perturbed weights' norm (≈ γ).
    """

    def awp_method(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext):
        if ctx.awp_gamma <= 0:
            return method(model, x, y, ctx)
        # Craft once with the unperturbed weights; both passes below reuse these examples.
        fixed = dataclasses.replace(ctx, x_adv=adversarial_examples(method_name, model, x, y, ctx))
        offsets = awp_offsets(method, model, x, y, fixed, ctx.awp_gamma)
        weights = perturbable_weights(unwrap(model))
        loss, logs = method(PerturbedModel(model, {id(p): offsets[name] for name, p in weights.items()}), x, y,
                            fixed)
        w_norm = torch.sqrt(sum((p.detach() ** 2).sum() for p in weights.values()))
        logs["awp"] = torch.sqrt(sum((v ** 2).sum() for v in offsets.values())) / w_norm.clamp_min(1e-12)
        return loss, logs

    return awp_method


def awp_gamma_at(gamma: float, warmup_epochs: float, epoch_progress: float) -> float:
    """γ at this point of training: 0 during the first ``warmup_epochs`` (as the reference), then ``gamma``."""
    return gamma if epoch_progress >= warmup_epochs else 0.0
