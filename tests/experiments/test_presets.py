"""Presets: well-formed data, the paper's numbers as printed, runs that resolve at both scales, shared runs."""

import re
from pathlib import Path

import pytest

from otrobust.errors import OtrobustError
from otrobust.experiments.planning import cost_table, parse_overrides, plan, run_id, scaled_evaluations
from otrobust.experiments.presets import PAPER_ONLY_LABELS, PRESETS
from otrobust.experiments.spec import SMOKE
from otrobust.training.method_registry import METHOD_NAMES

SPEC = Path(__file__).resolve().parents[3] / "shared" / "SPEC.md"
PLOTS = {"curves", "eps", "steps", "beta", "tsne"}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_is_well_formed(name):
    preset = PRESETS[name]
    names = [r.name for r in preset.runs]
    assert len(names) == len(set(names)) and preset.runs
    assert all(r.config["method"] in METHOD_NAMES for r in preset.runs)
    assert all(r.looks >= 1 and (r.looks == 1 or r.baseline) for r in preset.runs)  # looks: judged against a baseline
    assert preset.evaluations and set(preset.plots) <= PLOTS
    for ev in preset.evaluations:
        assert ev.kind in ("accuracy", "features") and set(ev.runs) <= set(names)
    for v in preset.paper_results:
        assert v.run in names or v.run.split("/")[-1] in PAPER_ONLY_LABELS, v
        assert 0 <= v.value <= 100
    if "tsne" in preset.plots:
        assert any(ev.kind == "features" for ev in preset.evaluations)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_its_runs_at_both_scales(name, tmp_path):
    preset = PRESETS[name]
    smoke = plan(preset, "smoke", tmp_path)
    full = plan(preset, "full", tmp_path, data_dir=str(tmp_path))
    assert len(smoke) == len(full) == len(preset.runs)
    for s, f in zip(smoke, full, strict=True):
        assert s.config.dataset == SMOKE["stand_in"] and s.note  # no --data-dir: the stand-in, said so
        assert s.config.epochs == 1 and f.config.epochs == s.run.config["epochs"]
        assert f.config.dataset == f.run.config["dataset"] and f.config.model == f.run.config["model"]
        assert f.run_dir.parent == tmp_path / "full" / "runs"
    for ev in scaled_evaluations(preset, "smoke"):
        assert ev.n is not None and ev.n <= SMOKE["eval_n"] and all(s <= 5 for s in ev.steps)


def test_smoke_with_a_data_dir_keeps_the_dataset_and_shrinks_huge_models(tmp_path):
    wrn = plan(PRESETS["table3"], "smoke", tmp_path, data_dir=str(tmp_path))
    assert {p.config.model for p in wrn} == {"wrn-16-1"} and not any(p.note for p in wrn)
    assert {p.config.dataset for p in wrn} == {"cifar10", "cifar100"}
    mnist = plan(PRESETS["table1"], "smoke", tmp_path, data_dir=str(tmp_path))
    assert {p.config.model for p in mnist} == {"cw-cnn"}


def test_identical_runs_are_shared_between_presets(tmp_path):
    ids = {name: {p.run.name: run_id(p.config) for p in plan(PRESETS[name], "full", tmp_path, data_dir="d")}
           for name in ("table1", "table4", "fig2", "table2-cifar10", "fig3", "fig6", "table3", "fig5", "fig7")}
    assert ids["table4"]["penultimate/got-pgd-s"] == ids["table1"]["got-pgd-s"]
    assert set(ids["fig2"].values()) <= set(ids["table1"].values())
    assert set(ids["fig3"].values()) == set(ids["table2-cifar10"].values()) >= set(ids["fig6"].values())
    assert set(ids["fig5"].values()) < set(ids["table3"].values())
    assert ids["fig7"]["beta-10"] == ids["table1"]["got-trades-lm"]
    assert len(set(ids["fig7"].values())) == 5


def test_full_scale_records_the_papers_beta_and_our_warmup():
    for preset in PRESETS.values():
        for run in preset.runs:
            if run.config["method"].startswith("got-"):
                assert run.config["ot_warmup_epochs"] > 0, (preset.name, run.name)  # set, not a default
                assert run.config["ot_weight"] == 10.0 or preset.name == "fig7", (preset.name, run.name)
        if any(r.config["method"].startswith("got-") for r in preset.runs):
            assert any("warm-up" in note or "warm" in note for note in preset.notes), preset.name
        assert preset.paper_settings["beta"] in (10, "0.01, 0.1, 1, 10, 100")


def _spec_tables() -> tuple[dict, dict]:
    text = SPEC.read_text()
    section = " ".join(text.split("Table 1,")[1].split("Table 2,")[0].split())
    t1 = {m: tuple(float(v) for v in vals.split(" / "))
          for m, vals in re.findall(r"([A-Z-]+) (\d[\d.]* / [\d.]*\d / [\d.]*\d)", section)}
    t2 = {}
    for line in text.split("Table 2")[1].split("Table 3")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and "/" in cells[1]:
            t2[cells[0]] = [tuple(float(v) for v in c.split(" / ")) for c in cells[1:]]
    return t1, t2


def test_tables_1_and_2_are_copied_exactly_from_the_spec():
    if not SPEC.is_file():
        pytest.skip(f"SPEC not found at {SPEC}")
    t1, t2 = _spec_tables()
    labels = {"PGD-AT": "pgd-at", "TRADES": "trades", "MART": "mart", "GOT-PGD-S": "got-pgd-s",
              "GOT-TRADES-S": "got-trades-s", "GOT-PGD-LM": "got-pgd-lm", "GOT-TRADES-LM": "got-trades-lm"}
    assert len(t1) == 7 and len(t2) == 6

    def ours(preset, run):
        got = {v.metric: v.value for v in PRESETS[preset].paper_results if v.run == run}
        return got["clean"], got["pgd"], got["autoattack"]

    for label, values in t1.items():
        assert ours("table1", labels[label]) == values, label
    for label, per_dataset in t2.items():
        for dataset, values in zip(("cifar10", "cifar100", "svhn"), per_dataset, strict=True):
            assert ours(f"table2-{dataset}", labels[label]) == values, (label, dataset)


def test_dry_run_costs_grow_with_the_model_and_the_scale(tmp_path):
    def hours(name, scale):
        preset = PRESETS[name]
        rows = cost_table(preset, plan(preset, scale, tmp_path, data_dir="d"), scaled_evaluations(preset, scale))
        return sum(r[6] + r[7] for r in rows)

    assert hours("table3", "full") > hours("table2-cifar10", "full") > hours("table1", "full") > 0
    assert hours("table1", "smoke") < hours("table1", "full") / 1000


def test_overrides_are_typed_and_checked():
    assert parse_overrides(["lr=1e-4", "ot_warmup_epochs=0", "eps=8/255", "phi_grad=true", "init=runs/x"]) == {
        "lr": 1e-4, "ot_warmup_epochs": 0, "eps": 8 / 255, "phi_grad": True, "init": "runs/x"}
    with pytest.raises(OtrobustError, match="FIELD=VALUE"):
        parse_overrides(["learning_rate=1"])
    with pytest.raises(OtrobustError, match="FIELD=VALUE"):
        parse_overrides(["lr"])
