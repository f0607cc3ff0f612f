"""The settings of ``otrobust eval`` and ``otrobust audit``, one dataclass each; every field is a flag.

:class:`ModelSettings` is what both commands share: the model to load and the test images to attack.
Construction checks every range that a type alone cannot, so a bad value fails before anything loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from otrobust.attacks.table import ATTACK_SPECS, ROBUSTBENCH_ATTACK
from otrobust.errors import OtrobustError
from otrobust.evaluation.audit_types import AuditSettings
from otrobust.settings import Flag, setting

ATTACKS_TEXT = ("one or more attacks; the worst case over all of them is reported: "
                + "; ".join(f"{name} ({spec.help})" for name, spec in ATTACK_SPECS.items()))


@dataclass(kw_only=True)
class ModelSettings:
    """The model under test and its test images (the first ``n``): an otrobust run or checkpoint (``path``), or
    any model, from a factory (``model``) and a weights file (``weights``)."""

    path: str | None = setting(None, "run directory (its best checkpoint) or checkpoint file; or give --model",
                               default_text="none", flag=Flag(positional=True, nargs="?"))
    model: str | None = setting(None, "any model: a factory FILE.py:NAME or package.module:NAME, called with the "
                                "num_classes, in_channels and image_size it accepts (naming a file runs it: name "
                                "only code you trust)", flag=Flag(metavar="FACTORY"))
    weights: str | None = setting(None, "weights of --model: a .safetensors file or a PyTorch state-dict file "
                                  "(read with weights_only=True: a pickle holding code is refused)",
                                  flag=Flag(metavar="FILE"))
    num_classes: int | None = setting(None, "classes of --model's output", default_text="the dataset's")
    input_size: list[int] | None = setting(None, "input of --model as C H W (or H for square images)",
                                           default_text="the dataset's", flag=Flag(nargs="+", metavar="N"))
    normalize: list[float] | None = setting(None, "per-channel MEAN... STD... (or one MEAN STD) applied inside "
                                            "the model, so that eps stays in [0, 1] pixel units", default_text="none",
                                            flag=Flag(nargs="+", metavar="X"))
    randomized: bool = setting(False, "the model is randomised on purpose (two forwards differ): attack it with "
                               "the EOT variants")
    eot_draws: int = setting(20, "forwards averaged per gradient with --randomized (expectation over "
                             "transformation)")
    dataset: str | None = setting(None, "dataset", default_text="the one the model was trained on")
    data_dir: str | None = setting(None, "dataset folder", default_text="the training run's")
    n: int | None = setting(None, "use the first N test images (--num-images under torchrun, whose own flags "
                            "--n abbreviates)", default_text="all", flag=Flag(aliases=("--num-images",)))
    batch_size: int = setting(256, "batch size")
    seed: int = setting(0, "seed for random starts")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")

    def __post_init__(self) -> None:
        for flag, value, ok, rule in self.limits():
            if not ok:
                raise OtrobustError(f"{flag} must be {rule}, got {value}")
        if (self.path is None) == (self.model is None):
            raise OtrobustError("give a run directory or checkpoint, or --model FACTORY (with --weights), not "
                                + ("both" if self.path else "neither"))
        if self.model is None and (self.weights or self.num_classes or self.input_size):
            raise OtrobustError("--weights, --num-classes and --input-size describe a --model; a checkpoint "
                                "records its own")
        if self.model is None and self.normalize is not None:
            raise OtrobustError("--normalize is for a --model: an otrobust checkpoint normalises its images inside "
                                "the model already, so a second normalisation would evaluate another model; drop "
                                "--normalize")
        if self.model is not None and self.dataset is None:
            raise OtrobustError("--model needs --dataset: the test images to attack")
        if self.input_size is not None and len(self.input_size) not in (1, 3) or any(
                s < 1 for s in self.input_size or ()):
            raise OtrobustError(f"--input-size must be C H W or H, each at least 1, got {self.input_size}")
        if self.normalize is not None:
            half = len(self.normalize) // 2
            if len(self.normalize) % 2 or not half or any(s <= 0 for s in self.normalize[half:]):
                raise OtrobustError(f"--normalize takes MEAN... STD... (as many of each, every STD positive), got "
                                    f"{self.normalize}")

    def limits(self) -> list[tuple[str, object, bool, str]]:
        """(flag, value, within range, the rule) for every ranged setting."""
        return [("--batch-size", self.batch_size, self.batch_size >= 1, ">= 1"),
                ("--n", self.n, self.n is None or self.n >= 1, ">= 1"),
                ("--seed", self.seed, 0 <= self.seed < 2**63, "between 0 and 2**63 - 1"),
                ("--eot-draws", self.eot_draws, self.eot_draws >= 1, ">= 1")]


@dataclass(kw_only=True)
class EvalSettings(ModelSettings):
    """``otrobust eval``: clean, per-attack and worst-case accuracy under one threat model."""

    attack: list[str] = setting(help=ATTACKS_TEXT, factory=lambda: ["pgd"], flag=Flag(nargs="+", metavar="NAME"))
    eps: float | None = setting(None, "attack radius, e.g. 0.3 or 8/255", default_text="the dataset's")
    norm: str = setting("linf", "threat model", ("linf", "l2"))
    steps: int = setting(20, "PGD steps")
    step_size: float | None = setting(None, "PGD step", default_text="2.5 * eps / steps")
    restarts: int = setting(1, "PGD random restarts")
    schedule: str = setting("constant", "PGD step-size schedule", ("constant", "cosine", "step"))
    aa_iter: int | None = setting(None, "APGD/FAB iterations instead of AutoAttack's 100 (cheaper; the result is "
                                  "then NOT standard AutoAttack)")
    aa_queries: int | None = setting(None, "Square queries instead of 5000 (cheaper; NOT standard AutoAttack)")
    labels: str = setting("true", "labels the attacks move away from (predicted is the paper's protocol, labelled "
                          "as such in every output)", ("true", "predicted"))
    attack_workers: int | None = setting(None, "PGD pieces attacked at the same time (1 with --randomized, so "
                                         "that a model drawing random numbers repeats exactly)",
                                         default_text="one per torch thread on CPU, 1 on GPU", flag=Flag(metavar="N"))
    json_path: str | None = setting(None, "also write the results as JSON here (top-level robust_accuracy in "
                                    "[0, 1] is the worst case)", flag=Flag(name="--json"))
    robustbench: str | None = setting(None, "also write a RobustBench-style summary (clean and AutoAttack "
                                      "accuracy, eps, norm, n, architecture); needs --attack autoattack",
                                      flag=Flag(metavar="PATH"))
    progress: bool | None = setting(None, "progress bar", default_text="when the terminal is interactive")
    per_example: str | None = setting(None, "also write one CSV row per test image: its label, the clean "
                                      "prediction, and for each attack whether it succeeded and the adversarial "
                                      "prediction (otrobust report A.csv B.csv compares two)",
                                      flag=Flag(metavar="FILE.csv"))
    cache: str | None = setting(None, "folder where each finished batch of each attack is recorded; a killed run "
                                "started again with the same arguments continues from it",
                                default_text="JSON_PATH.parts with --json, else none")

    def limits(self) -> list[tuple[str, object, bool, str]]:
        return [("--steps", self.steps, self.steps >= 0, ">= 0"),
                ("--restarts", self.restarts, self.restarts >= 1, ">= 1"),
                *super().limits(),
                ("--attack-workers", self.attack_workers, self.attack_workers is None or self.attack_workers >= 1,
                 ">= 1"),
                ("--step-size", self.step_size, self.step_size is None or self.step_size > 0, "positive"),
                ("--eps", self.eps, self.eps is None or self.eps >= 0, ">= 0"),
                ("--aa-iter", self.aa_iter, self.aa_iter is None or self.aa_iter >= 1, ">= 1"),
                ("--aa-queries", self.aa_queries, self.aa_queries is None or self.aa_queries >= 1, ">= 1")]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm == "linf" and self.eps is not None and self.eps > 1:
            raise OtrobustError(f"--eps {self.eps} is outside [0, 1] (images are in [0, 1]; try 0.3 or 8/255)")
        if self.robustbench and ROBUSTBENCH_ATTACK not in self.attack:
            raise OtrobustError(f"--robustbench reports AutoAttack accuracy: add {ROBUSTBENCH_ATTACK} to --attack")

    @property
    def cache_folder(self) -> str | None:
        """Where finished batches are recorded: ``--cache``, else beside the ``--json`` file."""
        return self.cache or (f"{self.json_path}.parts" if self.json_path else None)

    def result_settings(self) -> dict:
        """The settings a result depends on (not where it is written, nor how it is shown, nor on how many
        processes it runs): the key of its cached batches."""
        skip = {"json_path", "robustbench", "progress", "per_example", "cache", "device"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}

    @property
    def aa_standard(self) -> bool:
        """Whether AutoAttack runs with its standard budget (no --aa-iter, no --aa-queries)."""
        return self.aa_iter is None and self.aa_queries is None


@dataclass(kw_only=True)
class AuditCommandSettings(ModelSettings):
    """``otrobust audit``: where the report goes and the attack budget; None budgets are
    :class:`otrobust.evaluation.audit.AuditSettings`' own (smaller with ``quick``)."""

    n: int | None = setting(200, "audit on the first N test images", flag=Flag(aliases=("--num-images",)))
    out: str | None = setting(None, "report folder", default_text="RUN_DIR/audit, or next to the checkpoint")
    eps: float | None = setting(None, "attack radius", default_text="the dataset's")
    norm: str = setting("linf", "threat model", ("linf", "l2"))
    steps: int | None = setting(None, "PGD steps; the ladder is 1x, 2x, 4x", default_text="20; 10 with --quick")
    restarts: int | None = setting(None, "restarts compared with one", default_text="5; 3 with --quick")
    unbounded_steps: int | None = setting(None, "steps of the unbounded attack", default_text="100; 50 with --quick")
    square_queries: int | None = setting(None, "queries of the black-box Square attack",
                                         default_text="5000; 1000 with --quick")
    surrogate_epochs: int | None = setting(None, "epochs of the transfer surrogate's training",
                                           default_text="3; 1 with --quick")
    aa_iter: int | None = setting(None, "a cheaper AutoAttack (APGD-CE and APGD-T, this many iterations)",
                                  default_text="standard AutoAttack; 20 with --quick")
    quick: bool = setting(False, "smaller budgets for CPUs (fewer steps, 1000 Square queries, a cheaper "
                          "AutoAttack); the report says so")
    surrogate: str | None = setting(None, "checkpoint or run directory of the transfer surrogate",
                                    default_text="a standard model of the same architecture trained briefly here")

    def budget(self, eps: float) -> AuditSettings:
        """The audit's :class:`AuditSettings` at radius ``eps`` (the command's default: the dataset's)."""
        return AuditSettings.make(eps, self.norm, self.quick, steps=self.steps, restarts=self.restarts,
                                  unbounded_steps=self.unbounded_steps, square_queries=self.square_queries,
                                  surrogate_epochs=self.surrogate_epochs, aa_iter=self.aa_iter, seed=self.seed,
                                  batch_size=self.batch_size, randomized=self.randomized,
                                  eot_draws=self.eot_draws)
