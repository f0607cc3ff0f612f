"""The paper's claims judged against our paired differences: each claim's verdict (*reproduced*, *refuted* or *not
resolved*) from the interval of :func:`otrobust.experiments.study.paired_differences`, the one-paragraph verdict
a results page opens with, and tuned GOT against the tuned base method.

Pure functions of a preset and the results rows (and, where at hand, each image's correctness).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from otrobust.experiments import study
from otrobust.experiments.spec import Preset
from otrobust.reporting.tables import markdown_table

REPRODUCED, REFUTED, NOT_RESOLVED = "reproduced", "refuted", "not resolved"
# A claim is judged on no fewer seeds than the study trains each arm on.
MIN_SEEDS = 3
# The robust measurements a claim of the paper can be about: (evaluation, metric, label).
CLAIMED = tuple(h for h in study.HEADLINE if h[1] != "clean")
# The accepted chance of a wrong verdict (refuting a true claim, reproducing a false one), split over a claim's looks.
ERROR_RATE = 0.05


@dataclass(frozen=True)
class Claim:
    """The paper's claim that ``run`` beats ``baseline`` on ``metric``, by the difference of its two numbers;
    ``looks``: how many times the comparison was judged on the way to its seeds (Run.looks)."""

    run: str
    baseline: str
    evaluation: str
    metric: str
    label: str
    paper_run: float
    paper_baseline: float
    looks: int = 1

    @property
    def gain(self) -> float:
        return self.paper_run - self.paper_baseline

    @property
    def level(self) -> float:
        """The interval's level: :data:`ERROR_RATE` split evenly over the looks (Bonferroni), 0.95 for one look,
        0.975 for two, so that judging again after adding seeds is no likelier to be wrong by chance."""
        return 1.0 - ERROR_RATE / self.looks


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim against our paired difference (run − baseline, seed by seed): its mean, interval at the claim's
    level (None below two seeds; :func:`study.paired_differences`), the seeds, :func:`verdict`'s word, the standard
    error the test images alone contribute (None when their correctness is not at hand), and seed by seed the
    difference and the two accuracies it is taken between."""

    claim: Claim
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    seeds: tuple[int, ...]
    verdict: str
    image_se: float | None = None
    diffs: tuple[float, ...] = ()
    values: tuple[float, ...] = ()
    baseline_values: tuple[float, ...] = ()


def verdict(claimed: float, ci_low: float | None, ci_high: float | None, seeds: int) -> str:
    """*refuted* when the interval lies below the claimed gain, *reproduced* when it lies above 0 and reaches the
    claimed gain, else *not resolved*: an interval holding both 0 and the claim, fewer than :data:`MIN_SEEDS`
    seeds, or an interval that is not :func:`study.informative`.

    >>> verdict(1.24, -0.3, 0.5, 3), verdict(1.24, 0.2, 2.0, 3), verdict(1.24, -0.5, 1.5, 3), verdict(1.24, 1.2, 1.2, 3)
    ('refuted', 'reproduced', 'not resolved', 'not resolved')
    """
    if seeds < MIN_SEEDS or not study.informative(ci_low, ci_high):
        return NOT_RESOLVED
    if ci_high < claimed:
        return REFUTED
    return REPRODUCED if ci_low > 0 else NOT_RESOLVED


def claims(preset: Preset) -> list[Claim]:
    """The paper's claims a preset can test: each run with a baseline where the paper gives both runs a number for
    a robust headline measurement (PGD, AutoAttack) at the training radius."""
    paper = {(v.run, v.metric): v.value for v in preset.paper_results if v.eps is None and v.steps is None}
    return [Claim(r.name, r.baseline, e, m, label, paper[(r.name, m)], paper[(r.baseline, m)], r.looks)
            for r in preset.runs if r.baseline for e, m, label in CLAIMED
            if (r.name, m) in paper and (r.baseline, m) in paper]


def judge(claim_list: list[Claim], rows: list[dict[str, Any]],
          correct: study.Correctness | None = None) -> list[ClaimVerdict]:
    """Each claim against the paired differences of ``rows`` (results.csv rows; true labels), the interval at the
    claim's level and widened by the images' noise where ``correct`` has each image's correctness
    (:func:`study.paired_differences`)."""
    diffs = study.paired_differences(rows, {c.run: c.baseline for c in claim_list}, correct)
    out = []
    for c in claim_list:
        d = next((d for d in diffs if d["run"] == c.run and d["evaluation"] == c.evaluation
                  and d["metric"] == c.metric and d["labels"] in (None, "true")), None)
        if d is None:
            out.append(ClaimVerdict(c, None, None, None, (), NOT_RESOLVED))
        else:
            half = None if d["se"] is None else study.t_quantile(len(d["seeds"]) - 1, c.level) * d["se"]
            low, high = (None, None) if half is None else (d["mean"] - half, d["mean"] + half)
            out.append(ClaimVerdict(c, d["mean"], low, high, tuple(d["seeds"]),
                                    verdict(c.gain, low, high, len(d["seeds"])), d["image_se"],
                                    tuple(d["diffs"]), tuple(d["values"]), tuple(d["baseline_values"])))
    return out


def shown(ci_low: float | None, ci_high: float | None) -> str:
    """What a paired interval shows, without a claim to test: *better* (above 0), *worse* (below 0), or neither.

    >>> shown(0.1, 0.9), shown(-0.9, -0.1), shown(-0.5, 0.5), shown(None, None), shown(1.2, 1.2)
    ('better', 'worse', 'no difference shown', 'no interval (one seed)', 'no interval (the seeds agree exactly)')
    """
    if ci_low is None or ci_high is None:
        return "no interval (one seed)"
    if not study.informative(ci_low, ci_high):
        return "no interval (the seeds agree exactly)"
    return "better" if ci_low > 0 else "worse" if ci_high < 0 else "no difference shown"


def tuned_differences(preset: Preset, rows: list[dict[str, Any]],
                      correct: study.Correctness | None = None) -> list[dict[str, Any]]:
    """The paired differences (robust headline measurements, true labels) of each tuned arm whose baseline is
    another tuning's tuned arm: tuned GOT against the tuned base method, each at its best trial's settings."""
    tuned = {t.tuned for t in preset.tunings if t.tuned}
    pairs = {r.name: r.baseline for r in preset.runs if r.name in tuned and r.baseline in tuned}
    wanted = {(e, m) for e, m, _ in CLAIMED}
    return [d for d in study.paired_differences(rows, pairs, correct) if (d["evaluation"], d["metric"]) in wanted
            and d["labels"] in (None, "true")]


def _interval(v: ClaimVerdict) -> str:
    """The verdict's interval, its level marked where it is not 95 % (a claim judged more than once)."""
    text = study.interval(v.ci_low, v.ci_high)
    return text if v.claim.looks == 1 else f"{text} at {100 * v.claim.level:g} % ({v.claim.looks} looks)"


def _pm(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"


def verdict_paragraph(judged: list[ClaimVerdict], names: dict[str, str]) -> str:
    """The verdict on the paper's claims in one paragraph, for a results page to open with: how many are reproduced,
    refuted and not resolved, then each claim's paired difference, interval and seeds against the claimed gain.
    While no claim has :data:`MIN_SEEDS` seeds it says that there is no verdict yet, and what the seeds show so far.

    Empty when there is no claim to judge."""
    if not judged:
        return ""
    most = max(len(v.seeds) for v in judged)
    each = "; ".join(_claim_clause(v, names) for v in judged)
    if most < MIN_SEEDS:
        return (f"**No verdict yet on the paper's {len(judged)} claims:** each is judged on at least {MIN_SEEDS} "
                f"seeds, and the most recorded is {most}. So far, {each}.")
    counts = Counter(v.verdict for v in judged)
    tally = ", ".join(f"{counts[w] or 'none'} {w}" for w in (REFUTED, REPRODUCED, NOT_RESOLVED))
    return f"**The paper's {len(judged)} claims: {tally}.** {each[0].upper()}{each[1:]}."


def pair_name(claim: Claim, names: dict[str, str]) -> str:
    """``run − baseline`` by their display names (``names``; a run without one keeps its own)."""
    return f"{names.get(claim.run, claim.run)} − {names.get(claim.baseline, claim.baseline)}"


def _claim_clause(v: ClaimVerdict, names: dict[str, str]) -> str:
    c = v.claim
    what = f"{pair_name(c, names)} under {c.label}"
    if v.mean is None:
        return f"{what}: not measured yet (claimed {c.gain:+.2f})"
    spread = f" {_interval(v)}" if v.ci_low is not None else ""
    seeds = f"{len(v.seeds)} seed{'s' if len(v.seeds) != 1 else ''}"
    return f"{what}: {v.mean:+.2f} points{spread} on {seeds} against the claimed {c.gain:+.2f}, *{v.verdict}*"


def claims_markdown(preset: Preset, rows: list[dict[str, Any]], names: dict[str, str],
                    correct: study.Correctness | None) -> list[str]:
    """The results page's section on the paper's claims: the verdict paragraph, how a claim is judged, the table."""
    judged = judge(claims(preset), rows, correct)
    if not judged:
        return []
    body = [[f"{names.get(v.claim.run, v.claim.run)} beats {names.get(v.claim.baseline, v.claim.baseline)} "
             f"under {v.claim.label}", f"{v.claim.paper_run:g}", f"{v.claim.paper_baseline:g}",
             f"{v.claim.gain:+.2f}", _pm(v.mean),
             _interval(v), "–" if v.image_se is None else f"{v.image_se:.2f}",
             len(v.seeds), f"**{v.verdict}**"] for v in judged]
    return ["## The paper's claims", "", verdict_paragraph(judged, names), "",
            "Each claim is the difference of the paper's two numbers; ours is the paired difference (same seed: "
            "same initial weights and data order) with its 95 % interval (97.5 % for a claim judged a second time "
            "after seeds were added, and so on: the 5 % chance of a wrong verdict split over the looks): Student-t "
            "with seeds − 1 degrees of "
            "freedom on two sources of noise, the seeds and the test images (every seed sees the same images, so "
            "the seeds' spread cannot show how those were drawn; *images' s.e.* is their share, from each image's "
            "recorded correctness). *Refuted*: the interval lies below the claimed gain. *Reproduced*: it lies "
            f"above 0 and reaches the claimed gain. *Not resolved*: anything else, including fewer than {MIN_SEEDS} "
            "seeds and an interval of no width.", "",
            markdown_table(["claim", "paper: run", "paper: baseline", "claimed gain", "ours: mean difference",
                            "interval (95 % unless marked)", "images' s.e.", "seeds", "verdict"], body), "",
            "Seed by seed (accuracy in %, run − baseline = difference):", "", seed_table(judged, names), ""]


def seed_table(judged: list[ClaimVerdict], names: dict[str, str]) -> str:
    """Each claim's two accuracies and their difference, seed by seed (``run − baseline = difference`` in %), one
    row per claim and a column per seed any claim has; "–" where a claim lacks that seed. Empty without a seed."""
    seeds = sorted({s for v in judged for s in v.seeds})
    if not seeds:
        return ""
    body = []
    for v in judged:
        cells = {s: f"{a:.2f} − {b:.2f} = {d:+.2f}"
                 for s, a, b, d in zip(v.seeds, v.values, v.baseline_values, v.diffs, strict=True)}
        body.append([pair_name(v.claim, names), v.claim.label, *(cells.get(s, "–") for s in seeds)])
    return markdown_table(["run − baseline", "measurement", *(f"seed {s}" for s in seeds)], body)


def tuned_markdown(preset: Preset, rows: list[dict[str, Any]], names: dict[str, str],
                   correct: study.Correctness | None) -> list[str]:
    """The section on tuned GOT against the tuned base method (none without such a pair)."""
    found = tuned_differences(preset, rows, correct)
    if not found:
        return []
    body = [[f"{names.get(d['run'], d['run'])} − {names.get(d['baseline'], d['baseline'])}", d["evaluation"],
             _pm(d["mean"]), study.interval(d["ci_low"], d["ci_high"]),
             len(d["seeds"]), f"**{shown(d['ci_low'], d['ci_high'])}**"] for d in found]
    return ["## Tuned against tuned", "",
            "Each tuning's best trial, trained on fresh seeds: GOT against its base method, both at their best "
            "validation settings. Paired difference in percentage points with its 95 % interval (as for the "
            "claims): *better* or *worse* when the interval excludes 0.", "",
            markdown_table(["comparison", "evaluation", "mean difference", "95% CI", "seeds", "shows"], body), ""]
