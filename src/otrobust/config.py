"""Typed run configuration: one flat dataclass, every field a command-line flag; validation."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from otrobust.errors import OtrobustError


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


METHOD_NAMES = ("standard", "pgd-at", "trades", "mart", "got-pgd-s", "got-pgd-lm", "got-trades-s",
                "got-trades-lm")


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are the paper's or a documented, measured deviation."""

    # data
    dataset: str = _f("digits", "dataset name (digits is bundled; others need --data-dir)")
    data_dir: str | None = _f(None, "folder holding the dataset files")
    train_size: int | None = _f(None, "use the first N training images (default: all but the validation split)")
    val_size: int = _f(500, "images held out from the END of the training split to pick the best checkpoint")
    # model
    model: str | None = _f(None, "architecture from the model registry (default: the dataset's)")
    latent: str = _f("penultimate", "latent layer for the OT term", ("penultimate", "middle"))
    # method
    method: str = _f("got-trades-lm", "training objective", METHOD_NAMES)
    adv_weight: float | None = _f(None, "alpha: weight of the adversarial term (default: pgd-at 1, trades 6, mart 6)")
    clean_weight: float = _f(0.0, "weight of the clean cross-entropy in pgd-at / got-pgd-*")
    ot_weight: float = _f(10.0, "beta: weight of the OT term in got-* methods")
    ot_warmup_epochs: float = _f(2.0, "ramp beta linearly from 0 over this many epochs (0: off)")
    ot_solver: str = _f("semidual", "OT solver: the paper's learned potential or exact Sinkhorn",
                        ("semidual", "sinkhorn"))
    theta: float = _f(0.1, "entropic regularisation of the OT term")
    lam: float = _f(1.0, "lambda: weight of the latent distance in the ground cost")
    dx: str = _f("cos", "latent distance in the ground cost", ("cos", "l2"))
    dy: str = _f("kl", "prediction distance in the ground cost", ("kl", "l1"))
    phi_grad: bool = _f(False, "let the model's gradient flow through the potential phi(z)")
    phi_lr: float = _f(1e-3, "learning rate of the potential phi (Adam, maximising)")
    # training adversary
    eps: float | None = _f(None, "attack radius (default: the dataset's; '8/255' is accepted)")
    step_size: float | None = _f(None, "attack step (default: 2.5 * eps / steps)")
    steps: int = _f(10, "attack steps while training")
    norm: str = _f("linf", "threat model", ("linf", "l2"))
    attack_bn: str = _f("eval", "batch-norm mode while crafting training examples", ("eval", "train"))
    # optimisation
    epochs: int = _f(10, "training epochs")
    batch_size: int = _f(128, "mini-batch size")
    optimizer: str = _f("adam", "optimiser", ("adam", "sgd"))
    lr: float = _f(1e-3, "learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(0.0, "weight decay")
    schedule: str = _f("none", "learning-rate schedule", ("none", "cosine", "step"))
    seed: int = _f(0, "random seed (data order, attack starts, initialisation)")
    # validation each epoch
    val_steps: int = _f(10, "PGD steps for the per-epoch validation accuracy")
    # run
    out: str = _f("runs/latest", "run directory")
    init: str | None = _f(None, "start from this checkpoint's weights (fine-tuning)")
    resume: bool = _f(False, "continue the run in --out from its last checkpoint")
    checkpoint_every: int = _f(0, "also checkpoint every N steps inside an epoch (0: at epoch ends only)")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto")
    nan_policy: str = _f("stop", "on a non-finite loss: stop, or skip the batch and count it", ("stop", "skip"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_number(text: str | float | int) -> float:
    """Parse ``0.3``, ``8/255`` or ``1e-3`` into a float; raise OtrobustError otherwise."""
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise OtrobustError(f"cannot read {text!r} as a number (examples: 0.3, 8/255, 1e-3)") from None


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every field; return cfg or raise one OtrobustError naming the field and the fix."""
    for f in fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value not in choices:
            raise OtrobustError(f"--{f.name.replace('_', '-')} {value!r} is not one of: {', '.join(choices)}")
    if cfg.eps is not None and not 0 <= cfg.eps <= 1 and cfg.norm == "linf":
        raise OtrobustError(f"--eps {cfg.eps} is outside [0, 1] (images are in [0, 1]; try 0.3 or 8/255)")
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "theta": cfg.theta,
                "phi_lr": cfg.phi_lr}
    for name, value in positive.items():
        if not value > 0:
            raise OtrobustError(f"--{name.replace('_', '-')} must be positive, got {value}")
    non_negative = {"steps": cfg.steps, "val_size": cfg.val_size, "ot_weight": cfg.ot_weight,
                    "ot_warmup_epochs": cfg.ot_warmup_epochs, "clean_weight": cfg.clean_weight,
                    "checkpoint_every": cfg.checkpoint_every, "weight_decay": cfg.weight_decay,
                    "val_steps": cfg.val_steps, "lam": cfg.lam}
    for name, value in non_negative.items():
        if value < 0:
            raise OtrobustError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if cfg.train_size is not None and cfg.train_size <= 0:
        raise OtrobustError(f"--train-size must be positive, got {cfg.train_size}")
    if cfg.step_size is not None and cfg.step_size <= 0:
        raise OtrobustError(f"--step-size must be positive, got {cfg.step_size}")
    if cfg.adv_weight is not None and cfg.adv_weight < 0:
        raise OtrobustError(f"--adv-weight must be >= 0, got {cfg.adv_weight}")
    return cfg


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from a mapping (e.g. a run's config.json); unknown keys are an error."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OtrobustError(f"unknown config field(s): {', '.join(unknown)}")
    return validate(TrainConfig(**values))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file (a run's config.json or a hand-written one) safely."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise OtrobustError(f"cannot read config file {str(path)!r}: {exc}") from None
