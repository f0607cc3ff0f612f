"""Plain-text, Markdown and CSV rendering of results (no computation)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from otrobust.errors import printable
from otrobust.store.files import atomic_write_text

if TYPE_CHECKING:
    from otrobust.evaluation.evaluate import ThreatModel


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-style Markdown table; floats print with two decimals, every cell through
    :func:`~otrobust.errors.printable` (cells may come from files: run folders, CSVs)."""

    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else printable(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def format_eps(v: float | None) -> str:
    """8/255 as ``8/255``, other radii as plain numbers, None (or anything not a number) as a dash."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "–"
    k = v * 255
    return f"{round(k)}/255" if 0 < v < 1 and abs(k - round(k)) < 1e-6 else f"{v:g}"


def write_csv(path: Path, rows: list[dict[str, Any]], fields: tuple[str, ...] | list[str]) -> None:
    """``rows`` as CSV with the columns ``fields`` (other keys dropped), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def eval_table(summary: dict, threat: ThreatModel, budgets: dict[str, str] | None = None,
               seconds: dict[str, float] | None = None) -> str:
    """The eval command's table: one row per attack (and the worst case), accuracy in % with 95 % CI, each
    attack's budget (``budgets``: steps, step size, restarts...) and time (``seconds``)."""
    budgets, seconds = budgets or {}, seconds or {}
    rows = []
    for name, r in summary.items():
        lo, hi = r["ci95"]
        secs = "" if seconds.get(name) is None else f"{seconds[name]:.1f}"
        rows.append([name, budgets.get(name, ""), 100 * r["accuracy"], f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                     f"{r['correct']}/{r['n']}", secs])
    head = (f"threat model: {threat.norm}, eps = {threat.eps:.4g}, n = {threat.n}, "
            f"labels = {threat.labels}" + (" (PAPER PROTOCOL, NOT TRUE-LABEL ROBUSTNESS)"
                                           if threat.labels == "predicted" else "")
            + f", seed = {threat.seed}")
    return head + "\n\n" + markdown_table(["attack", "budget", "accuracy %", "95% CI", "correct", "seconds"], rows)


def stage_table(robust: dict[str, int], n: int) -> str:
    """AutoAttack's progression: robust accuracy (%) after each of its attacks, in order, and how many of the ``n``
    images each attack broke that the ones before it had not (``robust``: stage -> images still robust after it,
    first ``clean``)."""
    rows, before = [], None
    for stage, left in robust.items():
        rows.append([stage if stage != "clean" else "clean (no attack)", f"{100 * left / n:.2f}",
                     "–" if before is None else str(before - left)])
        before = left
    return markdown_table(["after", "robust accuracy %", "images it broke"], rows)
