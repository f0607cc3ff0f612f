"""Per-example records of an evaluation (one CSV row per test image) and the comparison of two of them.

Columns: ``index`` (position in the test set), ``label``, ``clean_pred``, ``clean_correct``, then per attack
``<attack>_success`` (1: it made a clean-correct image wrong; 0: it did not; empty: the image was already
wrong) and ``<attack>_pred`` (the class predicted on its adversarial example).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from otrobust.errors import OtrobustError, path_kind, printable
from otrobust.evaluation.evaluate import EvalResult
from otrobust.evaluation.statistics import one_sided_sign_test
from otrobust.reporting.tables import markdown_table, write_csv

BASE_FIELDS = ("index", "label", "clean_pred", "clean_correct")
MAX_BYTES = 256 * 2**20  # a per-example file of a million images is under 40 MB


def per_example_rows(result: EvalResult, labels: torch.Tensor) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, field names) for ``result`` on images with true ``labels`` (N,)."""
    fields = list(BASE_FIELDS) + [f"{a}_{k}" for a in result.per_attack for k in ("success", "pred")]
    rows = []
    for i in range(result.n):
        clean = bool(result.clean[i])
        row = {"index": i, "label": int(labels[i]), "clean_pred": int(result.clean_pred[i]),
               "clean_correct": int(clean)}
        for a, correct in result.per_attack.items():
            row[f"{a}_success"] = int(not bool(correct[i])) if clean else ""
            row[f"{a}_pred"] = int(result.predictions[a][i])
        rows.append(row)
    return rows, fields


def write_per_example(path: Path, result: EvalResult, labels: torch.Tensor) -> None:
    rows, fields = per_example_rows(result, labels)
    write_csv(Path(path), rows, fields)


def read_per_example(path: Path) -> list[dict[str, str]]:
    """The rows of a per-example CSV; OtrobustError if it is not one (not a file, over MAX_BYTES, not UTF-8, not
    CSV, without the base columns, or a row of another length than its header)."""
    path = Path(path)
    kind = path_kind(path)
    if kind != "a file":
        raise OtrobustError(f"{str(path)!r} " + ("does not exist" if kind == "missing" else f"is {kind}, not a file"))
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise OtrobustError(f"{str(path)!r} is {size / 2**20:.0f} MB: far larger than a per-example file (one "
                                f"short line per test image); at most {MAX_BYTES // 2**20} MB are read")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise OtrobustError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise OtrobustError(f"{str(path)!r} is not UTF-8 text (byte {exc.start}): not a per-example file from "
                            "otrobust eval --per-example") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        fields = reader.fieldnames or []
    except csv.Error as exc:
        raise OtrobustError(f"cannot read {str(path)!r} as CSV: {exc}") from None
    if not all(k in fields for k in BASE_FIELDS):
        raise OtrobustError(f"{str(path)!r} is not a per-example file from otrobust eval --per-example (it has no "
                            f"{', '.join(BASE_FIELDS)} columns)")
    for line, row in enumerate(rows, 2):
        if None in row or None in row.values():
            raise OtrobustError(f"row {line} of {str(path)!r} has another number of values than its header's "
                                f"{len(fields)} columns")
    return rows


def attacks_of(rows: list[dict[str, str]]) -> list[str]:
    return [k.removesuffix("_success") for k in rows[0] if k.endswith("_success")] if rows else []


def _robust(row: dict[str, str], attack: str) -> bool:
    return row["clean_correct"] == "1" and row[f"{attack}_success"] == "0"


def diff_markdown(a: list[dict[str, str]], b: list[dict[str, str]], name_a: str = "A", name_b: str = "B") -> str:
    """Two evaluations compared image by image: for clean accuracy and each attack both ran, how many images are
    right in both, only in A, only in B, in neither, and a one-sided sign test of each direction."""
    if [r["index"] for r in a] != [r["index"] for r in b] or [r["label"] for r in a] != [r["label"] for r in b]:
        raise OtrobustError("the two per-example files are not of the same test images (their indices or labels "
                            "differ); evaluate both on the same --dataset and --n")
    measures = [("clean", lambda r: r["clean_correct"] == "1")]
    measures += [(attack, lambda r, at=attack: _robust(r, at)) for attack in attacks_of(a) if attack in attacks_of(b)]
    rows = []
    for name, right in measures:
        both = sum(right(x) and right(y) for x, y in zip(a, b, strict=True))
        only_a = sum(right(x) and not right(y) for x, y in zip(a, b, strict=True))
        only_b = sum(right(y) and not right(x) for x, y in zip(a, b, strict=True))
        rows.append([name, both, only_a, only_b, len(a) - both - only_a - only_b,
                     f"{one_sided_sign_test(only_a, only_b):.3g}", f"{one_sided_sign_test(only_b, only_a):.3g}"])
    changed = [r["index"] for r, s in zip(a, b, strict=True) if r["clean_pred"] != s["clean_pred"]]
    head = (f"{len(a)} test images; A = {name_a}, B = {name_b}. A row counts the images right (clean) or "
            "robust (attack) in both, in one only, in neither; p is the one-sided sign test that A (or B) is "
            "right on more of them beyond chance.")
    table = markdown_table(["measure", "both", "only A", "only B", "neither", "p (A > B)", "p (B > A)"], rows)
    tail = (f"\n\nclean prediction differs on {len(changed)} images" +
            (f" (first: {printable(', '.join(changed[:10]))})" if changed else ""))
    return f"{head}\n\n{table}{tail}"
