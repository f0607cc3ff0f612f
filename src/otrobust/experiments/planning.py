"""Plan a preset: the resolved settings of every run at a scale and seed, where each run lives, its status,
and what the whole preset is estimated to cost (``otrobust reproduce --dry-run``).

Pure bookkeeping: nothing here trains or attacks. A run's directory is named by :func:`run_id`, a hash of
the settings that differ from :class:`TrainConfig`'s defaults, so every preset that needs the same run shares it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrobust.attacks.table import AA_UNITS, ATTACK_SPECS
from otrobust.data import get_dataset_spec
from otrobust.data.base import data_fingerprint
from otrobust.errors import OtrobustError
from otrobust.experiments.presets import PRESETS
from otrobust.experiments.spec import SMOKE, Evaluation, Preset, Run
from otrobust.experiments.studies import STUDIES
from otrobust.models.architecture import Architecture
from otrobust.reporting.tables import markdown_table
from otrobust.store.checkpoint import checkpoint_path
from otrobust.store.files import read_jsonl
from otrobust.training.config import TrainConfig, coerce_value, config_from_dict
from otrobust.training.method_registry import method_spec
from otrobust.training.setup import resolve

SCALES = ("smoke", "full")
FULL_AUDIT_N = 500  # test images per audit at the full scale (the standard AutoAttack runs on them)
# Settings that do not change what a run learns (where it lives, how it is executed).
NOT_IN_RUN_ID = ("out", "resume", "device", "data_dir", "checkpoint_every", "compile", "channels_last",
                "attack_chunk", "attack_workers", "forward_chunk")

# The cost model. A forward pass of one image = 1 unit; a full backward = 2 units; an attack step (input
# gradient only) = 2. GPU seconds = units * forward FLOPs / THROUGHPUT, but at least MIN_SECONDS_PER_UNIT
# per unit (small models are launch-bound). Each attack's units per image are its AttackSpec.cost (AutoAttack
# standard: AA_UNITS).
THROUGHPUT_FLOPS = 20e12
MIN_SECONDS_PER_UNIT = 4e-6
DATASET_SIZES = {"mnist": (60000, 10000), "fashion-mnist": (60000, 10000), "cifar10": (50000, 10000),
                 "cifar100": (50000, 10000), "svhn": (73257, 26032), "digits": (1437, 360)}


@functools.lru_cache(maxsize=64)
def forward_flops(model_name: str, dataset: str, latent: str = "penultimate") -> float:
    """FLOPs (2 x multiply-adds of convolutions and linear layers) of one forward pass of one image."""
    import torch
    from torch import nn


    spec = get_dataset_spec(dataset)
    total = [0.0]

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total[0] += 2.0 * output[0].numel() * k
        elif isinstance(module, nn.Linear):
            total[0] += 2.0 * module.in_features * module.out_features

    with torch.device("meta"):
        model = Architecture(model_name, spec.num_classes, spec.in_channels, spec.image_size, latent).build()
        for m in model.modules():
            m.register_forward_hook(count)
        model(torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size))
    return total[0]


def train_units(cfg: TrainConfig) -> float:
    """Forward-equivalents per training image per epoch (attack steps + the loss's passes, AWP's extra pass)."""
    spec = method_spec(cfg.method)
    one_pass = spec.base == "standard" or (spec.base == "pgd-at" and cfg.clean_weight == 0 and not spec.is_got)
    passes = 1 if one_pass else 2
    units = (0 if spec.base == "standard" else 2 * cfg.steps) + 3 * passes
    return units + (3 * passes if cfg.awp_gamma > 0 else 0)


def eval_units(ev: Evaluation) -> float:
    """Forward-equivalents per test image for one evaluation (every attack at every eps x steps pair)."""
    # An unknown name is reported by the runner as not run; here it is costed as PGD.
    per_eps = sum(ATTACK_SPECS.get(a, ATTACK_SPECS["pgd"]).cost(s or 20) for a in ev.attacks
                  for s in ev.steps or (None,))
    return 1 + max(len(ev.eps), 1) * per_eps + (2 if ev.kind == "features" else 0)


def gpu_hours(units: float, flops: float) -> float:
    return units * max(flops / THROUGHPUT_FLOPS, MIN_SECONDS_PER_UNIT) / 3600

@dataclass
class PlannedRun:
    """One run of a preset at one scale and seed: its resolved config (``out`` = its run directory).

    ``seed_index``: 0 for the first seed of a multi-seed study (its seed is ``config.seed``)."""

    run: Run
    config: TrainConfig
    note: str = ""
    seed_index: int = 0

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


def get_preset(name: str) -> Preset:
    """A paper preset or one of our studies, by name."""
    known = {**PRESETS, **STUDIES}
    if name not in known:
        raise OtrobustError(f"unknown preset {name!r}; choose one of: {', '.join(known)}")
    return known[name]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-4", "ot_warmup_epochs=0"]`` -> TrainConfig overrides, typed by field."""
    by_name = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in by_name:
            raise OtrobustError(f"--set {item!r} must be FIELD=VALUE with a training setting as FIELD "
                                f"(e.g. lr=1e-4, ot_warmup_epochs=0)")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out[key] = coerce_value(by_name[key], value)
    return out


def dataset_dir(dataset: str, data_dir: str | None) -> str | None:
    """``data_dir/<dataset>`` if it exists (one root for several datasets), else ``data_dir`` itself."""
    if data_dir is None:
        return None
    sub = Path(data_dir).expanduser() / dataset
    return str(sub) if sub.is_dir() else str(data_dir)


def _identity(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in NOT_IN_RUN_ID}


def run_id(cfg: TrainConfig, init_id: str | None = None) -> str:
    """``<dataset>-<model>-<method>-<hash of the settings that differ from TrainConfig's defaults and of the data>``.

    Hashing only non-default settings keeps existing run directories valid when a new setting is added;
    :func:`check_same_settings` guards against a default that changed under an existing run. The data enters as
    the fingerprint of its files (:func:`otrobust.data.base.data_fingerprint`), not its path: another
    ``--data-dir`` holding other files trains anew, a copy of the same files finds the same run. ``init_id`` names
    the starting checkpoint (a fine-tuning run's parent run and checkpoint) in place of its path, so that the run's
    folder name does not depend on where the output folder is.
    """
    defaults = TrainConfig().to_dict()
    identity = {k: v for k, v in _identity(cfg.to_dict()).items() if v != defaults[k]}
    fingerprint = data_fingerprint(cfg.data_dir)
    if fingerprint is not None:
        identity["data"] = fingerprint
    if init_id is not None:
        identity["init"] = init_id
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.dataset}-{cfg.model}-{cfg.method}-{digest}"


def check_same_settings(p: PlannedRun) -> None:
    """Refuse to reuse a run directory whose recorded settings differ from the planned ones."""
    saved_path = p.run_dir / "config.json"
    if not saved_path.is_file():
        return
    saved, planned = _identity(json.loads(saved_path.read_text())), _identity(p.config.to_dict())
    for k in sorted(set(saved) & set(planned)):
        if saved[k] != planned[k] and k != "epochs":
            raise OtrobustError(f"{str(p.run_dir)!r} holds a run with {k} = {saved[k]!r}, but {p.run.name!r} "
                                f"needs {planned[k]!r} (a default changed?); move that folder away or use another "
                                "--out")


def plan(preset: Preset, scale: str, out: str | Path, data_dir: str | None = None,
         overrides: dict[str, Any] | None = None, device: str = "auto", seeds: int = 1) -> list[PlannedRun]:
    """The resolved TrainConfig of every run of ``preset`` at ``scale``, once per seed (seed index outermost, so
    that a stopped study has whole seeds done first).

    Seed ``i`` of a run is its configured seed (``--set seed=S``, default 0) plus ``i``: the same seed gives every
    run the same initial weights (same architecture) and data order, so runs of one seed are paired. A run with
    ``init_from`` starts from that run's final checkpoint of the same seed."""
    if scale not in SCALES:
        raise OtrobustError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    if seeds < 1:
        raise OtrobustError(f"--seeds must be at least 1, got {seeds}")
    planned: list[PlannedRun] = []
    for i in range(seeds):
        same_seed: dict[str, PlannedRun] = {}
        for run in preset.runs:
            if run.seeds and i not in run.seeds:
                continue
            p = _plan_run(run, scale, out, data_dir, overrides, device, i, same_seed)
            same_seed[run.name] = p
            planned.append(p)
    return planned


def _plan_run(run: Run, scale: str, out: str | Path, data_dir: str | None, overrides: dict[str, Any] | None,
              device: str, seed_index: int, same_seed: dict[str, PlannedRun]) -> PlannedRun:
    values, note = dict(run.config), ""
    if scale == "smoke":
        values.update(SMOKE["train"])
        if data_dir is None:
            note = f"{SMOKE['stand_in']} stands in for {values['dataset']}"
            values.update(dataset=SMOKE["stand_in"], model=None)
        else:
            values["model"] = SMOKE["models"].get(values.get("model"), values.get("model"))
    values.update(overrides or {})
    values["seed"] = values.get("seed", 0) + seed_index
    init_id = None
    if run.init_from is not None:
        if run.init_from not in same_seed:
            raise OtrobustError(f"run {run.name!r} starts from {run.init_from!r}, which the preset does not "
                                f"list before it for seed index {seed_index}")
        values["init"] = str(checkpoint_path(same_seed[run.init_from].run_dir, "last"))
        init_id = f"{same_seed[run.init_from].run_dir.name}/last"
    values["data_dir"] = dataset_dir(values["dataset"], data_dir) if scale == "full" or note == "" else None
    cfg = resolve(config_from_dict({**values, "device": device}))
    cfg = dataclasses.replace(cfg, out=str(Path(out) / scale / "runs" / run_id(cfg, init_id)))
    return PlannedRun(run, cfg, note, seed_index)


def scaled_evaluations(preset: Preset, scale: str) -> list[Evaluation]:
    """The preset's evaluations, shrunk for the smoke scale (few images, PGD-k -> PGD-max(1, k // 20))."""
    if scale == "full":
        return list(preset.evaluations)
    out = []
    for ev in preset.evaluations:
        n = SMOKE["features_n"] if ev.kind == "features" else SMOKE["eval_n"]
        steps = tuple(sorted({max(1, s // SMOKE["steps_divisor"]) for s in ev.steps}))  # () stays ()
        out.append(dataclasses.replace(ev, n=min(n, ev.n or n), steps=steps))
    return out


def run_status(p: PlannedRun) -> str:
    """``done`` (every epoch logged and a best checkpoint), ``partial`` (a checkpoint to resume) or ``new``."""
    if len(read_jsonl(p.run_dir / "metrics.jsonl")) >= p.config.epochs and \
            checkpoint_path(p.run_dir, "best").exists():
        return "done"
    return "partial" if checkpoint_path(p.run_dir, "last").exists() else "new"


def applies(p: PlannedRun, runs_: tuple[str, ...], seeds: tuple[int, ...]) -> bool:
    """Whether an evaluation or audit restricted to ``runs_`` and ``seeds`` (empty: all) covers ``p``. ``seeds``
    counts each run's own seeds: 0 is its first, seed index 1 for an arm trained on fresh seeds 1, 2, 3."""
    position = p.run.seeds.index(p.seed_index) if p.seed_index in p.run.seeds else p.seed_index
    return (not runs_ or p.run.name in runs_) and (not seeds or position in seeds)


def cost_table(preset: Preset, planned: list[PlannedRun], evaluations: list[Evaluation]) -> list[list[Any]]:
    """Per run: [name, dataset, model, method, epochs, status, train GPU-h, eval GPU-h]."""
    rows = []
    for p in planned:
        cfg = p.config
        n_train, n_test = DATASET_SIZES.get(cfg.dataset, (50000, 10000))
        n_train = min(cfg.train_size or n_train, n_train - cfg.val_size)
        flops = forward_flops(cfg.model, cfg.dataset, cfg.latent)
        units = cfg.epochs * (n_train * train_units(cfg) + cfg.val_size * (2 * cfg.val_steps + 1))
        ev_units = sum(min(ev.n or n_test, n_test) * eval_units(ev) for ev in evaluations
                       if not ev.runs or p.run.name in ev.runs)
        name = p.run.name + (f" (seed {cfg.seed})" if any(q.seed_index for q in planned) else "")
        rows.append([name, cfg.dataset, cfg.model, cfg.method, cfg.epochs, run_status(p),
                     gpu_hours(units, flops), gpu_hours(ev_units, flops)])
    return rows


COST_ASSUMPTION = (f"cost model: 1 unit = one forward pass of one image, backward = 2 units, attack step = 2 units; "
                   f"AutoAttack = {AA_UNITS} units per image; GPU time = units x forward FLOPs / "
                   f"{THROUGHPUT_FLOPS / 1e12:.0f} TFLOP/s sustained (a current data-centre GPU with mixed precision),"
                   f" at least {MIN_SECONDS_PER_UNIT * 1e6:.0f} us per unit; an order-of-magnitude estimate")


def print_plan(preset: Preset, scale: str, planned: list[PlannedRun], evaluations: list[Evaluation],
               log: Callable[[str], None] = print) -> list[list[Any]]:
    """The --dry-run listing: every run with its status and estimated GPU hours, and the evaluations."""
    cost = cost_table(preset, planned, evaluations)
    log(f"{preset.name}: {preset.reference}, {scale} scale, {len(planned)} runs\n")
    log(markdown_table(["run", "dataset", "model", "method", "epochs", "status", "train GPU-h", "eval GPU-h"],
               [[*r[:6], f"{r[6]:.2f}", f"{r[7]:.2f}"] for r in cost]))
    for ev in evaluations:
        log(f"\nevaluation {ev.name}: {', '.join(ev.attacks)}" + (f" ({ev.kind})" if ev.kind != "accuracy" else "")
            + f", eps {list(ev.eps) or 'as trained'}, steps {list(ev.steps) or '-'}, n {ev.n or 'all'}")
    train_h, eval_h = sum(r[6] for r in cost), sum(r[7] for r in cost)
    log(f"\nestimated total: {train_h + eval_h:.1f} GPU-hours ({train_h:.1f} training, {eval_h:.1f} evaluation), "
        "runs already done included\n" + COST_ASSUMPTION)
    for note in sorted({p.note for p in planned if p.note}):
        log(f"stand-in data: {note} (smoke only; give --data-dir for the real dataset)")
    return cost


def check_data(planned: list[PlannedRun]) -> None:
    for p in planned:
        if get_dataset_spec(p.config.dataset).needs_root and p.config.data_dir is None:
            raise OtrobustError(f"run {p.run.name!r} needs the {p.config.dataset} files: give --data-dir "
                                f"(to fetch them: otrobust data download {p.config.dataset} --root DIR)")
