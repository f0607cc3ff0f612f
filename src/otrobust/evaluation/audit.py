"""Is a robustness evaluation trustworthy? Sanity checks -> a report and an exit code.

The checks follow Carlini et al. 2019, "On Evaluating Adversarial Robustness" (§ numbers below) and
Pintor et al. 2022, "Indicators of Attack Failure". Each gives ``pass``, ``warn`` or ``fail`` with its
evidence. Comparisons between two attacks are paired (same examples): a difference counts only when
the examples one attack alone broke outnumber the other's beyond binomial noise (one-sided exact
sign test at 5 %), so an honest model does not fail on chance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from otrobust.attacks.gradient import default_step_size, fgsm, input_gradient, margin_loss, pgd, pgd_trace
from otrobust.data.base import ImageData
from otrobust.errors import NoInputGradient, OtrobustError
from otrobust.evaluation.evaluate import EvalResult, binomial_interval, evaluate_model

STATUSES = ("pass", "warn", "fail", "skip")
TRIVIAL_LINF = 0.5  # every [0, 1] image is within ℓ∞ 0.5 of the uniform grey image


@dataclass
class Check:
    """One audit finding: ``status`` in STATUSES, a one-line ``finding`` and the numbers behind it."""

    name: str
    status: str
    finding: str
    evidence: dict = field(default_factory=dict)
    reference: str = ""
    seconds: float = 0.0


QUICK = {"steps": 10, "restarts": 3, "unbounded_steps": 50, "square_queries": 1000, "surrogate_epochs": 1,
         "aa_iter": 20}


@dataclass
class AuditSettings:
    """The threat model and the attack budget. ``aa_iter`` set means a cheaper AutoAttack (APGD-CE +
    APGD-T with that many iterations and 3 target classes) instead of the standard version."""

    eps: float
    norm: str = "linf"
    steps: int = 20
    restarts: int = 5
    unbounded_steps: int = 100
    square_queries: int = 5000
    surrogate_epochs: int = 3
    aa_iter: int | None = None
    seed: int = 0
    batch_size: int = 256
    quick: bool = False

    @classmethod
    def make(cls, eps: float, norm: str = "linf", quick: bool = False, **overrides) -> AuditSettings:
        """Settings with ``quick`` defaults (for CPUs: see QUICK) under any explicit, non-None overrides."""
        if norm not in ("linf", "l2"):
            raise OtrobustError(f"unknown norm {norm!r}; use linf or l2")
        if not eps > 0:
            raise OtrobustError(f"--eps must be positive for an audit, got {eps}")
        values = {**(QUICK if quick else {}), **{k: v for k, v in overrides.items() if v is not None}}
        for key in ("steps", "restarts", "unbounded_steps", "square_queries", "batch_size"):
            if key in values and values[key] < 1:
                raise OtrobustError(f"--{key.replace('_', '-')} must be at least 1, got {values[key]}")
        return cls(eps=eps, norm=norm, quick=quick, **values)


@dataclass
class AuditReport:
    threat: dict
    checks: list[Check]
    curve: dict
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    def to_dict(self) -> dict:
        return {"threat_model": self.threat, "failed": self.failed, "counts": self.counts(),
                "checks": [asdict(c) for c in self.checks], "accuracy_vs_eps": self.curve,
                "seconds": round(self.seconds, 1)}


# ---------------------------------------------------------------- statistics
def one_sided_sign_test(wins: int, losses: int) -> float:
    """P(X >= wins) for X ~ Binomial(wins + losses, 1/2): is ``wins`` more than chance among the discordant pairs?"""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def higher_than(a: torch.Tensor, b: torch.Tensor, alpha: float = 0.05) -> tuple[bool, dict]:
    """Is accuracy ``a`` (per-example bool) above accuracy ``b`` beyond binomial noise on the same examples?"""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = one_sided_sign_test(only_a, only_b)
    return p < alpha, {"acc_a": _acc(a), "acc_b": _acc(b), "robust_only_a": only_a, "robust_only_b": only_b,
                       "p_value": round(p, 5)}


def _acc(t: torch.Tensor) -> float:
    return int(t.sum()) / len(t) if len(t) else float("nan")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


# ---------------------------------------------------------------- the shared state of one audit
class _Audit:
    """The model, the data and every per-example result computed so far (true labels unless named)."""

    def __init__(self, model: nn.Module, data: ImageData, settings: AuditSettings, device, log):
        self.model, self.data, self.s, self.device, self.log = model, data, settings, device, log
        self.step = default_step_size(settings.eps, settings.steps)
        self.results: dict[str, torch.Tensor] = {}
        self.curve: dict = {}

    def run(self, key: str, attack, labels: str = "true") -> torch.Tensor:
        """Per-example correctness (N,) under ``attack``, re-seeded so that runs are comparable."""
        if key not in self.results:
            t0 = time.perf_counter()
            torch.manual_seed(self.s.seed)
            res: EvalResult = evaluate_model(self.model, self.data, {key: attack}, labels=labels,
                                             batch_size=self.s.batch_size, device=self.device,
                                             allow_non_finite=True)  # reported by the gradients check
            self.results[key] = res.per_attack[key]
            self.log(f"  {key}: {_pct(_acc(self.results[key]))} ({time.perf_counter() - t0:.1f}s)")
        return self.results[key]

    def pgd(self, steps: int | None = None, restarts: int = 1, loss: str = "ce", eps: float | None = None,
            labels: str = "true") -> torch.Tensor:
        steps = steps or self.s.steps
        eps = self.s.eps if eps is None else eps
        key = f"pgd-{loss}-{steps}x{restarts}@{eps:.6g}" + ("" if labels == "true" else "-predicted")
        size = default_step_size(eps, steps)
        return self.run(key, lambda m, x, y: pgd(m, x, y, eps, size, steps, restarts=restarts, loss=loss,
                                                 norm=self.s.norm), labels)

    @property
    def clean(self) -> torch.Tensor:
        if "clean" not in self.results:
            self.results["clean"] = evaluate_model(self.model, self.data, {}, batch_size=self.s.batch_size,
                                                   device=self.device, allow_non_finite=True).clean
        return self.results["clean"]

    def white_box(self) -> torch.Tensor:
        """Per-example worst case over every gradient-based run at the audited ε (true labels)."""
        out = self.clean.clone()
        tag = f"@{self.s.eps:.6g}"
        for key, correct in self.results.items():
            if key.endswith(tag) and key.startswith(("pgd-", "fgsm")):
                out &= correct
        return out

    def batches(self):
        for start in range(0, len(self.data), self.s.batch_size):
            yield (self.data.x[start:start + self.s.batch_size].to(self.device),
                   self.data.y[start:start + self.s.batch_size].to(self.device))


# ---------------------------------------------------------------- the checks
def check_determinism(a: _Audit) -> Check:
    """A randomised model needs EOT attacks; deterministic attacks overestimate its robustness (§5.2)."""
    changed, largest = 0, 0.0
    with torch.no_grad():
        for x, _ in a.batches():
            o1, o2 = a.model(x).float(), a.model(x).float()
            n1 = o1 / (o1.norm(dim=1, keepdim=True) + 1e-10)
            n2 = o2 / (o2.norm(dim=1, keepdim=True) + 1e-10)
            changed += int((o1.argmax(1) != o2.argmax(1)).sum())
            largest = max(largest, float((n1 - n2).norm(dim=1).max()))
    ev = {"predictions_changed": changed, "max_normalised_logit_change": largest}
    if changed or largest > 1e-4:
        return Check("determinism", "fail", f"the model's output changes between two passes on the same images "
                     f"({changed} predictions flipped): deterministic attacks overestimate a randomised model; "
                     "evaluate with --attack autoattack-rand (EOT)", ev, "Carlini et al. §5.2; AutoAttack rand")
    return Check("determinism", "pass", "two passes on the same images give the same logits", ev,
                 "Carlini et al. §5.2")


def check_gradients(a: _Audit) -> Check:
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
        return Check("gradients", "fail", f"{_pct(share)} of clean-correct examples have an exactly zero input "
                     "gradient of the cross-entropy (saturated softmax or a non-differentiable layer): gradient "
                     "attacks cannot move them", ev, ref)
    if zero_ce or zero_cw:
        return Check("gradients", "warn", f"{zero_ce} examples with zero cross-entropy gradient, {zero_cw} with "
                     "zero margin gradient", ev, ref)
    return Check("gradients", "pass", f"all {total} clean-correct examples have finite, non-zero input gradients",
                 ev, ref)


def check_loss_path(a: _Audit) -> Check:
    """The attack loss must actually rise along the path, and should have levelled off by the end."""
    s = a.s
    no_rise = still_rising = alive = total = non_finite = 0
    curve = torch.zeros(s.steps + 1)
    for x, y in a.batches():
        torch.manual_seed(s.seed)
        res = pgd_trace(a.model, x, y, s.eps, a.step, s.steps, norm=s.norm)
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
                     f"{_pct(share)} of examples: the gradient does not point uphill", ev, ref)
    if share > 0.02:
        return Check("loss-path", "warn", f"PGD never raised the loss on {_pct(share)} of examples", ev, ref)
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


def check_eps_curve(a: _Audit) -> Check:
    """Accuracy must fall with ε and reach the trivial bound: at ℓ∞ ε ≥ 0.5 every image can be turned into
    the same grey image, so no classifier beats the largest class share (Carlini §5.3)."""
    s, data = a.s, a.data
    grid = eps_grid(s, data.x.shape[1])
    accs = [_acc(a.clean)]
    per_eps = [a.clean]
    for eps in grid:
        correct = a.pgd(loss="ce", eps=eps) & a.pgd(loss="cw", eps=eps)
        per_eps.append(correct)
        accs.append(_acc(correct))
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
            return Check("eps-curve", "fail", f"accuracy {_pct(over[0][1])} at ε = {over[0][0]:g} exceeds the "
                         f"trivial bound {_pct(bound)} (largest class share; every image can be made grey): "
                         "the attack is failing, not the model succeeding", ev, ref)
        if data.x.shape[1] > 1:
            at64 = accs[eps_all.index(64 / 255)] if 64 / 255 in eps_all else None
            if at64 is not None and at64 > 0.05:
                return Check("eps-curve", "fail", f"accuracy is still {_pct(at64)} at ε = 64/255; it should "
                             "approach 0", ev, ref)
            if at64 is not None and at64 > 0.01:
                problems.append(f"accuracy {_pct(at64)} at ε = 64/255 has not reached 0")
        elif accs[-1] > 0.02:
            problems.append(f"accuracy {_pct(accs[-1])} at ε = {eps_all[-1]:g} is under the bound but not near 0")
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
    return Check("eps-curve", "pass", f"accuracy falls monotonically to {_pct(accs[-1])} at ε = {eps_all[-1]:g} "
                 f"(trivial bound {_pct(bound)})", ev, ref)


def check_unbounded(a: _Audit) -> Check:
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


def check_steps_restarts(a: _Audit) -> Check:
    """More iterations and more restarts can only help the attacker (Carlini §5.1, §5.6)."""
    s = a.s
    ladder = [s.steps, 2 * s.steps, 4 * s.steps]
    runs = {f"{k} steps": a.pgd(steps=k) for k in ladder}
    runs[f"{s.steps} steps x {s.restarts} restarts"] = a.pgd(restarts=s.restarts)
    names = list(runs)
    ev = {name: round(_acc(v), 4) for name, v in runs.items()}
    ref = "Carlini et al. §5.1, §5.6"
    pairs = [(names[1], names[0]), (names[2], names[1]), (names[3], names[0])]
    notes = []
    for more, fewer in pairs:
        significant, detail = higher_than(runs[more], runs[fewer])
        ev[f"{more} vs {fewer}"] = detail
        if significant:
            return Check("steps-restarts", "fail", f"accuracy rises from {_pct(detail['acc_b'])} ({fewer}) to "
                         f"{_pct(detail['acc_a'])} ({more}) beyond binomial noise", ev, ref)
        if detail["acc_a"] > detail["acc_b"]:
            notes.append(f"{more} slightly above {fewer} (within noise)")
    converged, detail = higher_than(runs[names[0]], runs[names[2]])
    if converged:
        notes.append(f"{names[2]} lowers accuracy to {_pct(detail['acc_b'])} from {_pct(detail['acc_a'])}: "
                     f"{s.steps} steps are not enough")
    if notes:
        return Check("steps-restarts", "warn", "; ".join(notes), ev, ref)
    return Check("steps-restarts", "pass", "more steps and restarts never raise accuracy", ev, ref)


def check_fgsm(a: _Audit) -> Check:
    """Iterative attacks must beat a single step; the reverse signals gradient masking (Carlini §5.4)."""
    s = a.s
    f = a.run(f"fgsm@{s.eps:.6g}", lambda m, x, y: fgsm(m, x, y, s.eps, norm=s.norm))
    p = a.pgd()
    significant, detail = higher_than(p, f)
    ref = "Carlini et al. §5.4"
    if significant:
        return Check("fgsm-vs-pgd", "fail", f"single-step FGSM ({_pct(detail['acc_b'])}) beats {s.steps}-step PGD "
                     f"({_pct(detail['acc_a'])}): the iterative attack is being misled", detail, ref)
    if detail["robust_only_a"]:
        return Check("fgsm-vs-pgd", "warn", f"FGSM breaks {detail['robust_only_a']} examples PGD misses", detail, ref)
    return Check("fgsm-vs-pgd", "pass", f"PGD ({_pct(detail['acc_a'])}) is at least as strong as FGSM "
                 f"({_pct(detail['acc_b'])})", detail, ref)


def _versus_white_box(a: _Audit, name: str, other: torch.Tensor, what: str, ref: str) -> Check:
    white = a.white_box()
    significant, detail = higher_than(white, other)
    detail = {f"{what}_accuracy": detail["acc_b"], "white_box_accuracy": detail["acc_a"],
              f"broken_only_by_{what}": detail["robust_only_a"], "broken_only_by_white_box": detail["robust_only_b"],
              "p_value": detail["p_value"]}
    if significant:
        return Check(name, "fail", f"the {what} attack ({_pct(detail[f'{what}_accuracy'])}) beats the white-box "
                     f"attacks ({_pct(detail['white_box_accuracy'])}): gradients are masked", detail, ref)
    if detail[f"broken_only_by_{what}"]:
        return Check(name, "warn", f"the {what} attack breaks {detail[f'broken_only_by_{what}']} examples every "
                     "white-box attack missed", detail, ref)
    return Check(name, "pass", f"the white-box attacks ({_pct(detail['white_box_accuracy'])}) are at least as "
                 f"strong as the {what} attack ({_pct(detail[f'{what}_accuracy'])})", detail, ref)


def check_black_box(a: _Audit) -> Check:
    """A black-box attack (Square) must not beat the white-box ones (Carlini §5.5)."""
    from otrobust.attacks.autoattack import single_attack

    s = a.s
    square = a.run("square", single_attack("square", s.eps, s.norm, seed=s.seed, n_queries=s.square_queries))
    check = _versus_white_box(a, "black-box", square, "square", "Carlini et al. §5.5; Pintor et al.")
    check.evidence["queries"] = s.square_queries
    return check


def check_transfer(a: _Audit, surrogate: nn.Module | None) -> Check:
    """Examples crafted on another model must not beat attacks on the model itself (Carlini §5.5)."""
    ref = "Carlini et al. §5.5 (transferability)"
    if surrogate is None:
        return Check("transfer", "skip", "no surrogate model (no training data to train one)", {}, ref)
    s = a.s
    surrogate = surrogate.to(a.device).eval()
    crafted = []
    torch.manual_seed(s.seed)
    for x, y in a.batches():
        crafted.append(pgd(surrogate, x, y, s.eps, a.step, s.steps, norm=s.norm).cpu())
    moved = ImageData(torch.cat(crafted), a.data.y, a.data.num_classes)
    with torch.no_grad():
        correct = torch.cat([a.model(x).argmax(1).cpu() for x, _ in _chunks(moved, s.batch_size, a.device)])
    transfer = (correct == a.data.y) & a.clean
    with torch.no_grad():
        surrogate_clean = _acc(torch.cat([surrogate(x).argmax(1).cpu() for x, _ in a.batches()]) == a.data.y)
    check = _versus_white_box(a, "transfer", transfer, "transfer", ref)
    check.evidence["surrogate_clean_accuracy"] = surrogate_clean
    return check


def _chunks(data: ImageData, batch_size: int, device):
    for start in range(0, len(data), batch_size):
        yield data.x[start:start + batch_size].to(device), data.y[start:start + batch_size]


def check_labels(a: _Audit) -> Check:
    """On clean-correct examples the true and the predicted label are the same, so both label sources
    must give the same verdict; elsewhere predicted labels inflate accuracy (docs/method.md §4)."""
    true = a.pgd()
    predicted = a.pgd(labels="predicted")
    cc = a.clean
    disagree = int((true[cc] != predicted[cc]).sum())
    ev = {"true_label_accuracy": _acc(true), "predicted_label_accuracy": _acc(predicted),
          "inflation_points": round(100 * (_acc(predicted) - _acc(true)), 2),
          "disagreements_on_clean_correct": disagree, "clean_correct": int(cc.sum())}
    ref = "docs/method.md §4; Carlini et al. §4.2"
    if disagree > max(1, 0.05 * int(cc.sum())):
        return Check("labels", "fail", f"true- and predicted-label attacks disagree on {disagree} clean-correct "
                     "examples, where the two labels are equal: the evaluation is not reproducible", ev, ref)
    note = (f"predicted labels would report {_pct(ev['predicted_label_accuracy'])} instead of "
            f"{_pct(ev['true_label_accuracy'])}")
    if disagree:
        return Check("labels", "warn", f"{disagree} disagreements on clean-correct examples; {note}", ev, ref)
    return Check("labels", "pass", f"both label sources agree on every clean-correct example; {note}", ev, ref)


def check_autoattack(a: _Audit) -> Check:
    """Run AutoAttack (reference code) and surface its own warnings; attacks that need more classes than the
    data has (the DLR-based APGD-T on 2 or 3 classes) are left out and named."""
    from otrobust.attacks.autoattack import autoattack, is_severe, too_few_classes

    s = a.s
    runner = (autoattack(s.eps, s.norm, "fast", seed=s.seed, n_iter=s.aa_iter, n_targets=3) if s.aa_iter
              else autoattack(s.eps, s.norm, "standard", seed=s.seed))
    left_out = too_few_classes(runner.attacks, a.data.num_classes)
    runner.attacks = tuple(name for name in runner.attacks if name not in left_out)
    correct = a.run("autoattack", runner)
    warnings = list(runner.warnings)
    pgd_suite = a.white_box()
    stronger, detail = higher_than(pgd_suite, correct)
    ev = {"version": f"APGD-CE + APGD-T, {s.aa_iter} iterations, 3 targets (cheap)" if s.aa_iter else "standard",
          "accuracy": _acc(correct), "pgd_suite_accuracy": _acc(pgd_suite), "warnings": warnings,
          "broken_only_by_autoattack": detail["robust_only_a"], "left_out_for_too_few_classes": left_out}
    ref = "Croce & Hein 2020 (AutoAttack flags)"
    severe = [w for w in warnings if is_severe(w)]
    if severe:
        return Check("autoattack", "fail", "AutoAttack reports: " + " | ".join(severe), ev, ref)
    if warnings:
        return Check("autoattack", "warn", "AutoAttack reports: " + " | ".join(warnings), ev, ref)
    if stronger:
        return Check("autoattack", "warn", f"AutoAttack ({_pct(ev['accuracy'])}) is well below the PGD suite "
                     f"({_pct(ev['pgd_suite_accuracy'])}): report AutoAttack, not PGD", ev, ref)
    return Check("autoattack", "pass", f"AutoAttack {_pct(ev['accuracy'])} with no warnings (PGD suite "
                 f"{_pct(ev['pgd_suite_accuracy'])})", ev, ref)


# ---------------------------------------------------------------- orchestration
def train_surrogate(model: nn.Module, data: ImageData, epochs: int, *, seed: int = 0, batch_size: int = 128,
                    lr: float = 1e-3, device="cpu") -> nn.Module:
    """Standard (non-robust) training of ``model`` for a few epochs: a cheap surrogate for transfer attacks."""
    from otrobust.data.loader import iterate_batches

    torch.manual_seed(seed)
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed + epoch)
        for x, y in iterate_batches(data, batch_size, shuffle=True, generator=gen, device=device):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


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
                threat_extra: dict | None = None) -> AuditReport:
    """Run every check on ``data`` (already cut to the first n examples) and return the report."""
    log = log or (lambda text: None)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    a = _Audit(model, data, settings, device, log)
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
            checks.append(_run_check(name, run))
            checks[-1].seconds = round(time.perf_counter() - started, 2)
            log(f"  -> {checks[-1].status}: {checks[-1].finding}")
    finally:
        model.train(was_training)
    threat = {"norm": settings.norm, "eps": settings.eps, "n": len(data), "labels": "true", "seed": settings.seed,
              "steps": settings.steps, "restarts": settings.restarts, "quick": settings.quick,
              "clean_accuracy": _acc(a.clean), **(threat_extra or {})}
    return AuditReport(threat, checks, a.curve, time.perf_counter() - t0)


# ---------------------------------------------------------------- curves, plots and the written report
def accuracy_curve(model: nn.Module, data: ImageData, eps_list: list[float], *, labels: str = "true",
                   norm: str = "linf", steps: int = 20, seed: int = 0, batch_size: int = 256,
                   device: torch.device | str = "cpu") -> list[float]:
    """Worst-case accuracy over PGD-CE and PGD-CW at each ε (0 means clean), against ``labels``."""
    from otrobust.evaluation.evaluate import build_attacks

    out = []
    for eps in eps_list:
        attacks = build_attacks(["pgd", "pgd-cw"], eps=eps, steps=steps, norm=norm) if eps > 0 else {}
        torch.manual_seed(seed)
        res = evaluate_model(model, data, attacks, labels=labels, batch_size=batch_size, device=device)
        out.append(res.accuracy("worst") if attacks else res.accuracy("clean"))
    return out
