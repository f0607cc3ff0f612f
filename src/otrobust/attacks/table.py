"""The attacks otrobust knows by name, as data: one :class:`AttackSpec` per attack.

Everything that names an attack — the ``--attack`` choices and their help, building an attack from a
:class:`Budget`, the budget line in a results table, which attacks get EOT on a randomised model, which results
decide the audit's white-box verdict, which AutoAttack stages are black-box, the planner's cost — reads it from
:data:`ATTACK_SPECS`, never from the attack's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial

import torch
from torch import nn

from otrobust.attacks import autoattack as aa
from otrobust.attacks.gradient import PGD, default_step_size, fgsm, step_sizes
from otrobust.attacks.norms import get_norm
from otrobust.errors import OtrobustError

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, x, y) -> x_adv

# The planner's cost model: a forward pass of one image = 1 unit, an attack step (input gradient only) = 2.
# AutoAttack standard: AA_UNITS per image (APGD-CE on all, the rest on the ~half left).
AA_UNITS = 4500
EOT_DRAWS = 20  # AutoAttack's rand version averages this many forwards per gradient


class Family(Enum):
    """Where an attack's strength comes from, and whose code runs it."""

    GRADIENT = "gradient"  # otrobust's own gradient attacks (FGSM, PGD)
    AUTOATTACK = "reference AutoAttack"  # AutoAttack's reference code, gradient-based (APGD, FAB)
    BLACK_BOX = "black-box"  # AutoAttack's reference code, queries only (Square)


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How hard every attack of one evaluation tries, under one threat model (``norm``, ``eps``).

    ``steps`` / ``step_size`` / ``restarts`` / ``schedule`` / ``chunk`` (images per piece, see
    ``attacks.attack_chunk``) / ``workers`` (pieces attacked at the same time, see ``attacks.attack_workers``) set
    the PGD attacks; ``seed`` and the ``aa_*`` overrides (cheaper, non-standard runs: APGD/FAB iterations, Square
    queries, target classes) set the AutoAttack ones. ``step_size`` None is resolved here, once, to
    :func:`default_step_size`.
    """

    eps: float
    norm: str = "linf"
    steps: int = 20
    step_size: float | None = None
    restarts: int = 1
    schedule: str = "constant"
    seed: int = 0
    aa_iter: int | None = None
    aa_queries: int | None = None
    aa_targets: int | None = None
    chunk: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        get_norm(self.norm)
        if not self.eps >= 0:
            raise OtrobustError(f"eps must be >= 0, got {self.eps}")
        step_sizes(1.0, 1, self.schedule)  # validates the schedule name here, before any attack runs
        if self.step_size is None:
            object.__setattr__(self, "step_size", default_step_size(self.eps, self.steps))

    def reference_overrides(self) -> dict[str, int | None]:
        """The keyword arguments of :func:`otrobust.attacks.autoattack.autoattack` this budget sets."""
        return dict(seed=self.seed, n_iter=self.aa_iter, n_queries=self.aa_queries, n_targets=self.aa_targets)

    def iterations_text(self) -> str:
        return f"{self.aa_iter or aa.STANDARD_ITERATIONS} iterations"

    def queries_text(self) -> str:
        return f"{self.aa_queries or aa.STANDARD_QUERIES} queries"


@dataclass(frozen=True)
class AttackSpec:
    """One attack known by name.

    ``build(budget)`` makes it, as ``attack(model, x, y) -> x_adv``; ``describe(budget)`` says in one line how
    hard it tries; ``cost(steps)`` is its forward-equivalents per image for the planner. ``loss`` is the loss a
    PGD entry climbs (None elsewhere); ``stages`` the reference attacks an AutoAttack entry runs, in order;
    ``version`` the AutoAttack version of a suite; ``randomized`` the entry to run in its place on a randomised
    model (None: itself).
    """

    name: str
    help: str
    family: Family
    build: Callable[[Budget], Attack]
    describe: Callable[[Budget], str]
    cost: Callable[[int], float]
    loss: str | None = None
    stages: tuple[str, ...] = ()
    version: str | None = None
    randomized: str | None = None

    @property
    def pgd_like(self) -> bool:
        """An iterative attack of otrobust's own: it needs at least one step."""
        return self.loss is not None

    @property
    def reference_code(self) -> bool:
        """Run by AutoAttack's reference code (which draws its own randomness and its own EOT)."""
        return self.family is not Family.GRADIENT

    @property
    def suite(self) -> bool:
        """A whole AutoAttack version rather than one of its attacks."""
        return self.version is not None


def _pgd_spec(name: str, loss: str, help: str) -> AttackSpec:
    def build(b: Budget) -> Attack:
        return PGD(eps=b.eps, step_size=b.step_size, steps=b.steps, restarts=b.restarts, loss=loss, norm=b.norm,
                   schedule=b.schedule, chunk=b.chunk, workers=b.workers)

    def describe(b: Budget) -> str:
        text = f"{b.steps} steps of {b.step_size:.4g}, {b.restarts} restart{'' if b.restarts == 1 else 's'}"
        return text + ("" if b.schedule == "constant" else f", {b.schedule} schedule")

    return AttackSpec(name, help, Family.GRADIENT, build, describe, lambda steps: 2 * steps + 1, loss=loss)


def _single_spec(name: str, help: str, family: Family, describe: Callable[[Budget], str]) -> AttackSpec:
    def build(b: Budget) -> Attack:
        return aa.single_attack(name, b.eps, b.norm, **b.reference_overrides())

    return AttackSpec(name, help, family, build, describe, lambda steps: 2 * steps + 1,
                      stages=(aa.SINGLE_ATTACKS[name],))


def _suite_spec(name: str, help: str, version: str, describe: Callable[[Budget], str],
                randomized: str | None = None) -> AttackSpec:
    def build(b: Budget) -> Attack:
        return aa.autoattack(b.eps, b.norm, version, **b.reference_overrides())

    return AttackSpec(name, help, Family.AUTOATTACK, build, describe, lambda steps: AA_UNITS,
                      stages=aa.VERSIONS[version], version=version, randomized=randomized)


def _fgsm_build(b: Budget) -> Attack:
    return partial(fgsm, eps=b.eps, norm=b.norm)


ATTACK_SPECS: dict[str, AttackSpec] = {s.name: s for s in (
    AttackSpec("fgsm", "single step of size eps (Goodfellow et al. 2015)", Family.GRADIENT, _fgsm_build,
               lambda b: f"1 step of {b.eps:.4g}", lambda steps: 3),
    _pgd_spec("pgd", "ce", "PGD on cross-entropy, random start, best iterate kept"),
    _pgd_spec("pgd-cw", "cw", "PGD on the CW margin (max other logit - true logit)"),
    _pgd_spec("pgd-dlr", "dlr", "PGD on the scale-invariant DLR loss (Croce & Hein 2020)"),
    _single_spec("apgd-ce", "AutoAttack's APGD on cross-entropy (reference code)", Family.AUTOATTACK,
                 Budget.iterations_text),
    _single_spec("apgd-dlr", "AutoAttack's APGD on DLR", Family.AUTOATTACK, Budget.iterations_text),
    _single_spec("apgd-t", "AutoAttack's targeted APGD-DLR over 9 target classes", Family.AUTOATTACK,
                 Budget.iterations_text),
    _single_spec("fab", "AutoAttack's targeted FAB (FAB-T)", Family.AUTOATTACK, Budget.iterations_text),
    _single_spec("square", "AutoAttack's Square, black box, 5000 queries", Family.BLACK_BOX, Budget.queries_text),
    _suite_spec("autoattack", "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square", "standard",
                lambda b: f"{b.iterations_text()}, {b.queries_text()}", randomized="autoattack-rand"),
    _suite_spec("autoattack-fast", "APGD-CE then APGD-T", "fast", Budget.iterations_text),
    _suite_spec("autoattack-rand", f"APGD-CE and APGD-DLR with {EOT_DRAWS}-draw EOT, for randomised models", "rand",
                lambda b: f"{b.iterations_text()}, {EOT_DRAWS} EOT draws"),
)}
"""Every attack ``eval --attack`` knows, by name: its help, family, builder, budget line and planner cost."""
ATTACK_NAMES: tuple[str, ...] = tuple(ATTACK_SPECS)
"""The attack names in the table's order."""
# The attack a RobustBench summary reports.
ROBUSTBENCH_ATTACK = "autoattack"
# AutoAttack's stages (reference names) that use no gradient.
BLACK_BOX_STAGES: tuple[str, ...] = tuple(dict.fromkeys(
    stage for s in ATTACK_SPECS.values() if s.family is Family.BLACK_BOX for stage in s.stages))


def attack_spec(name: str) -> AttackSpec:
    """The spec of attack ``name``; an unknown name is an :class:`OtrobustError` listing the known ones."""
    if name not in ATTACK_SPECS:
        raise OtrobustError(f"unknown attack {name!r}; choose from: {', '.join(ATTACK_NAMES)}")
    return ATTACK_SPECS[name]


def pgd_spec(loss: str) -> AttackSpec:
    """The PGD entry that climbs ``loss`` (``ce``, ``cw`` or ``dlr``)."""
    for spec in ATTACK_SPECS.values():
        if spec.loss == loss:
            return spec
    raise OtrobustError(f"no PGD attack on the loss {loss!r}; known: "
                        + ", ".join(s.loss for s in ATTACK_SPECS.values() if s.loss))


def for_randomized_model(name: str) -> str:
    """The attack to run in place of ``name`` on a randomised model (``name`` itself unless the table names one);
    an unknown name is returned as it is, for the caller's own check to report."""
    spec = ATTACK_SPECS.get(name)
    return spec.randomized if spec is not None and spec.randomized else name
