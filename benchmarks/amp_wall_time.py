"""A whole training run's wall time, ``--amp off`` against ``--amp auto``: what the default saves a user.

    python benchmarks/amp_wall_time.py --data-dir ../shared/data/mnist         # MNIST, 5,000 images, 2 epochs
    python benchmarks/amp_wall_time.py --method trades --epochs 1 --reps 5

Each repetition runs the same ``otrobust train`` twice as a fresh process (start-up, data loading, the epochs,
the per-epoch validation and the checkpoints included), once with each ``--amp``, interleaved (A B, then B A);
the figure is the paired ratio of wall times off / auto (> 1: the default is faster). The precision ``auto``
chose is read from the run's provenance: on a processor where it is float32 the two runs are the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _timing as T
import torch

AMPS = ("off", "auto")


def main() -> None:
    ap = T.parser("amp_wall_time", __doc__.split("\n")[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    ap.add_argument("--model", default="cw-cnn")
    ap.add_argument("--method", default="got-trades-lm")
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    device = T.setup(args)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="amp-wall-time-"))
    precision: dict[str, str] = {}
    count = {amp: 0 for amp in AMPS}

    def run(amp: str):
        def go() -> None:
            count[amp] += 1
            out = work / f"{amp}-{count[amp]}"
            data = ["--data-dir", args.data_dir] if args.data_dir else []
            cmd = [sys.executable, "-m", "otrobust", "train", "--dataset", args.dataset, *data, "--model", args.model,
                   "--method", args.method, "--train-size", str(args.train_size), "--epochs", str(args.epochs),
                   "--seed", str(args.seed), "--device", str(device), "--amp", amp, "--no-progress", "--out", str(out)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            record = json.loads((out / "provenance.jsonl").read_text().splitlines()[0])
            precision[amp] = f"{record['precision']} ({record['precision_reason']})"
        return go

    times = T.interleaved({amp: run(amp) for amp in AMPS}, args.reps, args.warmup, device)
    ratio = T.paired_ratio(times["off"], times["auto"])
    results = {"off_s": T.stats(times["off"]), "auto_s": T.stats(times["auto"]), "speedup_off_over_auto": ratio,
               "precision": precision}
    text = T.table(["--amp", "precision", "wall s (median, min–max)"],
                   [[amp, precision[amp], T.fmt(T.stats(times[amp]))] for amp in AMPS])
    text += f"\n\nspeed-up of auto (off / auto, paired): {T.fmt(ratio, 2)}"
    T.finish(args, "amp_wall_time", device, results, text,
             f"otrobust train {args.method}, {args.dataset} {args.model}, {args.train_size} images, {args.epochs} "
             f"epochs, {device}, {torch.get_num_threads()} threads", t0)


if __name__ == "__main__":
    main()
