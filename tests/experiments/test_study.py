"""Multi-seed studies: seeds really differ, runs of one seed are paired, differences are taken seed by seed."""

import csv
import math

import numpy as np
import pytest
import torch

from otrobust.experiments import study
from otrobust.experiments.planning import plan
from otrobust.experiments.reproduce import reproduce
from otrobust.experiments.results import display_names
from otrobust.experiments.studies import STUDIES
from otrobust.training.setup import build_model, epoch_order


def _row(run, seed, acc, metric="pgd", evaluation="pgd"):
    return {"run": run, "seed": seed, "evaluation": evaluation, "metric": metric, "labels": "true", "eps": 0.3,
            "steps": 40, "step_size": 0.01, "accuracy": acc}


def test_paired_differences_are_taken_seed_by_seed():
    rows = [_row("got", 0, 50.0), _row("got", 1, 61.0), _row("got", 2, 40.0), _row("got", 3, 99.0),
            _row("base", 0, 48.0), _row("base", 1, 60.0), _row("base", 2, 37.0)]  # seed 3 has no baseline
    (d,) = study.paired_differences(rows, {"got": "base"})
    assert d["seeds"] == [0, 1, 2] and d["diffs"] == [2.0, 1.0, 3.0]
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert d["mean"] == pytest.approx(2.0) and d["ci_low"] == pytest.approx(2.0 - half)
    assert d["ci_high"] == pytest.approx(2.0 + half)
    # Unpaired, the same numbers would be a mean difference of 61.0 / 4 ... — the pairing is what is tested:
    assert study.paired_differences(rows, {"base": "got"})[0]["diffs"] == [-2.0, -1.0, -3.0]


def _bits(n_correct, n=10, start=0):
    out = np.zeros(n, dtype=bool)
    out[start:start + n_correct] = True
    return out


def test_the_images_noise_widens_the_interval_and_gives_agreeing_seeds_a_width():
    # both seeds: the run gets images 0-5 right, the baseline 2-5 and 8: +10 points on each seed, exactly
    run, base = _bits(6), _bits(4, start=2) | (np.arange(10) == 8)
    rows = [_row("got", s, 60.0) for s in (0, 1, 2)] + [_row("base", s, 50.0) for s in (0, 1, 2)]
    key = ("pgd", "pgd", "true", 0.3, 40, 0.01)
    correct = {(r, s, key): bits for s in (0, 1, 2) for r, bits in (("got", run), ("base", base))}
    (seeds_only,) = study.paired_differences(rows, {"got": "base"})
    (d,) = study.paired_differences(rows, {"got": "base"}, correct)
    assert seeds_only["ci_low"] == pytest.approx(10.0) and not study.informative(seeds_only["ci_low"],
                                                                                  seeds_only["ci_high"])
    per_image = 100.0 * (run.astype(float) - base.astype(float))  # +100 on images 0 and 1, -100 on image 8
    assert d["image_se"] == pytest.approx(math.sqrt(per_image.var(ddof=1) / 10))
    half = 4.302652729911275 * d["image_se"]
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(10.0 - half), pytest.approx(10.0 + half))
    assert study.informative(d["ci_low"], d["ci_high"])


def test_the_images_noise_is_left_out_only_when_it_cannot_be_counted():
    key = ("pgd", "pgd", "true", 0.3, 40, 0.01)
    rows = [_row("got", s, a) for s, a in ((0, 52.0), (1, 61.0))] + [_row("base", s, 50.0) for s in (0, 1)]
    some = {("got", 0, key): _bits(6), ("base", 0, key): _bits(5)}  # seed 1 has no correctness
    (d,) = study.paired_differences(rows, {"got": "base"}, some)
    assert d["image_se"] is None and d["ci_high"] - d["ci_low"] == pytest.approx(
        2 * 12.706204736174707 * (9.0 / math.sqrt(2)) / math.sqrt(2), rel=1e-6)  # sd of +2, +11
    assert study.image_variance([(_bits(6), _bits(5, n=9))]) is None  # not the same images
    assert study.image_variance([(_bits(6), _bits(6))]) == 0.0  # the same answers: no noise from the images


def test_seed_summary_gives_mean_and_sample_sd():
    rows = [_row("a", s, v) for s, v in ((0, 1.0), (1, 2.0), (2, 6.0))] + [_row("b", 0, 5.0)]
    by_run = {r["run"]: r for r in study.seed_summary(rows)}
    assert by_run["a"]["mean"] == pytest.approx(3.0) and by_run["a"]["sd"] == pytest.approx(math.sqrt(7.0))
    assert by_run["b"]["sd"] is None and study.mean_sd(3.0, 2.0) == "3.00 ± 2.00"


def test_seeds_vary_initial_weights_and_data_order_and_pair_runs_of_one_seed(tmp_path):
    planned = plan(STUDIES["mnist-study"], "smoke", tmp_path, seeds=2)
    by = {(p.run.name, p.seed_index): p.config for p in planned}
    assert {p.seed_index for p in planned} == {0, 1}
    assert by[("trades", 0)].seed != by[("trades", 1)].seed
    assert by[("trades", 0)].out != by[("trades", 1)].out

    def weights(cfg):
        model, _ = build_model(cfg, torch.device("cpu"))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert not torch.equal(weights(by[("trades", 0)]), weights(by[("trades", 1)]))
    assert torch.equal(weights(by[("trades", 1)]), weights(by[("got-trades-lm", 1)]))  # paired: same start
    assert not torch.equal(epoch_order(by[("trades", 0)].seed, 0, 100), epoch_order(by[("trades", 1)].seed, 0, 100))
    # Fine-tuning starts from the TRADES run of its own seed.
    for i in (0, 1):
        assert by[("ft/trades", i)].init.startswith(by[("trades", i)].out)


def test_the_tuned_arms_reuse_a_main_arms_training_only_where_the_settings_match(tmp_path):
    planned = plan(STUDIES["mnist-study"], "smoke", tmp_path, seeds=4)
    out = {(p.run.name, p.seed_index): p.config.out for p in planned}
    assert {i for name, i in out if name.startswith("tuned/")} == {1, 2, 3}  # never the tuning seed
    assert out[("tuned/got-trades-lm", 1)] == out[("got-trades-lm", 1)]  # the default won: trained once
    assert out[("tuned/trades", 1)] != out[("trades", 1)]  # alpha 3, not the default


def test_a_run_keeps_its_own_label_however_many_seeds_it_has(tmp_path):
    names = display_names(plan(STUDIES["mnist-study"], "smoke", tmp_path, seeds=4))
    assert names["tuned/trades"] == "TRADES, tuned (alpha 3)" and names["trades"] == "TRADES"


def test_smoke_study_with_two_seeds_reports_mean_sd_and_paired_differences(tmp_path):
    folder = reproduce("mnist-study", scale="smoke", out=tmp_path, seeds=2, device="cpu", log=lambda s: None)
    text = (folder / "results.md").read_text()
    assert "## Across seeds" in text and "±" in text and "## Paired differences" in text
    with open(folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    main = STUDIES["mnist-study"].evaluations[0]
    for run in STUDIES["mnist-study"].runs:
        seeds = {r["seed"] for r in rows if r["run"] == run.name and r["evaluation"] == main.name}
        assert seeds == {str(i) for i in (0, 1) if not run.seeds or i in run.seeds}, (run.name, seeds)
    stages = {r["metric"] for r in rows if r["evaluation"] == "autoattack"}
    assert {"autoattack after apgd-ce", "autoattack after square"} <= stages
    assert all((folder / "figures" / f"{name}.png").is_file() for name in
               ("accuracy_vs_eps_label_protocols", "plateau", "tuning"))


def test_the_learning_curves_leave_the_trials_out_and_continue_a_fine_tuning_from_its_parent(tmp_path):
    from otrobust.experiments.results import curve_histories

    planned = plan(STUDIES["mnist-study"], "smoke", tmp_path, seeds=1)
    histories = {(p.run.name, 0): [{"epoch": e, "val_pgd": 0.5} for e in range(1, (4 if p.run.init_from else 20) + 1)]
                 for p in planned}
    curves = curve_histories(STUDIES["mnist-study"], planned, histories, display_names(planned))
    assert "TRADES" in curves and not any("(trial)" in name for name in curves)
    ft = next(v for k, v in curves.items() if k.startswith("TRADES + "))
    assert [m["epoch"] for m in ft] == [21, 22, 23, 24]
