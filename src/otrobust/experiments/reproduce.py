"""Run a paper preset end to end: train its runs, evaluate them, write results and figures.

Layout under ``out`` (restartable; nothing finished is redone)::

    <out>/<scale>/runs/<dataset>-<model>-<method>-<hash>/   one training run, shared by every preset that
                                                           needs the same settings; evals/ caches its evaluations
                                                           audit-<key>/ its audit report (otrobust.evaluation.audit)
    <out>/<scale>/<preset>/results.csv, results.md, audits.json, figures/

Unfinished training runs are resumed from their last checkpoint; finished ones are skipped; an
evaluation or audit already cached for the same checkpoint is read back. Every run is audited, and every
results table carries the audit verdict of each run.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from otrobust.attacks.gradient import default_step_size
from otrobust.data import get_dataset_spec, load_dataset
from otrobust.errors import OtrobustError
from otrobust.experiments.presets import PAPER_ONLY_LABELS, PRESETS
from otrobust.experiments.spec import SMOKE, Evaluation, Preset, Run
from otrobust.experiments.studies import STUDIES
from otrobust.store.checkpoint import checkpoint_path, load_model, resolve_checkpoint
from otrobust.store.files import atomic_write_bytes, atomic_write_text, read_jsonl
from otrobust.training.config import TrainConfig, coerce_value, config_from_dict
from otrobust.training.registry import method_spec

SCALES = ("smoke", "full")
RESULT_FIELDS = ("preset", "scale", "run", "seed", "label", "dataset", "model", "method", "evaluation", "metric",
                 "labels", "eps", "steps", "step_size", "n", "accuracy", "ci_low", "ci_high", "paper", "diff", "audit",
                 "note")
FULL_AUDIT_N = 500  # test images per audit at the full scale (the standard AutoAttack runs on them)
# Settings that do not change what a run learns (where it lives, how it is executed).
NOT_IN_RUN_ID = ("out", "resume", "device", "data_dir", "checkpoint_every", "compile", "channels_last",
                "attack_chunk", "attack_workers", "forward_chunk")

# ---------------------------------------------------------------- cost model (for --dry-run)
# A forward pass of one image = 1 unit; a full backward = 2 units; an attack step (input gradient only) = 2.
# GPU seconds = units * forward FLOPs / THROUGHPUT, but at least MIN_SECONDS_PER_UNIT per unit (small models
# are launch-bound). AutoAttack standard: AA_UNITS per image (APGD-CE on all, the rest on the ~half left).
THROUGHPUT_FLOPS = 20e12
MIN_SECONDS_PER_UNIT = 4e-6
AA_UNITS = 4500
DATASET_SIZES = {"mnist": (60000, 10000), "fashion-mnist": (60000, 10000), "cifar10": (50000, 10000),
                 "cifar100": (50000, 10000), "svhn": (73257, 26032), "digits": (1437, 360)}


@functools.lru_cache(maxsize=64)
def forward_flops(model_name: str, dataset: str, latent: str = "penultimate") -> float:
    """FLOPs (2 x multiply-adds of convolutions and linear layers) of one forward pass of one image."""
    import torch
    from torch import nn

    from otrobust.models import create_model

    spec = get_dataset_spec(dataset)
    total = [0.0]

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total[0] += 2.0 * output[0].numel() * k
        elif isinstance(module, nn.Linear):
            total[0] += 2.0 * module.in_features * module.out_features

    with torch.device("meta"):
        model = create_model(model_name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                             image_size=spec.image_size, latent=latent)
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
    per_eps = sum(AA_UNITS if a.startswith("autoattack") else 3 if a == "fgsm" else 2 * (s or 20) + 1
                  for a in ev.attacks for s in ev.steps or (None,))
    return 1 + max(len(ev.eps), 1) * per_eps + (2 if ev.kind == "features" else 0)


def gpu_hours(units: float, flops: float) -> float:
    return units * max(flops / THROUGHPUT_FLOPS, MIN_SECONDS_PER_UNIT) / 3600


# ---------------------------------------------------------------- planning
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


def run_id(cfg: TrainConfig) -> str:
    """``<dataset>-<model>-<method>-<hash of the settings that differ from TrainConfig's defaults>``.

    Hashing only non-default settings keeps existing run directories valid when a new setting is added;
    :func:`check_same_settings` guards against a default that changed under an existing run.
    """
    defaults = TrainConfig().to_dict()
    identity = {k: v for k, v in _identity(cfg.to_dict()).items() if v != defaults[k]}
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
            p = _plan_run(run, scale, out, data_dir, overrides, device, i, same_seed)
            same_seed[run.name] = p
            planned.append(p)
    return planned


def _plan_run(run: Run, scale: str, out: str | Path, data_dir: str | None, overrides: dict[str, Any] | None,
              device: str, seed_index: int, same_seed: dict[str, PlannedRun]) -> PlannedRun:
    from otrobust.training.loop import resolve

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
    if run.init_from is not None:
        if run.init_from not in same_seed:
            raise OtrobustError(f"run {run.name!r} starts from {run.init_from!r}, which the preset does not "
                                "list before it")
        values["init"] = str(checkpoint_path(same_seed[run.init_from].run_dir, "last"))
    values["data_dir"] = dataset_dir(values["dataset"], data_dir) if scale == "full" or note == "" else None
    cfg = resolve(config_from_dict({**values, "device": device}))
    cfg = dataclasses.replace(cfg, out=str(Path(out) / scale / "runs" / run_id(cfg)))
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


# ---------------------------------------------------------------- training and evaluation
def train_planned(p: PlannedRun, log: Callable[[str], None] = print) -> str:
    """Train (or resume, or skip) one planned run; returns the status it had."""
    from otrobust.training.loop import train

    status = run_status(p)
    check_same_settings(p)
    if status != "done":
        cfg = dataclasses.replace(p.config, resume=status == "partial")
        train(cfg, show_progress=False, log=lambda s: log(f"    {s}"))
    return status


def checkpoint_key(ckpt: Path, **settings: Any) -> str:
    """A short hash of a checkpoint file (name, size, modification time) and the settings of what was computed
    from it: the name of its cache entry, which a new checkpoint or other settings make stale."""
    stat = ckpt.stat()
    ident = {"ckpt": [ckpt.name, stat.st_size, stat.st_mtime_ns], **settings}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _eval_key(ev: Evaluation, ckpt: Path, cfg: TrainConfig, options: dict[str, Any]) -> str:
    # Only the fields that differ from Evaluation's defaults: a field added later keeps existing caches valid.
    defaults = {f.name: f.default for f in dataclasses.fields(Evaluation)}
    # Which runs and seeds it applies to does not change a result.
    what = {k: v for k, v in dataclasses.asdict(ev).items()
            if k not in ("runs", "seeds") and (k in ("name", "attacks") or v != defaults.get(k))}
    return checkpoint_key(ckpt, ev=what, eps=cfg.eps, norm=cfg.norm, options=options)


def evaluate_run(run_dir: Path, ev: Evaluation, cfg: TrainConfig, test, *, device="cpu", seed: int = 0,
                 attack_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The one place a preset's evaluation runs: every (eps, steps) pair of ``ev`` on the run's best checkpoint.

    Returns rows ``{evaluation, metric, eps, steps, n, accuracy, ci_low, ci_high, note}`` (accuracies in %);
    for ``kind="features"`` it saves ``evals/<key>.npz`` (clean/adversarial latents, labels) and returns [].
    Results are cached in ``run_dir/evals`` per checkpoint and settings.
    """
    options = dict(attack_options or {})
    ckpt = resolve_checkpoint(run_dir)
    cache = Path(run_dir) / "evals" / f"{ev.name}-{_eval_key(ev, ckpt, cfg, options)}"
    if cache.with_suffix(".json").exists():
        return json.loads(cache.with_suffix(".json").read_text())
    model = load_model(ckpt, device)
    data = test.first(ev.n)
    if ev.kind == "features":
        _save_features(model, data, cfg, ev, cache.with_suffix(".npz"), device, seed)
        rows = []
    else:
        rows = _accuracy_rows(model, data, ev, cfg, options, device, seed)
    atomic_write_text(cache.with_suffix(".json"), json.dumps(rows, indent=1))
    return rows


def _accuracy_rows(model, data, ev: Evaluation, cfg: TrainConfig, options: dict[str, Any], device,
                   seed: int) -> list[dict[str, Any]]:
    import torch

    from otrobust.evaluation.evaluate import binomial_interval, build_attacks, evaluate_model

    rows: list[dict[str, Any]] = []
    for i, (eps, steps) in enumerate(product(ev.eps or (cfg.eps,), ev.steps or (None,))):
        attacks, missing = {}, []
        for name in ev.attacks:  # an attack this build cannot run is reported in the results, not fatal
            try:
                attacks.update(build_attacks([name], eps=eps, steps=steps or 20, step_size=ev.step_size,
                                             norm=cfg.norm, **(options if name.startswith("autoattack") else {})))
            except OtrobustError as exc:
                missing.append((name, str(exc)))
        torch.manual_seed(seed)
        res = evaluate_model(model, data, attacks, labels=ev.labels, batch_size=256, device=device)
        warnings = getattr(res, "warnings", {})
        outcomes = [(name, res.correct(name)) for name in ["clean"] * (i == 0) + [*attacks]]
        outcomes += [(f"{name} after {stage}", t) for name in attacks for stage, t in res.stages.get(name, {}).items()
                     if stage != "clean"]  # AutoAttack stage by stage: which attack did the work
        outcomes += [("worst-case", res.worst)] * (len(attacks) > 1)
        for name, correct in outcomes:
            k = int(correct.sum())
            lo, hi = binomial_interval(k, len(correct))
            clean = name == "clean"
            rows.append({"evaluation": ev.name, "metric": name, "labels": ev.labels, "eps": None if clean else eps,
                         "steps": None if clean else steps,
                         "step_size": None if clean or steps is None else ev.step_size or default_step_size(eps, steps),
                         "n": len(correct), "accuracy": 100 * k / max(len(correct), 1), "ci_low": 100 * lo,
                         "ci_high": 100 * hi, "note": "; ".join(warnings.get(name, []))})
        rows += [{"evaluation": ev.name, "metric": name, "eps": eps, "steps": steps, "n": 0, "accuracy": None,
                  "ci_low": None, "ci_high": None, "note": f"not run: {why}"} for name, why in missing]
    return rows


def features_path(run_dir: Path, ev: Evaluation) -> Path | None:
    """The newest features file an evaluation saved in ``run_dir`` (None if there is none)."""
    found = sorted((Path(run_dir) / "evals").glob(f"{ev.name}-*.npz"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _save_features(model, data, cfg: TrainConfig, ev: Evaluation, path: Path, device, seed: int) -> None:
    """Latents ``z`` of clean and PGD examples (true labels) and the labels, for a t-SNE figure."""
    import io

    import numpy as np
    import torch

    from otrobust.evaluation.evaluate import build_attacks

    attack = build_attacks(["pgd"], eps=cfg.eps, steps=ev.steps[-1], norm=cfg.norm)["pgd"]
    torch.manual_seed(seed)
    parts: dict[str, list] = {"z_clean": [], "z_adv": [], "y": [], "pred_adv": []}
    for start in range(0, len(data), 256):
        x, y = data.x[start:start + 256].to(device), data.y[start:start + 256].to(device)
        x_adv = attack(model, x, y)
        with torch.no_grad():
            z, _ = model(x, with_latent=True)
            z_adv, logits_adv = model(x_adv, with_latent=True)
        for key, t in (("z_clean", z), ("z_adv", z_adv), ("y", y), ("pred_adv", logits_adv.argmax(1))):
            parts[key].append(t.cpu().numpy())
    buf = io.BytesIO()
    np.savez(buf, **{k: np.concatenate(v) for k, v in parts.items()})
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------- results
def audit_run(p: PlannedRun, scale: str, test, *, surrogate: Path | None = None, device="cpu",
              log: Callable[[str], None] = print, n: int | None = None, quick: bool = False) -> dict[str, Any]:
    """Audit the run's best checkpoint on ``n`` test images (default: by scale) (otrobust.evaluation.audit; cached in
    ``run_dir/audit-<key>`` per checkpoint and budget). Returns ``{run, seed, verdict (pass|warn|fail), pass, warn,
    fail, failed_checks, report}``. ``quick`` audits with the CPU budget at the full scale too."""
    from otrobust.evaluation.audit import AuditSettings, audit_model
    from otrobust.reporting.audit import write_report

    ckpt = resolve_checkpoint(p.run_dir)
    n = SMOKE["audit_n"] if scale == "smoke" else n or FULL_AUDIT_N
    settings = AuditSettings.make(p.config.eps, p.config.norm, quick=quick or scale == "smoke",
                                  **(SMOKE["audit"] if scale == "smoke" else {}))
    out = p.run_dir / f"audit-{checkpoint_key(ckpt, n=n, settings=dataclasses.asdict(settings), surrogate=surrogate)}"
    if not (out / "audit.json").exists():
        log(f"auditing {p.run.name} on {min(n, len(test))} test images")
        report = audit_model(load_model(ckpt, device), test.first(n), settings, device=device,
                             surrogate=load_model(surrogate, device) if surrogate else None,
                             threat_extra={"dataset": p.config.dataset, "model": f"{p.config.model} from {ckpt}"})
        write_report(report, out)
    summary = json.loads((out / "audit.json").read_text())
    counts = summary["counts"]
    verdict = "fail" if summary["failed"] else "warn" if counts.get("warn") else "pass"
    return {"run": p.run.name, "seed": p.config.seed, "verdict": verdict,
            **{k: counts.get(k, 0) for k in ("pass", "warn", "fail")},
            "failed_checks": [c["name"] for c in summary["checks"] if c["status"] == "fail"],
            "report": str(out / "audit.md")}


def surrogate_for(planned: list[PlannedRun], p: PlannedRun) -> Path | None:
    """A finished ``standard`` run of the same data and model (for the audit's transfer check), if the preset
    has one."""
    for q in planned:
        if (q is not p and q.config.method == "standard" and q.config.dataset == p.config.dataset
                and q.config.model == p.config.model and run_status(q) == "done"):
            return resolve_checkpoint(q.run_dir)
    return None


def paper_value(preset: Preset, run: str, metric: str, eps: float | None, steps: int | None,
                train_eps: float | None) -> float | None:
    """The paper's number for this row: same run and metric, and the same sweep point if it is one."""
    for v in preset.paper_results:
        if v.run != run or v.metric != metric:
            continue
        want_eps = v.eps if v.eps is not None else (train_eps if metric != "clean" else None)
        if want_eps is not None and (eps is None or abs(eps - want_eps) > 1e-6):
            continue
        if v.steps is not None and v.steps != steps:
            continue
        return v.value
    return None


def display_names(planned: list[PlannedRun]) -> dict[str, str]:
    """Run name -> the paper's label, qualified by the name's prefix where labels repeat."""
    labels = [p.run.label for p in planned]
    return {p.run.name: p.run.label if labels.count(p.run.label) == 1 or "/" not in p.run.name
            else f"{p.run.label} [{p.run.name.split('/')[0]}]" for p in planned}


def result_row(preset: Preset, scale: str, p: PlannedRun, row: dict[str, Any], source_eps: float,
               audit: str | None = None) -> dict[str, Any]:
    """A results.csv row: the evaluation row with the run's identity, the paper's number and the difference,
    and the run's audit verdict."""
    paper = paper_value(preset, p.run.name, row["metric"], row["eps"], row["steps"], source_eps)
    diff = None if paper is None or row["accuracy"] is None else row["accuracy"] - paper
    out = {"preset": preset.name, "scale": scale, "run": p.run.name, "seed": p.config.seed, "label": p.run.label,
           "dataset": p.config.dataset, "model": p.config.model, "method": p.config.method, **row,
           "paper": paper, "diff": diff, "audit": audit or "not audited"}
    return {k: out.get(k) for k in RESULT_FIELDS}


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if digits is None else f"{v:.{digits}f}"
    return str(v)


def format_eps(v: float | None) -> str:
    """8/255 as ``8/255``, other radii as plain numbers."""
    if v is None:
        return "–"
    k = v * 255
    return f"{round(k)}/255" if 0 < v < 1 and abs(k - round(k)) < 1e-6 else f"{v:g}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


AUDIT_MARKS = {"pass": "pass", "warn": "warn", "fail": "**FAIL**", "not audited": "not audited"}


def results_markdown(preset: Preset, scale: str, planned: list[PlannedRun], rows: list[dict[str, Any]],
                     figures: list[Path], out_dir: Path, audits: list[dict[str, Any]] | None = None) -> str:
    names = display_names(planned)
    parts = [f"# {preset.name}: {preset.reference} ({scale} scale)", "", preset.description, ""]
    failed = [a for a in audits or [] if a["verdict"] == "fail"]
    if audits:
        parts += [f"**Audit**: {len(audits) - len(failed)} of {len(audits)} runs pass the evaluation audit with no "
                  "fail" + (f"; **FAILED: {', '.join(names.get(a['run'], a['run']) for a in failed)}** — do not "
                            "trust their robust accuracy" if failed else "") + " (see *Audit* below).", ""]
    if scale == "smoke":
        parts += ["> **Smoke scale**: tiny subsets, one epoch, few attack steps, a tiny model where the paper's is "
                  "large, and a cheap, non-standard AutoAttack. It checks that the pipeline runs; its numbers are "
                  "**not comparable** with the paper's.", ""]
    for note in sorted({p.note for p in planned if p.note}):
        parts += [f"> **Stand-in data**: {note} (no --data-dir was given); only for the smoke scale.", ""]
    parts += ["Accuracies in %, against the true labels; 95 % Wilson intervals; `paper` as printed in the paper.",
              ""]
    multi_seed = len({r.get("seed") for r in rows}) > 1
    for ev in dict.fromkeys(r["evaluation"] for r in rows):
        body = [[names.get(r["run"], r["run"]) + (f" (seed {r['seed']})" if multi_seed else ""), r["metric"],
                 format_eps(r["eps"]), _fmt(r["steps"]), r["n"],
                 _fmt(r["accuracy"]), "–" if r["ci_low"] is None else f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]",
                 _fmt(r["paper"]), "–" if r["diff"] is None else f"{r['diff']:+.2f}",
                 AUDIT_MARKS.get(r["audit"], r["audit"]), r["note"] or ""]
                for r in rows if r["evaluation"] == ev]
        parts += [f"## Evaluation `{ev}`", "", _table(["run", "metric", "ε", "steps", "n", "ours", "95% CI",
                                                       "paper", "ours − paper", "audit", "note"], body), ""]
    run_names = {p.run.name for p in planned}
    only = [[PAPER_ONLY_LABELS.get(v.run.split("/")[-1], v.run) + (f" [{v.run.split('/')[0]}]" if "/" in v.run
                                                                   else ""), v.metric, format_eps(v.eps),
             _fmt(v.steps), _fmt(v.value)] for v in preset.paper_results if v.run not in run_names]
    if only:
        parts += ["## Paper only (no run here)", "", _table(["row", "metric", "ε", "steps", "paper"], only), ""]
    settings = [[names[p.run.name], p.config.dataset, p.config.model, p.config.method, p.config.epochs,
                 p.config.train_size or "all", p.config.optimizer, _fmt(p.config.lr, None), format_eps(p.config.eps),
                 p.config.steps, _fmt(p.config.ot_weight, None), _fmt(p.config.ot_warmup_epochs, None),
                 f"`{p.run_dir}`"] for p in planned]
    parts += ["## Our settings", "", _table(["run", "dataset", "model", "method", "epochs", "train images",
                                             "optimiser", "lr", "ε", "attack steps", "β", "β warm-up (epochs)",
                                             "run directory"], settings), ""]
    parts += ["## The paper's settings", "", _table(["setting", "value"],
                                                     [[k, v] for k, v in preset.paper_settings.items()]), ""]
    parts += ["## Notes", ""] + [f"- {n}" for n in preset.notes] + [""]
    if audits:
        budget = (f"smoke budget: {SMOKE['audit_n']} test images, {SMOKE['audit']}" if scale == "smoke" else
                  f"{FULL_AUDIT_N} test images, PGD-20 x 5 restarts, standard AutoAttack")
        body = [[names.get(a["run"], a["run"]), AUDIT_MARKS[a["verdict"]], a["pass"], a["warn"], a["fail"],
                 ", ".join(a["failed_checks"]) or "–", f"[audit.md]({Path(os.path.relpath(a['report'], out_dir))})"]
                for a in audits]
        parts += ["## Audit", "", f"`otrobust audit` on each run's best checkpoint ({budget}); a fail means an "
                  "evaluation failure mode (e.g. gradient masking) was found.", "",
                  _table(["run", "verdict", "pass", "warn", "fail", "failed checks", "report"], body), ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{f.stem}]({f.relative_to(out_dir).as_posix()})" for f in figures
                                       if f.suffix == ".png"] + [""]
    return "\n".join(parts)


def write_csv(path: Path, rows: list[dict[str, Any]], fields: tuple[str, ...] | list[str]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------- figures
def _panel(p: PlannedRun) -> str:
    from otrobust.experiments.presets import DATASET_LABELS

    dataset = p.run.config.get("dataset", p.config.dataset)
    label = DATASET_LABELS.get(dataset, dataset)
    return f"{label} ({p.config.dataset} stand-in)" if p.note else label


def _sweep_panels(planned, rows, evaluation: str, x: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    names, panels = display_names(planned), {}
    for p in planned:
        pts = [(r[x], r["accuracy"]) for r in rows if r["run"] == p.run.name and r["evaluation"] == evaluation
               and r["metric"] == "pgd" and r["accuracy"] is not None]
        if pts:
            panels.setdefault(_panel(p), {})[names[p.run.name]] = pts
    return panels


def _paper_panels(preset: Preset, planned, x: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    names, panels = display_names(planned), {}
    for p in planned:
        pts = [(getattr(v, x), v.value) for v in preset.paper_results if v.run == p.run.name
               and getattr(v, x) is not None and (x == "eps" or v.eps is None)]
        if pts:
            panels.setdefault(_panel(p), {})[names[p.run.name]] = pts
    return panels


def make_figures(preset: Preset, scale: str, planned: list[PlannedRun], rows: list[dict[str, Any]],
                 evaluations: list[Evaluation], fig_dir: Path) -> list[Path]:
    """The preset's figures (``preset.plots``) from its results rows, features files and learning curves."""
    from otrobust.reporting import plots

    names, files = display_names(planned), []
    title = f"{preset.reference}" + (" — smoke scale, not comparable" if scale == "smoke" else "")
    if "curves" in preset.plots:  # the first seed's curves
        histories = {names[p.run.name]: read_jsonl(p.run_dir / "metrics.jsonl") for p in planned
                     if p.seed_index == 0}
        files += plots.plot_learning_curves(histories, fig_dir / "learning_curves", title=f"Learning curves, {title}")
    if "eps" in preset.plots:
        paper = _paper_panels(preset, planned, "eps") if scale == "full" else None
        files += plots.plot_accuracy_vs_eps(_sweep_panels(planned, rows, "eps-sweep", "eps"),
                                            fig_dir / "accuracy_vs_eps", title=f"Robust accuracy vs ε, {title}",
                                            paper=paper)
    if "steps" in preset.plots:
        files += plots.plot_accuracy_vs_steps(_sweep_panels(planned, rows, "steps-sweep", "steps"),
                                              fig_dir / "accuracy_vs_steps",
                                              title=f"Robust accuracy vs PGD steps, {title}")
    if "label-sweep" in preset.plots:
        from otrobust.experiments import study

        panels = study.sweep_panels(study.seed_summary(rows), names, LABEL_SWEEPS)
        files += plots.plot_accuracy_vs_eps(panels, fig_dir / "accuracy_vs_eps_label_protocols",
                                            title=f"Robust accuracy vs ε under two label protocols, {title}")
    if "beta" in preset.plots:
        lines: dict[str, list[tuple[float, float]]] = {}
        for p in planned:
            for r in rows:
                if r["run"] == p.run.name and r["accuracy"] is not None:
                    key = "clean" if r["metric"] == "clean" else f"{r['metric'].upper()}-{r['steps']}"
                    lines.setdefault(key, []).append((p.config.ot_weight, r["accuracy"]))
        files += plots.plot_accuracy_vs_beta({_panel(planned[0]): lines}, fig_dir / "accuracy_vs_beta",
                                             title=f"Accuracy vs OT weight β, {title}")
    if "tsne" in preset.plots:
        import numpy as np

        ev = next(e for e in evaluations if e.kind == "features")
        panels = {}
        for p in planned:
            path = features_path(p.run_dir, ev)
            if path is not None:
                with np.load(path) as f:
                    panels[names[p.run.name]] = {k: f[k] for k in f.files}
        spec = get_dataset_spec(planned[0].config.dataset)
        files += plots.plot_tsne(panels, fig_dir / "tsne", class_names=spec.class_names or None,
                                 title=f"t-SNE of penultimate features, clean (o) and PGD (x), {title}")
    return files


def _with_study(markdown: str, preset: Preset, planned: list[PlannedRun], rows: list[dict[str, Any]]) -> str:
    """results.md with the multi-seed summary and paired differences (experiments.study) after its introduction."""
    from otrobust.experiments import study

    paper = {(v.run, v.metric): v.value for v in preset.paper_results if v.eps is None and v.steps is None}
    text = study.study_markdown(study.seed_summary(rows),
                                study.paired_differences(rows, {r.name: r.baseline for r in preset.runs if r.baseline}),
                                display_names(planned), paper)
    head, sep, rest = markdown.partition("\n## ")
    return f"{head}\n{text}\n## {rest}" if sep else f"{markdown}\n{text}"


LABEL_SWEEPS = {"eps-sweep": "true labels, PGD-40, step 2.5·ε/40",
                "eps-sweep-fixed-step": "true labels, PGD-40, step 0.01 (paper's step)",
                "eps-sweep-predicted": "predicted labels, PGD-40, step 0.01 (paper's protocol)"}


# ---------------------------------------------------------------- the command
def check_data(planned: list[PlannedRun]) -> None:
    for p in planned:
        if get_dataset_spec(p.config.dataset).needs_root and p.config.data_dir is None:
            raise OtrobustError(f"run {p.run.name!r} needs the {p.config.dataset} files: give --data-dir "
                                f"(to fetch them: otrobust data download {p.config.dataset} --root DIR)")


def print_plan(preset: Preset, scale: str, planned: list[PlannedRun], evaluations: list[Evaluation],
               log: Callable[[str], None] = print) -> list[list[Any]]:
    """The --dry-run listing: every run with its status and estimated GPU hours, and the evaluations."""
    cost = cost_table(preset, planned, evaluations)
    log(f"{preset.name}: {preset.reference}, {scale} scale, {len(planned)} runs\n")
    log(_table(["run", "dataset", "model", "method", "epochs", "status", "train GPU-h", "eval GPU-h"],
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


def applies(p: PlannedRun, runs_: tuple[str, ...], seeds: tuple[int, ...]) -> bool:
    """Whether an evaluation or audit restricted to ``runs_`` and seed indices ``seeds`` (empty: all) covers ``p``."""
    return (not runs_ or p.run.name in runs_) and (not seeds or p.seed_index in seeds)


def _evaluate_and_audit(preset: Preset, scale: str, planned: list[PlannedRun], evaluations: list[Evaluation],
                        audit: bool, dev, log: Callable[[str], None]) -> tuple[list[dict], list[dict]]:
    """Audit and evaluate every planned run that an audit or evaluation applies to (cached per checkpoint);
    returns (results.csv rows, audit summaries)."""
    multi_seed = any(p.seed_index for p in planned)
    options = SMOKE["attack_options"] if scale == "smoke" else None
    rows, tests, audits = [], {}, []
    for p in planned:
        key = (p.config.dataset, p.config.data_dir)
        if key not in tests:
            audit_n = SMOKE["audit_n"] if scale == "smoke" else preset.audit_n or FULL_AUDIT_N
            sizes = [ev.n for ev in evaluations] + [audit_n] * audit
            tests[key] = load_dataset(p.config.dataset, "test", p.config.data_dir,
                                      size=None if None in sizes else max(sizes))
        verdict = None
        if audit and applies(p, (), preset.audit_seeds):
            audits.append(audit_run(p, scale, tests[key], surrogate=surrogate_for(planned, p), device=dev, log=log,
                                    n=preset.audit_n, quick=preset.audit_quick))
            verdict = audits[-1]["verdict"]
            log(f"audit of {p.run.name}: {verdict}" + (f" ({', '.join(audits[-1]['failed_checks'])})"
                                                         if verdict == "fail" else ""))
        for ev in evaluations:
            if applies(p, ev.runs, ev.seeds):
                log(f"evaluating {p.run.name}" + (f" seed {p.config.seed}" if multi_seed else "") + f": {ev.name}")
                for row in evaluate_run(p.run_dir, ev, p.config, tests[key], device=dev, attack_options=options):
                    rows.append(result_row(preset, scale, p, row, p.config.eps, verdict))
    return rows, audits


def reproduce(name: str, *, scale: str = "smoke", out: str | Path = "runs/reproduce", data_dir: str | None = None,
              dry_run: bool = False, device: str = "auto", overrides: dict[str, Any] | None = None,
              audit: bool = True, seeds: int = 1, log: Callable[[str], None] = print) -> Path | None:
    """Train, evaluate and audit every run of preset ``name`` (``seeds`` times, with seeds 0, 1, …); write
    results.csv, results.md, audits.json and figures. With several seeds results.md leads with each run's mean ±
    standard deviation over seeds and each run's paired difference from its baseline
    (:mod:`otrobust.experiments.study`).

    Returns the results folder (None for ``dry_run``, which only lists the runs and their estimated cost).
    """
    from otrobust.training.loop import pick_device

    preset = get_preset(name)
    planned = plan(preset, scale, out, data_dir, overrides, device, seeds)
    evaluations = scaled_evaluations(preset, scale)
    if dry_run:
        print_plan(preset, scale, planned, evaluations, log)
        return None
    check_data(planned)
    for note in sorted({p.note for p in planned if p.note}):
        log(f"SMOKE: {note}: no --data-dir was given, so the bundled {SMOKE['stand_in']} dataset stands in "
            "(pipeline check only, numbers not comparable with the paper)")
    for i, p in enumerate(planned, 1):
        status = run_status(p)
        what = "done, skipped" if status == "done" else status + ", training"
        log(f"[{i}/{len(planned)}] {p.run.name}" + (f" seed {p.config.seed}" if seeds > 1 else "")
            + f": {what} ({p.config.dataset}, {p.config.model}, {p.config.method}) -> {p.run_dir}")
        train_planned(p, log)
    rows, audits = _evaluate_and_audit(preset, scale, planned, evaluations, audit, pick_device(device), log)
    result_dir = Path(out) / scale / preset.name
    write_csv(result_dir / "results.csv", rows, RESULT_FIELDS)
    atomic_write_text(result_dir / "audits.json", json.dumps(audits, indent=1))
    try:
        figures = make_figures(preset, scale, planned, rows, evaluations, result_dir / "figures")
    except OtrobustError as exc:  # e.g. matplotlib missing: the tables still stand
        log(f"warning: figures not drawn: {exc}")
        figures = []
    markdown = results_markdown(preset, scale, planned, rows, figures, result_dir, audits)
    if seeds > 1 or any(r.baseline for r in preset.runs):
        markdown = _with_study(markdown, preset, planned, rows)
    atomic_write_text(result_dir / "results.md", markdown)
    log(f"results: {result_dir / 'results.md'}, {result_dir / 'results.csv'}"
        + (f", {len(figures) // 2} figures in {result_dir / 'figures'}" if figures else ""))
    return result_dir
