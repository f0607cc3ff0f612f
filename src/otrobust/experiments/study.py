"""Multi-seed studies: each run's mean ± standard deviation over seeds, and its paired difference from a baseline.

Rows are ``results.csv`` rows (:func:`otrobust.experiments.reproduce.result_row`): one per run, seed, evaluation
and metric, accuracies in %. Two rows measure the same thing when they agree on :data:`KEY` apart from the run
and the seed.
A paired difference compares a run with its baseline *seed by seed* (same seed: same initial weights and data
order), so the spread between seeds, which is often larger than the effect, cancels. Its interval counts two
sources of noise: the seeds (training) and, when each image's correctness is at hand, the test images themselves
(every seed is evaluated on the same images, so the spread between seeds cannot show how the images were drawn).
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean, stdev
from typing import Any

import numpy as np

from otrobust.experiments.spec import SWEEP_ATTACK
from otrobust.reporting.tables import markdown_table

KEY = ("evaluation", "metric", "labels", "eps", "steps", "step_size")
# Each image's correctness (one boolean per test image) of one row: {(run, seed, KEY's values): vector}.
Correctness = dict[tuple[str, int, tuple], np.ndarray]
HEADLINE = (("pgd", "clean", "clean"), ("pgd", "pgd", "PGD-40"), ("autoattack", "autoattack", "AutoAttack"))


def _key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in KEY)


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for a ``level`` interval with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def by_seed(rows: list[dict[str, Any]]) -> dict[tuple[str, tuple], dict[int, float]]:
    """``{(run, key): {seed: accuracy}}`` over the rows that have an accuracy."""
    out: dict[tuple[str, tuple], dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r.get("accuracy") is not None:
            out[(r["run"], _key(r))][int(r["seed"])] = float(r["accuracy"])
    return out


def seed_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per run and measurement: ``mean``, ``sd`` (sample standard deviation; None for one seed), ``seeds`` and the
    per-seed ``values`` (in seed order)."""
    out = []
    for (run, key), values in by_seed(rows).items():
        seeds = sorted(values)
        v = [values[s] for s in seeds]
        out.append({"run": run, **dict(zip(KEY, key, strict=True)), "mean": mean(v),
                    "sd": stdev(v) if len(v) > 1 else None, "seeds": seeds, "values": v})
    return out


def paired_differences(rows: list[dict[str, Any]], baselines: dict[str, str],
                       correct: Correctness | None = None) -> list[dict[str, Any]]:
    """For each run with a baseline (``{run: baseline run}``) and each measurement both have: the per-seed
    differences run − baseline over the seeds both have (with both accuracies), their mean, its standard error
    ``se`` and a 95 % interval (both None for a single seed).

    The interval is Student-t with (seeds − 1) degrees of freedom on the variance of the mean difference over
    seeds plus, where ``correct`` has every seed's images for both runs, :func:`image_variance` (``image_se`` is its
    root, else None). Adding it can only widen the interval; both terms together estimate the variance of a
    difference measured on other seeds *and* other test images.
    """
    table = by_seed(rows)
    out = []
    for (run, key), values in table.items():
        base = baselines.get(run)
        if base is None or (base, key) not in table:
            continue
        other = table[(base, key)]
        seeds = sorted(set(values) & set(other))
        if not seeds:
            continue
        diffs = [values[s] - other[s] for s in seeds]
        m = mean(diffs)
        image_var = image_variance([(correct.get((run, s, key)), correct.get((base, s, key))) for s in seeds]
                                   ) if correct else None
        se = math.sqrt(stdev(diffs) ** 2 / len(diffs) + (image_var or 0.0)) if len(diffs) > 1 else None
        half = None if se is None else t_quantile(len(diffs) - 1) * se
        out.append({"run": run, "baseline": base, **dict(zip(KEY, key, strict=True)), "seeds": seeds,
                    "values": [values[s] for s in seeds], "baseline_values": [other[s] for s in seeds],
                    "diffs": diffs, "mean": m, "ci_low": None if half is None else m - half,
                    "ci_high": None if half is None else m + half, "se": se,
                    "image_se": None if image_var is None else math.sqrt(image_var)})
    return out


def image_variance(pairs: list[tuple[np.ndarray | None, np.ndarray | None]]) -> float | None:
    """The test images' share of the variance (in %²) of a mean paired difference: each image's difference (run
    − baseline correctness, in %) averaged over the seeds, its variance over the images, divided by their number.
    ``pairs``: per seed, the run's and the baseline's correctness on the same images. None when a vector is missing
    or the lengths disagree (then no image noise can be counted), or for fewer than two images."""
    if not pairs or any(a is None or b is None for a, b in pairs):
        return None
    n = len(pairs[0][0])
    if n < 2 or any(len(a) != n or len(b) != n for a, b in pairs):
        return None
    per_image = np.mean([100.0 * (a.astype(float) - b.astype(float)) for a, b in pairs], axis=0)
    return float(per_image.var(ddof=1) / n)


def informative(ci_low: float | None, ci_high: float | None) -> bool:
    """Whether an interval says anything: it exists (two seeds or more) and has width. Without the images' noise,
    seeds whose differences agree exactly (AutoAttack on 500 images moves in steps of 0.2 points) give a zero-width
    Student-t interval, which measures no noise at all, not a certain result."""
    # a tolerance, not 0: equal differences leave a spread of rounding error, not of noise
    return ci_low is not None and ci_high is not None and ci_high - ci_low > 1e-6


def interval(ci_low: float | None, ci_high: float | None) -> str:
    """``[-0.50, +1.20]``; ``–`` for no interval (one seed); ``(no spread)`` added to one of no width."""
    if ci_low is None or ci_high is None:
        return "–"
    return f"[{ci_low:+.2f}, {ci_high:+.2f}]" + ("" if informative(ci_low, ci_high) else " (no spread)")


def mean_sd(mean_: float, sd: float | None) -> str:
    """``97.12 ± 0.34`` (or the mean alone for one seed)."""
    return f"{mean_:.2f}" if sd is None else f"{mean_:.2f} ± {sd:.2f}"


def _eps(v: Any) -> str:
    return "–" if v is None else f"{v:g}"


def study_markdown(summary: list[dict[str, Any]], diffs: list[dict[str, Any]], names: dict[str, str],
                   paper: dict[tuple[str, str], float] | None = None) -> str:
    """The study's Markdown: a headline table (clean, PGD, AutoAttack: mean ± sd over seeds, the paper's number),
    the paired differences, and every measurement's mean ± sd with its per-seed values."""
    paper = paper or {}
    order = list(dict.fromkeys(r["run"] for r in summary))
    cell = {(r["run"], r["evaluation"], r["metric"]): r for r in summary if r["labels"] in (None, "true")}
    head = [(e, m, label) for e, m, label in HEADLINE if any((run, e, m) in cell for run in order)]
    rows = []
    for run in order:
        row = [names.get(run, run)]
        for e, m, _ in head:
            r = cell.get((run, e, m))
            ours = "–" if r is None else mean_sd(r["mean"], r["sd"]) + f" (n = {len(r['seeds'])})"
            row.append(ours + (f" · paper {paper[(run, m)]:g}" if (run, m) in paper else ""))
        rows.append(row)
    parts = ["## Across seeds", "", "Accuracy in %, mean ± standard deviation over seeds (n = number of seeds), "
             "true labels.", "", markdown_table(["run", *[label for *_, label in head]], rows), ""]
    headline = {(e, m) for e, m, _ in head}
    if diffs:
        body = [[names.get(d["run"], d["run"]), names.get(d["baseline"], d["baseline"]), d["evaluation"], d["metric"],
                 _eps(d["eps"]), f"{d['mean']:+.2f}",
                 interval(d["ci_low"], d["ci_high"]),
                 " ".join(f"{x:+.2f}" for x in d["diffs"]), len(d["seeds"])]
                for d in diffs if d["labels"] in (None, "true") and (d["evaluation"], d["metric"]) in headline]
        parts += ["## Paired differences (run − baseline, same seed)", "",
                  "Percentage points; 95 % Student-t interval over seeds, widened by the test images' sampling noise "
                  "where each image's correctness is recorded. An interval that contains 0 means no "
                  "difference was shown. Every other measurement, AutoAttack's stages included, is in the last table.",
                  "",
                  markdown_table(["run", "baseline", "evaluation", "metric", "ε", "mean difference", "95% CI",
                                  "per seed", "seeds"], body), ""]
    body = [[names.get(r["run"], r["run"]), r["evaluation"], r["metric"], r["labels"] or "true", _eps(r["eps"]),
             "–" if r["steps"] is None else r["steps"], mean_sd(r["mean"], r["sd"]),
             " ".join(f"{v:.2f}" for v in r["values"]), len(r["seeds"])] for r in summary]
    parts += ["## Every measurement across seeds", "",
              markdown_table(["run", "evaluation", "metric", "labels", "ε", "steps", "mean ± sd", "per seed", "seeds"],
                             body), ""]
    return "\n".join(parts)


def sweep_panels(summary: list[dict[str, Any]], names: dict[str, str],
                 sweeps: dict[str, str]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``{panel title: {run label: [(eps, mean accuracy)]}}`` for the eps-sweep evaluations named in ``sweeps``
    (``{evaluation: panel title}``), PGD rows only."""
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in summary:
        if r["evaluation"] in sweeps and r["metric"] == SWEEP_ATTACK and r["eps"] is not None:
            line = panels.setdefault(sweeps[r["evaluation"]], {}).setdefault(names.get(r["run"], r["run"]), [])
            line.append((r["eps"], r["mean"]))
    for lines in panels.values():
        for pts in lines.values():
            pts.sort()
    return panels
