"""Whether a SLURM cluster answers here, for the tests that need one (``.ci/slurm-setup.sh`` starts a one-node
cluster; elsewhere, e.g. on a laptop, those tests skip with the reason)."""

import shutil
import subprocess
import time

# Node states (sinfo %T, without the flag suffixes *~#!%$@^-) in which a node takes jobs now or once its jobs end.
READY_STATES = frozenset({"idle", "mixed", "allocated", "completing"})


def slurm_reachable(timeout_s: float = 10) -> str | None:
    """``None`` when ``sinfo`` answers and shows a node that can run jobs, else the reason why not (one line).

    >>> reason = slurm_reachable()
    >>> reason is None or isinstance(reason, str)
    True
    """
    for command in ("sinfo", "sbatch", "scontrol"):
        if shutil.which(command) is None:
            return f"no SLURM here: {command} not on PATH (a one-node cluster: sudo bash .ci/slurm-setup.sh)"
    try:
        answer = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True,
                                timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"sinfo gave no answer within {timeout_s:g} s (is slurmctld running?)"
    if answer.returncode != 0:
        message = (answer.stderr.strip().splitlines() or [f"exit status {answer.returncode}"])[0]
        return f"sinfo failed: {message}"
    states = {line.strip().rstrip("*~#!%$@^-").lower() for line in answer.stdout.splitlines() if line.strip()}
    if not states & READY_STATES:
        return f"no SLURM node ready to run jobs (sinfo states: {', '.join(sorted(states)) or 'none'})"
    return None


def job_state(job_id: str) -> str:
    """A job's (or array task ``"<array>_<index>"``'s) state as slurmctld knows it ('PENDING', 'RUNNING',
    'COMPLETED', 'FAILED', 'CANCELLED', ...); '' once slurmctld has forgotten it (MinJobAge after its end).

    Without accounting (the CI cluster has none) ``sacct`` fails, so submitit's ``job.state`` reads 'UNKNOWN'
    for ever; this asks ``scontrol`` instead."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True).stdout
    return next((field.split("=", 1)[1] for field in out.split() if field.startswith("JobState=")), "")


def wait_for_result(job, timeout_s: float = 120):
    """``job.result()`` of a submitit job, but a job that ends without a result (cancelled, killed, never
    started) raises ``TimeoutError`` after ``timeout_s`` naming its state, and is cancelled, instead of
    ``job.result()`` waiting for ever (its end is invisible to submitit without ``sacct``)."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            state = job_state(job.job_id)
            job.cancel(check=False)
            raise TimeoutError(f"SLURM job {job.job_id} gave no result within {timeout_s:g} s "
                               f"(state {state or 'unknown to slurmctld'})")
        time.sleep(0.5)
    return job.result()
