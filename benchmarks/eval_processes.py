"""Evaluation throughput with 1 and with N processes: ``otrobust eval`` against ``torchrun -m otrobust eval``.

    python benchmarks/eval_processes.py --reps 5                        # digits, small-cnn, PGD-20, CPU
    python benchmarks/eval_processes.py --reps 5 --data-dir ../shared/data/mnist --dataset mnist \\
        --model otrobust.models.cnn:cw_cnn --n 2000

The model comes from a factory with its fresh weights (throughput does not depend on what it learnt: every
PGD step runs on every image). Each repetition runs both, interleaved (the order reversed every other time),
each in a fresh output folder so that nothing is read back from a previous run's records; the figure is the
attack time the JSON records (``timing.seconds``: start-up excluded) as images per second, and the paired
ratio of the N-process rate to the 1-process rate. One process uses every core with its torch threads;
torchrun gives each of its N processes 1 thread: on a CPU the same cores do the same work, so expect no gain.
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


def eval_rate(processes: int, args, folder: Path) -> float:
    """Images per second of one ``otrobust eval`` with ``processes`` processes (attack time only)."""
    out = folder / f"p{processes}.json"
    launch = [sys.executable, "-m", "otrobust"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m",
        "otrobust"]
    cmd = [*launch, "eval", "--model", args.model, "--dataset", args.dataset, "--num-images", str(args.n),
           "--batch-size", str(args.batch_size), "--attack", "pgd", "--steps", str(args.steps), "--device", "cpu",
           "--no-progress", "--json", str(out)] + (["--data-dir", args.data_dir] if args.data_dir else [])
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    record = json.loads(out.read_text())
    return record["n"] / record["timing"]["seconds"]


def main() -> None:
    ap = T.parser("eval_processes", __doc__.split("\n")[0])
    ap.add_argument("--model", default="otrobust.models.cnn:small_cnn", help="factory of the model evaluated")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=360, help="test images")
    ap.add_argument("--batch-size", type=int, default=60)
    ap.add_argument("--steps", type=int, default=20, help="PGD steps")
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()
    device = T.setup(args)
    t0 = time.perf_counter()
    rates: dict[str, list[float]] = {"1 process": [], f"{args.processes} processes": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.warmup + args.reps):
            order = [1, args.processes] if rep % 2 == 0 else [args.processes, 1]
            got = {}
            for p in order:
                folder = Path(tmp) / f"rep{rep}"
                folder.mkdir(exist_ok=True)
                got[p] = eval_rate(p, args, folder)
            if rep >= args.warmup:
                rates["1 process"].append(got[1])
                rates[f"{args.processes} processes"].append(got[args.processes])
    ratio = T.paired_ratio(rates[f"{args.processes} processes"], rates["1 process"])
    results = {"images_per_second": {k: T.stats(v) for k, v in rates.items()}, "ratio": ratio,
               "torch_threads_one_process": torch.get_num_threads()}
    rows = [[k, T.fmt(T.stats(v), 1)] for k, v in rates.items()]
    rows.append([f"{args.processes} processes / 1 process", T.fmt(ratio)])
    text = T.table([f"PGD-{args.steps} evaluation", "images/s (median, min–max)"], rows)
    T.finish(args, "eval_processes", device, results, text,
             f"otrobust eval, {args.model} on {args.n} {args.dataset} images, batch {args.batch_size}, CPU", t0)


if __name__ == "__main__":
    main()
