"""The audit's data: its settings, one finding (``Check``), the report, and the state its checks share."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from otrobust.attacks.gradient import PGD, default_step_size, with_eot
from otrobust.attacks.table import AttackSpec, Family, pgd_spec
from otrobust.data.base import ImageData
from otrobust.distributed import DistInfo
from otrobust.errors import OtrobustError
from otrobust.evaluation.batches import RunOptions, run_evaluation
from otrobust.evaluation.evaluate import EvalOptions, ThreatModel, evaluate_model
from otrobust.evaluation.statistics import fraction_true

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
    randomized: bool = False  # the model draws random numbers on purpose: gradient attacks average eot_draws forwards
    eot_draws: int = 20

    @classmethod
    def make(cls, eps: float, norm: str = "linf", quick: bool = False, **overrides) -> AuditSettings:
        """Settings with ``quick`` defaults (for CPUs: see QUICK) under any explicit, non-None overrides."""
        if norm not in ("linf", "l2"):
            raise OtrobustError(f"unknown norm {norm!r}; use linf or l2")
        if not eps > 0:
            raise OtrobustError(f"--eps must be positive for an audit, got {eps}")
        values = {**(QUICK if quick else {}), **{k: v for k, v in overrides.items() if v is not None}}
        for key in ("steps", "restarts", "unbounded_steps", "square_queries", "batch_size", "aa_iter", "eot_draws"):
            if key in values and values[key] < 1:
                raise OtrobustError(f"--{key.replace('_', '-')} must be at least 1, got {values[key]}")
        return cls(eps=eps, norm=norm, quick=quick, **values)


@dataclass
class AuditReport:
    """An audit's findings: the threat model, one :class:`Check` per check, the accuracy-vs-ε curve, seconds taken.

    ``failed`` is True when any check failed; ``to_dict()`` is the ``audit.json`` record.
    """

    threat: ThreatModel
    checks: list[Check]
    curve: dict
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in STATUSES}

    def to_dict(self) -> dict:
        return {"threat_model": self.threat.to_json(), "failed": self.failed, "counts": self.counts(),
                "checks": [asdict(c) for c in self.checks], "accuracy_vs_eps": self.curve,
                "seconds": round(self.seconds, 1)}


@dataclass(frozen=True, slots=True)
class Subject:
    """What an audit's threat model names beside the budget: the dataset and the model under test (in words)."""

    dataset: str
    model: str


@dataclass(frozen=True)
class AttackRun:
    """What a result of :meth:`AuditState.run` came from: the attack's table entry, its radius, its labels."""

    spec: AttackSpec
    eps: float | None
    labels: str


def eps_tag(eps: float) -> str:
    """ε as written in a result's key (6 significant digits): two radii with one tag share one result."""
    return f"{eps:.6g}"


def percent(v: float) -> str:
    return f"{100 * v:.1f}%"


class AuditState:
    """The model, the data and every per-example result computed so far (true labels unless named).

    Every attack runs through :func:`otrobust.evaluation.batches.run_evaluation`: in fixed batches seeded by their
    position, shared out among the processes of ``info`` (a torchrun job; one process when None), so that the
    results are the same on any number of them and every run of a key sees the same random starts."""

    def __init__(self, model: nn.Module, data: ImageData, settings: AuditSettings, device, log,
                 info: DistInfo | None = None):
        self.model, self.data, self.s, self.device, self.log = model, data, settings, device, log
        self.info = info
        self.step = default_step_size(settings.eps, settings.steps)
        self.results: dict[str, torch.Tensor] = {}
        self.runs: dict[str, AttackRun] = {}  # what each attacked result in ``results`` came from
        self.curve: dict = {}

    def run(self, key: str, attack, spec: AttackSpec, eps: float | None, labels: str = "true") -> torch.Tensor:
        """Per-example correctness (N,) under ``attack`` (the table's ``spec`` at radius ``eps``), re-seeded so
        that runs are comparable; recorded under ``key``, and computed once per key."""
        if key not in self.results:
            t0 = time.perf_counter()
            if self.s.randomized and not spec.reference_code:  # the reference code draws its own
                attack = with_eot(attack, self.s.eot_draws)
            res = run_evaluation(self.model, self.data, {key: attack}, labels=labels, batch_size=self.s.batch_size,
                                 device=self.device, seed=self.s.seed,
                                 options=RunOptions(info=self.info, allow_non_finite=True))  # see check_gradients
            self.results[key] = res.per_attack[key]
            self.runs[key] = AttackRun(spec, eps, labels)
            self.log(f"  {key}: {percent(fraction_true(self.results[key]))} ({time.perf_counter() - t0:.1f}s)")
        return self.results[key]

    def pgd(self, steps: int | None = None, restarts: int = 1, loss: str = "ce", eps: float | None = None,
            labels: str = "true") -> torch.Tensor:
        steps = steps or self.s.steps
        eps = self.s.eps if eps is None else eps
        key = f"pgd-{loss}-{steps}x{restarts}@{eps_tag(eps)}" + ("" if labels == "true" else "-predicted")
        attack = PGD(eps=eps, step_size=default_step_size(eps, steps), steps=steps, restarts=restarts, loss=loss,
                     norm=self.s.norm)
        return self.run(key, attack, pgd_spec(loss), eps, labels)

    @property
    def clean(self) -> torch.Tensor:
        if "clean" not in self.results:
            torch.manual_seed(self.s.seed)  # a randomised model's clean pass repeats too
            self.results["clean"] = evaluate_model(self.model, self.data, {}, batch_size=self.s.batch_size,
                                                   device=self.device,
                                                   options=EvalOptions(allow_non_finite=True)).clean
        return self.results["clean"]

    def white_box(self) -> torch.Tensor:
        """Per-example worst case over every run of otrobust's gradient attacks at the audited ε (true labels)."""
        out = self.clean.clone()
        for key, ran in self.runs.items():
            if (ran.spec.family is Family.GRADIENT and ran.labels == "true" and ran.eps is not None
                    and eps_tag(ran.eps) == eps_tag(self.s.eps)):
                out &= self.results[key]
        return out

    def batches(self):
        for start in range(0, len(self.data), self.s.batch_size):
            yield (self.data.x[start:start + self.s.batch_size].to(self.device),
                   self.data.y[start:start + self.s.batch_size].to(self.device))
