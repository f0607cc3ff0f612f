"""Does bf16 training change what a model learns? Paired runs, float32 (``--amp off``) against ``--amp bf16``.

    python benchmarks/bf16_accuracy.py --data-dir ../shared/data/mnist          # MNIST, 5,000 images, 3 epochs
    python benchmarks/bf16_accuracy.py --seeds 0 1 2 --methods trades got-trades-lm --n 1000

For every method and seed the same ``otrobust train`` runs twice, only ``--amp`` changed, and each model is
evaluated in float32 by ``otrobust eval --attack pgd --steps 20`` on the first ``--n`` test images. Per method it
reports the paired difference bf16 - float32 of clean and PGD-20 accuracy (mean over seeds and each seed's) next
to the seed-to-seed spread (the sample standard deviation over seeds of the float32 runs, and of the bf16 runs),
and how often two models agree on whether a test image survives PGD-20: the bf16 and the float32 model of one
seed, against two float32 models of different seeds. Accuracy only: the timings of these runs mean nothing (the
machine is shared); speed is ``speed_options.py --only amp`` and a whole-run timing. Runs and evaluations already
in ``--work`` are reused, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _timing import RESULTS, environment

from otrobust.reporting.tables import markdown_table
from otrobust.training.setup import training_precision

AMPS = ("off", "bf16")


def run_command(args: list[str], log: Path) -> None:
    """``python -m otrobust ARGS``, its output appended to ``log``; stops the sweep if it fails."""
    with log.open("a") as out:
        out.write(f"$ otrobust {' '.join(args)}\n")
        out.flush()
        code = subprocess.run([sys.executable, "-m", "otrobust", *args], stdout=out,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"otrobust {' '.join(args)} failed with exit {code}; see {log}")


def train_and_eval(a: argparse.Namespace, method: str, seed: int, amp: str) -> dict:
    """Train one run (unless finished already) and evaluate its best checkpoint in float32."""
    run = Path(a.work) / f"{method}-seed{seed}-{amp}"
    log = Path(a.work) / "log.txt"
    if not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < a.epochs:
        data = ["--data-dir", a.data_dir] if a.data_dir else []
        run_command(["train", "--dataset", a.dataset, *data, "--model", a.model, "--method", method,
                     "--train-size", str(a.train_size), "--epochs", str(a.epochs), "--seed", str(seed), "--amp", amp,
                     "--device", "cpu", "--no-progress", "--out", str(run), *(["--resume"] if run.exists() else [])],
                    log)
    result, per_example = run / "eval-pgd20.json", run / "eval-pgd20.csv"
    if not result.exists():
        run_command(["eval", str(run), "--n", str(a.n), "--attack", "pgd", "--steps", str(a.pgd_steps), "--device",
                     "cpu", "--no-progress", "--json", str(result), "--per-example", str(per_example)], log)
    record = json.loads(result.read_text())
    provenance = json.loads((run / "provenance.jsonl").read_text().splitlines()[0])
    with per_example.open() as f:
        robust = [row["clean_correct"] == "1" and row["pgd_success"] == "0" for row in csv.DictReader(f)]
    return {"method": method, "seed": seed, "amp": amp, "precision": provenance.get("precision"),
            "clean": record["clean_accuracy"], "pgd": record["robust_accuracy"], "robust": robust}


def agreement(a: list[bool], b: list[bool]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def summarise(runs: list[dict], seeds: list[int]) -> dict:
    """Per metric: the paired bf16 - float32 differences and the seed-to-seed spread; per-example agreement."""
    by = {(r["seed"], r["amp"]): r for r in runs}
    out: dict = {}
    for metric in ("clean", "pgd"):
        diffs = [by[s, "bf16"][metric] - by[s, "off"][metric] for s in seeds]
        out[metric] = {
            "float32": [by[s, "off"][metric] for s in seeds], "bf16": [by[s, "bf16"][metric] for s in seeds],
            "paired_diff_per_seed": diffs, "paired_diff_mean": statistics.mean(diffs),
            "seed_sd_float32": statistics.stdev(by[s, "off"][metric] for s in seeds),
            "seed_sd_bf16": statistics.stdev(by[s, "bf16"][metric] for s in seeds)}
        spread = min(out[metric]["seed_sd_float32"], out[metric]["seed_sd_bf16"])
        out[metric]["diff_smaller_than_spread"] = abs(out[metric]["paired_diff_mean"]) < spread
    out["pgd_verdict_agreement"] = {
        "bf16_vs_float32_same_seed": [agreement(by[s, "bf16"]["robust"], by[s, "off"]["robust"]) for s in seeds],
        "float32_vs_float32_other_seed": [agreement(by[s, "off"]["robust"], by[t, "off"]["robust"])
                                          for s, t in itertools.combinations(seeds, 2)]}
    return out


def table(method: str, s: dict) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    rows = []
    for metric, name in (("clean", "clean"), ("pgd", "PGD-20")):
        m = s[metric]
        per_seed = ", ".join(f"{100 * d:+.1f}" for d in m["paired_diff_per_seed"])
        rows.append([name, " / ".join(map(pct, m["float32"])), " / ".join(map(pct, m["bf16"])),
                     f"{100 * m['paired_diff_mean']:+.2f} ({per_seed})",
                     f"{100 * m['seed_sd_float32']:.2f} / {100 * m['seed_sd_bf16']:.2f}",
                     "yes" if m["diff_smaller_than_spread"] else "no"])
    agree = s["pgd_verdict_agreement"]
    return (f"{method}\n" + markdown_table(
        ["accuracy %", "float32 per seed", "bf16 per seed", "bf16 - float32, mean (per seed)",
         "seed SD float32 / bf16", "|diff| < spread"], rows)
        + "\nimages on which two models agree whether PGD-20 breaks them, %: bf16 vs float32 of one seed "
        + " / ".join(map(pct, agree["bf16_vs_float32_same_seed"])) + "; float32 vs float32 of two seeds "
        + " / ".join(map(pct, agree["float32_vs_float32_other_seed"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    ap.add_argument("--model", default="cw-cnn")
    ap.add_argument("--methods", nargs="+", default=["trades", "got-trades-lm"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n", type=int, default=1000, help="test images evaluated")
    ap.add_argument("--pgd-steps", type=int, default=20)
    ap.add_argument("--work", default="runs/bf16-accuracy", help="where the runs are kept (reused when rerun)")
    ap.add_argument("--out", default=str(RESULTS / "bf16_accuracy.json"))
    a = ap.parse_args()
    if len(a.seeds) < 2:
        raise SystemExit("--seeds needs at least two seeds (the spread is a standard deviation over seeds)")
    Path(a.work).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results, texts = {}, []
    for method in a.methods:
        runs = []
        for seed, amp in itertools.product(a.seeds, AMPS):
            print(f"{method}, seed {seed}, --amp {amp} …", flush=True)
            runs.append(train_and_eval(a, method, seed, amp))
        summary = summarise(runs, a.seeds)
        results[method] = {"runs": [{k: v for k, v in r.items() if k != "robust"} for r in runs], **summary}
        texts.append(table(method, summary))
    text = "\n\n".join(texts)
    print(f"\nbf16 vs float32 training, {a.dataset} {a.model}, {a.train_size} images, {a.epochs} epochs, "
          f"seeds {a.seeds}, first {a.n} test images ({time.perf_counter() - t0:.0f}s)\n\n{text}")
    import torch

    payload = {"benchmark": "bf16_accuracy", "command": "python " + " ".join(sys.argv), "args": vars(a),
               "environment": {**environment(torch.device("cpu")),
                               "amp_auto_here": training_precision("auto", torch.device("cpu")).to_dict(),
                               "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")},
               "results": results, "table": text}
    Path(a.out).write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
