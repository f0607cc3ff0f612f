"""The SLURM cluster the launcher relies on: a Python function submitted through submitit runs as a SLURM batch
job and its result comes back. Skips, naming the reason, where no SLURM answers."""

import os
import time

import pytest
from slurm_support import job_state, slurm_reachable, wait_for_result


@pytest.fixture
def submitit():
    reason = slurm_reachable()
    if reason is not None:
        pytest.skip(reason)
    return pytest.importorskip("submitit")


def test_a_function_runs_as_a_slurm_job_and_returns_its_result(submitit, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(cpus_per_task=1, timeout_min=5, name="otrobust-test")
    # os.getenv is pickled by reference, so it runs in the job's own environment: SLURM sets the job id there.
    job = executor.submit(os.getenv, "SLURM_JOB_ID")
    assert wait_for_result(job) == job.job_id
    assert (tmp_path / job.job_id / f"{job.job_id}_0_result.pkl").is_file()
    assert settled_state(job.job_id) == "COMPLETED"


def test_a_cancelled_job_ends_the_wait_for_its_result(submitit, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(cpus_per_task=1, timeout_min=5)
    job = executor.submit(time.sleep, 60)
    job.cancel()
    assert settled_state(job.job_id) == "CANCELLED"
    with pytest.raises(TimeoutError, match=f"job {job.job_id} gave no result .* CANCELLED"):
        wait_for_result(job, timeout_s=1)


def settled_state(job_id: str, timeout_s: float = 30) -> str:
    """The job's state once it is neither pending, running nor completing (its result file comes first)."""
    deadline = time.monotonic() + timeout_s
    while (state := job_state(job_id)) in {"PENDING", "RUNNING", "COMPLETING"} and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def fake_slurm(bin_dir, sinfo_script: str) -> str:
    """A PATH holding a stand-in ``sinfo`` (the shell script given) and no-op ``sbatch``/``scontrol``."""
    bin_dir.mkdir()
    for name, body in {"sinfo": sinfo_script, "sbatch": "exit 0", "scontrol": "exit 0"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}{os.pathsep}/bin{os.pathsep}/usr/bin"


@pytest.mark.parametrize("sinfo, reason", [
    ("printf 'idle\\n'", None),
    ("printf 'down*\\nmixed\\n'", None),
    ("printf 'down*\\ndrained\\n'", "no SLURM node ready to run jobs (sinfo states: down, drained)"),
    ("echo 'slurm_load_partitions: Unable to contact slurm controller' >&2; exit 1",
     "sinfo failed: slurm_load_partitions: Unable to contact slurm controller"),
])
def test_slurm_reachable_reads_sinfo(tmp_path, monkeypatch, sinfo, reason):
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", sinfo))
    assert slurm_reachable() == reason


def test_slurm_reachable_names_a_missing_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm_reachable().startswith("no SLURM here: sinfo not on PATH")
