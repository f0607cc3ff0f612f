"""Plain-text and Markdown rendering of results (no computation)."""

from __future__ import annotations


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-style Markdown table; floats print with two decimals."""

    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def eval_table(summary: dict, threat: dict, budgets: dict[str, str] | None = None,
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
    head = (f"threat model: {threat['norm']}, eps = {threat['eps']:.4g}, n = {threat['n']}, "
            f"labels = {threat['labels']}" + (" (PAPER PROTOCOL, NOT TRUE-LABEL ROBUSTNESS)"
                                               if threat["labels"] == "predicted" else "")
            + f", seed = {threat['seed']}")
    return head + "\n\n" + markdown_table(["attack", "budget", "accuracy %", "95% CI", "correct", "seconds"], rows)
