"""Units and records: ``reproduce --units / --unit / --merge / --status / --launch local``.

One sequential smoke run of the MNIST study (2 seeds, stand-in digits, one thread per unit) is the reference every
other way of running the same plan must reproduce number for number.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otrobust.cli.main import main
from otrobust.errors import OtrobustError
from otrobust.experiments.planning import plan, run_id
from otrobust.experiments.records import MAX_RECORD_BYTES, pack_bits, read_record, unpack_bits
from otrobust.experiments.reproduce import ReproduceSettings, plan_units
from otrobust.experiments.studies import STUDIES
from otrobust.store.files import FAULT_ENV

STUDY = ["reproduce", "mnist-study", "--scale", "smoke", "--seeds", "2", "--device", "cpu", "--threads", "1"]


def _results(out: Path) -> str:
    return (out / "smoke" / "mnist-study" / "results.md").read_text()


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sequential")
    assert main([*STUDY, "--out", str(out)]) == 0
    return out


def test_units_lists_every_run_and_seed_with_what_it_waits_for(tmp_path, capsys):
    assert main([*STUDY, "--out", str(tmp_path), "--units"]) == 0
    text = capsys.readouterr().out
    for seed in (0, 1):
        assert f"| s{seed}/ft/trades | s{seed}/trades |" in text and f"| s{seed}/trades | – |" in text
    assert "s1/tune/" not in text  # the tuning trials run on seed 0 alone
    assert "22 new (of 22 units)" in text


def test_an_unknown_unit_or_a_unit_before_its_parent_is_one_line(tmp_path, capsys):
    assert main([*STUDY, "--out", str(tmp_path), "--unit", "s5/trades"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown unit 's5/trades'" in err
    assert main([*STUDY, "--out", str(tmp_path), "--unit", "s0/ft/trades"]) == 2
    assert "depends on 's0/trades', which is not done" in capsys.readouterr().err


def test_one_unit_runs_alone_and_again_does_nothing(sequential, tmp_path, capsys):
    assert main([*STUDY, "--out", str(tmp_path), "--unit", "s1/pgd-at"]) == 0
    records = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("records/**/*.json"))
    assert records == [Path("smoke/mnist-study/records/s1/pgd-at.json")]
    mine = read_record(tmp_path / records[0])
    reference = read_record(sequential / records[0])
    assert mine.rows == reference.rows and mine.metrics[0]["val_pgd"] == reference.metrics[0]["val_pgd"]
    capsys.readouterr()
    assert main([*STUDY, "--out", str(tmp_path), "--unit", "s1/pgd-at"]) == 0
    assert "done, nothing to do" in capsys.readouterr().out


def test_records_copied_alone_merge_into_the_same_results(sequential, tmp_path):
    shutil.copytree(sequential / "smoke" / "mnist-study" / "records", tmp_path / "copied")
    assert main([*STUDY, "--out", str(tmp_path / "merged"), "--merge", "--records", str(tmp_path / "copied")]) == 0
    assert _results(tmp_path / "merged") == _results(sequential)
    assert "INCOMPLETE" not in _results(sequential)
    sizes = [p.stat().st_size for p in (tmp_path / "copied").rglob("*.json")]
    assert len(sizes) == 22 and max(sizes) < 64_000  # small enough to commit


def test_the_claims_intervals_count_the_images_noise_from_the_records(sequential):
    lines = [line for line in _results(sequential).splitlines() if " beats " in line and line.startswith("|")]
    header = next(line for line in _results(sequential).splitlines() if line.startswith("| claim |"))
    column = [c.strip() for c in header.split("|")].index("images' s.e.")
    assert len(lines) == 4
    for line in lines:  # each image's correctness is in the records, so each claim has its images' share
        float([c.strip() for c in line.split("|")][column])
    assert (sequential / "smoke" / "mnist-study" / "figures" / "claims.png").stat().st_size > 5_000


def test_a_merge_with_missing_units_names_them_and_writes_what_it_can(sequential, tmp_path, capsys):
    shutil.copytree(sequential / "smoke" / "mnist-study" / "records", tmp_path / "some")
    (tmp_path / "some" / "s1" / "got-trades-lm.json").unlink()
    main([*STUDY, "--out", str(tmp_path / "merged"), "--merge", "--records", str(tmp_path / "some")])
    assert "1 of 22 units have no record, results.md is INCOMPLETE: s1/got-trades-lm" in capsys.readouterr().out
    text = _results(tmp_path / "merged")
    assert "**INCOMPLETE**" in text and "`s1/got-trades-lm`" in text and "## Across seeds" in text


@pytest.mark.parametrize("edit, named", [
    (lambda r: r["settings"].update(lr=0.002), "lr = 0.002"),
    (lambda r: r.update(preset="table1"), "preset 'table1'"),
    (lambda r: r["evaluations"][0].update(n=1000), "evaluation 'pgd' was made with n = 1000"),
    (lambda r: r.update(unit="s7/trades"), "unit 's7/trades', which this plan does not have"),
    (lambda r: r.update(format="something-else"), "is not a unit record"),
    (lambda r: r.update(rows="many"), "rows"),
])
def test_a_record_that_does_not_belong_to_the_plan_is_refused_naming_the_field(sequential, tmp_path, capsys,
                                                                                edit, named):
    shutil.copytree(sequential / "smoke" / "mnist-study" / "records", tmp_path / "recs")
    path = tmp_path / "recs" / "s0" / "trades.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    assert main([*STUDY, "--out", str(tmp_path / "merged"), "--merge", "--records", str(tmp_path / "recs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "merged" / "smoke" / "mnist-study" / "results.md").exists()


def test_a_unit_killed_mid_training_resumes_to_the_same_record(sequential, tmp_path):
    cmd = [sys.executable, "-m", "otrobust", *STUDY, "--out", str(tmp_path), "--unit", "s0/got-trades-lm"]
    killed = subprocess.run(cmd, env={**os.environ, FAULT_ENV: "step:2"}, capture_output=True)
    assert killed.returncode == -9
    assert main([*STUDY, "--out", str(tmp_path), "--status"]) == 0
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    name = Path("smoke/mnist-study/records/s0/got-trades-lm.json")
    assert read_record(tmp_path / name).rows == read_record(sequential / name).rows


def test_local_workers_give_the_sequential_results(sequential, tmp_path, capsys):
    assert main([*STUDY, "--out", str(tmp_path), "--launch", "local", "--workers", "2"]) == 0
    assert "22 of 22 units to run, 2 at a time, 1 thread(s) each" in capsys.readouterr().out
    assert _results(tmp_path) == _results(sequential)
    assert main([*STUDY, "--out", str(tmp_path), "--status"]) == 0
    assert "22 done (of 22 units)" in capsys.readouterr().out


def test_flags_that_do_not_go_together_are_one_line():
    with pytest.raises(OtrobustError, match="--unit and --merge do not go together"):
        ReproduceSettings(preset="mnist-study", unit="s0/trades", merge=True)
    with pytest.raises(OtrobustError, match="--records goes with --merge"):
        ReproduceSettings(preset="mnist-study", records=["x"])
    with pytest.raises(OtrobustError, match="--seeds must be between 1 and 1000"):
        ReproduceSettings(preset="mnist-study", seeds=10**9)


def test_packed_correctness_round_trips_and_damage_is_refused():
    flags = [True, False, True] * 7 + [True]
    assert list(unpack_bits(pack_bits(flags))) == flags
    with pytest.raises(OtrobustError):
        unpack_bits("99:AAAA")
    assert MAX_RECORD_BYTES > 1 << 20


def test_units_are_ordered_after_what_they_wait_for():
    settings = ReproduceSettings(preset="mnist-study", seeds=3, out="unused")
    *_, units, _ = plan_units(settings, log=lambda s: None)
    seen = set()
    for u in units:
        assert set(u.depends_on) <= seen
        seen.add(u.id)
    # 12 units on seed 0 (the tuning trials among them), 10 on each other seed (with the two tuned arms)
    assert len(units) == len({u.id for u in units}) == 32
    waits = {u.id: u.depends_on for u in units}
    # the tuned GOT arm kept the defaults: on seeds 1 and 2 its run is the main arm's, trained once, after it
    assert waits["s1/tuned/got-trades-lm"] == ("s1/got-trades-lm",) and waits["s1/tuned/trades"] == ()


def test_the_data_is_part_of_a_runs_identity(tmp_path):
    a, b, c = tmp_path / "a" / "mnist", tmp_path / "b" / "mnist", tmp_path / "c" / "mnist"
    for folder in (a, b, c):
        folder.mkdir(parents=True)
        (folder / "file.bin").write_bytes(b"the same images")
    (c / "file.bin").write_bytes(b"other images")
    ids = [run_id(plan(STUDIES["mnist-study"], "full", tmp_path / "out", str(folder.parent))[0].config)
           for folder in (a, b, c)]
    assert ids[0] == ids[1] != ids[2]  # a copy of the data finds the run, other data trains anew


def _needs_slurm() -> None:
    from tests.slurm_support import slurm_reachable

    reason = slurm_reachable()
    if reason is not None:
        pytest.skip(reason)


def test_slurm_launch_gives_the_sequential_results(sequential, tmp_path, capsys):
    _needs_slurm()
    assert main([*STUDY, "--out", str(tmp_path), "--launch", "slurm"]) == 0
    out = capsys.readouterr().out
    assert "submitted 22 units to SLURM (15 in array" in out and "7 waiting for others" in out
    assert _results(tmp_path) == _results(sequential)
    job_files = list((tmp_path / "smoke" / "mnist-study" / "units").rglob("job.txt"))
    assert job_files == []  # a finished unit forgets its job


def test_a_slurm_job_requeued_mid_training_resumes_to_the_uninterrupted_record(tmp_path):
    _needs_slurm()
    from tests.slurm_support import job_state

    base = ["reproduce", "fig6", "--scale", "smoke", "--set", "epochs=60", "--threads", "1", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "plain"), "--unit", "s0/trades"]) == 0
    assert main([*base, "--out", str(tmp_path / "slurm"), "--launch", "slurm", "--no-wait"]) == 0
    job = (tmp_path / "slurm" / "smoke" / "fig6" / "units" / "s0" / "trades" / "job.txt").read_text().strip()
    metrics = next(iter((tmp_path / "slurm" / "smoke" / "runs").glob("*trades*")), tmp_path) / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline, f"the unit's job {job} did not start training ({job_state(job)})"
        metrics = next(iter((tmp_path / "slurm" / "smoke" / "runs").glob("*trades*")), tmp_path) / "metrics.jsonl"
        time.sleep(0.1)
    subprocess.run(["scontrol", "requeue", job], check=True)
    record = tmp_path / "slurm" / "smoke" / "fig6" / "records" / "s0" / "trades.json"
    while not record.is_file():
        assert time.monotonic() < deadline + 120, f"no record after the requeue ({job_state(job)})"
        time.sleep(0.5)
    resumed, plain = read_record(record), read_record(tmp_path / "plain" / "smoke" / "fig6" / "records" / "s0" /
                                                      "trades.json")
    assert resumed.rows == plain.rows and resumed.features == plain.features
    assert [m["val_pgd"] for m in resumed.metrics] == [m["val_pgd"] for m in plain.metrics]
    provenance = (metrics.parent / "provenance.jsonl").read_text().splitlines()
    assert len(provenance) >= 2  # it was started again, and resumed


def test_slurm_launch_without_slurm_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main([*STUDY, "--out", str(tmp_path), "--launch", "slurm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no SLURM reachable from here (sbatch is not on PATH)" in err


def test_an_arm_on_fresh_seeds_gets_the_first_seed_evaluations_and_audit_on_its_own_first_seed(tmp_path):
    from otrobust.experiments.planning import plan
    from otrobust.experiments.spec import Evaluation, Preset, Run
    from otrobust.experiments.units import build_units

    runs = (Run("base", "Base", {"dataset": "digits", "method": "trades"}, seeds=(0, 1)),
            Run("tuned", "Tuned", {"dataset": "digits", "method": "trades", "adv_weight": 3.0}, seeds=(1, 2)))
    once = Evaluation("sweep", seeds=(0,))
    preset = Preset("p", "", "", runs, (Evaluation("pgd"), once), {}, audit_seeds=(0,))
    units = {u.id: u for u in build_units(preset, plan(preset, "smoke", tmp_path, seeds=3), list(preset.evaluations),
                                          audit=True)}
    assert set(units) == {"s0/base", "s1/base", "s1/tuned", "s2/tuned"}
    first = {uid for uid, u in units.items() if once in u.evaluations}
    assert first == {uid for uid, u in units.items() if u.audit} == {"s0/base", "s1/tuned"}


def test_status_says_how_far_a_started_unit_is(tmp_path, capsys):
    from otrobust.store.checkpoint import checkpoint_path

    settings = ReproduceSettings(preset="mnist-study", seeds=2, out=str(tmp_path))
    *_, units, _ = plan_units(settings, log=lambda s: None)
    run_dir = next(u for u in units if u.id == "s1/pgd-at").planned.run_dir
    checkpoint_path(run_dir, "last").parent.mkdir(parents=True)
    checkpoint_path(run_dir, "last").write_bytes(b"")  # a checkpoint to resume from: the unit is partial
    assert main([*STUDY, "--out", str(tmp_path), "--status"]) == 0
    assert "partial: s1/pgd-at (0 of 1 epochs trained)" in capsys.readouterr().out
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert main([*STUDY, "--out", str(tmp_path), "--status"]) == 0
    assert "partial: s1/pgd-at (trained, evaluating)" in capsys.readouterr().out


def test_a_unit_is_refused_where_a_unit_it_is_compared_with_ran_on_another_kind_of_machine(tmp_path, capsys):
    import dataclasses

    from otrobust.experiments.machine_kinds import check_one_machine_kind, machine_kind
    from otrobust.experiments.records import UnitExecution, record_to_json

    settings = ReproduceSettings(preset="mnist-study", seeds=2, out=str(tmp_path))
    *_, units, ctx = plan_units(settings, log=lambda s: None)
    by_id = {u.id: u for u in units}
    here = machine_kind(by_id["s1/got-trades-lm"], ctx)
    fixture = read_record(Path(__file__).parent / "fixtures" / "unit-record-fig6-s0-trades.json")
    elsewhere = dataclasses.replace(fixture, execution=UnitExecution(1, 1, "cpu", here[1], "Another CPU"))
    ctx.record_path(by_id["s1/trades"]).parent.mkdir(parents=True)
    ctx.record_path(by_id["s1/trades"]).write_text(record_to_json(elsewhere))
    check_one_machine_kind(by_id["s0/got-trades-lm"], units, ctx, here)  # seed 0 has no record: nothing to match
    with pytest.raises(OtrobustError, match="'s1/trades', which it is compared with, ran on Another CPU"):
        check_one_machine_kind(by_id["s1/got-trades-lm"], units, ctx, here)
    # Through the command: one line, exit 2, nothing trained; --mixed-machines runs it anyway.
    assert main([*STUDY, "--out", str(tmp_path), "--unit", "s1/got-trades-lm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--mixed-machines" in err
    assert not by_id["s1/got-trades-lm"].planned.run_dir.exists()
    assert main([*STUDY, "--out", str(tmp_path), "--unit", "s1/got-trades-lm", "--mixed-machines"]) == 0


def test_a_seeds_second_pair_of_arms_may_run_on_another_kind_of_machine_than_its_first(tmp_path):
    import dataclasses

    from otrobust.experiments.machine_kinds import check_one_machine_kind, compared_with, machine_kind
    from otrobust.experiments.records import UnitExecution, record_to_json

    settings = ReproduceSettings(preset="mnist-study", seeds=4, out=str(tmp_path))
    *_, units, ctx = plan_units(settings, log=lambda s: None)
    by_id = {u.id: u for u in units}
    tuned = by_id["s3/tuned/got-trades-lm"]
    assert {u.id for u in compared_with(tuned, units, ctx.preset.tunings)} == {"s3/tuned/trades", tuned.id}
    s1 = {u.id for u in compared_with(by_id["s1/ft/got-trades-lm"], units, ctx.preset.tunings)}
    assert {"s1/trades", "s1/ft/trades", "s1/tuned/got-trades-lm"} <= s1 and "s1/pgd-at" not in s1
    here = machine_kind(tuned, ctx)
    fixture = read_record(Path(__file__).parent / "fixtures" / "unit-record-fig6-s0-trades.json")
    execution = UnitExecution(1, 1, "cpu", here[1], "Another CPU")
    elsewhere = record_to_json(dataclasses.replace(fixture, execution=execution))
    for other in ("s3/pgd-at", "s3/got-pgd-lm"):  # the PGD pair is not compared with the tuned pair
        ctx.record_path(by_id[other]).parent.mkdir(parents=True, exist_ok=True)
        ctx.record_path(by_id[other]).write_text(elsewhere)
    check_one_machine_kind(tuned, units, ctx, here)
    ctx.record_path(by_id["s3/tuned/trades"]).parent.mkdir(parents=True, exist_ok=True)
    ctx.record_path(by_id["s3/tuned/trades"]).write_text(elsewhere)
    with pytest.raises(OtrobustError, match="'s3/tuned/trades', which it is compared with, ran on Another CPU"):
        check_one_machine_kind(tuned, units, ctx, here)


def test_a_unit_started_on_another_kind_of_machine_is_not_resumed_here_unless_said(tmp_path):
    from otrobust.experiments.machine_kinds import STARTED_ON, check_one_machine_kind, machine_kind, recorded_kind

    settings = ReproduceSettings(preset="mnist-study", seeds=1, out=str(tmp_path))
    *_, units, ctx = plan_units(settings, log=lambda s: None)
    by_id = {u.id: u for u in units}
    trades = by_id["s0/trades"]
    here = machine_kind(trades, ctx)
    ctx.state_dir(trades).mkdir(parents=True)
    (ctx.state_dir(trades) / STARTED_ON).write_text(json.dumps({"processor": "Another CPU", "precision": here[1]}))
    with pytest.raises(OtrobustError, match="but it was started on Another CPU"):
        check_one_machine_kind(trades, units, ctx, here)
    with pytest.raises(OtrobustError, match="'s0/trades', which it is compared with, ran on Another CPU"):
        check_one_machine_kind(by_id["s0/got-trades-lm"], units, ctx, here)  # a started unit counts as well
    # With --mixed-machines it resumes, and its record says both, so the page names its pairs as mixed.
    assert recorded_kind(trades, ctx) == (f"Another CPU, then {here[0]}", here[1])
