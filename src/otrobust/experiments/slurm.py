"""``--launch slurm``: a plan's units as SLURM jobs, submitted through submitit.

The units that wait for nothing go in one job array; a unit that waits for others (a fine-tuning arm, an audit's
surrogate) is its own job with SLURM's ``afterok`` on exactly those array tasks, and ``kill-on-invalid-dep`` so that
it is cancelled, not left pending, when one of them fails. Without ``--wait`` a last job merges the records
(``afterany`` on every unit). Each job runs ``otrobust reproduce ... --unit ID`` in its own process, so a job that is
requeued (SLURM's ``scontrol requeue``, a preemption, or submitit's own requeue at the time limit) starts the unit
again, and the unit resumes from its last checkpoint and its cached evaluations.

What a unit's job is doing is read from the output folder (records, ``failed.txt``) and from ``scontrol``: clusters
without accounting have no ``sacct``, which submitit's job states rely on.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from otrobust.errors import OtrobustError
from otrobust.experiments.units import Unit, UnitContext, unit_command, unit_status
from otrobust.store.files import atomic_write_text

POLL_SECONDS = 2.0
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


class UnitJob:
    """The callable a SLURM job runs: one ``otrobust`` command line, in a child process.

    submitit pickles it into the job's folder. On submitit's time-out signal :meth:`checkpoint` resubmits the same
    command (the unit resumes from its files); a requeue from outside simply runs it again."""

    def __init__(self, argv: list[str]):
        self.argv = list(argv)

    def __call__(self) -> int:
        code = subprocess.run(self.argv).returncode
        if code != 0:
            raise RuntimeError(f"{' '.join(self.argv[2:])} exited with status {code}")
        return code

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(UnitJob(self.argv))


def check_reachable() -> None:
    """One OtrobustError naming what is missing when no SLURM cluster (or no submitit) can be used from here."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise OtrobustError("--launch slurm needs submitit: pip install 'otrobust[slurm]'") from None
    for command in ("sbatch", "sinfo", "scontrol"):
        if shutil.which(command) is None:
            raise OtrobustError(f"--launch slurm: no SLURM reachable from here ({command} is not on PATH); run on "
                                "a cluster's login node, or use --launch local")
    try:
        answer = subprocess.run(["sinfo", "--noheader"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise OtrobustError("--launch slurm: sinfo gave no answer within 30 s (is slurmctld running?)") from None
    if answer.returncode != 0:
        first = (answer.stderr.strip().splitlines() or [f"exit status {answer.returncode}"])[0]
        raise OtrobustError(f"--launch slurm: no SLURM reachable from here (sinfo: {first})")


def _extra(settings) -> dict[str, str]:
    extra = {}
    for item in settings.sbatch:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise OtrobustError(f"--sbatch {item!r} must be KEY=VALUE, e.g. qos=long")
        extra[key.strip().lstrip("-")] = value
    return extra


def _executor(settings, ctx: UnitContext, dependency: str | None = None, name: str = "otrobust"):
    """A fresh executor per submission: submitit keeps a dependency once set, so one executor would leak it."""
    import submitit

    ex = submitit.AutoExecutor(folder=ctx.results_dir / "slurm" / "%j", cluster="slurm")
    extra = {"kill-on-invalid-dep": "yes", **_extra(settings)}
    if dependency:
        extra["dependency"] = dependency
    params = {"cpus_per_task": settings.cpus_per_unit, "timeout_min": settings.time_limit,
              "slurm_additional_parameters": extra, "name": name}
    if settings.gpus_per_unit:
        params["gpus_per_node"] = settings.gpus_per_unit
    if settings.partition:
        params["slurm_partition"] = settings.partition
    if settings.account:
        params["slurm_account"] = settings.account
    ex.update_parameters(**params)
    return ex


def submit(settings, units: list[Unit], ctx: UnitContext, log: Callable[[str], None] = print) -> list[str] | None:
    """Submit the units not yet done. With ``settings.wait``, wait for them and return the ids of those that ended
    without a record (the caller merges); else submit the merge job too, print the job ids and return None."""
    check_reachable()
    threads = settings.threads or settings.cpus_per_unit
    todo = [u for u in units if unit_status(u, ctx) != "done"]
    if not todo:
        log("every unit is done; nothing to submit")
        return []
    pending = {u.id for u in todo}
    jobs: dict[str, str] = {}
    roots = [u for u in todo if not set(u.depends_on) & pending]
    if roots:
        ex = _executor(settings, ctx, name=f"otrobust-{ctx.preset.name}")
        with ex.batch():
            submitted = [ex.submit(UnitJob(unit_command(settings, u.id, threads))) for u in roots]
        jobs.update({u.id: j.job_id for u, j in zip(roots, submitted, strict=True)})
    for u in todo:
        if u.id in jobs:
            continue
        after = [jobs[d] for d in u.depends_on if d in jobs]
        job = _executor(settings, ctx, f"afterok:{':'.join(after)}" if after else None,
                        f"otrobust-{ctx.preset.name}").submit(UnitJob(unit_command(settings, u.id, threads)))
        jobs[u.id] = job.job_id
    for u in todo:
        atomic_write_text(ctx.state_dir(u) / "job.txt", f"{jobs[u.id]}\n")
    log(f"submitted {len(todo)} units to SLURM ({len(roots)} in array {next(iter(jobs.values())).split('_')[0]}"
        f", {len(todo) - len(roots)} waiting for others), {threads} thread(s) each; job logs in "
        f"{ctx.results_dir / 'slurm'}")
    if not settings.wait:
        merge_argv = [*unit_command(settings, "-", threads)[:-2], "--merge"]  # the unit's command, "--unit -" off
        job = _executor(settings, ctx, f"afterany:{':'.join(jobs.values())}", f"otrobust-{ctx.preset.name}-merge"
                        ).submit(UnitJob(merge_argv))
        log(f"merge job {job.job_id} writes {ctx.results_dir / 'results.md'} when they end; follow them with "
            f"otrobust reproduce {settings.preset} --status (same flags)")
        return None
    return wait(todo, jobs, ctx, log)


def job_state(job_id: str) -> str:
    """A job's state as slurmctld knows it ('' once it has forgotten the job)."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "")


def wait(todo: list[Unit], jobs: dict[str, str], ctx: UnitContext, log: Callable[[str], None]) -> list[str]:
    """Wait until every unit has a record or its job has ended without one; returns the ids of the latter."""
    left, failed = {u.id: u for u in todo}, []
    while left:
        time.sleep(POLL_SECONDS)
        for uid, u in list(left.items()):
            if ctx.record_path(u).is_file():
                del left[uid]
                log(f"{uid}: done ({len(todo) - len(left) - len(failed)} of {len(todo)})")
                continue
            state = job_state(jobs[uid])
            if state in FINISHED or state == "":
                time.sleep(POLL_SECONDS)  # the record is written before the job ends: look once more
                if not ctx.record_path(u).is_file():
                    del left[uid]
                    failed.append(uid)
                    log(f"{uid}: job {jobs[uid]} ended {state or 'and was forgotten'} without a record; its log: "
                        f"{Path(ctx.results_dir) / 'slurm' / jobs[uid]}")
    return failed
