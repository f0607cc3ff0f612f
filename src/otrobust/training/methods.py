"""Training objectives: one function per method, same signature ``(model, x, y, ctx) -> (loss, logs)``.

GOT methods are their base objective (PGD-AT or TRADES) plus ``ot_weight · W_θ`` (docs/method.md §1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from otrobust.attacks.gradient import PGD, TradesAdversary, bn_mode, last_iterate
from otrobust.errors import OtrobustError
from otrobust.models.latent import latent_forward
from otrobust.ot import GOTRegularizer
from otrobust.training.method_registry import (
    DEFAULT_ADV_WEIGHT,
    METHOD_NAMES,
    base_method,
)

# Images per piece of a training forward pass on a CPU (models without BN/dropout): pieces small enough for their
# activations to stay in cache (benchmarks/README.md has the measurement). GPUs take the whole batch.
CPU_FORWARD_CHUNK = 64


@dataclass
class StepContext:
    """What an objective needs besides the batch. ``ot_weight`` is β at this step (after warm-up)."""

    eps: float
    step_size: float
    steps: int
    norm: str = "linf"
    attack_bn: str = "eval"
    adv_weight: float | None = None
    clean_weight: float = 0.0
    ot_weight: float = 10.0
    regularizer: GOTRegularizer | None = None
    reuse_clean: bool = False  # the model has no BN/dropout, so eval- and train-mode passes agree
    awp_gamma: float = 0.0  # relative size of the adversarial weight perturbation at this step (awp.py)
    x_adv: torch.Tensor | None = None  # adversarial examples already crafted for this batch (reused, not redone)
    attack_chunk: int | None = None  # images per attack piece (attacks.attack_chunk; None: by device)
    attack_workers: int | None = None  # pieces attacked at the same time (attacks.attack_workers; None: by device)
    forward_chunk: int | None = None  # images per piece of a training forward pass (see _forward; None: by device)
    # Data-parallel training (distributed.py): the attack runs on the module inside the DDP wrapper (its
    # passes need no gradient synchronisation); ``shard`` = (first row, global batch size) of this process's
    # rows, so random starts match a single-process run; ``gather`` all-gathers a tensor from every process
    # (gradients flowing back to this process's rows) for an OT term over the global batch.
    attack_model: nn.Module | None = None
    shard: tuple[int, int] | None = None
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None


def has_mode_dependent_layers(model: nn.Module) -> bool:
    """True if train/eval mode changes the output (batch norm, dropout)."""
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in model.modules())


def _forward(model, x: torch.Tensor, ctx: StepContext, with_latent: bool = False):
    """``(z or None, logits)`` of ``model`` on ``x``, run on pieces of ``ctx.forward_chunk`` images (by device if
    None; 0: the whole batch) and concatenated: one graph, one backward, the same values and gradients up to
    float summation order. Models with BN or dropout always take the whole batch (their outputs depend on it)."""
    chunk = ctx.forward_chunk
    if chunk is None:
        chunk = CPU_FORWARD_CHUNK if x.device.type == "cpu" else 0
    if chunk <= 0 or chunk >= len(x) or has_mode_dependent_layers(model):
        return latent_forward(model, x) if with_latent else (None, model(x))
    if not with_latent:
        return None, torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    parts = [latent_forward(model, x[i:i + chunk]) for i in range(0, len(x), chunk)]
    return torch.cat([z for z, _ in parts]), torch.cat([logits for _, logits in parts])


def _adv_weight(ctx: StepContext, base: str) -> float:
    return DEFAULT_ADV_WEIGHT[base] if ctx.adv_weight is None else ctx.adv_weight


def _attack_pieces(model, ctx: StepContext) -> dict[str, int | None]:
    """Attack pieces only where they cannot change the attack: not with batch statistics (BN in train mode)."""
    if ctx.attack_bn == "train" and has_mode_dependent_layers(model):
        return {"chunk": 0, "workers": 1}
    return {"chunk": ctx.attack_chunk, "workers": ctx.attack_workers}


def _pgd_examples(model, x, y, ctx: StepContext) -> torch.Tensor:
    if ctx.x_adv is not None:
        return ctx.x_adv
    with bn_mode(model, ctx.attack_bn):
        attack = PGD(eps=ctx.eps, step_size=ctx.step_size, steps=ctx.steps, norm=ctx.norm, **_attack_pieces(model, ctx))
        return last_iterate(attack, ctx.attack_model or model, x, y, shard=ctx.shard)


def _trades_examples(model, x, ctx: StepContext, clean_logits: torch.Tensor | None) -> torch.Tensor:
    if ctx.x_adv is not None:
        return ctx.x_adv
    p_clean = clean_logits.detach().float().softmax(1) if clean_logits is not None and ctx.reuse_clean else None
    with bn_mode(model, ctx.attack_bn):
        adversary = TradesAdversary(eps=ctx.eps, step_size=ctx.step_size, steps=ctx.steps, norm=ctx.norm,
                                    **_attack_pieces(model, ctx))
        return adversary(ctx.attack_model or model, x, p_clean=p_clean, shard=ctx.shard)


def _kl(logits: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """Batch-mean ``KL(f(x) ‖ f(x_adv))``."""
    return F.kl_div(logits_adv.float().log_softmax(1), logits.float().softmax(1), reduction="batchmean")


def standard(model, x, y, ctx: StepContext):
    _, logits = _forward(model, x, ctx)
    loss = F.cross_entropy(logits.float(), y)
    return loss, {"logits": logits.detach(), "ce": loss.detach()}


def _pgd_at(model, x, y, ctx: StepContext, with_latent: bool):
    x_adv = _pgd_examples(model, x, y, ctx)
    need_clean = with_latent or ctx.clean_weight > 0
    if need_clean:
        # One forward of the concatenated batch gives both (BN statistics then mix clean and adversarial,
        # so models with BN take two passes to keep the paper's per-batch statistics).
        if has_mode_dependent_layers(model):
            z, logits = _forward(model, x, ctx, with_latent)
            z_adv, logits_adv = _forward(model, x_adv, ctx, with_latent)
        else:
            z_all, logits_all = _forward(model, torch.cat([x, x_adv]), ctx, with_latent)
            logits, logits_adv = logits_all.split(len(x))
            z, z_adv = z_all.split(len(x)) if z_all is not None else (None, None)
    else:
        z = logits = None
        z_adv, logits_adv = _forward(model, x_adv, ctx, with_latent)
    adv_ce = F.cross_entropy(logits_adv.float(), y)
    loss = _adv_weight(ctx, "pgd-at") * adv_ce
    logs = {"adv_ce": adv_ce.detach(), "logits": (logits if logits is not None else logits_adv).detach()}
    if ctx.clean_weight > 0:
        clean_ce = F.cross_entropy(logits.float(), y)
        loss = loss + ctx.clean_weight * clean_ce
        logs["ce"] = clean_ce.detach()
    return loss, logs, (z, z_adv, logits, logits_adv)


def pgd_at(model, x, y, ctx: StepContext):
    loss, logs, _ = _pgd_at(model, x, y, ctx, with_latent=False)
    return loss, logs


def _trades(model, x, y, ctx: StepContext, with_latent: bool):
    z, logits = _forward(model, x, ctx, with_latent) if ctx.reuse_clean else (None, None)
    x_adv = _trades_examples(model, x, ctx, logits)
    if not ctx.reuse_clean:
        z, logits = _forward(model, x, ctx, with_latent)
    z_adv, logits_adv = _forward(model, x_adv, ctx, with_latent)
    ce = F.cross_entropy(logits.float(), y)
    kl = _kl(logits, logits_adv)
    loss = ce + _adv_weight(ctx, "trades") * kl
    return loss, {"ce": ce.detach(), "kl": kl.detach(), "logits": logits.detach()}, (z, z_adv, logits, logits_adv)


def trades(model, x, y, ctx: StepContext):
    loss, logs, _ = _trades(model, x, y, ctx, with_latent=False)
    return loss, logs


def mart(model, x, y, ctx: StepContext):
    """MART (Wang et al. 2020): boosted CE on adversarial examples + KL weighted by clean misclassification."""
    x_adv = _pgd_examples(model, x, y, ctx)
    logits, logits_adv = _forward(model, x, ctx)[1].float(), _forward(model, x_adv, ctx)[1].float()
    p_adv = logits_adv.softmax(1)
    true_mask = F.one_hot(y, logits.shape[1]).bool()
    runner_up = p_adv.masked_fill(true_mask, 0.0).amax(1)
    bce = F.cross_entropy(logits_adv, y) - torch.log1p(-runner_up.clamp(max=1 - 1e-6)).mean()
    p_clean = logits.softmax(1)
    kl = F.kl_div(logits_adv.log_softmax(1), p_clean, reduction="none").sum(1)
    weight = 1.0 - p_clean.gather(1, y[:, None]).squeeze(1)
    robust = (kl * weight).mean()
    loss = bce + _adv_weight(ctx, "mart") * robust
    return loss, {"bce": bce.detach(), "kl": robust.detach(), "logits": logits.detach()}


def _with_ot(base):
    def method(model, x, y, ctx: StepContext):
        if ctx.regularizer is None:
            raise OtrobustError("GOT methods need a GOTRegularizer in the step context")
        loss, logs, (z, z_adv, logits, logits_adv) = base(model, x, y, ctx, with_latent=True)
        if ctx.gather is not None:  # the OT term over the batch gathered from every process
            z, z_adv, logits, logits_adv, y = (ctx.gather(t) for t in (z, z_adv, logits, logits_adv, y))
        w = ctx.regularizer(z, z_adv, logits, logits_adv, y)
        logs["ot"] = w.detach()
        return loss + ctx.ot_weight * w, logs

    return method


METHODS: dict[str, Callable] = {
    "standard": standard,
    "pgd-at": pgd_at,
    "trades": trades,
    "mart": mart,
    "got-pgd-s": _with_ot(_pgd_at),
    "got-pgd-lm": _with_ot(_pgd_at),
    "got-trades-s": _with_ot(_trades),
    "got-trades-lm": _with_ot(_trades),
}
"""The objective of every method by name, ``(model, x, y, ctx) -> (loss, logs)``; the names are those of
:data:`~otrobust.training.method_registry.METHOD_SPECS`."""


def zero_step_warning(method: str, steps: int) -> str | None:
    """The warning for an adversarial ``method`` trained with ``steps`` = 0, whose attack then takes no step:
    PGD-based methods train on uniformly random points of the ε-ball (PGD's random start), TRADES-based ones on
    the clean images plus 0.001·N(0, 1) (TRADES' start). None for ``standard`` or ``steps`` > 0."""
    base = base_method(method)
    if steps > 0 or base == "standard":
        return None
    inputs = ("randomly perturbed inputs (PGD's random start in the eps-ball)" if base in ("pgd-at", "mart")
              else "clean inputs (TRADES' start is 0.001 away from each image)")
    return (f"--steps 0 with --method {method}: the training attack takes no step, so the model trains on {inputs}, "
            "not on adversarial examples; give --steps 10 (the default) or more for adversarial training")


def get_method(name: str) -> Callable:
    """The objective of method ``name`` (a name of :data:`otrobust.training.method_registry.METHOD_SPECS`)."""
    if name not in METHODS:
        raise OtrobustError(f"unknown method {name!r}; choose one of: {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def adversarial_examples(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         ctx: StepContext) -> torch.Tensor | None:
    """The training examples ``method``'s adversary crafts for this batch (None for ``standard``)."""
    base = base_method(method)
    if base in ("pgd-at", "mart"):
        return _pgd_examples(model, x, y, ctx)
    if base == "trades":
        return _trades_examples(model, x, ctx, None)
    if base == "standard":
        return None
    raise OtrobustError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
