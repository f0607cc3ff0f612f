"""What a preset is: its runs, its evaluations, the paper's numbers, and how the smoke scale shrinks it.

Data types only; the presets themselves are in :mod:`otrobust.experiments.presets` (the paper's experiments)
and :mod:`otrobust.experiments.studies` (our own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Run:
    """One training run: a unique ``name`` in the preset, the paper's ``label`` for it, TrainConfig overrides.

    ``baseline``: the run this one is compared with, seed by seed (the paired difference of a multi-seed study).
    ``init_from``: start from the final checkpoint of that run of the same seed (fine-tuning); it is listed
    earlier in the preset, so it is trained first.
    ``seeds``: the seed indices (0 = the first) this run is trained with; empty: every seed of the study (a tuning
    trial on seed 0 alone, an arm on fresh seeds).
    ``looks``: how many times its comparison with ``baseline`` has been judged on the way to its seeds (2 when seeds
    were added because a first verdict was open): a claim on it is judged with the 5 % chance of a wrong verdict
    split over the looks (claims.Claim.level).
    """

    name: str
    label: str
    config: dict[str, Any]
    baseline: str | None = None
    init_from: str | None = None
    seeds: tuple[int, ...] = ()  # which seed indices of a multi-seed study train this run; empty: every one
    looks: int = 1


# The attack whose result rows the accuracy-against-eps figures plot.
SWEEP_ATTACK = "pgd"


@dataclass(frozen=True)
class Evaluation:
    """Every (eps, steps) pair of these attacks on the first ``n`` test images (all when None).

    ``eps`` empty: the run's training radius; ``steps`` empty for attacks without a step count
    (AutoAttack). ``kind="features"`` saves penultimate features of clean and PGD examples for a
    t-SNE plot instead of accuracies. ``runs`` empty: every run of the preset.
    """

    name: str
    attacks: tuple[str, ...] = ("pgd",)
    eps: tuple[float, ...] = ()
    steps: tuple[int, ...] = (20,)
    n: int | None = None
    kind: str = "accuracy"
    runs: tuple[str, ...] = ()
    labels: str = "true"  # "predicted": the paper's protocol, reported as such
    step_size: float | None = None  # PGD step; None: 2.5 * eps / steps
    seeds: tuple[int, ...] = ()  # which of each run's seeds (0 = its first); empty: every seed


@dataclass(frozen=True)
class PaperValue:
    """A number the paper reports for ``run`` (``metric`` at ``eps``/``steps`` when it is a sweep point).

    ``run`` may name no run of the preset (a comparison row from another paper, or a method otrobust
    does not implement); it is then listed as "paper only".
    """

    run: str
    metric: str
    value: float
    eps: float | None = None
    steps: int | None = None


@dataclass(frozen=True)
class Tuning:
    """Trials of one method on seed index 0, compared by validation accuracy alone (the checkpoint each keeps).

    ``trials``: run names, the method's default arm first: a tie (the same validation PGD and clean accuracy)
    goes to the earlier trial, so an exact tie keeps the default. ``tuned``: the run that trains the best trial's
    settings on fresh seeds, once the trials are in (None before): its settings must be the best trial's, which
    the results page checks from the records.
    """

    name: str
    trials: tuple[str, ...]
    tuned: str | None = None


@dataclass(frozen=True)
class Preset:
    """One experiment of the paper."""

    name: str
    description: str
    reference: str
    runs: tuple[Run, ...]
    evaluations: tuple[Evaluation, ...]
    paper_settings: dict[str, Any]
    paper_results: tuple[PaperValue, ...] = ()
    notes: tuple[str, ...] = ()
    plots: tuple[str, ...] = ("curves",)  # of: curves, plateau, tuning, eps, steps, beta, tsne, label-sweep, claims
    audit_seeds: tuple[int, ...] = ()  # which of each run's seeds are audited (0 = its first); empty: every seed
    audit_runs: tuple[str, ...] = ()  # which runs are audited; empty: every run
    audit_n: int | None = None  # test images per audit at the full scale (None: reproduce's default)
    audit_quick: bool = False  # audit with its CPU budget (otrobust.evaluation.audit.QUICK) at the full scale too
    tunings: tuple[Tuning, ...] = ()  # a study's tuning trials, reported with their winner
    plateau_points: float | None = None  # a baseline has plateaued when its validation PGD moved less over 3 epochs

    def run(self, name: str) -> Run:
        return next(r for r in self.runs if r.name == name)


# How the smoke scale shrinks a full-scale run and its evaluation (CPU, seconds per run).
SMOKE: dict[str, Any] = {
    "train": {"train_size": 64, "val_size": 32, "epochs": 1, "batch_size": 32, "steps": 2, "val_steps": 1},
    "models": {"resnet18": "wrn-16-1", "preact-resnet18": "wrn-16-1", "wrn-34-10": "wrn-16-1",
               "wrn-28-10": "wrn-16-1"},
    "stand_in": "digits",  # the bundled dataset used when no --data-dir is given
    "eval_n": 48,
    "features_n": 40,
    "steps_divisor": 20,  # PGD-k becomes PGD-max(1, k // 20): a steps sweep 10..100 becomes 1..5
    "attack_options": {"aa_iter": 2, "aa_queries": 10, "aa_targets": 1},  # a cheap, non-standard AutoAttack
    "audit_n": 32,  # the audit of every run (otrobust.evaluation.audit) on this many test images, with this budget:
    "audit": {"steps": 5, "restarts": 2, "unbounded_steps": 20, "square_queries": 50, "aa_iter": 5},
}
