"""Checks that the attack was strong enough: more steps and restarts, FGSM against PGD, true against
predicted labels, black-box Square and a transfer attack against white-box PGD, and AutoAttack. Each takes
the shared :class:`AuditState` and returns a :class:`Check`."""

from __future__ import annotations

import torch
from torch import nn

from otrobust.attacks.autoattack import autoattack, is_severe, too_few_classes
from otrobust.attacks.gradient import PGD
from otrobust.attacks.table import ATTACK_SPECS, BLACK_BOX_STAGES, Budget
from otrobust.data.base import ImageData
from otrobust.evaluation.audit_types import AuditState, Check, eps_tag, percent
from otrobust.evaluation.statistics import fraction_true, higher_than


def check_steps_restarts(a: AuditState) -> Check:
    """More iterations and more restarts can only help the attacker (Carlini §5.1, §5.6)."""
    s = a.s
    ladder = [s.steps, 2 * s.steps, 4 * s.steps]
    runs = {f"{k} steps": a.pgd(steps=k) for k in ladder}
    runs[f"{s.steps} steps x {s.restarts} restarts"] = a.pgd(restarts=s.restarts)
    names = list(runs)
    ev = {name: round(fraction_true(v), 4) for name, v in runs.items()}
    ref = "Carlini et al. §5.1, §5.6"
    pairs = [(names[1], names[0]), (names[2], names[1]), (names[3], names[0])]
    notes = []
    for more, fewer in pairs:
        significant, detail = higher_than(runs[more], runs[fewer])
        ev[f"{more} vs {fewer}"] = detail
        if significant:
            return Check("steps-restarts", "fail", f"accuracy rises from {percent(detail['acc_b'])} ({fewer}) to "
                         f"{percent(detail['acc_a'])} ({more}) beyond binomial noise", ev, ref)
        if detail["acc_a"] > detail["acc_b"]:
            notes.append(f"{more} slightly above {fewer} (within noise)")
    converged, detail = higher_than(runs[names[0]], runs[names[2]])
    if converged:
        notes.append(f"{names[2]} lowers accuracy to {percent(detail['acc_b'])} from {percent(detail['acc_a'])}: "
                     f"{s.steps} steps are not enough")
    if notes:
        return Check("steps-restarts", "warn", "; ".join(notes), ev, ref)
    return Check("steps-restarts", "pass", "more steps and restarts never raise accuracy", ev, ref)


def check_fgsm(a: AuditState) -> Check:
    """Iterative attacks must beat a single step; the reverse signals gradient masking (Carlini §5.4)."""
    s = a.s
    spec = ATTACK_SPECS["fgsm"]
    f = a.run(f"{spec.name}@{eps_tag(s.eps)}", spec.build(Budget(eps=s.eps, norm=s.norm)), spec, s.eps)
    p = a.pgd()
    significant, detail = higher_than(p, f)
    ref = "Carlini et al. §5.4"
    if significant:
        return Check("fgsm-vs-pgd", "fail", f"single-step FGSM ({percent(detail['acc_b'])}) beats {s.steps}-step PGD "
                     f"({percent(detail['acc_a'])}): the iterative attack is being misled", detail, ref)
    if detail["robust_only_a"]:
        return Check("fgsm-vs-pgd", "warn", f"FGSM breaks {detail['robust_only_a']} examples PGD misses", detail, ref)
    return Check("fgsm-vs-pgd", "pass", f"PGD ({percent(detail['acc_a'])}) is at least as strong as FGSM "
                 f"({percent(detail['acc_b'])})", detail, ref)


def _versus_white_box(a: AuditState, name: str, other: torch.Tensor, what: str, ref: str) -> Check:
    white = a.white_box()
    significant, detail = higher_than(white, other)
    detail = {f"{what}_accuracy": detail["acc_b"], "white_box_accuracy": detail["acc_a"],
              f"broken_only_by_{what}": detail["robust_only_a"], "broken_only_by_white_box": detail["robust_only_b"],
              "p_value": detail["p_value"]}
    if significant:
        return Check(name, "fail", f"the {what} attack ({percent(detail[f'{what}_accuracy'])}) beats the white-box "
                     f"attacks ({percent(detail['white_box_accuracy'])}): gradients are masked", detail, ref)
    if detail[f"broken_only_by_{what}"]:
        return Check(name, "warn", f"the {what} attack breaks {detail[f'broken_only_by_{what}']} examples every "
                     "white-box attack missed", detail, ref)
    return Check(name, "pass", f"the white-box attacks ({percent(detail['white_box_accuracy'])}) are at least as "
                 f"strong as the {what} attack ({percent(detail[f'{what}_accuracy'])})", detail, ref)


def check_black_box(a: AuditState) -> Check:
    """A black-box attack (Square) must not beat the white-box ones (Carlini §5.5)."""
    s = a.s
    spec = ATTACK_SPECS["square"]
    budget = Budget(eps=s.eps, norm=s.norm, seed=s.seed, aa_queries=s.square_queries)
    square = a.run(spec.name, spec.build(budget), spec, s.eps)
    check = _versus_white_box(a, "black-box", square, "square", "Carlini et al. §5.5; Pintor et al.")
    check.evidence["queries"] = s.square_queries
    return check


def check_transfer(a: AuditState, surrogate: nn.Module | None) -> Check:
    """Examples crafted on another model must not beat attacks on the model itself (Carlini §5.5)."""
    ref = "Carlini et al. §5.5 (transferability)"
    if surrogate is None:
        return Check("transfer", "skip", "no surrogate model (no training data to train one)", {}, ref)
    s = a.s
    surrogate = surrogate.to(a.device).eval()
    crafted = []
    torch.manual_seed(s.seed)
    for x, y in a.batches():
        crafted.append(PGD(eps=s.eps, step_size=a.step, steps=s.steps, norm=s.norm)(surrogate, x, y).cpu())
    moved = ImageData(torch.cat(crafted), a.data.y, a.data.num_classes)
    with torch.no_grad():
        correct = torch.cat([a.model(x).argmax(1).cpu() for x, _ in _chunks(moved, s.batch_size, a.device)])
    transfer = (correct == a.data.y) & a.clean
    with torch.no_grad():
        surrogate_clean = fraction_true(torch.cat([surrogate(x).argmax(1).cpu() for x, _ in a.batches()]) == a.data.y)
    check = _versus_white_box(a, "transfer", transfer, "transfer", ref)
    check.evidence["surrogate_clean_accuracy"] = surrogate_clean
    return check


def _chunks(data: ImageData, batch_size: int, device):
    for start in range(0, len(data), batch_size):
        yield data.x[start:start + batch_size].to(device), data.y[start:start + batch_size]


def check_labels(a: AuditState) -> Check:
    """On clean-correct examples the true and the predicted label are the same, so both label sources
    must give the same verdict; elsewhere predicted labels inflate accuracy (docs/method.md §4)."""
    true = a.pgd()
    predicted = a.pgd(labels="predicted")
    cc = a.clean
    disagree = int((true[cc] != predicted[cc]).sum())
    ev = {"true_label_accuracy": fraction_true(true), "predicted_label_accuracy": fraction_true(predicted),
          "inflation_points": round(100 * (fraction_true(predicted) - fraction_true(true)), 2),
          "disagreements_on_clean_correct": disagree, "clean_correct": int(cc.sum())}
    ref = "docs/method.md §4; Carlini et al. §4.2"
    if disagree > max(1, 0.05 * int(cc.sum())):
        return Check("labels", "fail", f"true- and predicted-label attacks disagree on {disagree} clean-correct "
                     "examples, where the two labels are equal: the evaluation is not reproducible", ev, ref)
    note = (f"predicted labels would report {percent(ev['predicted_label_accuracy'])} instead of "
            f"{percent(ev['true_label_accuracy'])}")
    if disagree:
        return Check("labels", "warn", f"{disagree} disagreements on clean-correct examples; {note}", ev, ref)
    return Check("labels", "pass", f"both label sources agree on every clean-correct example; {note}", ev, ref)


def check_autoattack(a: AuditState) -> Check:
    """Run AutoAttack (reference code) and surface its own warnings; attacks that need more classes than the
    data has (the DLR-based APGD-T on 2 or 3 classes) are left out and named."""
    s = a.s
    if s.randomized:  # APGD-CE and APGD-DLR with EOT
        runner = autoattack(s.eps, s.norm, "rand", seed=s.seed, n_iter=s.aa_iter)
    else:
        runner = (autoattack(s.eps, s.norm, "fast", seed=s.seed, n_iter=s.aa_iter, n_targets=3) if s.aa_iter
                  else autoattack(s.eps, s.norm, "standard", seed=s.seed))
    left_out = too_few_classes(runner.attacks, a.data.num_classes)
    runner.attacks = tuple(name for name in runner.attacks if name not in left_out)
    correct = a.run("autoattack", runner, ATTACK_SPECS["autoattack"], s.eps)
    warnings = list(runner.warnings)
    pgd_suite = a.white_box()
    stronger, detail = higher_than(pgd_suite, correct)
    version = f"APGD-CE + APGD-T, {s.aa_iter} iterations, 3 targets (cheap)" if s.aa_iter else "standard"
    ev = {"version": "rand (APGD-CE, APGD-DLR, EOT)" if s.randomized else version,
          "accuracy": fraction_true(correct), "pgd_suite_accuracy": fraction_true(pgd_suite), "warnings": warnings,
          "broken_only_by_autoattack": detail["robust_only_a"], "left_out_for_too_few_classes": left_out}
    ref = "Croce & Hein 2020 (AutoAttack flags)"
    severe = [w for w in warnings if is_severe(w)]
    if severe:
        return Check("autoattack", "fail", "AutoAttack reports: " + " | ".join(severe), ev, ref)
    if warnings:
        return Check("autoattack", "warn", "AutoAttack reports: " + " | ".join(warnings), ev, ref)
    if stronger:
        return Check("autoattack", "warn", f"AutoAttack ({percent(ev['accuracy'])}) is well below the PGD suite "
                     f"({percent(ev['pgd_suite_accuracy'])}): report AutoAttack, not PGD", ev, ref)
    return Check("autoattack", "pass", f"AutoAttack {percent(ev['accuracy'])} with no warnings (PGD suite "
                 f"{percent(ev['pgd_suite_accuracy'])})", ev, ref)


def black_box_note(robust: dict[str, int]) -> str | None:
    """A warning when a black-box stage broke images that every gradient-based stage before it left standing: a
    sign of gradient masking (``robust`` as :func:`~otrobust.reporting.tables.stage_table`'s)."""
    names = list(robust)
    for before, stage in zip(names, names[1:], strict=False):
        broke = robust[before] - robust[stage]
        if stage in BLACK_BOX_STAGES and broke > 0:
            return (f"{stage}, a black-box attack, broke {broke} image{'s' if broke != 1 else ''} that the "
                    "gradient-based attacks before it did not: a sign of gradient masking (run otrobust audit)")
    return None
