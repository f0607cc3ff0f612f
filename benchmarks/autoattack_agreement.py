"""Does ``otrobust eval --attack autoattack`` agree with an independent AutoAttack?

otrobust runs the reference AutoAttack code (PyPI ``pyautoattack``) through its adapter; the check
re-evaluates the same model on the same test images with torchattacks' separate re-implementation of
AutoAttack (standard version: APGD-CE, APGD-T, FAB-T, Square). The two robust accuracies must agree
within ``--tolerance`` percentage points (default 1).

torchattacks is a benchmark-only tool, never a dependency of otrobust:
    pip install --no-deps torchattacks

    python benchmarks/autoattack_agreement.py RUN_DIR --data-dir /work/shared/data/mnist --n 500
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from otrobust.cli.main import main as otrobust_main
from otrobust.data import get_dataset_spec, load_dataset
from otrobust.evaluation.statistics import binomial_interval
from otrobust.store.checkpoint import load_model


def otrobust_autoattack(run: str, dataset: str, data_dir: str | None, n: int, eps: float, seed: int) -> dict:
    """Robust accuracy from the otrobust command line, exactly as a user would run it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        argv = ["eval", run, "--dataset", dataset, "--attack", "autoattack", "--n", str(n), "--eps", str(eps),
                "--seed", str(seed), "--json", str(out), "--no-progress", "--device", "cpu"]
        if data_dir:
            argv += ["--data-dir", data_dir]
        print("$ otrobust " + " ".join(argv), flush=True)
        t0 = time.perf_counter()
        code = otrobust_main(argv)
        if code != 0:
            raise SystemExit(f"otrobust eval exited with {code}")
        record = json.loads(out.read_text())
        record["wall_seconds"] = time.perf_counter() - t0
        return record


def torchattacks_autoattack(model, data, eps: float, seed: int, batch_size: int = 250) -> tuple[int, float]:
    """Correct predictions under torchattacks' AutoAttack (standard, Linf) and the seconds it took."""
    import torchattacks

    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=data.num_classes,
                                     seed=seed)
    correct, t0 = 0, time.perf_counter()
    for start in range(0, len(data), batch_size):
        x, y = data.x[start:start + batch_size], data.y[start:start + batch_size]
        x_adv = attack(x, y)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y).sum())
        print(f"  torchattacks: {start + len(y)}/{len(data)} images", flush=True)
    return correct, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="otrobust run directory or checkpoint")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=500, help="first N test images (default: 500)")
    parser.add_argument("--eps", type=float, default=None, help="Linf radius (default: the dataset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1.0, help="allowed gap in points (default: 1)")
    args = parser.parse_args()

    eps = get_dataset_spec(args.dataset).default_eps if args.eps is None else args.eps
    ours = otrobust_autoattack(args.run, args.dataset, args.data_dir, args.n, eps, args.seed)

    model = load_model(args.run, "cpu")
    data = load_dataset(args.dataset, "test", args.data_dir, size=args.n)
    with torch.no_grad():
        clean = int((model(data.x).argmax(1) == data.y).sum())
    theirs, seconds = torchattacks_autoattack(model, data, eps, args.seed)

    n = len(data)
    ours_pct, theirs_pct = 100 * ours["robust_accuracy"], 100 * theirs / n
    gap = abs(ours_pct - theirs_pct)
    rows = [("otrobust eval --attack autoattack (reference code)", ours_pct,
             binomial_interval(round(ours["robust_accuracy"] * n), n), ours["wall_seconds"]),
            ("torchattacks.AutoAttack (independent re-implementation)", theirs_pct,
             binomial_interval(theirs, n), seconds)]
    print(f"\n{args.dataset}, first {n} test images, Linf eps = {eps:g}, true labels, seed = {args.seed}; "
          f"clean accuracy {100 * clean / n:.2f}% (otrobust reports {100 * ours['clean_accuracy']:.2f}%)\n")
    print("| evaluation | AutoAttack accuracy % | 95% CI | seconds |")
    print("|---|---|---|---|")
    for name, pct, (lo, hi), secs in rows:
        print(f"| {name} | {pct:.2f} | [{100 * lo:.1f}, {100 * hi:.1f}] | {secs:.0f} |")
    verdict = "AGREE" if gap <= args.tolerance else "DISAGREE"
    print(f"\ngap: {gap:.2f} points (tolerance {args.tolerance:g}) -> {verdict}")
    if ours.get("attack_warnings"):
        print(f"AutoAttack warnings: {ours['attack_warnings']}")
    return 0 if gap <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
