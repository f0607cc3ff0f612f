"""Wall time of a small study run sequentially and with ``--launch local --workers N``.

    python benchmarks/launch_local.py --reps 5                    # mnist-study, smoke scale, 1 seed, 12 units

Each repetition runs, interleaved (the order reversed every other time), each in a fresh output folder:

- ``sequential, T threads``: ``otrobust reproduce PRESET`` with ``--threads T`` (T = every core: the default);
- ``sequential, 1 thread``: the same with ``--threads 1``, which gives the numbers the workers give;
- ``local, N workers``: ``--launch local --workers N``, each unit its own process with cores / N threads.

The figure is the whole command's wall time (start-up, every unit, the merge) and its paired ratio against each
sequential run. The units are independent except the fine-tuning arms, which wait for their parent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _timing as T
import torch


def run(cmd: list[str], folder: Path) -> None:
    proc = subprocess.run([*cmd, "--out", str(folder)], capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1: a smoke-scale audit failed, which says nothing about speed
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")


def main() -> None:
    p = T.parser("launch_local", __doc__.splitlines()[0])
    p.add_argument("--preset", default="mnist-study")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=["epochs=3"],
                   help="training overrides for every unit (default: epochs=3, so that training, not start-up, "
                   "fills a unit)")
    args = p.parse_args()
    device = T.setup(args)
    cores = os.cpu_count() or 1
    base = [sys.executable, "-m", "otrobust", "reproduce", args.preset, "--scale", "smoke", "--seeds",
            str(args.seeds), "--device", "cpu", *[a for o in args.overrides for a in ("--set", o)]]
    commands = {f"sequential, {cores} threads": [*base, "--threads", str(cores)],
                "sequential, 1 thread": [*base, "--threads", "1"],
                f"local, {args.workers} workers": [*base, "--launch", "local", "--workers", str(args.workers)]}
    with tempfile.TemporaryDirectory() as tmp:
        count = iter(range(10**6))
        fns = {name: (lambda cmd=cmd: run(cmd, Path(tmp) / f"r{next(count)}")) for name, cmd in commands.items()}
        times = T.interleaved(fns, args.reps, args.warmup, device)
    local = f"local, {args.workers} workers"
    result = {"environment": T.environment(device), "commands": {k: " ".join(v[2:]) for k, v in commands.items()},
              "seconds": {k: T.stats(v) for k, v in times.items()},
              "ratios": {f"{local} / {k}": T.paired_ratio(times[local], times[k]) for k in commands if k != local}}
    print(T.table(["command", "wall seconds"], [[k, T.fmt(v, 1)] for k, v in result["seconds"].items()]))
    print(T.table(["ratio", "median (min–max)"], [[k, T.fmt(v, 2)] for k, v in result["ratios"].items()]))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}; {result['environment']['cpu']}, {cores} cores, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
