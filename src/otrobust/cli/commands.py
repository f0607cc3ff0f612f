"""The bodies of ``demo``, ``reproduce``, ``report``, ``plot`` and ``data download``: run the core, print and save
(``eval`` and ``audit`` are in ``cli/evaluate.py``; parsing is in ``cli/main.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from otrobust.data import get_dataset_spec, load_dataset
from otrobust.errors import OtrobustError
from otrobust.evaluation.evaluate import build_attacks, evaluate_model
from otrobust.experiments.reproduce import ReproduceSettings
from otrobust.reporting.tables import format_eps, markdown_table, write_csv
from otrobust.store.checkpoint import checkpoint_path, load_model
from otrobust.store.files import atomic_write_text, read_jsonl

DEMO_EPOCHS = 15
DEMO_METHODS = ("standard", "trades", "got-trades-lm")  # no defence, the baseline everybody knows, and GOT


def run_demo(epochs: int | None = None, out: str = "runs/demo", seed: int = 0) -> int:
    """Train no defence, TRADES and GOT-TRADES-LM on the bundled digits with the defaults; print clean and PGD-20
    accuracy side by side."""
    from otrobust.training.config import TrainConfig
    from otrobust.training.loop import train

    epochs = epochs or DEMO_EPOCHS
    spec = get_dataset_spec("digits")
    test = load_dataset("digits", "test")
    rows = []
    for method in DEMO_METHODS:
        run_dir = Path(out) / method
        resume = checkpoint_path(run_dir, "last").exists()
        print(f"== training {method} on digits ({epochs} epochs)" + (" — resuming" if resume else ""))
        train(TrainConfig(dataset="digits", method=method, epochs=epochs, out=str(run_dir), seed=seed, resume=resume),
              log=lambda s: None)
        model = load_model(run_dir)
        torch.manual_seed(seed)
        res = evaluate_model(model, test, build_attacks(["pgd"], eps=spec.default_eps, steps=20))
        rows.append([method, 100 * res.accuracy("clean"), 100 * res.accuracy("worst")])
    print(f"\ndigits test set ({len(test)} images), PGD-20, linf eps = {spec.default_eps}, true labels\n")
    print(markdown_table(["method", "clean %", "PGD-20 %"], rows))
    print(f"\nruns saved under {out}/")
    return 0


def run_reproduce(settings: ReproduceSettings) -> int:
    """``otrobust reproduce``: list the presets, or run one (see otrobust.experiments.reproduce)."""
    from otrobust.experiments.presets import PRESETS
    from otrobust.experiments.studies import STUDIES

    if settings.preset is None:
        print(markdown_table(["preset", "paper", "runs", "what"],
                             [[p.name, p.reference, len(p.runs), p.description]
                              for p in (*PRESETS.values(), *STUDIES.values())]))
        print("\nrun one with: otrobust reproduce PRESET [--scale smoke|full] [--data-dir DIR] [--dry-run]")
        return 0
    result = settings.run()
    if result is None or not settings.audit:
        return 0
    failed = [a for a in json.loads((result / "audits.json").read_text()) if a["verdict"] == "fail"]
    for a in failed:
        print(f"AUDIT FAILED for {a['run']}: {', '.join(a['failed_checks'])} (see {a['report']})")
    return 1 if failed else 0


REPORT_FIELDS = ("run", "dataset", "model", "method", "norm", "eps", "epochs", "best_epoch", "val_clean", "val_pgd",
                 "train_hours", "path")


def _run_summary(run_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    """(summary row, metrics history, cached evaluation rows) of one run directory."""
    from otrobust.training.config import load_config_file

    if not (run_dir / "config.json").is_file():
        raise OtrobustError(f"{str(run_dir)!r} is not a run directory (no config.json); pass folders made by "
                            "otrobust train or reproduce")
    cfg = load_config_file(run_dir / "config.json")
    history = read_jsonl(run_dir / "metrics.jsonl")
    best = max(history, key=lambda r: (r.get("val_pgd", 0), r.get("val_clean", 0))) if history else {}
    row = {"run": run_dir.name, "dataset": cfg.get("dataset"), "model": cfg.get("model"),
           "method": cfg.get("method"), "norm": cfg.get("norm"), "eps": cfg.get("eps"),
           "epochs": f"{len(history)}/{cfg.get('epochs')}", "best_epoch": best.get("epoch"),
           "val_clean": 100 * best["val_clean"] if "val_clean" in best else None,
           "val_pgd": 100 * best["val_pgd"] if "val_pgd" in best else None,
           "train_hours": round(sum(r.get("seconds", 0.0) for r in history) / 3600, 4), "path": str(run_dir)}
    evals = []
    for path in sorted((run_dir / "evals").glob("*.json")):
        evals += [{"run": run_dir.name, **r} for r in json.loads(path.read_text())]
    return row, history, evals


def run_report(runs: list[str], out: str | Path) -> int:
    """``otrobust report``: one table (Markdown + CSV) and learning curves for any set of run directories; or,
    given two per-example files of ``otrobust eval --per-example``, their comparison image by image."""
    out = Path(out)
    if all(str(r).endswith(".csv") for r in runs):
        return _diff_per_example(runs, out)
    rows, histories, evals = [], {}, []
    for d in dict.fromkeys(Path(p) for p in runs):
        row, history, ev = _run_summary(d)
        name = row["run"] if row["run"] not in histories else str(d)
        row["run"] = name
        rows.append(row)
        histories[name] = history
        evals += [{**r, "run": name} for r in ev]
    header = ["run", "dataset", "model", "method", "norm", "eps", "epochs", "best epoch", "val clean %",
              "val PGD %", "train hours"]
    text = ["# Run report", "", "Validation accuracies at the best epoch (highest validation PGD accuracy).", "",
            markdown_table(header, [[format_eps(r[k]) if k == "eps" else "–" if r[k] is None else r[k]
                                     for k in REPORT_FIELDS[:-1]] for r in rows])]
    write_csv(out / "report.csv", rows, REPORT_FIELDS)
    if evals:
        eval_fields = ("run", "evaluation", "metric", "eps", "steps", "n", "accuracy", "ci_low", "ci_high", "note")
        write_csv(out / "evaluations.csv", evals, eval_fields)
        text += ["", "## Cached evaluations (from otrobust reproduce)", "",
                 markdown_table(["run", "evaluation", "metric", "eps", "steps", "n", "accuracy %"],
                                [[format_eps(r.get(k)) if k == "eps" else "–" if r.get(k) is None else r.get(k)
                                  for k in eval_fields[:7]] for r in evals])]
    try:
        from otrobust.reporting.plots import plot_learning_curves

        figures = plot_learning_curves(histories, out / "learning_curves")
        text += ["", "## Learning curves", "", "![learning curves](learning_curves.png)"]
    except OtrobustError as exc:
        figures = []
        print(f"warning: no learning curves: {exc}")
    atomic_write_text(out / "report.md", "\n".join(text) + "\n")
    print("\n".join(text[4:5]))
    print(f"\nwrote {out / 'report.md'}, {out / 'report.csv'}" + (f" and {len(figures)} figure files" if figures
                                                                    else ""))
    return 0


def run_plot(runs: list[str], out: str | Path) -> int:
    """``otrobust plot``: the learning curves of any runs (validation clean and PGD accuracy, OT term, per epoch
    from each run's metrics.jsonl) in one PNG; a run still training is drawn as far as it has gone."""
    from otrobust.reporting.plots import CURVE_METRICS, OT_CURVE, plot_learning_curves

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise OtrobustError(f"--out {str(out)!r} must name a .png file")
    histories: dict[str, list[dict]] = {}
    for run_dir in dict.fromkeys(Path(p) for p in runs):
        if not (run_dir / "metrics.jsonl").is_file():
            raise OtrobustError(f"{str(run_dir)!r} is not a run directory (no metrics.jsonl); pass folders made by "
                                "otrobust train or reproduce")
        name = run_dir.name if run_dir.name not in histories else str(run_dir)
        histories[name] = [r for r in read_jsonl(run_dir / "metrics.jsonl")
                           if isinstance(r, dict) and isinstance(r.get("epoch"), int)]
    [path] = plot_learning_curves(histories, out.with_suffix(""), metrics=(*CURVE_METRICS[:2], OT_CURVE),
                                  formats=("png",))
    print(f"wrote {path}")
    return 0


def _diff_per_example(files: list[str], out: Path) -> int:
    from otrobust.reporting.per_example import diff_markdown, read_per_example

    if len(files) != 2:
        raise OtrobustError(f"otrobust report compares two per-example files; got {len(files)}")
    text = diff_markdown(read_per_example(Path(files[0])), read_per_example(Path(files[1])), files[0], files[1])
    print(text)
    atomic_write_text(out / "diff.md", f"# Per-example comparison\n\n{text}\n")
    print(f"\nwrote {out / 'diff.md'}")
    return 0


def run_data_download(name: str, root: str, source: str | None = None) -> int:
    """``otrobust data download NAME --root DIR``: fetch, verify and unpack a dataset."""
    from otrobust.data import download_dataset

    folder = download_dataset(name, Path(root), source=source)
    print(f"{name} is in {folder}; use --data-dir {root}")
    return 0
