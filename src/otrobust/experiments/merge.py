"""A plan's results page from its units' records alone: results.csv, results.md, units.md, audits.json and figures.

No checkpoint, model or data is read: records gathered from several machines (copied, or committed to a repository)
merge into the page a single sequential run writes. Each record is checked against the unit the plan expects
(:func:`otrobust.experiments.records.check_record`); a unit without a record is named, and the page is written
with what there is, marked incomplete.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from otrobust.errors import OtrobustError
from otrobust.experiments.records import UnitRecord, check_record, find_records, unpack_bits
from otrobust.experiments.results import (
    RESULT_FIELDS,
    claims_figure,
    display_names,
    make_figures,
    result_row,
    results_markdown,
    with_study,
)
from otrobust.experiments.study import KEY, Correctness
from otrobust.experiments.study_findings import cost_markdown, findings_markdown
from otrobust.experiments.units import Unit, UnitContext, expected_fields
from otrobust.reporting.tables import write_csv
from otrobust.store.files import atomic_write_text


def gather(units: list[Unit], ctx: UnitContext, folders: list[str | Path]) -> dict[str, UnitRecord]:
    """The record of each unit found under ``folders``, checked against the plan. A record of a unit the plan does
    not have, two different records of one unit, or a record made with other settings is one OtrobustError."""
    by_id = {u.id: u for u in units}
    found: dict[str, tuple[Path, UnitRecord]] = {}
    for path, record in find_records(folders):
        source = repr(str(path))
        if record.preset != ctx.preset.name or record.scale != ctx.scale:
            raise OtrobustError(f"{source} is a record of preset {record.preset!r} at the {record.scale} scale, "
                                f"not of {ctx.preset.name!r} at the {ctx.scale} scale")
        unit = by_id.get(record.unit)
        if unit is None:
            raise OtrobustError(f"{source} is the record of unit {record.unit!r}, which this plan does not have "
                                f"(another --seeds or another preset version?); list the plan's units with --units")
        check_record(record, expected_fields(unit, ctx), source)
        if record.unit in found and found[record.unit][1] != record:
            raise OtrobustError(f"two different records of unit {record.unit!r}: {str(found[record.unit][0])!r} and "
                                f"{str(path)!r}; keep one")
        found[record.unit] = (path, record)
    return {k: v[1] for k, v in found.items()}


def write_results(units: list[Unit], ctx: UnitContext, records: dict[str, UnitRecord],
                  log: Callable[[str], None] = print) -> Path:
    """Write results.csv, audits.json, figures, results.md and units.md (where and how long each unit ran) into
    ``ctx.results_dir`` from ``records``; returns the folder. Units without a record are listed in a warning and at
    the top of results.md."""
    preset, scale, out = ctx.preset, ctx.scale, ctx.results_dir
    units = [_where_recorded(u, records.get(u.id)) for u in units]
    planned = [u.planned for u in units]
    missing = [u.id for u in units if u.id not in records]
    if missing:
        log(f"warning: {len(missing)} of {len(units)} units have no record, results.md is INCOMPLETE: "
            + ", ".join(missing[:12]) + (", ..." if len(missing) > 12 else ""))
    records = {u.id: records[u.id] for u in units if u.id in records}  # in the plan's order
    rows, audits, histories, features, correct = [], [], {}, {}, {}
    for u in units:
        r = records.get(u.id)
        if r is None:
            continue
        verdict = r.audit.verdict if r.audit else None
        if r.audit:
            audits.append(r.audit)
        unit_rows = [result_row(preset, scale, u.planned, row, u.planned.config.eps, verdict) for row in r.rows]
        rows += unit_rows
        correct.update(_correctness(unit_rows, r))
        histories[(u.planned.run.name, u.planned.seed_index)] = list(r.metrics)
        if u.planned.seed_index == 0:
            if r.features:
                features[u.planned.run.name] = _features(r.features)
    write_csv(out / "results.csv", rows, RESULT_FIELDS)
    atomic_write_text(out / "audits.json", json.dumps([a.to_json() for a in audits], indent=1))
    try:
        figures = claims_figure(preset, scale, planned, rows, correct, out / "figures")
        figures += make_figures(preset, scale, planned, rows, [ev for u in units for ev in u.evaluations],
                                out / "figures", histories, features)
    except OtrobustError as exc:  # e.g. matplotlib missing: the tables still stand
        log(f"warning: figures not drawn: {exc}")
        figures = []
    markdown = results_markdown(preset, scale, planned, rows, figures, out, audits)
    if len({u.planned.seed_index for u in units}) > 1 or any(r.baseline for r in preset.runs):
        markdown = with_study(markdown, preset, planned, rows, correct)
    findings = findings_markdown(preset, records, rows, display_names(planned), correct)
    if findings:
        head, sep, rest = markdown.partition("\n## ")
        markdown = f"{head}\n{findings}\n## {rest}" if sep else f"{markdown}\n{findings}"
    cost = cost_markdown(records)
    if cost:  # wall times differ from run to run: a page of their own keeps results.md the same however launched
        atomic_write_text(out / "units.md", f"# {preset.name}: where and how long each unit ran\n\n{cost}")
        markdown = (markdown.rstrip("\n") + "\n\nWhere, on what and how long each unit ran: [units.md](units.md).\n")
    if missing:
        head, sep, rest = markdown.partition("\n\n")
        markdown = (f"{head}\n\n> **INCOMPLETE**: {len(missing)} of {len(units)} units have no record yet: "
                    f"{', '.join(f'`{m}`' for m in missing)}. Their rows are absent below.{sep}{rest}")
    atomic_write_text(out / "results.md", markdown)
    log(f"results: {out / 'results.md'}, {out / 'results.csv'}"
        + (f", {len(figures) // 2} figures in {out / 'figures'}" if figures else ""))
    return out


def _correctness(rows: list[dict[str, Any]], record: UnitRecord) -> Correctness:
    """Each image's correctness of a record's rows (``rows``: their results.csv rows, in the same order), keyed as
    :mod:`otrobust.experiments.study` pairs them."""
    return {(row["run"], int(row["seed"]), tuple(row.get(k) for k in KEY)): unpack_bits(r.correct)
            for row, r in zip(rows, record.rows, strict=True)
            if r.correct is not None and row.get("accuracy") is not None}


def _where_recorded(unit: Unit, record: UnitRecord | None) -> Unit:
    """The unit with its run folder named as its record names it (the folder's name hashes the data's fingerprint,
    which a machine without the data cannot compute)."""
    if record is None or record.run_folder == unit.planned.run_dir.name:
        return unit
    cfg = dataclasses.replace(unit.planned.config, out=str(unit.planned.run_dir.parent / record.run_folder))
    return dataclasses.replace(unit, planned=dataclasses.replace(unit.planned, config=cfg))


def _features(text: str) -> dict[str, Any]:
    import numpy as np

    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
