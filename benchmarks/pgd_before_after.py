"""PGD before and after a change to the library: one otrobust source tree against another, interleaved.

    python benchmarks/pgd_before_after.py --base /tmp/otrobust-base --reps 15

Two worker processes, one per source tree (``--base``: the tree before, e.g. ``git archive COMMIT src | tar -x -C
DIR``; this checkout's ``src`` after), each with its own ``otrobust`` on its path, wait for commands; the driver
asks them in turn (A B, then B A on the next repetition), so that a change in machine load hits both alike, and
only one works at a time. Timed, per repetition and tree: ``--train-steps`` PGD-AT training steps (PGD-10, as
train.py runs them) and one PGD-20 evaluation batch (``evaluate_model`` on ``--eval-n`` images). The figure is
the paired ratio after/before per repetition: its median, min–max and a bootstrap 95 % interval of the median.

Before timing, both trees compute the same seeded work (a PGD-AT and a TRADES step on ℓ∞ and an ℓ2 PGD-AT step,
and the PGD-20 evaluation's adversarial examples) and the driver checks that the results are bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- the worker: runs inside one source tree
def _worker(threads: int, train_steps: int, eval_n: int) -> None:
    import copy

    import _timing as T
    import torch

    from otrobust.data import ImageData
    from otrobust.evaluation.evaluate import build_attacks, evaluate_model

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    base = T.cw_cnn(device, 0)
    x, y = T.mnist_like(max(128, eval_n), device, 0)
    xb, yb = x[:128], y[:128]
    data = ImageData(x[:eval_n], y[:eval_n], 10)

    def digest(*tensors: torch.Tensor) -> str:
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def trained(method: str) -> str:
        model = copy.deepcopy(base)
        step = T.otrobust_step(method, model, eps=0.3, steps=10)
        torch.manual_seed(0)
        step(xb, yb)
        return digest(*model.parameters())

    def train_l2() -> str:
        from otrobust.training.methods import StepContext, get_method

        model = copy.deepcopy(base).train()
        ctx = StepContext(eps=2.0, step_size=0.5, steps=10, norm="l2")
        torch.manual_seed(0)
        loss, _ = get_method("pgd-at")(model, xb, yb, ctx)
        loss.backward()
        return digest(loss, *(p.grad for p in model.parameters()))

    def adversarial() -> str:
        model = copy.deepcopy(base).eval()
        attack = build_attacks(["pgd", "pgd-cw"], eps=0.3, steps=20)
        torch.manual_seed(0)
        outs = [a(model, x[:eval_n], y[:eval_n]) for a in attack.values()]
        return digest(*outs)

    train_model = copy.deepcopy(base)
    train_step = T.otrobust_step("pgd-at", train_model, eps=0.3, steps=10)
    eval_model = copy.deepcopy(base).eval()
    eval_attacks = build_attacks(["pgd"], eps=0.3, steps=20)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    commands = {
        "check": lambda: {"pgd-at": trained("pgd-at"), "trades": trained("trades"),
                          "pgd-at l2": train_l2(), "pgd-20 eval": adversarial()},
        "train": lambda: timed(lambda: [train_step(xb, yb) for _ in range(train_steps)]) / train_steps,
        "eval": lambda: timed(lambda: evaluate_model(eval_model, data, eval_attacks, batch_size=eval_n)),
    }
    for line in sys.stdin:
        print(json.dumps(commands[line.strip()]()), flush=True)


# ---------------------------------------------------------------- the driver
class Tree:
    def __init__(self, name: str, src: Path, args):
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(args.threads),
             "--train-steps", str(args.train_steps), "--eval-n", str(args.eval_n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=HERE, env=env)

    def ask(self, command: str):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} worker died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bootstrap_median(values: list[float], draws: int = 2000) -> tuple[float, float]:
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="the source tree before (a folder holding src/otrobust)")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=3, help="training steps per timed sample")
    p.add_argument("--eval-n", type=int, default=256, help="images in the evaluation batch")
    p.add_argument("--out", default=str(HERE / "results" / "pgd_before_after.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args.threads, args.train_steps, args.eval_n)
    if not args.base:
        p.error("--base is required")
    started = time.perf_counter()
    trees = {"before": Tree("before", Path(args.base).resolve() / "src", args),
             "after": Tree("after", HERE.parent / "src", args)}
    try:
        checks = {name: tree.ask("check") for name, tree in trees.items()}
        identical = checks["before"] == checks["after"]
        print(f"outputs bit-identical: {identical} {checks}", flush=True)
        for tree in trees.values():  # warm-up
            tree.ask("train"), tree.ask("eval")
        times = {(t, w): [] for t in trees for w in ("train", "eval")}
        for rep in range(args.reps):
            order = list(trees) if rep % 2 == 0 else list(trees)[::-1]
            for work in ("train", "eval"):
                for name in order:
                    times[name, work].append(trees[name].ask(work))
            print(f"rep {rep + 1}: " + ", ".join(f"{w} {n} {times[n, w][-1]:.3f}s" for n in trees
                                                  for w in ("train", "eval")), flush=True)
    finally:
        for tree in trees.values():
            tree.close()
    results = {"identical_outputs": identical, "digests": checks, "seconds": {f"{n} {w}": v for (n, w), v in
                                                                               times.items()}}
    lines = []
    for work, what in (("train", "PGD-AT step (PGD-10, CW CNN, batch 128)"),
                       ("eval", f"PGD-20 evaluation batch ({args.eval_n} images)")):
        ratios = [a / b for a, b in zip(times["after", work], times["before", work], strict=True)]
        lo, hi = bootstrap_median(ratios)
        results[f"{work} ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                                    "bootstrap95": [lo, hi], "values": ratios}
        lines.append(f"| {what} | {statistics.median(times['before', work]):.3f} | "
                     f"{statistics.median(times['after', work]):.3f} | {statistics.median(ratios):.3f} "
                     f"({min(ratios):.3f}–{max(ratios):.3f}; 95 % CI of the median {lo:.3f}–{hi:.3f}) |")
    text = ("| work | before s | after s | after/before (median, min–max) |\n|---|---|---|---|\n"
            + "\n".join(lines))
    print(f"\n{args.reps} reps, {time.perf_counter() - started:.0f}s\n\n{text}")
    import _timing as T
    import torch

    results["environment"] = T.environment(torch.device("cpu"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "python " + " ".join(sys.argv), "args": vars(args),
                                          "results": results, "table": text}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
