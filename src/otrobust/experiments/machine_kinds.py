"""One kind of machine per comparison: the processor (or GPU) and precision a unit runs on, the one it was started
on, and the guard that keeps the units compared with one another on one kind (a CPU's kind and the precision change
floating-point results, so a pair must differ in the method alone)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from otrobust.devices import pick_device
from otrobust.errors import OtrobustError
from otrobust.experiments.records import read_record
from otrobust.store.files import atomic_write_text
from otrobust.store.provenance import processor_name
from otrobust.training.setup import training_precision

if TYPE_CHECKING:
    from otrobust.experiments.spec import Tuning
    from otrobust.experiments.units import Unit, UnitContext

STARTED_ON = "machine.json"  # in a unit's state folder: the processor and precision it was started on


def machine_kind(unit: Unit, ctx: UnitContext) -> tuple[str, str]:
    """(processor or GPU name, precision) that ``unit`` would run with here, as its record will state them."""
    dev = pick_device(ctx.device)
    precision = training_precision(unit.planned.config.amp, dev)
    return (processor_name() if dev.type == "cpu" else _gpu_name(dev)), f"{precision.name} ({precision.reason})"


def recorded_kind(unit: Unit, ctx: UnitContext) -> tuple[str, str]:
    """The machine kind a record states: this one's, or "A, then B" for a unit resumed on another kind (only with
    --mixed-machines), so that the results page names every pair it touches as mixed."""
    here = machine_kind(unit, ctx)
    started = started_kind(unit, ctx) or here

    def both(was: str, now: str) -> str:
        return now if was == now else f"{was}, then {now}"

    return both(started[0], here[0]), both(started[1], here[1])


def note_started(unit: Unit, ctx: UnitContext, here: tuple[str, str]) -> None:
    """Note, once, the machine kind ``unit`` starts on (its lock held), for :func:`started_kind`."""
    path = ctx.state_dir(unit) / STARTED_ON
    if not path.is_file():
        atomic_write_text(path, json.dumps({"processor": here[0], "precision": here[1]}) + "\n")


def started_kind(unit: Unit, ctx: UnitContext) -> tuple[str, str] | None:
    """(processor, precision) that ``unit`` ran on: its record's when it is done, else the machine it was started
    on (None for a unit never started, or started before units noted their machine)."""
    path = ctx.record_path(unit)
    if path.is_file():
        e = read_record(path).execution
        return e.processor, e.precision
    try:
        started = json.loads((ctx.state_dir(unit) / STARTED_ON).read_text())
        return str(started["processor"]), str(started["precision"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def compared_with(unit: Unit, units: list[Unit], tunings: tuple[Tuning, ...]) -> list[Unit]:
    """The units of ``unit``'s seed that it is compared with, directly or through others (``unit`` among them):
    its baseline and the runs whose baseline it is, the units it depends on or starts from, and the other trials
    of its tuning. Units of one seed outside that group (a seed's second pair of arms) are not compared with it."""
    seed = [u for u in units if u.planned.seed_index == unit.planned.seed_index]
    by_run = {u.planned.run.name: u.id for u in seed}
    group = {u.id: u.id for u in seed}

    def root(i: str) -> str:
        while group[i] != i:
            i = group[i]
        return i

    def join(a: str, b: str | None) -> None:
        if a in group and b in group:
            group[root(a)] = root(b)

    for u in seed:
        join(u.id, by_run.get(u.planned.run.baseline or ""))
        for dep in u.depends_on:  # among them the run it starts from (init_unit) and the one whose training it shares
            join(u.id, dep)
    for t in tunings:
        trials = [by_run[name] for name in t.trials if name in by_run]
        for other in trials[1:]:
            join(trials[0], other)
    return [u for u in seed if root(u.id) == root(unit.id)]


def check_one_machine_kind(unit: Unit, units: list[Unit], ctx: UnitContext, here: tuple[str, str]) -> None:
    """Refuse to run ``unit`` on ``here`` (processor, precision) when it, or a unit it is compared with
    (:func:`compared_with`), finished or started on another: a pair must differ in the method alone (a CPU's kind
    and the precision change floating-point results, so two kinds would make two trainings of one seed differ, and
    a training resumed on another kind would be neither)."""
    for other in compared_with(unit, units, ctx.preset.tunings):
        kind = started_kind(other, ctx)
        if kind is not None and kind != here:
            whose = "it was started" if other.id == unit.id else f"{other.id!r}, which it is compared with, ran"
            raise OtrobustError(
                f"unit {unit.id!r} would run on {here[0]}, {here[1]}, but {whose} on {kind[0]}, {kind[1]}: a "
                "paired comparison must differ in the method alone; run it on that kind of machine, or pass "
                "--mixed-machines (the results page then names the mixed pairs)")


def _gpu_name(dev) -> str:
    import torch

    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
