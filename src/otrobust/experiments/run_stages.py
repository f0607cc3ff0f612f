"""Train, evaluate and audit one planned run, each cached in the run's folder.

``evaluate_run`` is the one place a preset's evaluation runs; its rows (and an audit's summary) are cached
under ``run_dir/evals`` and ``run_dir/audit-<key>`` by a key of the checkpoint file and the settings, so a new
checkpoint or other settings recompute and nothing else does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from itertools import product
from pathlib import Path
from typing import Any

from otrobust.attacks.gradient import default_step_size
from otrobust.attacks.table import ATTACK_SPECS
from otrobust.errors import OtrobustError
from otrobust.evaluation.audit import audit_model
from otrobust.evaluation.audit_types import AuditSettings, Subject
from otrobust.evaluation.evaluate import build_attacks, evaluate_model
from otrobust.evaluation.statistics import binomial_interval
from otrobust.experiments.planning import FULL_AUDIT_N, PlannedRun, check_same_settings, run_status
from otrobust.experiments.records import AuditSummary, ResultRow, pack_bits, percent_correct
from otrobust.experiments.spec import SMOKE, Evaluation
from otrobust.reporting.audit_report import write_report
from otrobust.store.checkpoint import load_model, resolve_checkpoint
from otrobust.store.files import atomic_write_bytes, atomic_write_text, cache_key
from otrobust.training.config import TrainConfig
from otrobust.training.loop import train


def train_planned(p: PlannedRun, log: Callable[[str], None] = print) -> str:
    """Train (or resume, or skip) one planned run; returns the status it had."""
    status = run_status(p)
    check_same_settings(p)
    if status != "done":
        cfg = dataclasses.replace(p.config, resume=status == "partial")
        train(cfg, show_progress=False, log=lambda s: log(f"    {s}"))
    return status


def checkpoint_key(ckpt: Path, **settings: Any) -> str:
    """The cache key of what was computed from checkpoint ``ckpt`` with ``settings``."""
    return cache_key({"ckpt": ckpt}, **settings)


def _eval_key(ev: Evaluation, ckpt: Path, cfg: TrainConfig, options: dict[str, Any]) -> str:
    # Only the fields that differ from Evaluation's defaults: a field added later keeps existing caches valid.
    defaults = {f.name: f.default for f in dataclasses.fields(Evaluation)}
    # Which runs and seeds it applies to does not change a result.
    what = {k: v for k, v in dataclasses.asdict(ev).items()
            if k not in ("runs", "seeds") and (k in ("name", "attacks") or v != defaults.get(k))}
    # format 2: rows carry each image's correctness
    return checkpoint_key(ckpt, ev=what, eps=cfg.eps, norm=cfg.norm, options=options, format=2)


def evaluate_run(run_dir: Path, ev: Evaluation, cfg: TrainConfig, test, *, device="cpu", seed: int = 0,
                 attack_options: dict[str, Any] | None = None) -> list[ResultRow]:
    """The one place a preset's evaluation runs: every (eps, steps) pair of ``ev`` on the run's best checkpoint.

    Returns its :class:`~otrobust.experiments.records.ResultRow` (accuracies in %; ``correct``: each image's
    correctness, :func:`otrobust.experiments.records.pack_bits`);
    for ``kind="features"`` it saves ``evals/<key>.npz`` (clean/adversarial latents, labels) and returns [].
    Results are cached in ``run_dir/evals`` per checkpoint and settings.
    """
    options = dict(attack_options or {})
    ckpt = resolve_checkpoint(run_dir)
    cache = Path(run_dir) / "evals" / f"{ev.name}-{_eval_key(ev, ckpt, cfg, options)}"
    if cache.with_suffix(".json").exists():
        source = repr(str(cache.with_suffix(".json")))
        return [ResultRow.from_json(row, f"{source}: rows[{i}]")
                for i, row in enumerate(json.loads(cache.with_suffix(".json").read_text()))]
    model = load_model(ckpt, device)
    data = test.first(ev.n)
    if ev.kind == "features":
        _save_features(model, data, cfg, ev, cache.with_suffix(".npz"), device, seed)
        rows = []
    else:
        rows = _accuracy_rows(model, data, ev, cfg, options, device, seed)
    atomic_write_text(cache.with_suffix(".json"), json.dumps([row.to_json() for row in rows], indent=1))
    return rows


def _is_suite(name: str) -> bool:
    """A whole AutoAttack version (the attack options apply to it); an unknown name is left to build_attacks."""
    spec = ATTACK_SPECS.get(name)
    return spec is not None and spec.suite


def _accuracy_rows(model, data, ev: Evaluation, cfg: TrainConfig, options: dict[str, Any], device,
                   seed: int) -> list[ResultRow]:
    import torch


    rows: list[ResultRow] = []
    for i, (eps, steps) in enumerate(product(ev.eps or (cfg.eps,), ev.steps or (None,))):
        attacks, missing = {}, []
        for name in ev.attacks:  # an attack this build cannot run is reported in the results, not fatal
            try:
                attacks.update(build_attacks([name], eps=eps, steps=steps or 20, step_size=ev.step_size,
                                             norm=cfg.norm, **(options if _is_suite(name) else {})))
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
            rows.append(ResultRow(
                evaluation=ev.name, metric=name, labels=ev.labels, eps=None if clean else eps,
                steps=None if clean else steps,
                step_size=None if clean or steps is None else ev.step_size or default_step_size(eps, steps),
                n=len(correct), accuracy=percent_correct(k, len(correct)), ci_low=100 * lo, ci_high=100 * hi,
                note="; ".join(warnings.get(name, [])), correct=pack_bits(correct.cpu().numpy())))
        rows += [ResultRow(evaluation=ev.name, metric=name, eps=eps, steps=steps, note=f"not run: {why}")
                 for name, why in missing]
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


def audit_plan(p: PlannedRun, scale: str, n: int | None = None, quick: bool = False):
    """(test images, AuditSettings) of the audit of ``p`` at ``scale``: the smoke budget on a few images, else ``n``
    images (default :data:`FULL_AUDIT_N`) with the full budget, or its CPU budget when ``quick``."""
    n = SMOKE["audit_n"] if scale == "smoke" else n or FULL_AUDIT_N
    return n, AuditSettings.make(p.config.eps, p.config.norm, quick=quick or scale == "smoke",
                                 **(SMOKE["audit"] if scale == "smoke" else {}))


def audit_run(p: PlannedRun, scale: str, test, *, surrogate: Path | None = None, device="cpu",
              log: Callable[[str], None] = print, n: int | None = None, quick: bool = False) -> AuditSummary:
    """Audit the run's best checkpoint on ``n`` test images (default: by scale) (otrobust.evaluation.audit; cached in
    ``run_dir/audit-<key>`` per checkpoint and budget) and sum it up (:class:`~otrobust.experiments.records.
    AuditSummary`). ``quick`` audits with the CPU budget at the full scale too."""
    ckpt = resolve_checkpoint(p.run_dir)
    n, settings = audit_plan(p, scale, n, quick)
    out = p.run_dir / f"audit-{checkpoint_key(ckpt, n=n, settings=dataclasses.asdict(settings), surrogate=surrogate)}"
    if not (out / "audit.json").exists():
        log(f"auditing {p.run.name} on {min(n, len(test))} test images")
        report = audit_model(load_model(ckpt, device), test.first(n), settings, device=device,
                             surrogate=load_model(surrogate, device) if surrogate else None,
                             subject=Subject(p.config.dataset, f"{p.config.model} from {ckpt}"))
        write_report(report, out)
    summary = json.loads((out / "audit.json").read_text())
    counts = summary["counts"]
    verdict = "fail" if summary["failed"] else "warn" if counts.get("warn") else "pass"
    return AuditSummary(run=p.run.name, seed=p.config.seed, verdict=verdict, passed=counts.get("pass", 0),
                        warned=counts.get("warn", 0), failed=counts.get("fail", 0),
                        failed_checks=tuple(c["name"] for c in summary["checks"] if c["status"] == "fail"),
                        report=f"runs/{p.run_dir.name}/{out.name}/audit.md")


def surrogate_for(planned: list[PlannedRun], p: PlannedRun) -> Path | None:
    """A finished ``standard`` run of the same data and model (for the audit's transfer check), if the preset
    has one."""
    for q in planned:
        if (q is not p and q.config.method == "standard" and q.config.dataset == p.config.dataset
                and q.config.model == p.config.model and run_status(q) == "done"):
            return resolve_checkpoint(q.run_dir)
    return None
