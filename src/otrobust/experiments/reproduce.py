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

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrobust.data import load_dataset
from otrobust.errors import OtrobustError
from otrobust.experiments.planning import (  # noqa: F401  (re-exported: the command's vocabulary)
    FULL_AUDIT_N,
    SCALES,
    PlannedRun,
    applies,
    check_data,
    cost_table,
    get_preset,
    parse_overrides,
    plan,
    print_plan,
    run_id,
    run_status,
    scaled_evaluations,
)
from otrobust.experiments.results import RESULT_FIELDS, make_figures, result_row, results_markdown, with_study
from otrobust.experiments.runner import audit_run, evaluate_run, surrogate_for, train_planned  # noqa: F401
from otrobust.experiments.spec import SMOKE, Evaluation, Preset
from otrobust.reporting.tables import format_eps, write_csv  # noqa: F401
from otrobust.settings import setting
from otrobust.store.files import atomic_write_text

MAX_SEEDS = 1000


@dataclass(kw_only=True)
class ReproduceSettings:
    """``otrobust reproduce``: which preset, at which scale, where; ``preset`` None lists them."""

    preset: str | None = setting(None, "preset name (omit to list them)", positional=True, nargs="?")
    scale: str = setting("smoke", "smoke: tiny subsets, one epoch, tiny models, the bundled digits as stand-in "
                         "data without --data-dir; full: the paper's settings", SCALES)
    out: str = setting("runs/reproduce", "output folder, shared by presets so that identical runs are trained once")
    data_dir: str | None = setting(None, "dataset folder, or a folder holding one sub-folder per dataset named "
                                   "after it (mnist/, cifar10/, ...)")
    dry_run: bool = setting(False, "list the runs, their status and an estimated GPU cost; train nothing")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")
    seeds: int = setting(1, "train and evaluate every run with seeds 0..N-1; results.md then gives mean ± sd over "
                         "seeds and each GOT run's paired difference from its base method")
    overrides: list[str] = setting(help="override a training setting in every run, e.g. --set lr=1e-4",
                                   flag="--set", metavar="FIELD=VALUE", factory=list, repeatable=True)
    audit: bool = setting(True, "audit each run's evaluation (its verdict is in every table, and a failed audit "
                          "exits 1)")

    def __post_init__(self) -> None:
        if not 1 <= self.seeds <= MAX_SEEDS:  # each seed is a whole set of training runs
            raise OtrobustError(f"--seeds must be between 1 and {MAX_SEEDS}, got {self.seeds}")

    def run(self, log: Callable[[str], None] = print) -> Path | None:
        """:func:`reproduce` with these settings."""
        return reproduce(self.preset, scale=self.scale, out=self.out, data_dir=self.data_dir, dry_run=self.dry_run,
                         device=self.device, overrides=parse_overrides(self.overrides), audit=self.audit,
                         seeds=self.seeds, log=log)


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
        markdown = with_study(markdown, preset, planned, rows)
    atomic_write_text(result_dir / "results.md", markdown)
    log(f"results: {result_dir / 'results.md'}, {result_dir / 'results.csv'}"
        + (f", {len(figures) // 2} figures in {result_dir / 'figures'}" if figures else ""))
    return result_dir
