"""A study's findings from its records: claims judged by the paired interval, plateaus, tuning winners, mixed pairs."""

import dataclasses
from pathlib import Path

import pytest

from otrobust.experiments import study
from otrobust.experiments import study_findings as sf
from otrobust.experiments.records import UnitExecution, read_record
from otrobust.experiments.spec import PaperValue, Preset, Run, Tuning
from otrobust.experiments.studies import MNIST_STUDY

FIXTURE = read_record(Path(__file__).parent / "fixtures" / "unit-record-fig6-s0-trades.json")
INTEL = UnitExecution(2, 2, "cpu", "float32", "Intel Xeon (AMX)")

PRESET = Preset(
    name="p", description="", reference="", evaluations=(), paper_settings={}, plateau_points=1.0,
    runs=(Run("base", "Base", {"method": "trades"}), Run("got", "GOT", {"method": "got-trades-lm"}, baseline="base"),
          Run("tune/base-a3", "Base a3", {"method": "trades", "adv_weight": 3.0}, seeds=(0,)),
          Run("tuned/base", "Base tuned", {"method": "trades", "adv_weight": 6.0}, seeds=(1, 2))),
    paper_results=(PaperValue("base", "pgd", 90.0), PaperValue("got", "pgd", 92.0),
                   PaperValue("base", "autoattack", 85.0), PaperValue("got", "autoattack", 90.0)),
    tunings=(Tuning("Base", ("tune/base-a3", "base"), tuned="tuned/base"),),
)


def _record(run, seed, val_pgd, *, execution=INTEL, settings=None, seconds=60.0, folder=None, finished="1"):
    metrics = tuple({"epoch": i + 1, "val_pgd": v / 100, "val_clean": 0.98, "seconds": seconds}
                    for i, v in enumerate(val_pgd))
    return dataclasses.replace(FIXTURE, unit=f"s{seed}/{run}", run=run, seed=seed, seed_index=seed, metrics=metrics,
                               run_folder=folder or f"{run}-{seed}".replace("/", "-"), finished=finished,
                               execution=execution, settings={**FIXTURE.settings, **(settings or {})},
                               wall_seconds={"evaluate": 600.0, "audit": 300.0})


def _row(run, seed, acc, evaluation="pgd", metric="pgd"):
    return {"run": run, "seed": seed, "evaluation": evaluation, "metric": metric, "labels": "true", "eps": 0.3,
            "steps": 40, "step_size": 0.01, "accuracy": acc}


def test_the_verdict_follows_the_interval():
    assert sf.verdict(1.24, -0.4, 0.6, 3) == sf.REFUTED  # below the claim, 0 inside: the claimed gain is ruled out
    assert sf.verdict(1.24, 0.1, 0.9, 3) == sf.REFUTED  # a smaller gain shown is still not the claim
    assert sf.verdict(1.24, 0.3, 2.5, 3) == sf.REPRODUCED
    assert sf.verdict(1.24, 1.5, 3.0, 3) == sf.REPRODUCED  # a larger gain than claimed
    assert sf.verdict(1.24, -0.5, 2.0, 3) == sf.NOT_RESOLVED
    assert sf.verdict(1.24, None, None, 3) == sf.NOT_RESOLVED


def test_no_verdict_below_three_seeds_or_from_an_interval_of_no_width():
    # two seeds whose AutoAttack differences agree exactly (+1.2 and +1.2) give the interval [+1.2, +1.2]: it
    # measures no noise, so it must not refute a claimed +2.84
    assert sf.verdict(2.84, 1.2, 1.2, 3) == sf.NOT_RESOLVED
    assert sf.verdict(2.84, 0.5, 1.5, 2) == sf.NOT_RESOLVED
    assert sf.verdict(2.84, 0.5, 1.5, 3) == sf.REFUTED
    assert sf.shown(1.2, 1.2) == "no interval (the seeds agree exactly)"
    assert sf.verdict(2.84, 1.2 - 1e-12, 1.2 + 1e-12, 3) == sf.NOT_RESOLVED  # rounding error is no spread
    assert study.interval(1.2, 1.2) == "[+1.20, +1.20] (no spread)" and study.interval(-0.5, 1.2) == "[-0.50, +1.20]"


def test_the_mnist_study_tests_the_papers_four_claims():
    gains = {(c.run, c.metric): round(c.gain, 2) for c in sf.claims(MNIST_STUDY)}
    assert gains == {("got-trades-lm", "pgd"): 1.24, ("got-trades-lm", "autoattack"): 4.75,
                     ("got-pgd-lm", "pgd"): 1.57, ("got-pgd-lm", "autoattack"): 2.84}


def test_claims_are_judged_on_paired_seeds():
    rows = [_row("base", s, a) for s, a in ((0, 90.0), (1, 95.0), (2, 85.0))]
    rows += [_row("got", s, a) for s, a in ((0, 90.1), (1, 95.2), (2, 84.9))]  # ~0 gain, tight when paired
    rows += [_row("base", 0, 80.0, "autoattack", "autoattack"), _row("got", 0, 90.0, "autoattack", "autoattack")]
    pgd, aa = sf.judge(sf.claims(PRESET), rows)
    assert pgd.seeds == (0, 1, 2) and pgd.mean == pytest.approx(0.0667, abs=1e-3) and pgd.verdict == sf.REFUTED
    assert aa.seeds == (0,) and aa.verdict == sf.NOT_RESOLVED  # one seed: no interval, whatever its size


def test_a_baseline_still_climbing_is_named():
    records = {"s0/base": _record("base", 0, [80, 85, 89, 92]), "s1/base": _record("base", 1, [90, 93, 93.2, 93.1]),
               "s0/got": _record("got", 0, [80, 90, 95, 99])}  # not a baseline: shown, not judged
    moved = {(p.run, p.seed): p.moved for p in sf.plateaus(PRESET, records)}
    assert moved == {("base", 0): pytest.approx(7.0), ("base", 1): pytest.approx(0.2), ("got", 0): pytest.approx(9.0)}
    text = sf.findings_markdown(PRESET, records, [], {})
    assert "1 of 2 baseline seeds are still moving**: base seed 0" in text


def test_the_best_trial_is_the_kept_checkpoints_and_a_tuned_arm_must_use_it():
    records = {"s0/base": _record("base", 0, [90, 93, 92], settings={"adv_weight": 6.0}),
               "s0/tune/base-a3": _record("tune/base-a3", 0, [90, 92.5, 92.9], settings={"adv_weight": 3.0})}
    (result,) = sf.tunings(PRESET, records)
    assert result.best == "base" and result.tuned_is_best is False  # 93 at epoch 2 beats a3's last 92.9
    assert {t.run: (t.epoch, t.setting) for t in result.trials} == {"base": (2, "adv_weight=6.0"),
                                                                    "tune/base-a3": (3, "adv_weight=3.0")}
    assert "does not use the best trial's settings" in sf.findings_markdown(PRESET, records, [], {})
    (partial,) = sf.tunings(PRESET, {"s0/base": records["s0/base"]})
    assert partial.best is None


def test_an_unset_alpha_reads_as_the_methods_default():
    trades = {"method": "trades"}
    records = {"s0/base": _record("base", 0, [90, 93], settings={**trades, "adv_weight": None}),
               "s0/tune/base-a3": _record("tune/base-a3", 0, [90, 92], settings={**trades, "adv_weight": 3.0})}
    (result,) = sf.tunings(PRESET, records)
    assert {t.run: t.setting for t in result.trials} == {"base": "adv_weight=6.0 (default)",
                                                         "tune/base-a3": "adv_weight=3.0"}


def test_a_pair_on_two_processors_is_flagged_and_costs_add_up():
    amd = dataclasses.replace(INTEL, processor="AMD EPYC")
    records = {"s0/base": _record("base", 0, [90, 91, 91]), "s0/got": _record("got", 0, [90, 91, 91]),
               "s1/base": _record("base", 1, [90, 91, 91]), "s1/got": _record("got", 1, [90, 91, 91], execution=amd)}
    assert sf.mixed_pairs(PRESET, records) == ["got vs base, seed 1: AMD EPYC, float32 / Intel Xeon (AMX), float32"]
    assert "differ in more than the method" in sf.findings_markdown(PRESET, records, [], {})
    assert sum(c.total_s for c in sf.costs(records)) == pytest.approx(4 * (3 * 60 + 900))
    assert "4 units, 1.2 hours in all" in sf.cost_markdown(records)


def test_a_run_two_units_share_counts_its_training_once():
    records = {"s1/tuned/got": _record("tuned/got", 1, [90, 91], folder="got-1", finished="2"),
               "s1/got": _record("got", 1, [90, 91], folder="got-1", finished="1")}
    by = {c.unit: c for c in sf.costs(records)}
    assert by["s1/got"].train_s == 120 and by["s1/got"].trained_by is None  # it finished first: it trained
    assert by["s1/tuned/got"].train_s == 0 and by["s1/tuned/got"].trained_by == "s1/got"
    assert "| `s1/got`'s |" in sf.cost_markdown(records)


def test_a_tie_goes_to_the_default_listed_first_and_is_said():
    preset = dataclasses.replace(PRESET, tunings=(Tuning("Base", ("base", "tune/base-a3")),))
    records = {"s0/tune/base-a3": _record("tune/base-a3", 0, [90, 93, 92]), "s0/base": _record("base", 0, [90, 93, 91])}
    (result,) = sf.tunings(preset, records)
    assert result.best == "base"
    assert "**Tied** with Base a3" in sf.findings_markdown(preset, records, [], {"tune/base-a3": "Base a3"})


def test_tuned_got_against_the_tuned_base_says_what_the_interval_shows():
    runs = (*PRESET.runs, Run("tuned/got", "GOT tuned", {"method": "got-trades-lm"}, baseline="tuned/base",
                              seeds=(1, 2)))
    preset = dataclasses.replace(PRESET, runs=runs, tunings=(Tuning("Base", ("base",), tuned="tuned/base"),
                                                             Tuning("GOT", ("got",), tuned="tuned/got")))
    rows = [_row("tuned/base", 1, 90.0), _row("tuned/base", 2, 91.0), _row("tuned/got", 1, 91.0),
            _row("tuned/got", 2, 92.2), _row("base", 1, 95.0), _row("got", 1, 80.0),
            _row("tuned/base", 1, 80.0, "autoattack", "autoattack"), _row("tuned/got", 1, 79.0, "autoattack",
                                                                          "autoattack")]
    found = {d["evaluation"]: d for d in sf.tuned_differences(preset, rows)}
    assert set(found) == {"pgd", "autoattack"} and found["pgd"]["baseline"] == "tuned/base"  # main arms left out
    assert found["pgd"]["mean"] == pytest.approx(1.1)  # +1.0 and +1.2: two seeds, t(1) makes the interval wide
    assert sf.shown(found["pgd"]["ci_low"], found["pgd"]["ci_high"]) == "no difference shown"
    text = sf.findings_markdown(preset, {}, rows, {})
    assert "## Tuned against tuned" in text and "**no interval (one seed)**" in text
    assert sf.shown(0.2, 1.0) == "better" and sf.shown(-1.0, -0.2) == "worse"
    assert sf.shown(-0.2, 1.0) == "no difference shown"
