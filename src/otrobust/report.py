"""Plain-text and Markdown rendering of results (no computation)."""

from __future__ import annotations


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-style Markdown table; floats print with two decimals."""

    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def eval_table(summary: dict, threat: dict) -> str:
    """The eval command's table: one row per attack (and the worst case), accuracy in % with 95 % CI."""
    rows = []
    for name, r in summary.items():
        lo, hi = r["ci95"]
        secs = "" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        rows.append([name, 100 * r["accuracy"], f"[{100 * lo:.1f}, {100 * hi:.1f}]", f"{r['correct']}/{r['n']}", secs])
    head = (f"threat model: {threat['norm']}, eps = {threat['eps']:.4g}, n = {threat['n']}, "
            f"labels = {threat['labels']}" + (" (PAPER PROTOCOL, NOT TRUE-LABEL ROBUSTNESS)"
                                               if threat["labels"] == "predicted" else "")
            + f", seed = {threat['seed']}")
    return head + "\n\n" + markdown_table(["attack", "accuracy %", "95% CI", "correct", "seconds"], rows)
