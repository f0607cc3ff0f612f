"""Does weight averaging (``--ema``) help PGD-AT and TRADES on MNIST, and what does it cost per step?

    python benchmarks/ema_mnist.py accuracy --data-dir ../shared/data/mnist   # 12 runs + 12 evaluations
    python benchmarks/ema_mnist.py cost --data-dir ../shared/data/mnist       # per-step cost (paired ratio)

``accuracy``: for each seed (0, 1, 2) and method (pgd-at, trades), the same ``otrobust train`` run with and
without ``--ema DECAY`` (cw-cnn, the first 5,000 training images, 5 epochs, the best epoch picked by PGD-20 on
the 500 held-out validation images), then ``otrobust eval RUN --n 1000 --attack pgd --steps 20`` on its best
checkpoint. The two runs of a pair share the seed, hence the initial weights, the data order and the attack
starts: averaging never feeds back into training, so they train the same raw weights and differ only in the
weights scored and kept. Differences are EMA minus plain, per pair, summarised by their mean and a 95 %
t-interval over the pairs. Finished runs and evaluations are reused (``--runs``), so a stopped sweep continues.

``cost``: one training step (batch 128, PGD-10) with and without the average's update, timed interleaved in one
process on two trainers that train the same weights; the paired ratio per repetition, and the update alone.
Run it on an otherwise idle machine.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _timing as T
import torch
from scipy import stats

from otrobust.cli.main import main as cli

SEEDS = (0, 1, 2)
METHODS = ("pgd-at", "trades")
TRAIN = ["--dataset", "mnist", "--model", "cw-cnn", "--train-size", "5000", "--epochs", "5", "--val-steps", "20",
         "--device", "cpu", "--no-progress"]
EVAL = ["--n", "1000", "--attack", "pgd", "--steps", "20", "--device", "cpu", "--no-progress"]


def _history(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _train_and_eval(run: Path, flags: list[str]) -> dict:
    """Train (or resume) the run, evaluate its best checkpoint once; the figures of both."""
    if len(_history(run)) < 5:
        resume = ["--resume"] if (run / "checkpoints" / "last.safetensors").exists() else []
        t0 = time.perf_counter()
        if cli(["train", *flags, *resume, "--out", str(run)]) != 0:
            raise SystemExit(f"training {run} failed")
        print(f"  trained {run.name} in {time.perf_counter() - t0:.0f}s", flush=True)
    result = run / "eval_pgd20.json"
    if not result.exists():
        if cli(["eval", str(run), *EVAL, "--json", str(result)]) != 0:
            raise SystemExit(f"evaluating {run} failed")
    history = _history(run)
    best = max(history, key=lambda r: (r["val_pgd"], r["val_clean"]))
    evaluated = json.loads(result.read_text())
    return {"best_epoch": best["epoch"], "val_clean": best["val_clean"], "val_pgd20": best["val_pgd"],
            "last_val_pgd20": history[-1]["val_pgd"], "test_clean": evaluated["clean_accuracy"],
            "test_pgd20": evaluated["robust_accuracy"], "train_seconds": sum(r["seconds"] for r in history)}


def paired(differences: list[float]) -> dict:
    """Mean of paired differences (in points) with a 95 % t-interval (n - 1 degrees of freedom)."""
    n = len(differences)
    mean = statistics.fmean(differences)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(differences) / n ** 0.5 if n > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n, "differences": differences}


def accuracy(args) -> None:
    runs_dir = Path(args.runs)
    records = []
    for seed in SEEDS:
        for method in METHODS:
            pair = {}
            for name, ema in (("plain", []), ("ema", ["--ema", str(args.decay)])):
                run = runs_dir / f"{method}-seed{seed}-{name}"
                flags = [*TRAIN, "--data-dir", args.data_dir, "--method", method, "--seed", str(seed), *ema]
                pair[name] = _train_and_eval(run, flags)
            records.append({"method": method, "seed": seed, **pair})
            print(f"{method} seed {seed}: " + "  ".join(
                f"{n} val {100 * pair[n]['val_pgd20']:.1f} test {100 * pair[n]['test_pgd20']:.1f}"
                for n in ("plain", "ema")), flush=True)
    summary, rows = {}, []
    for method in (*METHODS, "both"):
        chosen = [r for r in records if method in ("both", r["method"])]
        summary[method] = {}
        for key in ("val_pgd20", "test_pgd20", "test_clean"):
            diff = paired([100 * (r["ema"][key] - r["plain"][key]) for r in chosen])
            means = {n: 100 * statistics.fmean(r[n][key] for r in chosen) for n in ("plain", "ema")}
            summary[method][key] = {**diff, "plain_mean": means["plain"], "ema_mean": means["ema"]}
            rows.append([method, key, f"{means['plain']:.2f}", f"{means['ema']:.2f}",
                         f"{diff['mean']:+.2f} [{diff['ci95'][0]:+.2f}, {diff['ci95'][1]:+.2f}]"])
    text = T.table(["method", "figure", "plain %", "EMA %", "EMA − plain, points [95 % CI]"], rows)
    print("\n" + text)
    out = Path(args.out or T.RESULTS / "ema_mnist_accuracy.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "ema_mnist accuracy", "command": "python " + " ".join(sys.argv),
                               "decay": args.decay, "train": TRAIN, "eval": EVAL, "runs": records,
                               "summary": summary, "table": text,
                               "environment": T.environment(torch.device("cpu"))}, indent=2))
    print(f"wrote {out}")


def cost(args) -> None:
    from otrobust import distributed
    from otrobust.data import iterate_batches
    from otrobust.training.config import TrainConfig
    from otrobust.training.loop import Trainer
    from otrobust.training.setup import resolve

    device = T.setup(args)
    started = time.perf_counter()
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            trainers = {}
            for name, decay in (("plain", 0.0), ("ema", args.decay)):
                cfg = resolve(TrainConfig(dataset="mnist", data_dir=args.data_dir, model="cw-cnn", train_size=5000,
                                          method=method, ema=decay, device="cpu", out=f"{tmp}/{method}-{name}"))
                trainers[name] = Trainer(cfg, distributed.DistInfo(), device, show_progress=False,
                                         log=lambda text: None, argv=None)
                trainers[name].model.train()
            data = trainers["plain"].train_data
            batches = list(iterate_batches(data.take(slice(0, 128 * args.steps_per_rep)), 128, device=device))

            def steps(trainer, batches=batches):
                return [trainer.step(x, y, 0, i) for i, (x, y) in enumerate(batches)]

            times = T.interleaved({n: (lambda t=t: steps(t)) for n, t in trainers.items()}, args.reps, args.warmup,
                                  device)
            ratio = T.paired_ratio(times["ema"], times["plain"])
            averaged = trainers["ema"]
            update = T.interleaved({"update": lambda a=averaged: [a.ema.update(a.plain) for _ in range(100)]},
                                   args.reps, args.warmup, device, log=False)["update"]
            per_step = {n: T.stats([s / len(batches) for s in v]) for n, v in times.items()}
            update_ms = T.stats([1000 * s / 100 for s in update])
            results[method] = {"step_seconds": per_step, "ratio_ema_over_plain": ratio, "update_ms": update_ms}
            rows.append([method, T.fmt(per_step["plain"]), T.fmt(per_step["ema"]), T.fmt(ratio),
                         T.fmt(update_ms, 2)])
    text = T.table(["method", "step s, plain", "step s, EMA", "EMA / plain (paired)", "update alone, ms"], rows)
    T.finish(args, "ema_cost", device, results, text, "Per-step cost of --ema (cw-cnn, MNIST, batch 128, PGD-10)",
             started)


if __name__ == "__main__":
    ap = T.parser("ema_cost", __doc__.split("\n")[0])
    ap.add_argument("part", choices=("accuracy", "cost"))
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--decay", type=float, default=0.99)
    ap.add_argument("--runs", default=str(Path(tempfile.gettempdir()) / "otrobust-ema-mnist"),
                    help="accuracy: where the runs go (finished ones are reused)")
    ap.add_argument("--steps-per-rep", type=int, default=3, help="cost: training steps per timed repetition")
    parsed = ap.parse_args()
    if parsed.part == "accuracy":
        parsed.out = parsed.out if parsed.out != str(T.RESULTS / "ema_cost.json") else None
        accuracy(parsed)
    else:
        cost(parsed)
