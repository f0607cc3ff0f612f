"""Run a paper preset or a study: its units (one run's training, evaluations and audit each, see
:mod:`otrobust.experiments.units`) one after another, one alone (``--unit``), or launched elsewhere (``--launch``);
then results and figures from the units' records (``--merge`` does only that).

Layout under ``out`` (restartable; nothing finished is redone)::

    <out>/<scale>/runs/<dataset>-<model>-<method>-<hash>/   one training run, shared by every preset that
                                                           needs the same settings; evals/ caches its evaluations
                                                           audit-<key>/ its audit report (otrobust.evaluation.audit)
    <out>/<scale>/<preset>/records/<unit>.json             each finished unit's record (small, portable)
    <out>/<scale>/<preset>/units/<unit>/                   a unit's lock while it runs, failed.txt, job.txt
    <out>/<scale>/<preset>/results.csv, results.md, audits.json, figures/

Unfinished training runs are resumed from their last checkpoint; finished ones are skipped; an
evaluation or audit already cached for the same checkpoint is read back. Every run is audited, and every
results table carries the audit verdict of each run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrobust.errors import OtrobustError
from otrobust.experiments import launch
from otrobust.experiments import merge as merging
from otrobust.experiments.planning import (
    COST_ASSUMPTION,
    SCALES,
    check_data,
    cost_table,
    get_preset,
    parse_overrides,
    plan,
    print_plan,
    scaled_evaluations,
)
from otrobust.experiments.spec import SMOKE
from otrobust.experiments.units import (
    STATUSES,
    UnitContext,
    build_units,
    default_threads,
    find_unit,
    run_unit,
    unit_progress,
    unit_status,
)
from otrobust.reporting.tables import markdown_table
from otrobust.settings import Flag, setting

MAX_SEEDS = 1000


@dataclass(kw_only=True)
class ReproduceSettings:
    """``otrobust reproduce``: which preset, at which scale, where, and how its units are run; ``preset`` None lists
    the presets."""

    preset: str | None = setting(None, "preset name (omit to list them)", flag=Flag(positional=True, nargs="?"))
    scale: str = setting("smoke", "smoke: tiny subsets, one epoch, tiny models, the bundled digits as stand-in "
                         "data without --data-dir; full: the paper's settings", SCALES)
    out: str = setting("runs/reproduce", "output folder, shared by presets so that identical runs are trained once")
    data_dir: str | None = setting(None, "dataset folder, or a folder holding one sub-folder per dataset named "
                                   "after it (mnist/, cifar10/, ...)")
    dry_run: bool = setting(False, "list the runs, their status and an estimated GPU cost; train nothing")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")
    seeds: int = setting(1, "train and evaluate every run with seeds 0..N-1; results.md then gives mean ± sd over "
                         "seeds and each GOT run's paired difference from its base method")
    overrides: list[str] = setting(help="override a training setting in every run, e.g. --set lr=1e-4", factory=list,
                                   flag=Flag(name="--set", metavar="FIELD=VALUE", repeatable=True))
    audit: bool = setting(True, "audit each run's evaluation (its verdict is in every table, and a failed audit "
                          "exits 1)")
    units: bool = setting(False, "list the plan's units (one run's training, evaluations and audit each): id, what "
                          "it waits for, estimated cost, status; run nothing")
    status: bool = setting(False, "how many units are done, running, failed, queued or not started, read from --out")
    unit: str | None = setting(None, "run exactly this unit (an id from --units); again after a kill it resumes, "
                               "when it is done it does nothing", flag=Flag(metavar="ID"))
    merge: bool = setting(False, "write results.csv, results.md and the figures from the units' records alone (no "
                          "checkpoint, model or data needed)")
    records: list[str] = setting(help="with --merge: folders holding records (searched recursively)", factory=list,
                                 default_text="OUT/SCALE/PRESET/records", flag=Flag(nargs="+", metavar="DIR"))
    threads: int | None = setting(None, "torch threads of every unit: it changes a CPU's floating-point results, so "
                                  "it is fixed per plan and kept in each record",
                                  default_text="all cores; a core share per worker with --launch local",
                                  flag=Flag(metavar="N"))
    launch: str | None = setting(None, "run the units elsewhere: local (--workers at a time, as separate processes) "
                                 "or slurm (job arrays through submitit); then merge", ("local", "slurm"))
    workers: int = setting(1, "with --launch local: units running at the same time, each pinned to one GPU or to "
                           "its share of the CPU cores")
    partition: str | None = setting(None, "SLURM partition", default_text="the cluster's default")
    account: str | None = setting(None, "SLURM account", default_text="none")
    gpus_per_unit: int = setting(0, "SLURM: GPUs per unit")
    cpus_per_unit: int = setting(1, "SLURM: CPU cores per unit (also its --threads unless given)")
    time_limit: int = setting(24 * 60, "SLURM: time limit per unit job in minutes; a unit that reaches it saves, is "
                              "requeued and resumes")
    sbatch: list[str] = setting(help="SLURM: an extra sbatch option KEY=VALUE (e.g. --sbatch qos=long)", factory=list,
                                flag=Flag(name="--sbatch", metavar="KEY=VALUE", repeatable=True))
    mixed_machines: bool = setting(False, "run a unit even where a unit it is compared with ran on another kind of "
                                   "processor or precision (their pairs then differ in more than the method)")
    wait: bool = setting(True, "with --launch slurm: wait for the jobs and merge (--no-wait: submit, print the job "
                         "ids and return; the merge job writes results.md)")

    def __post_init__(self) -> None:
        modes = [flag for flag, on in (("--units", self.units), ("--status", self.status), ("--unit", self.unit),
                                       ("--merge", self.merge), ("--launch", self.launch), ("--dry-run", self.dry_run))
                 if on]
        if len(modes) > 1:
            raise OtrobustError(f"{' and '.join(modes)} do not go together; give one of them")
        if self.records and not self.merge:
            raise OtrobustError("--records goes with --merge")
        if not 1 <= self.seeds <= MAX_SEEDS:  # each seed is a whole set of training runs
            raise OtrobustError(f"--seeds must be between 1 and {MAX_SEEDS}, got {self.seeds}")
        for flag, value, low in (("--workers", self.workers, 1),
                                 ("--threads", self.threads, 1), ("--gpus-per-unit", self.gpus_per_unit, 0),
                                 ("--cpus-per-unit", self.cpus_per_unit, 1), ("--time-limit", self.time_limit, 1)):
            if value is not None and value < low:
                raise OtrobustError(f"{flag} must be at least {low}, got {value}")

    def run(self, log: Callable[[str], None] = print) -> Path | None:
        """Do what the flags ask (see :func:`reproduce`); returns the results folder when results were written."""
        if self.units or self.status:
            list_units(self, log)
            return None
        return run_preset(self, log)



def plan_units(settings: ReproduceSettings, log: Callable[[str], None] = print):
    """(preset, planned runs, scaled evaluations, units, context) of the settings' plan."""
    preset = get_preset(settings.preset)
    planned = plan(preset, settings.scale, settings.out, settings.data_dir, parse_overrides(settings.overrides),
                   settings.device, settings.seeds)
    evaluations = scaled_evaluations(preset, settings.scale)
    units = build_units(preset, planned, evaluations, settings.audit)
    ctx = UnitContext(preset, settings.scale, Path(settings.out) / settings.scale / preset.name,
                      settings.threads or default_threads(), settings.device, preset.audit_n, preset.audit_quick, log,
                      settings.mixed_machines)
    return preset, planned, evaluations, units, ctx


def list_units(settings: ReproduceSettings, log: Callable[[str], None] = print) -> list[list[Any]]:
    """``--units`` and ``--status``: every unit with what it waits for, its estimated cost and status."""
    preset, planned, evaluations, units, ctx = plan_units(settings, log)
    cost = {id(p): r for p, r in zip(planned, cost_table(preset, planned, evaluations), strict=True)}
    statuses = {u.id: unit_status(u, ctx) for u in units}
    rows = [[u.id, ", ".join(u.depends_on) or "–", f"{cost[id(u.planned)][6]:.2g}", f"{cost[id(u.planned)][7]:.2g}",
             statuses[u.id]] for u in units]
    if settings.units:
        log(f"{preset.name}, {settings.scale} scale: {len(units)} units (one run's training, evaluations and audit "
            f"each), in an order that puts every unit after what it waits for\n")
        log(markdown_table(["unit", "waits for", "train GPU-h", "eval GPU-h", "status"], rows))
        log("\nrun one with --unit ID; " + COST_ASSUMPTION)
    counts = {s: sum(v == s for v in statuses.values()) for s in STATUSES}
    log(f"{preset.name}, {settings.scale} scale, under {ctx.results_dir}: "
        + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) + f" (of {len(units)} units)")
    if settings.status:
        for s in ("running", "partial", "failed", "queued"):
            if counts[s]:
                log(f"{s}: " + ", ".join(u.id + (f" ({unit_progress(u)})" if s in ("running", "partial") else "")
                                         for u in units if statuses[u.id] == s))
        for u in units:
            if statuses[u.id] == "failed":
                log(f"  {u.id}: {(ctx.state_dir(u) / 'failed.txt').read_text(errors='replace').strip()}")
    return rows


def reproduce(name: str, *, scale: str = "smoke", out: str | Path = "runs/reproduce", data_dir: str | None = None,
              device: str = "auto", audit: bool = True, seeds: int = 1,
              log: Callable[[str], None] = print) -> Path | None:
    """Run every unit of preset ``name`` (``seeds`` times, with seeds 0, 1, …) — training, evaluations, audit — and
    write results.csv, results.md, audits.json and figures from their records. With several seeds results.md leads
    with each run's mean ± standard deviation over seeds and each run's paired difference from its baseline
    (:mod:`otrobust.experiments.study`). Returns the results folder. Every other setting of the command (a dry run,
    overrides, one unit, a merge, a launch): :func:`run_preset` with a :class:`ReproduceSettings`.
    """
    return run_preset(ReproduceSettings(preset=name, scale=scale, out=str(out), data_dir=data_dir, device=device,
                                        seeds=seeds, audit=audit), log)


def run_preset(settings: ReproduceSettings, log: Callable[[str], None] = print) -> Path | None:
    """What ``settings`` ask (see :func:`reproduce`): the whole plan, or one unit (``unit``), a merge of records
    (``merge``), a launch of the units elsewhere (``launch``), the plan alone (``dry_run``). Returns the results
    folder (None for ``dry_run`` and ``unit``)."""
    preset, planned, evaluations, units, ctx = plan_units(settings, log)
    if settings.dry_run:
        print_plan(preset, settings.scale, planned, evaluations, log)
        return None
    if settings.merge:
        records = merging.gather(units, ctx, settings.records or [ctx.records_dir])
        return merging.write_results(units, ctx, records, log)
    check_data(planned)
    for note in sorted({p.note for p in planned if p.note}):
        log(f"SMOKE: {note}: no --data-dir was given, so the bundled {SMOKE['stand_in']} dataset stands in "
            "(pipeline check only, numbers not comparable with the paper)")
    if settings.unit is not None:
        run_unit(find_unit(units, settings.unit), units, ctx)
        return None
    if settings.launch is not None:
        return launch.launch(settings, units, ctx, log)
    for i, u in enumerate(units, 1):
        log(f"[{i}/{len(units)}] {u.id}")
        run_unit(u, units, ctx)
    return merging.write_results(units, ctx, merging.gather(units, ctx, [ctx.records_dir]), log)
