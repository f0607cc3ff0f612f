"""The audit as a reader sees it: ``audit.md``, ``audit.json`` and the accuracy-vs-ε figure."""

from __future__ import annotations

import json
from pathlib import Path

from otrobust.evaluation.audit_types import TRIVIAL_LINF, AuditReport
from otrobust.reporting.plots import new_figure, save_figure
from otrobust.reporting.tables import markdown_table
from otrobust.store.files import atomic_write_text


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def plot_accuracy_curves(curves: dict[str, tuple[list[float], list[float]]], stem: Path, *, title: str,
                         bound: float | None = None, norm: str = "linf", legend: str = "best") -> list[Path]:
    """Accuracy (%) against ε, one line per entry of ``curves``; writes ``stem``.png and ``stem``.svg.
    ``legend`` is a matplotlib location or ``below`` (under the axes)."""
    fig, (ax,) = new_figure(1, width=6.4, height=4.2)
    for label, (eps, acc) in curves.items():
        ax.plot(eps, [100 * v for v in acc], marker="o", label=label)
    if bound is not None and norm == "linf":
        ax.axhline(100 * bound, color="grey", linestyle="--", linewidth=1,
                   label=f"largest class share {100 * bound:.1f}%: the most any classifier keeps at ε ≥ 0.5")
        ax.axvline(TRIVIAL_LINF, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"{'ℓ∞' if norm == 'linf' else 'ℓ2'} radius ε")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend == "below":  # outside the axes, where it cannot hide a curve
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
    else:
        ax.legend(fontsize=8, loc=legend)
    return save_figure(fig, stem)


def to_markdown(report: AuditReport) -> str:
    """The audit as Markdown: threat model, one row per check, then each check's evidence."""
    t = report.threat
    marks = {"pass": "pass", "warn": "WARN", "fail": "**FAIL**", "skip": "skip"}
    lines = ["# Robustness evaluation audit", "",
             f"Threat model: {t.norm}, ε = {t.eps:.4g}, n = {t.n} (first n test images), "
             f"labels = {t.labels}, seed = {t.seed}; PGD {t.steps} steps, {t.restarts} restarts"
             + (", quick budget" if t.quick else "") + ".",
             f"Model: {t.model or 'given in memory'}.",
             f"Clean accuracy {_pct(t.clean_accuracy)}. Verdict: "
             + ("**FAIL** — do not trust robust accuracy from this evaluation." if report.failed else
                "no check failed.") + f" ({report.seconds:.0f} s)", "",
             markdown_table(["check", "status", "finding"],
                            [[c.name, marks[c.status], c.finding] for c in report.checks]), ""]
    if report.curve:
        lo_hi = report.curve["ci95"]
        rows = [[f"{e:.4g}", f"{100 * v:.1f}", f"[{100 * lo:.1f}, {100 * hi:.1f}]"]
                for e, v, (lo, hi) in zip(report.curve["eps"], report.curve["accuracy"], lo_hi, strict=True)]
        lines += ["## Accuracy vs ε (true labels, worst of PGD-CE and PGD-CW)", "",
                  markdown_table(["ε", "accuracy %", "95% CI"], rows), "",
                  f"Trivial bound (largest class share): {_pct(report.curve['trivial_bound'])}.", "",
                  "![accuracy vs eps](accuracy_vs_eps.png)", ""]
    lines += ["## Evidence", ""]
    for c in report.checks:
        lines += [f"### {c.name} — {c.status}", "", c.finding, "", f"Reference: {c.reference}", "", "```json",
                  json.dumps(c.evidence, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def write_report(report: AuditReport, out_dir: str | Path) -> list[Path]:
    """Write ``audit.md``, ``audit.json`` and the accuracy-vs-ε plot (PNG + SVG) into ``out_dir`` (created if
    needed); a folder that cannot be written is one OtrobustError."""
    out = Path(out_dir)
    written = [out / "audit.md", out / "audit.json"]
    atomic_write_text(written[0], to_markdown(report))
    atomic_write_text(written[1], json.dumps(report.to_dict(), indent=2, default=str))
    if report.curve:
        c = report.curve
        t = report.threat
        written += plot_accuracy_curves({"PGD-CE + PGD-CW, true labels": (c["eps"], c["accuracy"])},
                                        out / "accuracy_vs_eps", bound=c["trivial_bound"], norm=t.norm,
                                        title=f"accuracy vs ε ({t.norm}, n = {t.n}, true labels)")
    return written
