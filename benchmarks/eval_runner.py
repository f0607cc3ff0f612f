"""Does evaluating in fixed, recorded batches cost anything? ``run_evaluation`` against ``evaluate_model``.

    python benchmarks/eval_runner.py --reps 5        # CW CNN, PGD-20, 1,000 MNIST-size images, batch 250, CPU

Contenders, interleaved in one process: ``evaluate_model`` on the whole set; ``run_evaluation`` (each batch
seeded by its position, one ``evaluate_model`` call per batch); the same with every finished batch written to
disk (``BatchCache``, a fresh folder each time, so that nothing is read back).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _timing as T
import torch

from otrobust.evaluation.batches import BatchCache, RunOptions, run_evaluation
from otrobust.evaluation.evaluate import build_attacks, evaluate_model


def main() -> None:
    ap = T.parser("eval_runner", __doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    device = T.setup(args)
    model, data = T.eval_setup(args.n, device, args.seed)
    attacks = build_attacks(["pgd"], eps=0.3, steps=args.steps)

    def recorded():
        with tempfile.TemporaryDirectory() as folder:
            run_evaluation(model, data, attacks, batch_size=args.batch_size, device=device,
                           options=RunOptions(cache=BatchCache(Path(folder), "key", {}, log=lambda text: None)))

    fns = {"evaluate_model": lambda: evaluate_model(model, data, attacks, batch_size=args.batch_size, device=device),
           "run_evaluation": lambda: run_evaluation(model, data, attacks, batch_size=args.batch_size, device=device),
           "run_evaluation, recorded": recorded}
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    times = T.interleaved(fns, args.reps, args.warmup, device)
    rate = {k: [args.n / s for s in v] for k, v in times.items()}
    results = {"images_per_second": {k: T.stats(v) for k, v in rate.items()}, "ratios": {}}
    rows = [[k, T.fmt(T.stats(v), 1), "1 (reference)" if k == "evaluate_model" else ""] for k, v in rate.items()]
    for k in list(fns)[1:]:
        r = T.paired_ratio(times[k], times["evaluate_model"])
        results["ratios"][f"{k} / evaluate_model (time)"] = r
        rows[list(fns).index(k)][2] = T.fmt(r)
    text = T.table([f"PGD-{args.steps}", "images/s (median, min–max)", "time / evaluate_model"], rows)
    T.finish(args, "eval_runner", device, results, text,
             f"evaluation in recorded batches, CW CNN, {args.n} images, batch {args.batch_size}", t0)


if __name__ == "__main__":
    main()
