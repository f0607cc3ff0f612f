"""Typed run configuration: one flat dataclass, every field a command-line flag; validation; config files (YAML,
JSON)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from otrobust.errors import OtrobustError, path_kind
from otrobust.training.method_registry import METHOD_NAMES


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})




@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are the paper's or a documented, measured deviation."""

    # data
    dataset: str = _f("digits", "dataset name (digits is bundled; others need --data-dir)")
    data_dir: str | None = _f(None, "folder holding the dataset files")
    train_size: int | None = _f(None, "use the first N training images (default: all but the validation split)")
    val_size: int | None = _f(None, "images held out from the END of the training split to pick the best checkpoint "
                              "(default: the dataset's; 500, and 200 of the 1,437 digits)")
    # model
    model: str | None = _f(None, "architecture from the model registry (default: the dataset's)")
    latent: str = _f("penultimate", "latent layer for the OT term", ("penultimate", "middle"))
    # method
    method: str = _f("got-trades-lm", "training objective", METHOD_NAMES)
    adv_weight: float | None = _f(None, "alpha: weight of the adversarial term (default: pgd-at 1, trades 6, mart 6)")
    clean_weight: float = _f(0.0, "weight of the clean cross-entropy in pgd-at / got-pgd-*")
    ot_weight: float | None = _f(None, "beta: weight of the OT term in got-* methods (default: 1 for the "
                                 "label-matching variants, 0.5 for the standard ones; the paper: 10;"
                                 " see docs/training.md)")
    ot_warmup_epochs: float = _f(0.0, "ramp beta linearly from 0 over this many epochs (0: off)")
    ot_solver: str = _f("semidual", "OT solver: the paper's learned potential or exact Sinkhorn",
                        ("semidual", "sinkhorn"))
    theta: float = _f(0.1, "entropic regularisation of the OT term")
    lam: float = _f(1.0, "lambda: weight of the latent distance in the ground cost")
    dx: str = _f("cos", "latent distance in the ground cost", ("cos", "l2"))
    dy: str = _f("kl", "prediction distance in the ground cost", ("kl", "l1"))
    phi_grad: bool = _f(False, "let the model's gradient flow through the potential phi(z)")
    phi_lr: float = _f(1e-3, "learning rate of the potential phi (Adam, maximising)")
    awp_gamma: float = _f(0.0, "adversarial weight perturbation: layer-wise relative size gamma (0: off; 5e-3 "
                          "typical); composes with any method")
    awp_warmup_epochs: float = _f(0.0, "start the weight perturbation after this many epochs")
    ema: float = _f(0.0, "keep an exponential moving average of the weights with this decay (e.g. 0.999; 0: off); "
                    "validation, the best and last checkpoints and so evaluation use the averaged weights")
    # training adversary
    eps: float | None = _f(None, "attack radius (default: the dataset's; '8/255' is accepted)")
    step_size: float | None = _f(None, "attack step (default: 2.5 * eps / steps)")
    steps: int = _f(10, "attack steps while training")
    eps_warmup_epochs: float = _f(2.0, "ramp the training attack's radius (and step) linearly from 0 to --eps over "
                                  "this many epochs (0: off); validation always uses the full --eps")
    norm: str = _f("linf", "threat model", ("linf", "l2"))
    attack_bn: str = _f("eval", "batch-norm mode while crafting training examples", ("eval", "train"))
    attack_chunk: int | None = _f(None, "attack the batch in pieces of this many images (default: 128 on CPU, "
                                  "where larger pieces fall out of cache, the whole batch on GPU; 0: the whole "
                                  "batch); changes the speed, not the attack")
    attack_workers: int | None = _f(None, "attack this many pieces at the same time, each on its own threads "
                                    "(default: one per torch thread on CPU, 1 on GPU); changes the speed, not "
                                    "the attack")
    forward_chunk: int | None = _f(None, "run the training step's forward passes on pieces of this many images "
                                   "(default: 64 on CPU for models without batch norm or dropout, the whole batch "
                                   "otherwise; 0: the whole batch); changes the speed, not the step")
    # optimisation
    epochs: int = _f(10, "training epochs")
    batch_size: int | None = _f(None, "mini-batch size (default: the dataset's; 128, and 32 on the 1,237 digits)")
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
    tensorboard: bool = _f(False, "also write TensorBoard event files under RUN/tensorboard (needs pip install "
                           "otrobust[tensorboard])")
    # speed and scale (benchmarks/README.md has the measurements behind the defaults)
    amp: str = _f("auto", "mixed-precision autocast of the training passes: auto (bf16 on a CUDA GPU "
                  "that supports it and on a CPU with AMX, float32 on other CPUs), off, bf16, or fp16 (with loss "
                  "scaling); evaluation always runs in float32", ("auto", "off", "bf16", "fp16"))
    channels_last: str = _f("auto", "channels-last memory format for the model and batches: auto (on: measured "
                            "faster on CPU and CUDA), on, off", ("auto", "on", "off"))
    compile: bool = _f(False, "torch.compile the model (the first steps are slow while it compiles)")
    ot_scope: str = _f("global", "under torchrun: the OT term over the batch gathered from all processes "
                       "(global) or over each process's shard (local)", ("global", "local"))

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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_kind(f: dataclasses.Field) -> tuple[str, bool]:
    """(``"bool"`` | ``"int"`` | ``"float"`` | ``"str"``, whether None is allowed) from the annotation."""
    text = str(f.type)
    kind = next(k for k in ("bool", "int", "float", "str") if k in text)
    return kind, "None" in text


def _check_type(name: str, value: Any, kind: str, optional: bool) -> None:
    if value is None and optional:
        return
    ok = {"bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str)}[kind]
    if not ok:
        expected = {"bool": "true or false", "int": "a whole number", "float": "a number",
                    "str": "a string"}[kind] + (" or null" if optional else "")
        raise OtrobustError(f"{_flag(name)} must be {expected}, got {value!r:.60}")
    if kind == "float" and not math.isfinite(value):
        raise OtrobustError(f"{_flag(name)} must be a finite number, got {value}")


def coerce_value(f: dataclasses.Field, value: Any) -> Any:
    """A config-file value as the field's type: ``"8/255"`` -> 0.0314, ``"3"`` or ``3.0`` -> 3 for ints."""
    kind, _ = field_kind(f)
    if kind == "float" and isinstance(value, str):
        return parse_number(value)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "int" and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value  # validate() names the field and the expected type
    return value


def check_eps(eps: float, norm: str, input_dim: int | None = None) -> None:
    """An attack radius must fit the threat model: ℓ∞ within [0, 1]; ℓ2 within [0, sqrt(input_dim)]
    (the largest ℓ2 distance between two images in [0, 1]^d), so it may exceed 1."""
    if eps < 0:
        raise OtrobustError(f"--eps must be >= 0, got {eps}")
    if norm == "linf" and eps > 1:
        raise OtrobustError(f"--eps {eps} is outside [0, 1] (images are in [0, 1]; try 0.3 or 8/255, "
                            "or --norm l2 for an l2 radius)")
    if norm == "l2" and input_dim and eps > math.sqrt(input_dim):
        raise OtrobustError(f"--eps {eps} is larger than sqrt({input_dim}) = {math.sqrt(input_dim):.1f}, the l2 "
                            "distance between any two images of this size; common l2 radii: 0.5 (CIFAR), 2.0 (MNIST)")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every field; return cfg or raise one OtrobustError naming the field and the fix."""
    for f in fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        _check_type(f.name, value, *field_kind(f))
        if choices and value not in choices:
            raise OtrobustError(f"--{f.name.replace('_', '-')} {value!r} is not one of: {', '.join(choices)}")
    if cfg.eps is not None:
        check_eps(cfg.eps, cfg.norm)
    if not 0 <= cfg.seed < 2**63:
        raise OtrobustError(f"--seed must be between 0 and 2**63 - 1, got {cfg.seed}")
    if not cfg.out:
        raise OtrobustError("--out must name a run directory")
    positive = {"epochs": cfg.epochs, "lr": cfg.lr, "theta": cfg.theta, "phi_lr": cfg.phi_lr}
    # Filled from the dataset when None; the best checkpoint is picked on validation, so it must be positive.
    positive.update({k: v for k, v in (("batch_size", cfg.batch_size), ("val_size", cfg.val_size)) if v is not None})
    for name, value in positive.items():
        if not value > 0:
            raise OtrobustError(f"--{name.replace('_', '-')} must be positive, got {value}")
    non_negative = {"steps": cfg.steps, "ot_weight": cfg.ot_weight or 0.0,
                    "ot_warmup_epochs": cfg.ot_warmup_epochs, "eps_warmup_epochs": cfg.eps_warmup_epochs,
                    "clean_weight": cfg.clean_weight,
                    "checkpoint_every": cfg.checkpoint_every, "weight_decay": cfg.weight_decay,
                    "val_steps": cfg.val_steps, "lam": cfg.lam, "momentum": cfg.momentum,
                    "awp_gamma": cfg.awp_gamma, "awp_warmup_epochs": cfg.awp_warmup_epochs}
    for name, value in non_negative.items():
        if value < 0:
            raise OtrobustError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if cfg.train_size is not None and cfg.train_size <= 0:
        raise OtrobustError(f"--train-size must be positive, got {cfg.train_size}")
    if cfg.step_size is not None and cfg.step_size <= 0:
        raise OtrobustError(f"--step-size must be positive, got {cfg.step_size}")
    if cfg.attack_chunk is not None and cfg.attack_chunk < 0:
        raise OtrobustError(f"--attack-chunk must be >= 0 (0: the whole batch), got {cfg.attack_chunk}")
    if cfg.forward_chunk is not None and cfg.forward_chunk < 0:
        raise OtrobustError(f"--forward-chunk must be >= 0 (0: the whole batch), got {cfg.forward_chunk}")
    if cfg.attack_workers is not None and cfg.attack_workers < 1:
        raise OtrobustError(f"--attack-workers must be >= 1, got {cfg.attack_workers}")
    if cfg.adv_weight is not None and cfg.adv_weight < 0:
        raise OtrobustError(f"--adv-weight must be >= 0, got {cfg.adv_weight}")
    if not 0 <= cfg.ema < 1:
        raise OtrobustError(f"--ema must be a decay in [0, 1) (0: off; e.g. 0.999), got {cfg.ema}")
    return cfg


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from a mapping (e.g. a run's config.json); unknown keys are an error."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise OtrobustError(f"unknown config field(s): {', '.join(unknown)}")
    by_name = {f.name: f for f in fields(TrainConfig)}
    return validate(TrainConfig(**{k: coerce_value(by_name[k], v) for k, v in values.items()}))


YAML_SUFFIXES = (".yaml", ".yml")


def _yaml_loader():
    """PyYAML's safe loader (plain data only: no tag constructs an object), read as YAML 1.2 reads booleans
    (``true``/``false`` only, so ``amp: off`` stays the string ``off``), with anchors and aliases refused (a
    flat file of settings needs none, and aliases nested in aliases expand to billions of items)."""
    import re

    import yaml

    class SettingsLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not read in a config file",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)

    bool_tag = "tag:yaml.org,2002:bool"
    SettingsLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    SettingsLoader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                         list("tTfF"))
    return SettingsLoader


def _parse_config_text(text: str, path: str | Path, as_yaml: bool) -> Any:
    """The value a config file holds; OtrobustError naming the file if it is not valid JSON / YAML."""
    if as_yaml:
        import yaml

        try:
            return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader: yaml.safe_load with two restrictions
        except (yaml.YAMLError, RecursionError) as exc:
            mark = getattr(exc, "problem_mark", None)
            reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise OtrobustError(f"cannot read config file {str(path)!r}: it must be YAML, plain 'setting: value' "
                                f"lines such as 'epochs: 3' (no tags such as !!python/object, no aliases): "
                                f"{reason}{where}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise OtrobustError(f"cannot read config file {str(path)!r}: it must be JSON, an object such as "
                            f'{{"epochs": 3, "eps": "8/255"}} (a YAML file must be named .yaml or .yml): '
                            f"{exc}") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config file of settings safely: YAML if it is named ``.yaml`` or ``.yml`` (read with PyYAML's safe
    loader: no tag constructs an object), JSON otherwise (a run's config.json or a hand-written one). Returns the
    mapping of settings; :func:`config_from_dict` checks them."""
    kind = path_kind(path)
    if kind not in ("a file", "missing"):  # a FIFO would block the read and /dev/zero never end it
        raise OtrobustError(f"cannot read config file {str(path)!r}: it is {kind}, not a file")
    try:
        text = Path(path).read_text()
    except (OSError, ValueError) as exc:
        raise OtrobustError(f"cannot read config file {str(path)!r}: {exc}") from None
    as_yaml = Path(path).suffix.lower() in YAML_SUFFIXES
    values = _parse_config_text(text, path, as_yaml)
    if not isinstance(values, dict):
        raise OtrobustError(f"config file {str(path)!r} must hold a {'YAML mapping' if as_yaml else 'JSON object'} "
                            "of settings")
    odd = [k for k in values if not isinstance(k, str)]
    if odd:
        raise OtrobustError(f"config file {str(path)!r}: setting names must be text, got {odd[0]!r:.60}")
    return values


def config_yaml(cfg: TrainConfig) -> str:
    """The settings as YAML that :func:`load_config_file` reads back to the same values (a run's config.yaml)."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)
