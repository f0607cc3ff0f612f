"""The bodies of ``demo``, ``reproduce``, ``report``, ``plot`` and ``data download``: run the core, print and save
(``eval`` and ``audit`` are in ``cli/eval_audit.py``; parsing is in ``cli/main.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from otrobust.data import download_dataset, get_dataset_spec, load_dataset
from otrobust.errors import OtrobustError, printable
from otrobust.evaluation.evaluate import build_attacks, evaluate_model
from otrobust.experiments.presets import PRESETS
from otrobust.experiments.reproduce import ReproduceSettings
from otrobust.experiments.studies import STUDIES
from otrobust.reporting.per_example import diff_markdown, read_per_example
from otrobust.reporting.plots import CURVE_METRICS, OT_CURVE, plot_learning_curves
from otrobust.reporting.tables import format_eps, markdown_table, write_csv
from otrobust.store.checkpoint import checkpoint_path, load_model
from otrobust.store.files import atomic_write_text, read_jsonl
from otrobust.training.config import TrainConfig, load_config_file
from otrobust.training.loop import train
from otrobust.training.runfiles import checkpoint_score

DEMO_EPOCHS = 15
DEMO_METHODS = ("standard", "trades", "got-trades-lm")  # no defence, the baseline everybody knows, and GOT


def run_demo(epochs: int | None = None, out: str = "runs/demo", seed: int = 0) -> int:
    """Train no defence, TRADES and GOT-TRADES-LM on the bundled digits with the defaults; print clean and PGD-20
    accuracy side by side."""
    epochs = DEMO_EPOCHS if epochs is None else epochs
    if epochs < 1:
        raise OtrobustError(f"--epochs must be at least 1, got {epochs}")
    _check_demo_lengths(Path(out), epochs)
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


def _check_demo_lengths(out: Path, epochs: int) -> None:
    """Refuse to continue a demo under ``out`` whose runs were started for another number of epochs: its table would
    compare models of different lengths under one heading."""
    for method in DEMO_METHODS:
        run_dir = out / method
        if not checkpoint_path(run_dir, "last").exists():
            continue
        config = run_dir / "config.json"
        started = load_config_file(config).get("epochs") if config.is_file() else None
        if started != epochs:
            raise OtrobustError(f"{str(run_dir)!r} holds a demo run of {started} epochs, not {epochs}: its table "
                                f"would compare models of different lengths; finish it with --epochs {started}, or "
                                f"give another --out to start a demo of {epochs} epochs")


def run_reproduce(settings: ReproduceSettings) -> int:
    """``otrobust reproduce``: list the presets, or run one (see otrobust.experiments.reproduce)."""
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
    if settings.scale == "smoke":  # models trained for seconds: their audits check the pipeline, not the models
        if failed:
            print(f"note: {len(failed)} audit{'s' if len(failed) != 1 else ''} failed, as audits of models trained "
                  "for seconds do: at smoke scale an audit verdict means nothing, so the command does not fail")
        return 0
    for a in failed:
        print(f"AUDIT FAILED for {a['run']}: {', '.join(a['failed_checks'])} (see "
              f"{Path(settings.out) / settings.scale / a['report']})")
    return 1 if failed else 0


REPORT_FIELDS = ("run", "dataset", "model", "method", "norm", "eps", "epochs", "best_epoch", "val_clean", "val_pgd",
                 "train_hours", "path")
MAX_EPOCH = 10**6  # an epoch number beyond any run's: a metrics line claiming more is not read


def _number(v: object) -> float | None:
    """``v`` if it is a finite number (not a bool), else None: a run folder's files may hold anything."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _history(run_dir: Path) -> list[dict]:
    """The epochs of metrics.jsonl, each with a whole-number ``epoch`` and only its numeric metrics."""
    path = run_dir / "metrics.jsonl"
    history = []
    for r in read_jsonl(path) if path.is_file() else []:
        if isinstance(r, dict) and type(r.get("epoch")) is int and 1 <= r["epoch"] <= MAX_EPOCH:
            history.append({"epoch": r["epoch"], **{k: _number(v) for k, v in r.items()
                                                      if k != "epoch" and _number(v) is not None}})
    return history


def _best(history: list[dict], method: object) -> dict:
    """The epoch whose checkpoint training kept as ``best`` (the one ``eval RUN_DIR`` uses): the first of the
    highest :func:`~otrobust.training.runfiles.checkpoint_score`."""
    scored = []
    for r in history:
        try:
            scored.append((checkpoint_score(r, method), r))
        except KeyError:  # an epoch without validation figures
            continue
    return max(scored, key=lambda pair: pair[0])[1] if scored else {}


def _cached_evaluations(run_dir: Path, say) -> list[dict]:
    """The rows of ``evals/*.json`` (written by reproduce); a file that is not a list of records is skipped and
    named."""
    rows = []
    for path in sorted((run_dir / "evals").glob("*.json")):
        try:
            records = json.loads(path.read_bytes()) if path.is_file() else None
        except (OSError, ValueError, RecursionError):
            records = None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            say(f"warning: skipped {printable(path)}: not a list of evaluation records")
            continue
        rows += [{"run": run_dir.name, **r} for r in records]
    return rows


def _run_summary(run_dir: Path, say=print) -> tuple[dict, list[dict], list[dict]]:
    """(summary row, metrics history, cached evaluation rows) of one run directory; values of an unexpected type
    show as missing."""
    if not (run_dir / "config.json").is_file():
        raise OtrobustError(f"{str(run_dir)!r} is not a run directory (no config.json); pass folders made by "
                            "otrobust train or reproduce")
    cfg = load_config_file(run_dir / "config.json")
    history = _history(run_dir)
    best = _best(history, cfg.get("method"))
    row = {"run": run_dir.name, "dataset": cfg.get("dataset"), "model": cfg.get("model"),
           "method": cfg.get("method"), "norm": cfg.get("norm"), "eps": cfg.get("eps"),
           "epochs": f"{len(history)}/{cfg.get('epochs')}", "best_epoch": best.get("epoch"),
           "val_clean": 100 * best["val_clean"] if "val_clean" in best else None,
           "val_pgd": 100 * best["val_pgd"] if "val_pgd" in best else None,
           "train_hours": round(sum(r.get("seconds", 0.0) for r in history) / 3600, 4), "path": str(run_dir)}
    return row, history, _cached_evaluations(run_dir, say)


def run_report(runs: list[str], out: str | Path) -> int:
    """``otrobust report``: one table (Markdown + CSV) and learning curves for any set of run directories; or,
    given two per-example files of ``otrobust eval --per-example``, their comparison image by image. Every string
    read from those files is shown through :func:`~otrobust.errors.printable`."""
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
    text = ["# Run report", "", "Validation accuracies at the best epoch: the epoch of the best checkpoint, which "
            "eval RUN_DIR evaluates (the highest validation PGD accuracy, then clean; the highest clean accuracy for "
            "standard training).", "",
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
        # "$" would start matplotlib's mathtext in a legend label
        figures = plot_learning_curves({printable(k).replace("$", r"\$"): v for k, v in histories.items()},
                                       out / "learning_curves")
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
    if len(files) != 2:
        raise OtrobustError(f"otrobust report compares two per-example files; got {len(files)}")
    text = diff_markdown(read_per_example(Path(files[0])), read_per_example(Path(files[1])), printable(files[0]),
                         printable(files[1]))
    print(text)
    atomic_write_text(out / "diff.md", f"# Per-example comparison\n\n{text}\n")
    print(f"\nwrote {out / 'diff.md'}")
    return 0


def run_data_download(name: str, root: str, source: str | None = None) -> int:
    """``otrobust data download NAME --root DIR``: fetch, verify and unpack a dataset."""
    folder = download_dataset(name, Path(root), source=source)
    print(f"{name} is in {folder}; use --data-dir {root}")
    return 0
