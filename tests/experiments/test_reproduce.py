"""``otrobust reproduce`` end to end at the smoke scale, restarts, ``report``, ``data``, and the l2 pipeline.

The smoke runs share one output folder (a session fixture), as presets share identical runs.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from otrobust.cli.main import main
from otrobust.data import load_dataset
from otrobust.errors import OtrobustError
from otrobust.experiments.planning import plan, run_status
from otrobust.experiments.presets import PRESETS
from otrobust.experiments.reproduce import reproduce
from otrobust.experiments.run_stages import evaluate_run, train_planned
from otrobust.experiments.spec import Evaluation
from otrobust.store import files
from otrobust.store.checkpoint import load_checkpoint, load_model, resolve_checkpoint
from otrobust.store.files import FAULT_ENV, read_jsonl
from otrobust.training.config import TrainConfig, config_from_dict, validate
from otrobust.training.loop import train

FAST = ("table1", "table2-cifar10", "fig6", "fig7")  # built once for the tests below; every other preset has its own


@pytest.fixture(scope="session")
def smoke_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reproduce")
    for name in FAST:
        reproduce(name, scale="smoke", out=out, device="cpu", log=lambda s: None)
    return out


def _rows(out: Path, name: str) -> list[dict]:
    with open(out / "smoke" / name / "results.csv") as f:
        return list(csv.DictReader(f))


def _check_results(out: Path, name: str) -> list[dict]:
    """Files exist and every run has a clean row and one row per attack of each evaluation."""
    preset, folder = PRESETS[name], out / "smoke" / name
    rows = _rows(out, name)
    assert (folder / "results.md").is_file()
    assert (folder / "figures" / "learning_curves.png").is_file()
    assert (folder / "figures" / "learning_curves.svg").is_file()
    for run in preset.runs:
        mine = [r for r in rows if r["run"] == run.name]
        for ev in preset.evaluations:
            if ev.kind == "features":
                continue
            got = {r["metric"] for r in mine if r["evaluation"] == ev.name}
            stages = {f"{a} after {s}" for a in ev.attacks if a == "autoattack"
                      for s in ("apgd-ce", "apgd-t", "fab-t", "square")}  # AutoAttack stage by stage
            assert got == {"clean", *ev.attacks, *stages}, (run.name, ev.name, got)
    assert all(r["scale"] == "smoke" and r["dataset"] == "digits" for r in rows)
    return rows


def test_table1_smoke_writes_results_beside_the_papers_numbers(smoke_out):
    rows = _check_results(smoke_out, "table1")
    assert len(rows) == 7 * 8  # 7 runs x (clean + PGD, clean + AutoAttack + its four stages)
    for r in rows:
        if " after " in r["metric"]:  # AutoAttack's stages: the paper prints only the total
            assert r["paper"] == "" and r["diff"] == ""
            continue
        assert r["paper"] != "" and r["diff"] != ""  # every method of Table 1 has a paper number
        assert abs(float(r["accuracy"]) - float(r["paper"]) - float(r["diff"])) < 1e-6
    text = (smoke_out / "smoke" / "table1" / "results.md").read_text()
    assert "Smoke scale" in text and "digits stands in for mnist" in text and "ARN" in text
    assert text.count("| GOT-TRADES-LM | clean |") == 2


def test_table2_cifar10_smoke(smoke_out):
    rows = _check_results(smoke_out, "table2-cifar10")
    assert {r["run"] for r in rows} == {r.name for r in PRESETS["table2-cifar10"].runs}
    assert "CIFAR-10" in (smoke_out / "smoke" / "table2-cifar10" / "results.md").read_text()


def test_fig6_smoke_draws_the_tsne_of_clean_and_adversarial_features(smoke_out):
    _check_results(smoke_out, "fig6")
    figures = smoke_out / "smoke" / "fig6" / "figures"
    assert (figures / "tsne.png").stat().st_size > 10_000 and (figures / "tsne.svg").is_file()
    for p in plan(PRESETS["fig6"], "smoke", smoke_out):
        (npz,) = (p.run_dir / "evals").glob("tsne-*.npz")
        import numpy as np

        with np.load(npz) as f:
            assert f["z_clean"].shape == f["z_adv"].shape and len(f["y"]) == len(f["z_clean"])


def test_fig7_smoke_draws_accuracy_against_beta(smoke_out):
    rows = _check_results(smoke_out, "fig7")
    assert len({r["run"] for r in rows}) == 5
    assert (smoke_out / "smoke" / "fig7" / "figures" / "accuracy_vs_beta.png").is_file()


def test_every_run_is_audited_and_every_table_carries_the_verdict(smoke_out):
    folder = smoke_out / "smoke" / "table1"
    audits = json.loads((folder / "audits.json").read_text())
    assert [a["run"] for a in audits] == [r.name for r in PRESETS["table1"].runs]
    for a in audits:
        assert a["verdict"] in ("pass", "warn", "fail") and a["pass"] + a["warn"] + a["fail"] >= 10
        report_dir = (smoke_out / "smoke" / a["report"]).parent  # relative to OUT/SCALE: records travel
        report = json.loads((report_dir / "audit.json").read_text())
        assert report["threat_model"]["n"] == 32 and report["failed"] == (a["verdict"] == "fail")
        assert (report_dir / "accuracy_vs_eps.png").is_file()
    verdicts = {a["run"]: a["verdict"] for a in audits}
    assert all(r["audit"] == verdicts[r["run"]] for r in _rows(smoke_out, "table1"))
    text = (folder / "results.md").read_text()
    assert "## Audit" in text and "| audit |" in text and text.count("| `runs/") == len(audits)


def test_a_failed_audit_is_flagged_in_the_table(smoke_out, tmp_path, capsys):
    # A record whose audit failed (planted by editing the record: the merge reads verdicts from records alone).
    records = tmp_path / "records"
    shutil.copytree(smoke_out / "smoke" / "table1" / "records", records)
    path = records / "s0" / "trades.json"
    record = json.loads(path.read_text())
    record["audit"] = {**record["audit"], "verdict": "fail", "fail": 1, "failed_checks": ["unbounded"]}
    path.write_text(json.dumps(record))
    # At the smoke scale a failed audit does not fail the command (tests/cli/test_commands.py has the full scale).
    assert main(["reproduce", "table1", "--out", str(tmp_path / "merged"), "--merge", "--records", str(records)]) == 0
    assert "at smoke scale an audit verdict means nothing" in capsys.readouterr().out
    text = (tmp_path / "merged" / "smoke" / "table1" / "results.md").read_text()
    assert "**FAILED: TRADES**" in text and "| TRADES | clean | – | – | 48 |" in text
    rows = list(csv.DictReader((tmp_path / "merged" / "smoke" / "table1" / "results.csv").open()))
    assert all(r["audit"] == "fail" for r in rows if r["run"] == "trades")


def test_no_audit_leaves_the_verdict_out(tmp_path):
    folder = reproduce("fig6", scale="smoke", out=tmp_path, device="cpu", audit=False, log=lambda s: None)
    assert {r["audit"] for r in _rows(tmp_path, "fig6")} == {"not audited"}
    assert json.loads((folder / "audits.json").read_text()) == []
    assert not list((tmp_path / "smoke" / "runs").glob("*/audit-*"))


def test_a_second_call_retrains_reevaluates_and_reaudits_nothing(smoke_out):
    logs = []
    reproduce("table1", scale="smoke", out=smoke_out, device="cpu", log=logs.append)
    assert sum("done, nothing to do" in line for line in logs) == 7
    assert not any(line.startswith("    epoch") for line in logs)
    assert not any(line.startswith("auditing") for line in logs)


def test_an_unfinished_run_is_resumed(tmp_path, monkeypatch):
    from otrobust.training.stop_signals import Interrupted

    (p,) = plan(PRESETS["fig6"], "smoke", tmp_path, overrides={"epochs": 2})[:1]
    monkeypatch.setenv(FAULT_ENV, "validation:1:SIGINT")  # stopped after its first epoch
    monkeypatch.setattr(files, "_fault_counts", {})
    with pytest.raises(Interrupted):
        train(p.config, show_progress=False, log=lambda s: None)
    monkeypatch.delenv(FAULT_ENV)
    assert run_status(p) == "partial"
    logs = []
    assert train_planned(p, logs.append) == "partial"
    assert any("resuming" in line for line in logs) and run_status(p) == "done"
    assert [r["epoch"] for r in read_jsonl(p.run_dir / "metrics.jsonl")] == [1, 2]


def test_dry_run_lists_runs_and_costs_without_training(tmp_path, capsys):
    assert main(["reproduce", "table3", "--scale", "full", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "wrn-34-10" in out and "GPU-hours" in out and "TFLOP/s" in out
    assert not (tmp_path / "full").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["reproduce", "table9", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'table9'" in capsys.readouterr().err
    assert main(["reproduce", "table1", "--scale", "full", "--out", str(tmp_path)]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["data", "download", "imagenet", "--root", str(tmp_path)]) == 2
    assert "cannot download dataset 'imagenet'" in capsys.readouterr().err
    assert main(["reproduce"]) == 0 and "table2-svhn" in capsys.readouterr().out


def test_report_collects_runs_into_one_table(smoke_out, tmp_path, capsys):
    run_dirs = [str(p.run_dir) for p in plan(PRESETS["fig6"], "smoke", smoke_out)]
    assert main(["report", *run_dirs, "--out", str(tmp_path)]) == 0
    with open(tmp_path / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["trades", "got-trades-lm"]
    assert (tmp_path / "report.md").is_file() and (tmp_path / "learning_curves.png").is_file()
    with open(tmp_path / "evaluations.csv") as f:
        assert {r["metric"] for r in csv.DictReader(f)} >= {"clean", "pgd"}
    assert main(["report", str(tmp_path)]) == 2  # not a run directory


def test_l2_threat_model_trains_and_evaluates_end_to_end(tmp_path):
    with pytest.raises(OtrobustError, match="outside"):
        validate(TrainConfig(eps=1.5))
    validate(TrainConfig(eps=1.5, norm="l2"))  # an l2 radius may exceed 1
    with pytest.raises(OtrobustError, match="needs an --eps"):
        train(TrainConfig(norm="l2", out=str(tmp_path / "x")), log=lambda s: None)
    with pytest.raises(OtrobustError, match="sqrt"):  # 8x8 digits: no two images are further apart than 8
        train(TrainConfig(norm="l2", eps=9.0, out=str(tmp_path / "y")), log=lambda s: None)
    assert main(["train", "--method", "got-trades-lm", "--norm", "l2", "--eps", "1.5", "--train-size", "64",
                 "--val-size", "32", "--epochs", "1", "--batch-size", "32", "--steps", "2", "--val-steps", "1",
                 "--out", str(tmp_path / "l2"), "--no-progress"]) == 0
    cfg = config_from_dict(json.loads((tmp_path / "l2" / "config.json").read_text()))
    assert cfg.norm == "l2" and cfg.eps == 1.5 and cfg.step_size == 2.5 * 1.5 / 2
    test = load_dataset("digits", "test", size=32)
    rows = evaluate_run(tmp_path / "l2", Evaluation("l2", ("pgd",), eps=(0.5, 1.5), steps=(3,)), cfg, test)
    assert [(r.metric, r.eps) for r in rows] == [("clean", None), ("pgd", 0.5), ("pgd", 1.5)]
    from otrobust.evaluation.evaluate import build_attacks

    model = load_model(tmp_path / "l2")
    x_adv = build_attacks(["pgd"], eps=1.5, steps=3, norm="l2")["pgd"](model, test.x, test.y)
    assert float((x_adv - test.x).flatten(1).norm(dim=1).max()) <= 1.5 + 1e-4


@pytest.mark.parametrize("name", [n for n in PRESETS if n not in FAST])
def test_every_other_preset_smoke(smoke_out, name):
    reproduce(name, scale="smoke", out=smoke_out, device="cpu", log=lambda s: None)
    _check_results(smoke_out, name)
    preset = PRESETS[name]
    for kind in ("eps", "steps"):
        if kind in preset.plots:
            assert (smoke_out / "smoke" / name / "figures" / f"accuracy_vs_{kind}.png").is_file()


@pytest.mark.slow
def test_table2_cifar10_smoke_on_the_real_images(shared_data, tmp_path):
    folder = reproduce("table2-cifar10", scale="smoke", out=tmp_path, data_dir=str(shared_data), device="cpu",
                       log=lambda s: None)
    rows = _rows(tmp_path, "table2-cifar10")
    assert {r["dataset"] for r in rows} == {"cifar10"} and {r["model"] for r in rows} == {"wrn-16-1"}
    assert "Stand-in" not in (folder / "results.md").read_text()
    assert torch.isfinite(torch.tensor([float(r["accuracy"]) for r in rows])).all()


def test_an_image_folder_dataset_takes_its_shape_from_the_images(tmp_path):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split, count in (("train", 24), ("test", 6)):
        for c, name in enumerate(("ant", "bee", "cat")):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(count // 3):
                pixels = (torch.rand(12, 12, 3, generator=rng) * 80 + 80 * c).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "data" / split / name / f"{i}.png")
    cfg = TrainConfig(dataset="folder", data_dir=str(tmp_path / "data"), model="small-cnn", method="trades",
                      val_size=6, epochs=1, batch_size=9, steps=1, val_steps=1, out=str(tmp_path / "run"))
    train(cfg, show_progress=False, log=lambda s: None)
    model = load_model(tmp_path / "run")
    assert model(torch.rand(2, 3, 12, 12)).shape == (2, 3)
    _, meta, _ = load_checkpoint(resolve_checkpoint(tmp_path / "run"))
    assert {k: meta["architecture"][k] for k in ("num_classes", "in_channels", "image_size")} == {
        "num_classes": 3, "in_channels": 3, "image_size": 12}
    test = load_dataset("folder", "test", tmp_path / "data")
    rows = evaluate_run(tmp_path / "run", Evaluation("pgd", ("pgd",), steps=(2,)), config_from_dict(
        json.loads((tmp_path / "run" / "config.json").read_text())), test)
    assert [r.n for r in rows] == [6, 6]


def test_a_run_directory_with_other_settings_is_not_reused(tmp_path):
    (p, _) = plan(PRESETS["fig6"], "smoke", tmp_path)
    p.run_dir.mkdir(parents=True)
    (p.run_dir / "config.json").write_text(json.dumps({**p.config.to_dict(), "ot_weight": 3.0}))
    with pytest.raises(OtrobustError, match="ot_weight = 3.0"):
        train_planned(p, lambda s: None)
