"""Checks that the model's gradients can be trusted: determinism, non-zero and finite input gradients, a loss
that attacks can climb, accuracy that falls with ε to zero, and an unbounded attack that reaches 0 %.
Each takes the shared :class:`AuditState` and returns a :class:`Check`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from otrobust.attacks.gradient import PGD, best_iterate, input_gradient, margin_loss
from otrobust.errors import NoInputGradient
from otrobust.evaluation.audit_types import TRIVIAL_LINF, AuditSettings, AuditState, Check, percent
from otrobust.evaluation.statistics import binomial_interval, fraction_true, higher_than


def check_determinism(a: AuditState) -> Check:
    """A randomised model needs EOT attacks; deterministic attacks overestimate its robustness (§5.2)."""
    changed, largest = 0, 0.0
    with torch.no_grad():
        for x, _ in a.batches():
            o1, o2 = a.model(x).float(), a.model(x).float()
            n1 = o1 / (o1.norm(dim=1, keepdim=True) + 1e-10)
            n2 = o2 / (o2.norm(dim=1, keepdim=True) + 1e-10)
            changed += int((o1.argmax(1) != o2.argmax(1)).sum())
            largest = max(largest, float((n1 - n2).norm(dim=1).max()))
    ev = {"predictions_changed": changed, "max_normalised_logit_change": largest, "declared_randomized":
          a.s.randomized}
    if a.s.randomized:
        differ = "two passes differ, as declared" if changed or largest > 1e-4 else "two passes agree all the same"
        return Check("determinism", "pass", f"the model is declared randomised (--randomized): {differ}; gradient "
                     f"attacks average {a.s.eot_draws} forwards (EOT) and AutoAttack runs its rand version", ev,
                     "Carlini et al. §5.2; Athalye et al. 2018 (EOT)")
    if changed or largest > 1e-4:
        return Check("determinism", "fail", f"the model's output changes between two passes on the same images "
                     f"({changed} predictions flipped): deterministic attacks overestimate a randomised model; "
                     "evaluate with --attack autoattack-rand (EOT)", ev, "Carlini et al. §5.2; AutoAttack rand")
    return Check("determinism", "pass", "two passes on the same images give the same logits", ev,
                 "Carlini et al. §5.2")


def check_gradients(a: AuditState) -> Check:
    """Zero or non-finite input gradients leave gradient attacks blind (Pintor: silent gradients); no input
    gradient at all (a forward that detaches its input) is the extreme case, and fails too."""
    zero_ce = zero_cw = bad = total = 0
    ref = "Pintor et al. (silent gradients); Carlini et al. §4.3"
    for x, y in a.batches():
        clean_logits = a.model(x).detach()
        finite = torch.isfinite(clean_logits).all(1)
        bad += int((~finite).sum())  # on every example: NaN weights leave no clean-correct one to look at
        keep = (clean_logits.argmax(1) == y) & finite
        if not bool(keep.any()):
            continue
        x, y = x[keep].clone().requires_grad_(True), y[keep]
        logits = a.model(x).float()
        try:
            g_ce = input_gradient(F.cross_entropy(logits, y, reduction="none"), x, retain_graph=True)
            g_cw = input_gradient(margin_loss(logits, y, "cw"), x)
        except NoInputGradient as exc:
            return Check("gradients", "fail", str(exc), {"clean_correct": int(keep.sum()), "input_gradient": None},
                         ref)
        total += len(y)
        zero_ce += int((g_ce.flatten(1).abs().sum(1) == 0).sum())
        zero_cw += int((g_cw.flatten(1).abs().sum(1) == 0).sum())
        bad += int((~torch.isfinite(logits).all(1) | ~torch.isfinite(g_ce.flatten(1)).all(1)).sum())
    share = zero_ce / total if total else 0.0
    ev = {"clean_correct": total, "zero_ce_gradient": zero_ce, "zero_cw_gradient": zero_cw, "non_finite": bad}
    if bad:
        return Check("gradients", "fail", f"{bad} examples give non-finite logits or gradients", ev, ref)
    if share > 0.05:
        return Check("gradients", "fail", f"{percent(share)} of clean-correct examples have an exactly zero input "
                     "gradient of the cross-entropy (saturated softmax or a non-differentiable layer): gradient "
                     "attacks cannot move them", ev, ref)
    if zero_ce or zero_cw:
        return Check("gradients", "warn", f"{zero_ce} examples with zero cross-entropy gradient, {zero_cw} with "
                     "zero margin gradient", ev, ref)
    return Check("gradients", "pass", f"all {total} clean-correct examples have finite, non-zero input gradients",
                 ev, ref)


def check_loss_path(a: AuditState) -> Check:
    """The attack loss must actually rise along the path, and should have levelled off by the end."""
    s = a.s
    no_rise = still_rising = alive = total = non_finite = 0
    curve = torch.zeros(s.steps + 1)
    for x, y in a.batches():
        torch.manual_seed(s.seed)
        res = best_iterate(PGD(eps=s.eps, step_size=a.step, steps=s.steps, norm=s.norm), a.model, x, y)
        loss = res.loss[0]  # (steps + 1, B)
        with torch.no_grad():
            correct = a.model(x).argmax(1) == y
            survived = correct & (a.model(res.x_adv).argmax(1) == y)
        non_finite += int((~torch.isfinite(loss)).any(0).sum())
        loss = loss[:, correct]
        total += int(correct.sum())
        no_rise += int((loss[1:].amax(0) <= loss[0] + 1e-6).sum())
        tail = max(1, s.steps // 10)
        rise = loss[-tail:].amax(0) - loss[:-tail].amax(0)
        span = (loss.amax(0) - loss[0]).clamp_min(1e-12)
        alive_mask = survived[correct]
        alive += int(alive_mask.sum())
        still_rising += int(((rise > 0.01 * span) & alive_mask).sum())
        curve += loss.nan_to_num(0.0).sum(1).cpu()
    mean_curve = (curve / max(total, 1)).tolist()
    ev = {"examples": total, "loss_never_rose": no_rise, "robust_and_loss_still_rising": still_rising,
          "robust_after_attack": alive, "non_finite_examples": non_finite,
          "mean_loss_by_step": [round(v, 4) for v in mean_curve]}
    ref = "Pintor et al. (non-converging attack, silent gradients)"
    if non_finite:
        return Check("loss-path", "fail", f"the attack loss is non-finite on {non_finite} examples", ev, ref)
    share = no_rise / total if total else 0.0
    if share > 0.10:
        return Check("loss-path", "fail", f"PGD never raised the loss above its starting value on "
                     f"{percent(share)} of examples: the gradient does not point uphill", ev, ref)
    if share > 0.02:
        return Check("loss-path", "warn", f"PGD never raised the loss on {percent(share)} of examples", ev, ref)
    if alive and still_rising / alive > 0.10:
        return Check("loss-path", "warn", f"the loss of {still_rising} of {alive} surviving examples is still "
                     f"rising at the last steps: more iterations may break them", ev, ref)
    return Check("loss-path", "pass", "the attack loss rises along the path and levels off", ev, ref)


def eps_grid(settings: AuditSettings, channels: int) -> list[float]:
    """ε values for the accuracy curve, ending at the trivial radius (ℓ∞ 0.5; ℓ2 the same ball's diameter)."""
    if settings.norm == "l2":
        grid = [settings.eps * f for f in (0.5, 1, 2, 4, 8)]
    elif channels == 1:
        grid = [0.1, 0.2, 0.3, 0.4, TRIVIAL_LINF] if not settings.quick else [0.1, 0.3, TRIVIAL_LINF]
    else:
        grid = [2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255, TRIVIAL_LINF]
        if settings.quick:
            grid = [4 / 255, 16 / 255, 64 / 255, TRIVIAL_LINF]
    return sorted(set(grid + [settings.eps]))


def check_eps_curve(a: AuditState) -> Check:
    """Accuracy must fall with ε and reach the trivial bound: at ℓ∞ ε ≥ 0.5 every image can be turned into
    the same grey image, so no classifier beats the largest class share (Carlini §5.3)."""
    s, data = a.s, a.data
    grid = eps_grid(s, data.x.shape[1])
    accs = [fraction_true(a.clean)]
    per_eps = [a.clean]
    for eps in grid:
        correct = a.pgd(loss="ce", eps=eps) & a.pgd(loss="cw", eps=eps)
        per_eps.append(correct)
        accs.append(fraction_true(correct))
    eps_all = [0.0] + grid
    bound = float(torch.bincount(data.y, minlength=data.num_classes).max()) / len(data)
    a.curve = {"eps": eps_all, "accuracy": accs, "ci95": [list(binomial_interval(int(c.sum()), len(c)))
                                                          for c in per_eps], "trivial_bound": bound}
    ev = {"eps": [round(e, 5) for e in eps_all], "accuracy": [round(v, 4) for v in accs],
          "largest_class_share": round(bound, 4)}
    ref = "Carlini et al. §5.3 (accuracy vs ε; unbounded ε)"
    problems = []
    if s.norm == "linf":
        over = [(e, v) for e, v in zip(eps_all, accs, strict=True) if e >= TRIVIAL_LINF and v > bound]
        if over:
            return Check("eps-curve", "fail", f"accuracy {percent(over[0][1])} at ε = {over[0][0]:g} exceeds the "
                         f"trivial bound {percent(bound)} (largest class share; every image can be made grey): "
                         "the attack is failing, not the model succeeding", ev, ref)
        if data.x.shape[1] > 1:
            at64 = accs[eps_all.index(64 / 255)] if 64 / 255 in eps_all else None
            if at64 is not None and at64 > 0.05:
                return Check("eps-curve", "fail", f"accuracy is still {percent(at64)} at ε = 64/255; it should "
                             "approach 0", ev, ref)
            if at64 is not None and at64 > 0.01:
                problems.append(f"accuracy {percent(at64)} at ε = 64/255 has not reached 0")
        elif accs[-1] > 0.02:
            problems.append(f"accuracy {percent(accs[-1])} at ε = {eps_all[-1]:g} is under the bound but not near 0")
    for i in range(1, len(per_eps) - 1):
        significant, detail = higher_than(per_eps[i + 1], per_eps[i])
        if significant:
            return Check("eps-curve", "fail", f"accuracy rises from ε = {eps_all[i]:g} to {eps_all[i + 1]:g} "
                         f"({detail['robust_only_a']} examples survive the larger ball only)", ev, ref)
        if detail["robust_only_a"]:
            problems.append(f"{detail['robust_only_a']} examples survive ε = {eps_all[i + 1]:g} but not "
                            f"ε = {eps_all[i]:g}")
    if problems:
        return Check("eps-curve", "warn", "; ".join(problems), ev, ref)
    return Check("eps-curve", "pass", f"accuracy falls monotonically to {percent(accs[-1])} at ε = {eps_all[-1]:g} "
                 f"(trivial bound {percent(bound)})", ev, ref)


def check_unbounded(a: AuditState) -> Check:
    """With no effective bound (ℓ∞ ε = 1 on [0, 1] images) an attack must succeed on every example."""
    s = a.s
    eps = 1.0 if s.norm == "linf" else math.sqrt(a.data.x[0].numel())
    steps = s.unbounded_steps
    correct = a.pgd(steps=steps, loss="ce", eps=eps) & a.pgd(steps=steps, loss="cw", eps=eps)
    left = int(correct.sum())
    ev = {"eps": eps, "steps": steps, "robust_examples": left, "n": len(correct)}
    ref = "Carlini et al. §5.3; Pintor et al. (unconstrained attack)"
    if left:
        return Check("unbounded", "fail", f"an unbounded attack (ε = {eps:g}) leaves {left} examples correctly "
                     "classified; it must reach 100 % success", ev, ref)
    return Check("unbounded", "pass", f"the unbounded attack (ε = {eps:g}) breaks every example", ev, ref)
