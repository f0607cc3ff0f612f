"""Launch a plan's units elsewhere and merge their records: on this machine as separate processes
(``--launch local --workers N``) or on a SLURM cluster (``--launch slurm``, :mod:`otrobust.experiments.slurm`).

Every unit runs as ``otrobust reproduce PRESET ... --unit ID --threads T``: the same command a user would type, so a
launched unit computes exactly what a sequential run computes with the same ``--threads``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from otrobust.errors import OtrobustError
from otrobust.experiments import merge, slurm
from otrobust.experiments.units import Unit, UnitContext, cpu_share, unit_command, unit_status

POLL_SECONDS = 0.5


def launch(settings, units: list[Unit], ctx: UnitContext, log: Callable[[str], None] = print) -> Path | None:
    """Run the units not yet done with the launcher ``settings.launch`` asks for, then merge every record."""
    if settings.launch == "slurm":
        failed = slurm.submit(settings, units, ctx, log)
        if failed is None:  # submitted without waiting: the merge job writes the results
            return None
    else:
        failed = run_local(settings, units, ctx, log)
    out = merge.write_results(units, ctx, merge.gather(units, ctx, [ctx.records_dir]), log)
    if failed:
        raise OtrobustError(f"{len(failed)} unit(s) failed: {', '.join(failed)} (see their log and failed.txt under "
                            "OUT/SCALE/PRESET/); the results of the others are written, marked incomplete")
    return out


def _gpu_slots(device: str) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES per worker slot: one GPU each when the plan runs on GPUs, else none."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        return [None]
    return [str(i) for i in range(torch.cuda.device_count())]


def run_local(settings, units: list[Unit], ctx: UnitContext, log: Callable[[str], None] = print) -> list[str]:
    """Run the units not yet done, ``settings.workers`` at a time, each as its own process, a unit starting once
    everything it waits for is done; returns the ids of the units that failed (and of those waiting for them)."""
    threads = settings.threads or cpu_share(settings.workers)
    gpus = _gpu_slots(settings.device)
    todo = [u for u in units if unit_status(u, ctx) != "done"]
    done = {u.id for u in units} - {u.id for u in todo}
    failed: list[str] = []
    running: dict[int, tuple[Unit, subprocess.Popen, float]] = {}
    log(f"{len(todo)} of {len(units)} units to run, {settings.workers} at a time, {threads} thread(s) each"
        + (" (give the same --threads to a sequential run for the same numbers)" if settings.threads is None else ""))
    try:
        while todo or running:
            for u in [u for u in todo if any(d in failed for d in u.depends_on)]:
                todo.remove(u)
                failed.append(u.id)
                log(f"{u.id}: not run, it waits for a unit that failed")
            free = [s for s in range(settings.workers) if s not in running]
            for slot, u in zip(free, [u for u in todo if all(d in done for d in u.depends_on)], strict=False):
                todo.remove(u)
                running[slot] = (u, _start(settings, u, ctx, threads, gpus[slot % len(gpus)]), time.time())
                log(f"{u.id}: started (worker {slot + 1})")
            if not running:
                break
            time.sleep(POLL_SECONDS)
            for slot, (u, proc, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[slot]
                if proc.returncode == 0 and ctx.record_path(u).is_file():
                    done.add(u.id)
                    log(f"{u.id}: done in {time.time() - t0:.0f} s ({len(done)} of {len(units)} done)")
                else:
                    failed.append(u.id)
                    log(f"{u.id}: FAILED (exit {proc.returncode}); its log: {ctx.state_dir(u) / 'log.txt'}")
    finally:
        for _u, proc, _ in running.values():  # interrupted: stop the units (each saves its checkpoint)
            proc.terminate()
        for _u, proc, _ in running.values():
            proc.wait()
    return failed


def _start(settings, u: Unit, ctx: UnitContext, threads: int, gpu: str | None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    state = ctx.state_dir(u)
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "log.txt", "ab") as logfile:
        return subprocess.Popen(unit_command(settings, u.id, threads), stdout=logfile, stderr=subprocess.STDOUT,
                                env=env)
