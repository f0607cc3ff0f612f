"""A study's findings from its records: plateaus, tuning winners, mixed pairs, costs."""

import dataclasses
from pathlib import Path

import pytest

from otrobust.experiments import study_findings as sf
from otrobust.experiments.records import UnitExecution, read_record
from otrobust.experiments.spec import PaperValue, Preset, Run, Tuning

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
