"""Which default settings let every method train from scratch? Each candidate setting × each method, briefly.

    python benchmarks/defaults_sweep.py                                  # bundled digits, 5 epochs
    python benchmarks/defaults_sweep.py --only defaults
    python benchmarks/defaults_sweep.py --dataset mnist --data-dir ../shared/data/mnist --train-size 5000 \
        --epochs 3 --methods pgd-at trades --only before defaults

Every run is ``otrobust train`` with nothing but the method and the candidate's settings changed; the figures
are the last epoch's validation clean and PGD-``val_steps`` accuracy (full ε, true labels), as the run's own
``metrics.jsonl`` records them. A candidate named ``defaults`` uses the shipped defaults unchanged.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from otrobust.reporting.tables import markdown_table
from otrobust.training.config import TrainConfig
from otrobust.training.loop import train
from otrobust.training.methods import METHODS

# Candidates tried, each pinning every setting that was ever a candidate; ``defaults`` changes nothing. The
# defaults before this sweep were: batch 128, eps 0.3 on digits, 500 validation images, no eps warm-up, beta 1.
BEFORE = {"batch_size": 128, "eps": 0.3, "val_size": 500, "eps_warmup_epochs": 0.0, "ot_weight": 1.0}
CANDIDATES: dict[str, dict] = {
    "before": BEFORE,
    "before+warmup": {**BEFORE, "eps_warmup_epochs": 2.0},
    "b32-eps0.3-warmup": {**BEFORE, "batch_size": 32, "eps_warmup_epochs": 2.0},
    "b32-eps0.2": {**BEFORE, "batch_size": 32, "eps": 0.2},
    "b32-eps0.2-warmup": {**BEFORE, "batch_size": 32, "eps": 0.2, "eps_warmup_epochs": 2.0},
    "b32-eps0.2-warmup-val200": {**BEFORE, "batch_size": 32, "eps": 0.2, "eps_warmup_epochs": 2.0, "val_size": 200},
    "defaults": {},  # the above with beta 0.5 for the standard (S) variants
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--only", nargs="+", default=list(CANDIDATES), help="candidate names to run")
    ap.add_argument("--out", default="benchmarks/results/defaults_sweep.json")
    args = ap.parse_args()
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            for method in args.methods:
                run_dir = Path(tmp) / f"{len(records)}"
                settings = dict(CANDIDATES[name])
                if not method.startswith("got-"):
                    settings.pop("ot_weight", None)
                cfg = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, train_size=args.train_size,
                                  method=method, epochs=args.epochs, out=str(run_dir), **settings)
                t0 = time.perf_counter()
                last = train(cfg, show_progress=False, log=lambda text: None)
                seconds = time.perf_counter() - t0
                resolved = json.loads((run_dir / "config.json").read_text())
                record = {"candidate": name, "method": method, "val_clean": last["val_clean"],
                          "val_pgd": last["val_pgd"], "seconds": round(seconds, 1),
                          "settings": {k: resolved[k] for k in ("batch_size", "eps", "eps_warmup_epochs", "val_size",
                                                                "ot_weight", "lr")}}
                records.append(record)
                rows.append([name, method, 100 * last["val_clean"], 100 * last["val_pgd"], round(seconds, 1)])
                print(f"{name:40s} {method:14s} clean {100 * last['val_clean']:5.1f}  "
                      f"PGD {100 * last['val_pgd']:5.1f}  ({seconds:.0f}s)", flush=True)
    print()
    print(markdown_table(["candidate", "method", "val clean %", "val PGD %", "seconds"], rows))
    Path(args.out).write_text(json.dumps({"dataset": args.dataset, "epochs": args.epochs,
                                          "train_size": args.train_size, "runs": records}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
