"""Accuracy vs ε of one trained model under three evaluations: true labels (otrobust's default),
predicted labels (the paper's protocol), and true labels behind an input-rounding layer (a textbook
gradient-masked evaluation). Prints the table and writes the figure used in docs/evaluation.md.

    python benchmarks/label_source_curve.py RUN_DIR --data-dir /work/shared/data/mnist --n 500 \\
        --out docs/evaluation_accuracy_vs_eps.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from otrobust.data import load_dataset
from otrobust.evaluation.audit import accuracy_curve
from otrobust.evaluation.audit_types import AuditSettings
from otrobust.reporting.audit_report import plot_accuracy_curves
from otrobust.reporting.tables import markdown_table
from otrobust.store.checkpoint import load_model


class InputRounding(nn.Module):
    """Rounds every pixel to one of ``levels + 1`` values before the model: ``round`` has zero gradient,
    so gradient attacks stall although the model is no more robust."""

    def __init__(self, model: nn.Module, levels: int = 4):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x):
        return self.model(torch.round(x * self.levels) / self.levels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eps", default="0,0.05,0.1,0.15,0.2,0.3,0.4,0.5,0.6")
    parser.add_argument("--out", default="docs/evaluation_accuracy_vs_eps.png")
    args = parser.parse_args()

    model = load_model(args.run)
    data = load_dataset(args.dataset, "test", args.data_dir, size=args.n)
    eps = [float(e) for e in args.eps.split(",")]
    t0 = time.perf_counter()
    budget = AuditSettings(eps=max(eps), steps=args.steps)  # the curve's norm, steps, seed and batch size
    curves = {
        "true labels (otrobust default)": accuracy_curve(model, data, eps, labels="true", settings=budget),
        "predicted labels (paper's protocol)": accuracy_curve(model, data, eps, labels="predicted", settings=budget),
        "true labels, input rounding (masked)": accuracy_curve(InputRounding(model), data, eps, labels="true",
                                                               settings=budget),
    }
    bound = float(torch.bincount(data.y, minlength=data.num_classes).max()) / len(data)
    print(f"{args.dataset}, first {len(data)} test images, worst of PGD-{args.steps} CE and CW, Linf; "
          f"largest class share {100 * bound:.2f}% ({time.perf_counter() - t0:.0f} s)\n")
    print(markdown_table(["eps", *curves], [[f"{e:g}", *[100 * c[i] for c in curves.values()]]
                                             for i, e in enumerate(eps)]))
    title = f"{args.dataset}: accuracy vs ε, first {len(data)} test images, PGD-{args.steps} (CE and CW)"
    paths = plot_accuracy_curves({k: (eps, v) for k, v in curves.items()}, Path(args.out).with_suffix(""),
                                 bound=bound, legend="below", title=title)
    print("\nwrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
