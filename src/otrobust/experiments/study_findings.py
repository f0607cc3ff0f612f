"""What a study's records say beyond its tables: the paper's claims judged (:mod:`otrobust.experiments.claims`),
whether the runs trained to a plateau, the tuning trials and their winner, and where and how long each unit ran.

Pure functions of a preset, its units' :class:`~otrobust.experiments.records.UnitRecord` and the results rows; the
Markdown is written by :func:`findings_markdown` and :func:`cost_markdown`.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any

from otrobust.experiments import study
from otrobust.experiments.claims import claims_markdown, tuned_markdown
from otrobust.experiments.records import UnitRecord
from otrobust.experiments.spec import Preset, Tuning
from otrobust.reporting.tables import markdown_table
from otrobust.training.method_registry import default_adv_weight
from otrobust.training.runfiles import checkpoint_score


@dataclass(frozen=True)
class Plateau:
    """A run's validation robust accuracy (%) over its last three epochs, and by how much it moved over them."""

    run: str
    seed: int
    epochs: int
    last: tuple[float, ...]

    @property
    def moved(self) -> float:
        return max(self.last) - min(self.last)


def plateaus(preset: Preset, records: dict[str, UnitRecord]) -> list[Plateau]:
    """Every run trained from scratch (no ``init_from``) with at least three epochs of validation PGD."""
    scratch = {r.name for r in preset.runs if not r.init_from}
    out = []
    for rec in records.values():
        pgd = [100 * m["val_pgd"] for m in rec.metrics if m.get("val_pgd") is not None]
        if rec.run in scratch and len(pgd) >= 3:
            out.append(Plateau(rec.run, rec.seed, len(rec.metrics), tuple(round(v, 2) for v in pgd[-3:])))
    return out


def baselines(preset: Preset) -> set[str]:
    """The runs some other run is compared with, fine-tuning controls excepted (they train a few epochs on purpose)."""
    return {r.baseline for r in preset.runs if r.baseline and not preset.run(r.baseline).init_from}


@dataclass(frozen=True)
class Trial:
    """One tuning trial: the validation accuracies (%) of the checkpoint it keeps (the epoch of best validation
    PGD, then clean: what every evaluation reads)."""

    run: str
    seed: int
    epoch: int
    val_pgd: float
    val_clean: float
    setting: str = ""  # the settings in which the trials differ, e.g. "ot_weight=0.3"


@dataclass(frozen=True)
class TuningResult:
    """A tuning's trials (those with a record), the best (None until every trial has one), and whether the tuned
    arm's settings are the best trial's (None without a tuned arm or a best trial)."""

    tuning: Tuning
    trials: tuple[Trial, ...]
    best: str | None
    tuned_is_best: bool | None
    tied: tuple[str, ...] = ()  # the other trials with the best one's validation accuracies exactly


def _trial(rec: UnitRecord, keys: list[str]) -> Trial:
    method = rec.settings.get("method", "")
    kept = max(range(len(rec.metrics)), key=lambda i: (checkpoint_score(rec.metrics[i], method), -i))
    m = rec.metrics[kept]
    return Trial(rec.run, rec.seed, int(m.get("epoch", kept + 1)), 100 * m["val_pgd"], 100 * m["val_clean"],
                 ", ".join(_setting(rec, k) for k in keys))


def _setting(rec: UnitRecord, key: str) -> str:
    """``key=value`` as the run trained it: an unset alpha reads as the method's default, not None."""
    value = rec.settings.get(key)
    if key == "adv_weight" and value is None:
        return f"{key}={default_adv_weight(rec.settings['method'])} (default)"
    return f"{key}={value}"


def tunings(preset: Preset, records: dict[str, UnitRecord]) -> list[TuningResult]:
    """Each of ``preset.tunings`` with its trials' validation scores (seed index 0 only)."""
    out = []
    for t in preset.tunings:
        recs = [rec for rec in records.values() if rec.run in t.trials and rec.seed_index == 0 and rec.metrics]
        keys = sorted({k for a in recs for b in recs for k in a.settings.keys() | b.settings.keys()
                       if a.settings.get(k) != b.settings.get(k)})
        found = {rec.run: _trial(rec, keys) for rec in recs}
        trials = tuple(found[name] for name in t.trials if name in found)
        # max() keeps the first of equal scores: a tie goes to the earlier trial, the default listed first
        best = (max(trials, key=lambda x: (x.val_pgd, x.val_clean)).run if len(trials) == len(t.trials) else None)
        same, tied = None, ()
        if best:
            top = found[best]
            tied = tuple(x.run for x in trials if x.run != best and (x.val_pgd, x.val_clean) == (top.val_pgd,
                                                                                                  top.val_clean))
            if t.tuned:
                same = preset.run(t.tuned).config == preset.run(best).config
        out.append(TuningResult(t, trials, best, same, tied))
    return out


@dataclass(frozen=True)
class UnitCost:
    """Where and how long one unit ran: training seconds are the sum of its epochs' (this unit's epochs only)."""

    unit: str
    processor: str
    precision: str
    threads: int
    epochs: int
    median_epoch_s: float
    train_s: float
    evaluate_s: float
    audit_s: float
    commit: str | None = None  # otrobust's git commit, when it ran from a git checkout
    trained_by: str | None = None  # the unit that trained this unit's run, when another did (train_s is then 0)

    @property
    def total_s(self) -> float:
        return self.train_s + self.evaluate_s + self.audit_s


def costs(records: dict[str, UnitRecord]) -> list[UnitCost]:
    """Each unit's cost. Units that share one run (a tuned arm that kept the defaults) share its training: the first
    to finish trained it, and the others count none of it."""
    first: dict[str, str] = {}
    for unit, rec in sorted(records.items(), key=lambda kv: (kv[1].finished, kv[0])):
        first.setdefault(rec.run_folder, unit)
    out = []
    for unit, rec in records.items():
        seconds = [float(m["seconds"]) for m in rec.metrics if m.get("seconds") is not None]
        by = first[rec.run_folder] if first[rec.run_folder] != unit else None
        w = rec.wall_seconds
        out.append(UnitCost(unit, rec.execution.processor, rec.execution.precision, rec.execution.threads,
                            len(seconds), median(seconds) if seconds else 0.0, 0.0 if by else sum(seconds),
                            float(w.get("evaluate", 0.0)), float(w.get("audit", 0.0)), rec.versions.get("git_commit"),
                            by))
    return out


def mixed_pairs(preset: Preset, records: dict[str, UnitRecord]) -> list[str]:
    """Paired comparisons whose two units ran on different processors or precisions (a pair must differ in the
    method alone), as ``"run vs baseline, seed S: A / B"``."""
    by = {(r.run, r.seed): r for r in records.values()}
    base_of = {r.name: r.baseline for r in preset.runs if r.baseline}
    out = []
    for (name, seed), rec in sorted(by.items()):
        base = by.get((base_of.get(name), seed))
        if base is None:
            continue
        a = (rec.execution.processor, rec.execution.precision)
        b = (base.execution.processor, base.execution.precision)
        if a != b:
            out.append(f"{name} vs {base.run}, seed {seed}: {', '.join(a)} / {', '.join(b)}")
    return out


def findings_markdown(preset: Preset, records: dict[str, UnitRecord], rows: list[dict[str, Any]],
                      names: dict[str, str], correct: study.Correctness | None = None) -> str:
    """The claims, the plateau and the tuning sections of a study's results.md ("" when it has none of them);
    ``correct`` widens their intervals by the images' noise (:func:`study.paired_differences`)."""
    parts = claims_markdown(preset, rows, names, correct)
    mixed = mixed_pairs(preset, records)
    if mixed:
        parts += ["> **Pairs that differ in more than the method** (processor or precision): " + "; ".join(mixed)
                  + ".", ""]
    parts += _plateau_section(preset, records, names)
    for t in tunings(preset, records):
        parts += _tuning_section(t, names)
    parts += tuned_markdown(preset, rows, names, correct)
    return "\n".join(parts)


def _plateau_section(preset: Preset, records: dict[str, UnitRecord], names: dict[str, str]) -> list[str]:
    order = [r.name for r in preset.runs]
    found = sorted(plateaus(preset, records), key=lambda p: (order.index(p.run), p.seed))
    if preset.plateau_points is None or not found:
        return []
    limit, base = preset.plateau_points, baselines(preset)
    checked = [p for p in found if p.run in base]
    short = [p for p in checked if p.moved >= limit]
    body = [[names.get(p.run, p.run), p.seed, p.epochs, " → ".join(f"{v:.1f}" for v in p.last),
             f"{p.moved:.1f}", ("yes" if p.moved < limit else "**no**") if p.run in base else "–"] for p in found]
    state = (f"**{len(short)} of {len(checked)} baseline seeds are still moving**: "
             + ", ".join(f"{names.get(p.run, p.run)} seed {p.seed}" for p in short) if short else
             f"Every baseline seed recorded ({len(checked)}) has plateaued.")
    return ["## Plateau", "",
            "Validation PGD accuracy (%) over each run's last three epochs. A baseline has plateaued when "
            f"it moved by less than {limit:g} point over them. {state}", "",
            markdown_table(["run", "seed", "epochs", "validation PGD, last three epochs", "moved",
                            "baseline plateaued"], body), ""]


def _tuning_section(t: TuningResult, names: dict[str, str]) -> list[str]:
    if not t.trials:
        return []
    body = [[names.get(x.run, x.run), x.setting or "–", x.seed, x.epoch, f"{x.val_pgd:.1f}", f"{x.val_clean:.1f}",
             "**best**" if x.run == t.best else ""] for x in t.trials]
    if t.best is None:
        left = len(t.tuning.trials) - len(t.trials)
        state = (f"{left} of {len(t.tuning.trials)} trials {'has' if left == 1 else 'have'} no record yet; no "
                 "setting is chosen.")
    elif t.tuning.tuned is None:
        state = f"Best: {names.get(t.best, t.best)}; no tuned arm is trained yet."
    elif t.tuned_is_best:
        state = f"Best: {names.get(t.best, t.best)}, trained on fresh seeds as {names.get(t.tuning.tuned)}."
    else:
        state = (f"**The tuned arm {names.get(t.tuning.tuned)} does not use the best trial's settings "
                 f"({names.get(t.best, t.best)})**.")
    if t.tied:
        state += (f" **Tied** with {', '.join(names.get(r, r) for r in t.tied)} on both validation accuracies: a tie "
                  "goes to the earlier trial (the default is listed first).")
    return [f"## Tuning {t.tuning.name}", "",
            "On seed 0, by validation accuracy only: the checkpoint each trial keeps (best validation PGD, then "
            f"clean). {state}", "",
            markdown_table(["trial", "setting", "seed", "kept epoch", "validation PGD %", "validation clean %", ""],
                           body), ""]


def cost_markdown(records: dict[str, UnitRecord]) -> str:
    """Where and how long each unit ran, and the total in CPU- (or GPU-) hours."""
    found = costs(records)
    if not found:
        return ""
    body = [[f"`{c.unit}`", c.processor, c.precision, c.threads, c.epochs, f"{c.median_epoch_s:.0f}",
             f"`{c.trained_by}`'s" if c.trained_by else f"{c.train_s / 60:.1f}", f"{c.evaluate_s / 60:.1f}",
             f"{c.audit_s / 60:.1f}",
             f"`{c.commit[:10]}`" if c.commit else "–"] for c in found]
    hours = sum(c.total_s for c in found) / 3600
    return "\n".join([f"{len(found)} units, {hours:.1f} hours in all. Wall-clock times as recorded: a unit paused "
                      "while its machine did other work counts the pause; the median epoch is the steadier figure.",
                      "", markdown_table(["unit", "processor", "precision", "threads", "epochs", "median epoch (s)",
                                          "training (min)", "evaluations (min)", "audit (min)", "otrobust commit"],
                                         body), ""])
