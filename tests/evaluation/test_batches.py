"""The evaluation in fixed, seeded batches: the same per-example verdicts in one process or two (torchrun,
gloo), and after a SIGKILL and a rerun; a changed argument starts afresh; two per-example files compared."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_flags

from otrobust.cli.main import main
from otrobust.data import load_dataset
from otrobust.evaluation.batches import BatchCache, RunOptions, batch_seed, run_evaluation
from otrobust.evaluation.evaluate import build_attacks, evaluate_model
from otrobust.store.files import FAULT_ENV

# (--num-images: torchrun takes --n for an abbreviation of its own flags.)
# AutoAttack cut down to seconds on CPU (the stages still run in order); 6 batches of 8.
AUTOATTACK = ["--attack", "pgd", "autoattack", "--steps", "5", "--aa-iter", "5", "--aa-queries", "40"]
SMALL = ["--num-images", "48", "--batch-size", "8", "--device", "cpu", "--no-progress"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", FAULT_ENV)}
    env["OMP_NUM_THREADS"] = "1"  # the same float arithmetic in every process
    return env


def _run(args: list[str], *, processes: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "otrobust"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m",
        "otrobust"]
    return subprocess.run([*launch, "eval", *args], env=env or _env(), capture_output=True, text=True, timeout=300)


def _without_timing(path) -> dict:
    record = json.loads(path.read_text())
    record.pop("timing")
    return record


def test_two_gloo_processes_give_the_one_process_json_per_example(trained_digits_run, tmp_path):
    for name, processes in (("one", 1), ("two", 2)):
        proc = _run([str(trained_digits_run), *AUTOATTACK, *SMALL, "--json", str(tmp_path / f"{name}.json"),
                     "--per-example", str(tmp_path / f"{name}.csv")], processes=processes)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert _without_timing(tmp_path / "one.json") == _without_timing(tmp_path / "two.json")
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()
    assert len((tmp_path / "one.csv").read_text().splitlines()) == 48 + 1
    record = _without_timing(tmp_path / "one.json")
    assert list(record["stages"]["autoattack"]) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.mark.parametrize("nth_write", [3, 9])  # in the first attack's batches (1 done), and in AutoAttack's
def test_a_sigkill_mid_evaluation_then_the_same_command_gives_the_same_json(trained_digits_run, tmp_path,
                                                                            nth_write):
    whole = _run([str(trained_digits_run), *AUTOATTACK, *SMALL, "--json", str(tmp_path / "whole.json")])
    assert whole.returncode == 0, whole.stderr[-2000:]
    args = [str(trained_digits_run), *AUTOATTACK, *SMALL, "--json", str(tmp_path / "killed.json")]
    killed = _run(args, env={**_env(), FAULT_ENV: f"write:{nth_write}"})  # SIGKILL half-way through a write
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed.json").exists()
    again = _run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" in again.stdout
    assert _without_timing(tmp_path / "killed.json") == _without_timing(tmp_path / "whole.json")


def test_a_two_process_audit_reaches_the_one_process_verdicts(trained_digits_run, tmp_path):
    budget = ["--quick", "--steps", "3", "--restarts", "2", "--unbounded-steps", "5", "--square-queries", "30",
              "--aa-iter", "3", "--surrogate-epochs", "1", "--num-images", "40", "--batch-size", "8", "--device", "cpu"]
    reports = []
    for name, processes in (("one", 1), ("two", 2)):
        launch = [sys.executable, "-m", "otrobust"] if processes == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "otrobust"]
        proc = subprocess.run([*launch, "audit", str(trained_digits_run), *budget, "--out", str(tmp_path / name)],
                              env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode in (0, 1), proc.stderr[-2000:]
        checks = json.loads((tmp_path / name / "audit.json").read_text())["checks"]
        reports.append([(c["name"], c["status"], c["finding"], c["evidence"]) for c in checks])
    assert reports[0] == reports[1]


def test_a_changed_argument_starts_afresh_and_says_so(trained_digits_run, tmp_path, capsys):
    args = ["eval", str(trained_digits_run), "--attack", "pgd", "--steps", "2", *SMALL, "--json",
            str(tmp_path / "e.json")]
    assert main(args) == 0
    assert main(args) == 0
    assert "resuming: 6 finished batches" in capsys.readouterr().out
    assert main([*args, "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "starting afresh" in out and "resuming" not in out


def test_batches_in_any_order_or_split_give_one_result(trained_digits_model, tmp_path):
    data = load_dataset("digits", "test", size=40)
    attacks = build_attacks(["pgd"], eps=0.2, steps=3)
    whole = run_evaluation(trained_digits_model, data, attacks, batch_size=8, seed=3)
    cache = BatchCache(tmp_path / "cache", "k", {}, log=lambda s: None)
    cached = run_evaluation(trained_digits_model, data, attacks, batch_size=8, seed=3, options=RunOptions(cache=cache))
    assert cache.done() == 5
    read_back = run_evaluation(trained_digits_model, data, {"pgd": None}, batch_size=8, seed=3,
                               options=RunOptions(cache=cache))
    for res in (cached, read_back):
        assert torch.equal(res.per_attack["pgd"], whole.per_attack["pgd"])
        assert torch.equal(res.predictions["pgd"], whole.predictions["pgd"])
    # batch 2 alone, seeded by its position, is batch 2 of the whole run
    torch.manual_seed(batch_seed(3, 16, 0))
    alone = evaluate_model(trained_digits_model, data.take(slice(16, 24)), attacks)
    assert torch.equal(alone.per_attack["pgd"], whole.per_attack["pgd"][16:24])
    assert batch_seed(3, 16, 0) != batch_seed(3, 24, 0) != batch_seed(3, 16, 1)


def test_report_compares_two_per_example_files(trained_digits_run, tmp_path, capsys):
    for name, steps in (("weak", "1"), ("strong", "10")):
        assert main(["eval", str(trained_digits_run), "--attack", "pgd", "--steps", steps, *SMALL,
                     "--per-example", str(tmp_path / f"{name}.csv")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "weak.csv"), str(tmp_path / "strong.csv"), "--out",
                 str(tmp_path / "diff")]) == 0
    out = capsys.readouterr().out
    assert "| clean | " in out and "| pgd | " in out
    row = next(line for line in out.splitlines() if line.startswith("| pgd |")).split("|")
    only_weak, only_strong = int(row[3]), int(row[4])
    assert only_weak >= only_strong  # more steps never leave more images standing, image for image
    assert (tmp_path / "diff" / "diff.md").is_file()


def _pgd_records(model, data, folder, key: str, steps: int):
    """Run PGD-``steps`` recorded in ``folder`` under ``key``; returns (result, the cache)."""
    cache = BatchCache(folder, key, {}, log=lambda s: None)
    return run_evaluation(model, data, build_attacks(["pgd"], eps=0.1, steps=steps), batch_size=8, seed=0,
                          options=RunOptions(cache=cache)), cache


def test_a_record_made_under_other_settings_is_recomputed_not_trusted(trained_digits_model, tmp_path):
    """The poisoning of two evaluations sharing a folder: a batch recorded under another key (here PGD-1, weak)
    lands among this evaluation's (PGD-10) records; it is recomputed, and the result is PGD-10's own."""
    data = load_dataset("digits", "test", size=24)
    weak, _ = _pgd_records(trained_digits_model, data, tmp_path / "weak", "weak", 1)
    strong, _ = _pgd_records(trained_digits_model, data, tmp_path / "strong", "strong", 10)
    assert not torch.equal(weak.per_attack["pgd"], strong.per_attack["pgd"])  # else the test would prove nothing
    for record in (tmp_path / "weak" / "batches").glob("*.json"):
        (tmp_path / "strong" / "batches" / record.name).write_bytes(record.read_bytes())
    said = []
    cache = BatchCache(tmp_path / "strong", "strong", {}, log=said.append)
    again = run_evaluation(trained_digits_model, data, build_attacks(["pgd"], eps=0.1, steps=10), batch_size=8,
                           seed=0, options=RunOptions(cache=cache))
    assert torch.equal(again.per_attack["pgd"], strong.per_attack["pgd"])
    assert len(said) == 3 and all("made under other settings: recomputing it" in s for s in said)


@pytest.mark.parametrize("damage", ["truncated", "edited", "empty", "not json", "a list"])
def test_a_damaged_or_hand_edited_record_is_recomputed(trained_digits_model, tmp_path, damage):
    data = load_dataset("digits", "test", size=16)
    whole, _ = _pgd_records(trained_digits_model, data, tmp_path / "c", "k", 3)
    record = tmp_path / "c" / "batches" / "pgd-000000008.json"
    text = record.read_text()
    record.write_text({"truncated": text[:len(text) // 2], "empty": "", "not json": "\x00\xff",
                       "a list": "[1, 2]",
                       # every verdict of the batch flipped to robust, the checksum left as it was
                       "edited": text.replace("false", "true")}[damage])
    said = []
    cache = BatchCache(tmp_path / "c", "k", {}, log=said.append)
    again = run_evaluation(trained_digits_model, data, build_attacks(["pgd"], eps=0.1, steps=3), batch_size=8,
                           seed=0, options=RunOptions(cache=cache))
    assert torch.equal(again.per_attack["pgd"], whole.per_attack["pgd"])
    assert len(said) == 1 and "pgd-000000008.json" in said[0] and "damaged or edited by hand" in said[0]
    assert json.loads(record.read_text())["record"]["key"] == "k"  # recomputed and recorded again


GATED_MODEL = '''
import os
import time

import torch
from torch import nn


class Gated(nn.Module):
    """A linear classifier whose attacked forwards wait for the file GATE: a long evaluation, held open."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        if x.requires_grad:
            open(GATE + ".waiting", "w").close()
            while not os.path.exists(GATE):
                time.sleep(0.05)
        return self.net(x)


def gated():
    return Gated()
'''


def test_a_second_evaluation_on_the_same_json_is_refused_while_the_first_runs(tmp_path):
    """Two processes: the second (other arguments, the same --json) is refused in one line while the first holds
    the recorded batches; the first then ends with the figures it has alone."""
    gate = tmp_path / "gate"
    (tmp_path / "gated.py").write_text(f"GATE = {str(gate)!r}\n" + GATED_MODEL)
    common = ["--model", f"{tmp_path / 'gated.py'}:gated", "--dataset", "digits", "--num-images", "24",
              "--batch-size", "8", "--device", "cpu", "--no-progress", "--attack", "pgd"]
    launch = [sys.executable, "-m", "otrobust", "eval"]
    first = subprocess.Popen([*launch, *common, "--steps", "5", "--json", str(tmp_path / "shared.json")], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if (tmp_path / "gate.waiting").exists() or first.poll() is not None:
                break
            time.sleep(0.1)
        assert (tmp_path / "gate.waiting").exists(), first.communicate()
        second = subprocess.run([*launch, *common, "--steps", "1", "--json", str(tmp_path / "shared.json")],
                                env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another otrobust process (pid {first.pid}) is writing to" in lines[0], lines
        assert "--json or --cache" in lines[0]
    finally:
        gate.write_text("")
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    alone = subprocess.run([*launch, *common, "--steps", "5", "--json", str(tmp_path / "alone.json")], env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert _without_timing(tmp_path / "shared.json") == _without_timing(tmp_path / "alone.json")


RANKED = '''
import os
import sys

from otrobust.cli.main import main

rank = int(os.environ["RANK"])
sys.exit(main([{command!r}, *{args!r}, *({rank_args!r}[rank])]))
'''


@pytest.mark.parametrize("what", ["num-images", "weights", "audit-eps"])
def test_torchrun_processes_running_different_evaluations_are_refused(trained_digits_run, digits_tiny_run, tmp_path,
                                                                      what):
    """Each machine of a multi-node job is started by hand: a process with another --num-images, other weights or
    another --eps must stop the job with one line on every process, not merge into a wrong number."""
    common = ["--batch-size", "8", "--device", "cpu"]
    command, args, rank_args = {
        "num-images": ("eval", [str(trained_digits_run), *common, "--no-progress", "--steps", "1"],
                       [["--num-images", "16"], ["--num-images", "24"]]),
        "weights": ("eval", [*common, "--no-progress", "--steps", "1", "--num-images", "16"],
                    [[str(trained_digits_run)], [str(digits_tiny_run)]]),
        "audit-eps": ("audit", [str(trained_digits_run), *common, "--quick", "--num-images", "16", "--out",
                                str(tmp_path / "audit")], [["--eps", "0.1"], ["--eps", "0.2"]]),
    }[what]
    script = tmp_path / "ranked.py"
    script.write_text(RANKED.format(command=command, args=args, rank_args=rank_args))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("otrobust: error:")]
    # one line per process (torchrun may stop the second before it prints its own)
    assert 1 <= len(errors) <= 2 and all("are not running the same" in e for e in errors), proc.stderr[-3000:]
    assert {"num-images": "n: 16 on rank 0, 24 on rank 1", "weights": "model weights",
            "audit-eps": "eps: 0.1 on rank 0, 0.2 on rank 1"}[what] in errors[0]
    assert 'File "' + str(Path(__file__).parents[2] / "src") not in proc.stderr  # no traceback of ours
    assert not (tmp_path / "audit" / "audit.json").exists()


@pytest.fixture(scope="module")
def digits_tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", *tiny_flags(), "--method", "standard", "--out", str(run)]) == 0
    return run
