"""One kind of machine per seed: the processor (or GPU) and precision a unit runs on, the one it was started on,
and the guard that keeps a seed's paired units on one kind (a CPU's kind and the precision change floating-point
results, so a pair must differ in the method alone)."""

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


def check_one_machine_kind(unit: Unit, units: list[Unit], ctx: UnitContext, here: tuple[str, str]) -> None:
    """Refuse to run ``unit`` on ``here`` (processor, precision) when it, or another unit of the same seed, finished
    or started on another: the runs of one seed are compared pair by pair, and a pair must differ in the method
    alone (a CPU's kind and the precision change floating-point results, so two kinds would make two trainings of
    one seed differ, and a training resumed on another kind would be neither)."""
    for other in units:
        if other.planned.seed_index != unit.planned.seed_index:
            continue
        kind = started_kind(other, ctx)
        if kind is not None and kind != here:
            whose = "it was started" if other.id == unit.id else f"{other.id!r} of the same seed ran"
            raise OtrobustError(
                f"unit {unit.id!r} would run on {here[0]}, {here[1]}, but {whose} on {kind[0]}, {kind[1]}: a "
                "paired comparison must differ in the method alone; run it on that kind of machine, or pass "
                "--mixed-machines (the results page then names the mixed pairs)")


def _gpu_name(dev) -> str:
    import torch

    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
