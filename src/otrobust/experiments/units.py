"""A plan as independent units: one unit is one run's training, all of its evaluations and its audit.

A unit that starts from another run's checkpoint (fine-tuning) or audits against another run (the transfer
surrogate) *waits* for that unit rather than holding the chain: the three fine-tuning arms of a study share one
parent, so separate units let them run at the same time once it is done, and the parent is trained once. A unit
whose run is an earlier unit's (the same settings and seed, as a tuned arm that kept the defaults) waits for that
unit too, so the run is trained once and never by two jobs at a time. A launcher expresses the wait with its
own mechanism (SLURM's ``afterok``, the local launcher's queue).

What a unit computes does not depend on where or how it is launched: its thread count (which changes a CPU's
floating-point results, and with it the attack workers) is fixed by the plan and kept in its record.

Files, under ``OUT/SCALE/PRESET/``: ``records/<unit>.json`` (the unit's record, :mod:`otrobust.experiments.records`)
and ``units/<unit>/`` (its lock while it runs, ``machine.json``: the processor and precision it started on,
``failed.txt`` when it stopped with an error, ``job.txt`` when a launcher queued it). The training run itself
lives where the plan puts it (``OUT/SCALE/runs/<run id>``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrobust.data import load_dataset
from otrobust.data.base import data_fingerprint
from otrobust.devices import pick_device
from otrobust.errors import OtrobustError
from otrobust.experiments.machine_kinds import check_one_machine_kind, machine_kind, note_started, recorded_kind
from otrobust.experiments.planning import NOT_IN_RUN_ID, PlannedRun, applies, run_status
from otrobust.experiments.records import (
    RECORD_SUFFIX,
    UnitExecution,
    UnitRecord,
    check_record,
    read_record,
    record_to_json,
    sha256_file,
)
from otrobust.experiments.run_stages import audit_plan, audit_run, evaluate_run, features_path, train_planned
from otrobust.experiments.spec import SMOKE, Evaluation, Preset
from otrobust.store.checkpoint import resolve_checkpoint
from otrobust.store.files import atomic_write_text, read_jsonl
from otrobust.store.lock import LOCK_NAME, lock_owner, run_lock
from otrobust.store.lock import _running as pid_running
from otrobust.store.provenance import versions

STATUSES = ("done", "running", "failed", "queued", "partial", "new")
# Training settings a record leaves out: where and how a run is executed, and the starting checkpoint's path (the
# record names the unit it comes from instead).
NOT_IN_RECORD = (*NOT_IN_RUN_ID, "init")


@dataclass(frozen=True)
class Unit:
    """One run of the plan with what it needs: ``id`` is ``s<seed index>/<run name>`` (``s0/ft/trades``);
    ``depends_on`` the units that must be done first; ``surrogate`` the unit whose model is the audit's transfer
    surrogate (one of ``depends_on``)."""

    id: str
    planned: PlannedRun
    evaluations: tuple[Evaluation, ...]
    audit: bool
    depends_on: tuple[str, ...] = ()
    surrogate: str | None = None
    init_unit: str | None = None


@dataclass(frozen=True)
class UnitContext:
    """Where a plan's units keep their files and how they run: ``results_dir`` is ``OUT/SCALE/PRESET``."""

    preset: Preset
    scale: str
    results_dir: Path
    threads: int
    device: str = "auto"
    audit_n: int | None = None
    audit_quick: bool = False
    log: Callable[[str], None] = print
    mixed_machines: bool = False  # run a unit even where a unit it is compared with ran on another processor/precision

    @property
    def records_dir(self) -> Path:
        return self.results_dir / "records"

    def record_path(self, unit: Unit) -> Path:
        return self.records_dir / f"{unit.id}{RECORD_SUFFIX}"

    def state_dir(self, unit: Unit) -> Path:
        return self.results_dir / "units" / unit.id


def unit_id(p: PlannedRun) -> str:
    return f"s{p.seed_index}/{p.run.name}"


def build_units(preset: Preset, planned: list[PlannedRun], evaluations: list[Evaluation], audit: bool) -> list[Unit]:
    """The plan's units, ordered so that every unit comes after the units it depends on (plan order otherwise)."""
    by_key = {(p.seed_index, p.run.name): p for p in planned}
    trains: dict[Path, PlannedRun] = {}  # run folder -> the first unit that trains it
    units = []
    for p in planned:
        deps, init_unit, surrogate = [], None, None
        first = trains.setdefault(p.run_dir, p)
        if first is not p:  # the same settings and seed as an earlier run (a tuned arm that kept the defaults):
            deps.append(unit_id(first))  # its training is that unit's, so it waits rather than train it twice
        if p.run.init_from is not None:
            init_unit = unit_id(by_key[(p.seed_index, p.run.init_from)])
            deps.append(init_unit)
        audited = audit and applies(p, preset.audit_runs, preset.audit_seeds)
        if audited and p.config.method != "standard":
            q = _surrogate_run(planned, p)
            if q is not None:
                surrogate = unit_id(q)
                deps.append(surrogate)
        units.append(Unit(unit_id(p), p, tuple(ev for ev in evaluations if applies(p, ev.runs, ev.seeds)), audited,
                          tuple(dict.fromkeys(deps)), surrogate, init_unit))
    return _dependencies_first(units)


def _surrogate_run(planned: list[PlannedRun], p: PlannedRun) -> PlannedRun | None:
    """The ``standard`` run of the same data and model for the audit's transfer check: of the same seed if the
    plan has one, else of the first seed (a fixed choice, whatever order the units run in)."""
    same = [q for q in planned if q.config.method == "standard" and q.config.dataset == p.config.dataset
            and q.config.model == p.config.model]
    same.sort(key=lambda q: (q.seed_index != p.seed_index, q.seed_index))
    return same[0] if same else None


def _dependencies_first(units: list[Unit]) -> list[Unit]:
    by_id, done, order = {u.id: u for u in units}, set(), []

    def visit(u: Unit) -> None:
        if u.id in done:
            return
        done.add(u.id)
        for d in u.depends_on:
            visit(by_id[d])
        order.append(u)

    for u in units:
        visit(u)
    return order


def find_unit(units: list[Unit], wanted: str) -> Unit:
    """The unit named ``wanted``; an unknown id is one line listing a few that exist."""
    for u in units:
        if u.id == wanted:
            return u
    shown = ", ".join(u.id for u in units[:6]) + (", ..." if len(units) > 6 else "")
    raise OtrobustError(f"unknown unit {wanted!r}; this plan has {len(units)} units ({shown}); list them with "
                        "--units")


def _json_normal(value: Any) -> Any:
    return json.loads(json.dumps(value))


def record_settings(p: PlannedRun) -> dict[str, Any]:
    """The training settings a record carries: all that decide what the run learns (paths left out)."""
    return _json_normal({k: v for k, v in p.config.to_dict().items() if k not in NOT_IN_RECORD})


def evaluation_specs(unit: Unit) -> list[dict[str, Any]]:
    """The unit's evaluations as JSON values, without the fields that say which runs and seeds they apply to."""
    return _json_normal([{k: v for k, v in dataclasses.asdict(ev).items() if k not in ("runs", "seeds")}
                         for ev in unit.evaluations])


def audit_settings(unit: Unit, ctx: UnitContext) -> dict[str, Any] | None:
    """The audit's settings at this scale (None when the unit has no audit)."""
    if not unit.audit:
        return None
    n, settings = audit_plan(unit.planned, ctx.scale, ctx.audit_n, ctx.audit_quick)
    return _json_normal({"n": n, **dataclasses.asdict(settings)})


def expected_fields(unit: Unit, ctx: UnitContext) -> dict[str, Any]:
    """What a record must hold to be this unit's (compared by :func:`otrobust.experiments.records.check_record`)."""
    p = unit.planned
    return {"preset": ctx.preset.name, "scale": ctx.scale, "run": p.run.name, "seed": p.config.seed,
            "settings": record_settings(p), "init_unit": unit.init_unit, "evaluations": evaluation_specs(unit),
            "audit_settings": audit_settings(unit, ctx)}


def unit_status(unit: Unit, ctx: UnitContext) -> str:
    """One of :data:`STATUSES`, read from the output folder alone."""
    if ctx.record_path(unit).is_file():
        return "done"
    state = ctx.state_dir(unit)
    owner = lock_owner(state / LOCK_NAME)
    if owner is not None and pid_running(owner):
        return "running"
    if (state / "failed.txt").is_file():
        return "failed"
    if (state / "job.txt").is_file():
        return "queued"
    return "partial" if run_status(unit.planned) != "new" else "new"


def unit_progress(unit: Unit) -> str:
    """How far a started unit is, from its run folder: ``"7 of 20 epochs trained"`` or ``"trained, evaluating"``."""
    done, total = len(read_jsonl(unit.planned.run_dir / "metrics.jsonl")), unit.planned.config.epochs
    return f"{done} of {total} epochs trained" if done < total else "trained, evaluating"


def read_unit_record(unit: Unit, ctx: UnitContext) -> UnitRecord | None:
    """The unit's record if it exists and belongs to this plan; a record made with other settings is one error."""
    path = ctx.record_path(unit)
    if not path.is_file():
        return None
    record = read_record(path)
    check_record(record, expected_fields(unit, ctx), repr(str(path)))
    return record


def run_unit(unit: Unit, units: list[Unit], ctx: UnitContext) -> UnitRecord:
    """Train, evaluate and audit one unit and write its record; resumes whatever a kill left (the training from its
    last checkpoint, each finished evaluation and audit from its cache); a unit already done returns its record."""
    record = read_unit_record(unit, ctx)
    if record is not None:
        ctx.log(f"{unit.id}: done, nothing to do ({ctx.record_path(unit)})")
        return record
    by_id = {u.id: u for u in units}
    for dep in unit.depends_on:
        if not ctx.record_path(by_id[dep]).is_file():
            raise OtrobustError(f"unit {unit.id!r} depends on {dep!r}, which is not done; run it first "
                                f"(--unit {dep})")
    here = machine_kind(unit, ctx)
    if not ctx.mixed_machines:
        check_one_machine_kind(unit, units, ctx, here)
    state = ctx.state_dir(unit)
    with run_lock(state):
        (state / "failed.txt").unlink(missing_ok=True)
        note_started(unit, ctx, here)
        try:
            record = _compute(unit, by_id, ctx)
        except BaseException as exc:
            atomic_write_text(state / "failed.txt", f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} "
                              f"{type(exc).__name__}: {' '.join(str(exc).splitlines())}\n")
            raise
        atomic_write_text(ctx.record_path(unit), record_to_json(record))
        (state / "job.txt").unlink(missing_ok=True)
    ctx.log(f"{unit.id}: done, record {ctx.record_path(unit)}")
    return record


def unit_command(settings, unit_id: str, threads: int) -> list[str]:
    """The command line that runs one unit of ``settings``' plan with ``threads`` torch threads."""
    cmd = [sys.executable, "-m", "otrobust", "reproduce", settings.preset, "--scale", settings.scale, "--out",
           str(Path(settings.out).resolve()), "--seeds", str(settings.seeds), "--device", settings.device,
           "--threads", str(threads), "--unit", unit_id]
    if settings.data_dir is not None:
        cmd += ["--data-dir", str(Path(settings.data_dir).resolve())]
    for item in settings.overrides:
        cmd += ["--set", item]
    if not settings.audit:
        cmd.append("--no-audit")
    if settings.mixed_machines:
        cmd.append("--mixed-machines")
    return cmd


def set_threads(threads: int) -> None:
    """Fix the torch thread count of this process (the unit's; it changes a CPU's floating-point results)."""
    import torch

    torch.set_num_threads(threads)


def _compute(unit: Unit, by_id: dict[str, Unit], ctx: UnitContext) -> UnitRecord:
    set_threads(ctx.threads)
    p, dev = unit.planned, pick_device(ctx.device)
    if unit.init_unit is not None and not Path(p.config.init).is_file():
        raise OtrobustError(f"unit {unit.id!r} starts from the checkpoint of {unit.init_unit!r}, "
                            f"{p.config.init!r}, which is not on this machine (a record carries no checkpoint)")
    ctx.log(f"{unit.id}: {run_status(p)}, training ({p.config.dataset}, {p.config.model}, {p.config.method}) "
            f"-> {p.run_dir}")
    t0 = time.perf_counter()
    train_planned(p, ctx.log)
    t1 = time.perf_counter()
    sizes = [ev.n for ev in unit.evaluations] + ([audit_plan(p, ctx.scale, ctx.audit_n, ctx.audit_quick)[0]]
                                                 if unit.audit else [])
    test = None
    if sizes:
        test = load_dataset(p.config.dataset, "test", p.config.data_dir, size=None if None in sizes else max(sizes))
    audit = None
    if unit.audit:
        surrogate = resolve_checkpoint(by_id[unit.surrogate].planned.run_dir) if unit.surrogate else None
        audit = audit_run(p, ctx.scale, test, surrogate=surrogate, device=dev, log=ctx.log, n=ctx.audit_n,
                          quick=ctx.audit_quick)
        ctx.log(f"{unit.id}: audit {audit.verdict}")
    t2 = time.perf_counter()
    rows, features = [], None
    options = _attack_options(ctx.scale)
    for ev in unit.evaluations:
        ctx.log(f"{unit.id}: evaluating {ev.name}")
        rows += evaluate_run(p.run_dir, ev, p.config, test, device=dev, attack_options=options)
        if ev.kind == "features":
            features = _features_text(features_path(p.run_dir, ev))
    t3 = time.perf_counter()
    ckpt = resolve_checkpoint(p.run_dir)
    processor, precision = recorded_kind(unit, ctx)
    return UnitRecord(
        preset=ctx.preset.name, scale=ctx.scale, unit=unit.id, run=p.run.name, run_folder=p.run_dir.name,
        seed=p.config.seed,
        seed_index=p.seed_index, settings=record_settings(p), init_unit=unit.init_unit,
        data=_data_fingerprint(p), evaluations=tuple(evaluation_specs(unit)),
        audit_settings=audit_settings(unit, ctx), metrics=tuple(read_jsonl(p.run_dir / "metrics.jsonl")),
        rows=tuple(rows), audit=audit, checkpoint_sha256=sha256_file(ckpt),
        init_sha256=sha256_file(p.config.init) if p.config.init else None,
        execution=UnitExecution(threads=ctx.threads, attack_workers=ctx.threads if dev.type == "cpu" else 1,
                                device=str(dev), precision=precision, processor=processor),
        versions=versions(),
        wall_seconds={"train": round(sum(float(m.get("seconds", 0.0)) for m in read_jsonl(p.run_dir /
                                                                                           "metrics.jsonl")), 1),
                      "this_call_train": round(t1 - t0, 1), "audit": round(t2 - t1, 1),
                      "evaluate": round(t3 - t2, 1)},
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), features=features)


def _attack_options(scale: str) -> dict[str, Any] | None:
    return SMOKE["attack_options"] if scale == "smoke" else None


def _data_fingerprint(p: PlannedRun) -> str | None:
    return data_fingerprint(p.config.data_dir)


def _features_text(path: Path | None) -> str | None:
    import base64

    return None if path is None else base64.b64encode(path.read_bytes()).decode("ascii")


def default_threads() -> int:
    """This process's torch thread count (all cores unless OMP_NUM_THREADS says otherwise)."""
    import torch

    return torch.get_num_threads()


def cpu_share(workers: int) -> int:
    """Threads per unit when ``workers`` units share this machine's CPU."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))
