"""Is a robustness evaluation trustworthy? Sanity checks -> a report and an exit code.

The checks follow Carlini et al. 2019, "On Evaluating Adversarial Robustness" (§ numbers below) and
Pintor et al. 2022, "Indicators of Attack Failure". Each gives ``pass``, ``warn`` or ``fail`` with its
evidence. Comparisons between two attacks are paired (same examples): a difference counts only when
the examples one attack alone broke outnumber the other's beyond binomial noise (one-sided exact
sign test at 5 %), so an honest model does not fail on chance.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from otrobust.data.base import ImageData
from otrobust.distributed import DistInfo
from otrobust.errors import NoInputGradient
from otrobust.evaluation.attack_checks import (
    check_autoattack,
    check_black_box,
    check_fgsm,
    check_labels,
    check_steps_restarts,
    check_transfer,
)
from otrobust.evaluation.audit_types import (
    AuditReport,
    AuditSettings,
    AuditState,
    Check,
    Subject,
)
from otrobust.evaluation.evaluate import ThreatModel, build_attacks, evaluate_model
from otrobust.evaluation.gradient_checks import (
    check_determinism,
    check_eps_curve,
    check_gradients,
    check_loss_path,
    check_unbounded,
)
from otrobust.evaluation.statistics import fraction_true


def _run_check(name: str, run: Callable[[], Check]) -> Check:
    """``run()``; a model without input gradients fails every check that needs them instead of ending the audit
    (finding that is what the audit is for)."""
    try:
        return run()
    except NoInputGradient as exc:
        return Check(name, "fail", f"could not attack the model: {exc}", {"input_gradient": None},
                     "Pintor et al. (silent gradients)")


def audit_model(model: nn.Module, data: ImageData, settings: AuditSettings, *, surrogate: nn.Module | None = None,
                device: torch.device | str = "cpu", log: Callable[[str], None] | None = None,
                subject: Subject | None = None, info: DistInfo | None = None) -> AuditReport:
    """Run every check on ``data`` (already cut to the first n examples) and return the report; ``subject`` names
    the dataset and the model in its threat model. ``info``: run the attacks in batches shared out among
    torchrun's processes (see :class:`AuditState`); every process returns the same report."""
    log = log or (lambda text: None)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    a = AuditState(model, data, settings, device, log, info)
    checks: list[Check] = []
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("determinism", lambda: check_determinism(a)), ("gradients", lambda: check_gradients(a)),
        ("loss-path", lambda: check_loss_path(a)), ("eps-curve", lambda: check_eps_curve(a)),
        ("unbounded", lambda: check_unbounded(a)), ("steps-restarts", lambda: check_steps_restarts(a)),
        ("fgsm-vs-pgd", lambda: check_fgsm(a)), ("labels", lambda: check_labels(a)),
        ("black-box", lambda: check_black_box(a)), ("transfer", lambda: check_transfer(a, surrogate)),
        ("autoattack", lambda: check_autoattack(a))]
    try:
        for name, run in steps:
            log(f"check {name}")
            started = time.perf_counter()
            torch.manual_seed(settings.seed)  # each check draws the same numbers on every run (and process)
            checks.append(_run_check(name, run))
            checks[-1].seconds = round(time.perf_counter() - started, 2)
            log(f"  -> {checks[-1].status}: {checks[-1].finding}")
    finally:
        model.train(was_training)
    threat = ThreatModel(norm=settings.norm, eps=settings.eps, n=len(data), labels="true", seed=settings.seed,
                         steps=settings.steps, restarts=settings.restarts, quick=settings.quick,
                         randomized=settings.randomized, clean_accuracy=fraction_true(a.clean),
                         dataset=subject.dataset if subject else None, model=subject.model if subject else None)
    return AuditReport(threat, checks, a.curve, time.perf_counter() - t0)


def accuracy_curve(model: nn.Module, data: ImageData, eps_list: list[float], *, labels: str = "true",
                   settings: AuditSettings | None = None, device: torch.device | str = "cpu") -> list[float]:
    """Worst-case accuracy over PGD-CE and PGD-CW at each ε (0 means clean), against ``labels``, with the norm,
    steps, seed and batch size of ``settings`` (its own ε is not used; default: ℓ∞, 20 steps, seed 0, 256)."""
    s = settings or AuditSettings(eps=1.0)
    out = []
    for eps in eps_list:
        attacks = build_attacks(["pgd", "pgd-cw"], eps=eps, steps=s.steps, norm=s.norm) if eps > 0 else {}
        torch.manual_seed(s.seed)
        res = evaluate_model(model, data, attacks, labels=labels, batch_size=s.batch_size, device=device)
        out.append(res.accuracy("worst") if attacks else res.accuracy("clean"))
    return out
