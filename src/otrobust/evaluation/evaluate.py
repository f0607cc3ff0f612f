"""Clean, per-attack and worst-case robust accuracy, against the true labels by default."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from otrobust.attacks.table import ATTACK_NAMES, ATTACK_SPECS, ROBUSTBENCH_ATTACK, Attack, Budget, attack_spec
from otrobust.data.base import ImageData
from otrobust.errors import OtrobustError
from otrobust.evaluation.statistics import binomial_interval
from otrobust.store.files import typed_fields

LABEL_SOURCES = ("true", "predicted")


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreatModel:
    """What an evaluation or an audit measured against: the norm and radius, the first ``n`` test images, the labels
    the attacks move away from, the seed, and the attack budget and the model where they were stated (None: not
    stated, and left out of the JSON). ``to_json()`` is the ``threat_model`` object of ``eval --json`` and
    ``audit.json``; :meth:`from_json` reads one back, checking every type.

    Examples:
        >>> t = ThreatModel(norm="linf", eps=0.3, n=100, seed=0, steps=20)
        >>> t.to_json()
        {'norm': 'linf', 'eps': 0.3, 'n': 100, 'labels': 'true', 'seed': 0, 'steps': 20}
        >>> ThreatModel.from_json(t.to_json()) == t
        True
    """

    norm: str
    eps: float
    n: int
    labels: str = "true"
    seed: int = 0
    dataset: str | None = None
    model: str | None = None
    steps: int | None = None
    restarts: int | None = None
    schedule: str | None = None
    step_size: float | None = None
    autoattack_standard: bool | None = None
    quick: bool | None = None
    randomized: bool | None = None
    clean_accuracy: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _THREAT_TYPES if getattr(self, f) is not None}

    @classmethod
    def from_json(cls, data: Any, source: str = "the threat model") -> ThreatModel:
        return cls(**typed_fields(data, _THREAT_TYPES, source, required=("norm", "eps", "n")))


_THREAT_TYPES: dict[str, type | tuple[type, ...]] = {
    "norm": str, "eps": (int, float), "n": int, "labels": str, "seed": int, "dataset": str, "model": str,
    "steps": int, "restarts": int, "schedule": str, "step_size": (int, float), "autoattack_standard": bool,
    "quick": bool, "randomized": bool, "clean_accuracy": (int, float)}


@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """How an evaluation runs, not what it measures: ``nhwc`` runs in the channels-last memory format (see
    :func:`channels_last`); ``allow_non_finite`` lets non-finite clean logits through instead of an OtrobustError
    (the audit, which reports them); ``progress(images)`` is called as images are finished."""

    nhwc: bool = True
    allow_non_finite: bool = False
    progress: Callable[[int], None] | None = None


@dataclass(kw_only=True)
class EvalResult:
    """Per-example outcomes. Tensors are bool (N,): True where the model is right."""

    clean: torch.Tensor
    per_attack: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: str = "true"
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)  # what an attack reported (AutoAttack's checks)
    # For an attack made of several in sequence (AutoAttack): per stage (``"clean"``, then each attack in order),
    # (N,) bool, right after that stage — so a reader sees which attack did the work.
    stages: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # Predicted classes (N,) int64: on the clean images, and on each attack's adversarial examples.
    clean_pred: torch.Tensor | None = None
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)

    def stage_accuracies(self, name: str) -> dict[str, float]:
        """Accuracy after each stage of attack ``name`` (empty if it has no stages)."""
        return {stage: int(t.sum()) / len(t) if len(t) else float("nan")
                for stage, t in self.stages.get(name, {}).items()}

    @property
    def n(self) -> int:
        return len(self.clean)

    @property
    def worst(self) -> torch.Tensor:
        """Robust on an example only if no attack broke it (and, with true labels, clean-correct)."""
        out = self.clean.clone() if self.labels == "true" else torch.ones_like(self.clean)
        for correct in self.per_attack.values():
            out &= correct
        return out

    def correct(self, name: str = "worst") -> torch.Tensor:
        """Per-example outcome (N,) bool of ``clean``, ``worst`` or one attack."""
        if name in ("clean", "worst"):
            return self.clean if name == "clean" else self.worst
        if name not in self.per_attack:
            raise OtrobustError(f"no attack named {name!r} was run; ran: {', '.join(self.per_attack) or 'none'}")
        return self.per_attack[name]

    def accuracy(self, name: str = "worst") -> float:
        t = self.correct(name)
        return int(t.sum()) / len(t) if len(t) else float("nan")

    def interval(self, name: str = "worst") -> tuple[float, float]:
        """95 % Wilson interval of :meth:`accuracy`."""
        t = self.correct(name)
        return binomial_interval(int(t.sum()), len(t))

    def summary(self) -> dict:
        rows = {"clean": self.clean, **self.per_attack}
        if self.per_attack:
            rows["worst_case"] = self.worst
        out = {}
        for name, t in rows.items():
            k = int(t.sum())
            lo, hi = binomial_interval(k, self.n)
            out[name] = {"accuracy": k / self.n if self.n else float("nan"), "correct": k, "n": self.n,
                         "ci95": [lo, hi]}  # no timings: two runs of one evaluation give equal summaries
        return out


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes (N,) in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


@contextmanager
def channels_last(model: nn.Module, on: bool = True):
    """The model in the channels-last memory format for the block (restored after if it was not): oneDNN and
    cuDNN convolutions are faster in NHWC. Values do not change beyond float rounding."""
    weights = [p for p in model.parameters() if p.ndim == 4]
    convert = on and any(not p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    if convert:
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)


def _check_finite(logits: torch.Tensor, start: int) -> None:
    """Raise OtrobustError if any clean logit of the batch starting at image ``start`` is NaN or inf."""
    bad = int((~torch.isfinite(logits).all(1)).sum())
    if bad:
        raise OtrobustError(f"the model gives non-finite logits (NaN or inf) on {bad} of the images "
                            f"{start}..{start + len(logits) - 1}: its weights hold NaN or inf (a diverged run?), so "
                            "no accuracy of it means anything; evaluate another checkpoint")


def _attacked(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
              clean_pred: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, predicted class), each (B,), on ``attack``'s examples moving away from ``target``. Non-finite
    logits count as wrong; with ``clean_pred`` (true labels) so does a clean mistake."""
    x_adv = attack(model, x, target)
    with torch.no_grad():
        logits = model(x_adv)
    predicted = logits.argmax(1)
    correct = (predicted == y) & torch.isfinite(logits).all(1)
    return (correct & (clean_pred == y) if clean_pred is not None else correct), predicted


def evaluate_model(model: nn.Module, data: ImageData, attacks: dict[str, Attack] | None = None, *,
                   labels: str = "true", batch_size: int = 256, device: torch.device | str = "cpu",
                   attack_seeds: dict[str, int] | None = None, options: EvalOptions | None = None) -> EvalResult:
    """Run every attack on every example of ``data`` (model in eval mode).

    labels="true": attacks move away from the true label; an example counts as robust only if it is
    also clean-correct. labels="predicted" (the paper's protocol, for comparison only): attacks move
    away from the model's own prediction and the result is compared with the true label.
    ``options`` (:class:`EvalOptions`): ``progress`` is called with the number of examples finished after each
    batch and attack; ``nhwc`` runs in the channels-last memory format. Non-finite clean logits (NaN or inf
    weights) are an OtrobustError unless ``allow_non_finite`` (the audit, which reports them); an attacked input
    with non-finite logits counts as broken. ``attack_seeds``: the seed of the global RNG before each attack on
    each batch (otherwise the attacks draw on in sequence).
    """
    options = options or EvalOptions()
    progress, allow_non_finite = options.progress, options.allow_non_finite
    if labels not in LABEL_SOURCES:
        raise OtrobustError(f"unknown label source {labels!r}; use 'true' or 'predicted'")
    attacks = attacks or {}
    was_training = model.training
    model.eval()
    out = _Collected.for_attacks(attacks)
    seen = {name: len(getattr(attack, "warnings", ())) for name, attack in attacks.items()}
    nhwc = options.nhwc and data.x.ndim == 4
    with channels_last(model, nhwc):
        try:
            for start in range(0, len(data), batch_size):
                x = data.x[start:start + batch_size].to(
                    device, memory_format=torch.channels_last if nhwc else torch.preserve_format)
                y = data.y[start:start + batch_size].to(device)
                with torch.no_grad():
                    logits = model(x)
                if not allow_non_finite:
                    _check_finite(logits, start)
                pred = logits.argmax(1)
                target = y if labels == "true" else pred
                clean_ok = (pred == y).cpu()
                out.clean.append(clean_ok)
                out.clean_pred.append(pred.cpu())
                for name, attack in attacks.items():
                    t0 = time.perf_counter()
                    if attack_seeds:
                        torch.manual_seed(attack_seeds[name])
                    correct, predicted = _attacked(model, attack, x, y, target, pred if labels == "true" else None)
                    out.per_attack[name].append(correct.cpu())
                    out.adv_pred[name].append(predicted.cpu())
                    for stage, robust in getattr(attack, "last_stages", {}).items():
                        out.stages.setdefault(name, {}).setdefault(stage, []).append(robust & clean_ok)
                    out.seconds[name] += time.perf_counter() - t0
                    if progress:
                        progress(len(y))
        finally:
            model.train(was_training)
    reported = {name: list(getattr(attack, "warnings", ()))[seen[name]:] for name, attack in attacks.items()}
    return out.result(labels, {k: v for k, v in reported.items() if v})


@dataclass
class _Collected:
    """What :func:`evaluate_model` gathers batch by batch (per-example tensors on the CPU), and the
    :class:`EvalResult` they make once concatenated."""

    per_attack: dict[str, list[torch.Tensor]]
    adv_pred: dict[str, list[torch.Tensor]]
    seconds: dict[str, float]
    clean: list[torch.Tensor] = field(default_factory=list)
    clean_pred: list[torch.Tensor] = field(default_factory=list)
    stages: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)

    @classmethod
    def for_attacks(cls, attacks: dict[str, Attack]) -> _Collected:
        return cls(per_attack={name: [] for name in attacks}, adv_pred={name: [] for name in attacks},
                   seconds=dict.fromkeys(attacks, 0.0))

    def result(self, labels: str, warnings: dict[str, list[str]]) -> EvalResult:
        return EvalResult(
            clean=torch.cat(self.clean) if self.clean else torch.zeros(0, dtype=torch.bool),
            per_attack={k: torch.cat(v) for k, v in self.per_attack.items()}, labels=labels, seconds=self.seconds,
            warnings=warnings,
            stages={name: {stage: torch.cat(v) for stage, v in st.items()} for name, st in self.stages.items()},
            clean_pred=torch.cat(self.clean_pred) if self.clean_pred else torch.zeros(0, dtype=torch.long),
            predictions={k: torch.cat(v) for k, v in self.adv_pred.items()})


def build_attacks(names: list[str], budget: Budget | None = None, **fields: Any) -> dict[str, Attack]:
    """Attacks by name (see :data:`~otrobust.attacks.table.ATTACK_SPECS`) sharing one budget: ``budget``, or
    :class:`~otrobust.attacks.table.Budget`'s fields as keywords (``build_attacks(["pgd"], eps=0.3, steps=40)``).
    Duplicate names are dropped, the order kept."""
    budget = budget if budget is not None else Budget(**fields)
    unknown = [n for n in names if n not in ATTACK_SPECS]
    if unknown:
        raise OtrobustError(f"unknown attack(s) {', '.join(unknown)}; choose from: {', '.join(ATTACK_NAMES)}")
    iterative = [n for n in names if ATTACK_SPECS[n].pgd_like]
    if iterative and budget.steps < 1:
        raise OtrobustError(f"--steps {budget.steps} is too few for {', '.join(iterative)}: an iterative attack needs "
                            "at least 1 step (with 0 only its random start is tried, which says nothing about "
                            "robustness); use e.g. --steps 20")
    return {n: ATTACK_SPECS[n].build(budget) for n in dict.fromkeys(names)}


def attack_budgets(names: list[str], budget: Budget | None = None, **fields: Any) -> dict[str, str]:
    """How hard each attack of :func:`build_attacks` (called with the same arguments) tries, one line per name:
    steps, step size and restarts for PGD, iterations or queries for the AutoAttack ones.

    Examples:
        >>> attack_budgets(["fgsm", "pgd", "square"], eps=0.3, steps=20, restarts=5)
        {'fgsm': '1 step of 0.3', 'pgd': '20 steps of 0.0375, 5 restarts', 'square': '5000 queries'}
    """
    budget = budget if budget is not None else Budget(**fields)
    return {n: attack_spec(n).describe(budget) for n in dict.fromkeys(names)}


def eval_record(result: EvalResult, threat: ThreatModel) -> dict:
    """The JSON record of an evaluation: threat model, clean and worst-case accuracy with 95 % intervals,
    the per-attack breakdown and what the attacks reported. ``robust_accuracy`` is in [0, 1]."""
    record = {"threat_model": threat.to_json(), "labels": result.labels, "n": result.n,
              "clean_accuracy": result.accuracy("clean"), "clean_accuracy_ci95": list(result.interval("clean")),
              "robust_accuracy": result.accuracy("worst") if result.per_attack else None,
              "robust_accuracy_ci95": list(result.interval("worst")) if result.per_attack else None,
              "worst_case_over": list(result.per_attack), "attacks": result.summary(),
              "attack_warnings": result.warnings,
              "stages": {name: result.stage_accuracies(name) for name in result.stages}}
    if result.labels == "predicted":
        record["labels_note"] = ("PREDICTED labels (the paper's protocol): attacks moved away from the model's own "
                                 "prediction; this is not robust accuracy against the true labels")
    return record


def robustbench_summary(result: EvalResult, *, dataset: str, eps: float, norm: str, architecture: str,
                        name: str, attack: str = ROBUSTBENCH_ATTACK) -> dict:
    """A RobustBench-style model-info record (percent strings, as in RobustBench's ``model_info`` files)."""
    if attack not in result.per_attack:
        raise OtrobustError(f"a RobustBench summary needs the {attack!r} attack; add it to --attack")
    eps_text, k = f"{eps:g}", round(eps * 255)
    if len(eps_text) > 5 and abs(eps * 255 - k) < 1e-6:  # 8/255 rather than 0.0313725
        eps_text = f"{k}/255"
    return {"name": name, "dataset": dataset, "threat_model": {"linf": "Linf", "l2": "L2"}[norm], "eps": eps_text,
            "architecture": architecture, "additional_data": False, "number_forward_passes": 1,
            "clean_acc": f"{100 * result.accuracy('clean'):.2f}",
            "autoattack_acc": f"{100 * result.accuracy(attack):.2f}", "n_examples": result.n,
            "labels": result.labels, "unreliable": result.labels != "true",
            "footnote": f"first {result.n} test images; evaluated with otrobust (AutoAttack reference code)"}
