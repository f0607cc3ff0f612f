"""The bodies of the CLI commands: load, run the core, print and save. Parsing stays in cli.py."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from otrobust.attacks.gradient import default_step_size
from otrobust.data import get_dataset_spec, load_dataset
from otrobust.errors import OtrobustError
from otrobust.evaluation.evaluate import build_attacks, evaluate_model
from otrobust.reporting.tables import eval_table, markdown_table
from otrobust.store.checkpoint import CHECKPOINT_DIR, checkpoint_path, load_checkpoint, load_model, resolve_checkpoint
from otrobust.store.files import atomic_write_text, check_writable, read_jsonl


def run_eval(args: argparse.Namespace) -> int:
    """``otrobust eval``: clean, per-attack and worst-case accuracy of a saved model on the first --n test
    images, each with a 95 % interval, under a threat model stated in every output, each attack's budget
    beside its row; the JSON keeps every wall-clock time in one ``timing`` object."""
    from otrobust.evaluation.evaluate import attack_budgets, eval_record
    from otrobust.training.loop import pick_device

    for flag, value in (("--aa-iter", args.aa_iter), ("--aa-queries", args.aa_queries)):
        if value is not None and value < 1:
            raise OtrobustError(f"{flag} must be at least 1, got {value}")
    if args.robustbench and "autoattack" not in args.attack:
        raise OtrobustError("--robustbench reports AutoAttack accuracy: add autoattack to --attack")
    device = pick_device(args.device)
    ckpt, meta, model, dataset, test = _load_for_evaluation(args, device)
    eps = get_dataset_spec(dataset).default_eps if args.eps is None else args.eps
    budget = dict(eps=eps, steps=args.steps, step_size=args.step_size, restarts=args.restarts,
                  schedule=args.schedule, aa_iter=args.aa_iter, aa_queries=args.aa_queries)
    attacks = build_attacks(args.attack, norm=args.norm, seed=args.seed, workers=args.attack_workers, **budget)
    result, seconds = _attack(model, test, attacks, args, device)
    aa_standard = args.aa_iter is None and args.aa_queries is None
    threat = {"norm": args.norm, "eps": eps, "n": len(test), "labels": args.labels, "seed": args.seed,
              "dataset": dataset, "steps": args.steps, "restarts": args.restarts, "schedule": args.schedule,
              "step_size": args.step_size if args.step_size is not None else default_step_size(eps, args.steps),
              "autoattack_standard": aa_standard}
    budgets = attack_budgets(args.attack, **budget)
    _print_eval(result, threat, budgets, seconds, aa_standard)
    if args.json_path:
        record = {"checkpoint": str(ckpt), "dataset": dataset,
                  "architecture": meta.get("architecture", {}).get("model"), **eval_record(result, threat),
                  "budgets": budgets,
                  # wall-clock times only here, so that two evaluations of one checkpoint differ in nothing else
                  "timing": {"seconds": round(seconds, 3),
                             "attack_seconds": {k: round(v, 3) for k, v in result.seconds.items()}}}
        atomic_write_text(Path(args.json_path), json.dumps(record, indent=2))
        print(f"wrote {args.json_path}")
    if args.robustbench:
        _write_robustbench(args, result, dataset, eps, meta, ckpt, aa_standard)
    return 0


def _attack(model, test, attacks, args: argparse.Namespace, device):
    """(EvalResult, wall-clock seconds) of ``attacks`` on ``test``, with a progress bar unless --no-progress."""
    torch.manual_seed(args.seed)
    bar = None
    if args.progress is not False:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(test) * max(len(attacks), 1), desc="attacking", leave=False,
                   disable=None if args.progress is None else not args.progress)
    t0 = time.perf_counter()
    result = evaluate_model(model, test, attacks, labels=args.labels, batch_size=args.batch_size,
                            device=device, progress=bar.update if bar else None)
    seconds = time.perf_counter() - t0
    if bar:
        bar.close()
    return result, seconds


def _print_eval(result, threat: dict, budgets: dict[str, str], seconds: float, aa_standard: bool) -> None:
    """The terminal report: the table (with each attack's budget), the worst case, notes and warnings."""
    print(eval_table(result.summary(), threat, budgets, result.seconds))
    label_text = ("PREDICTED labels: the paper's protocol, not robustness against the true labels"
                  if threat["labels"] == "predicted" else "true labels")
    if result.per_attack:
        lo, hi = result.interval("worst")
        print(f"\nrobust accuracy, worst case over {', '.join(result.per_attack)} ({label_text}): "
              f"{100 * result.accuracy('worst'):.2f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)")
    if not aa_standard and any(n.startswith(("autoattack", "apgd", "fab", "square")) for n in result.per_attack):
        print("note: --aa-iter/--aa-queries make this a cheaper run, NOT standard AutoAttack")
    for name, texts in result.warnings.items():
        for text in texts:
            print(f"warning from {name}: {text}")
    print(f"time: {seconds:.1f} s")


def _write_robustbench(args: argparse.Namespace, result, dataset: str, eps: float, meta: dict, ckpt: Path,
                       aa_standard: bool) -> None:
    from otrobust.evaluation.evaluate import robustbench_summary

    arch = meta.get("architecture", {})
    summary = robustbench_summary(result, dataset=dataset, eps=eps, norm=args.norm,
                                  architecture=arch.get("model", "unknown"), name=_run_name(ckpt))
    if not aa_standard:
        summary["unreliable"] = True
        summary["footnote"] += "; NOT standard AutoAttack (reduced iterations or queries)"
    atomic_write_text(Path(args.robustbench), json.dumps(summary, indent=2))
    print(f"wrote {args.robustbench}")


def _run_name(ckpt: Path) -> str:
    """The run directory's name for ``RUN/checkpoints/best.safetensors``, else the file's stem."""
    return ckpt.parent.parent.name if ckpt.parent.name == CHECKPOINT_DIR else ckpt.stem


def _load_for_evaluation(args: argparse.Namespace, device):
    """(checkpoint path, its metadata, model, dataset name, first --n test images) for eval and audit.

    The test images must have the classes, channels and size the checkpoint records: the geometry of the
    images actually loaded is compared, so a dataset whose geometry depends on its files (``folder``) fits."""
    ckpt = resolve_checkpoint(args.path)
    _, meta, _ = load_checkpoint(ckpt)
    model = load_model(ckpt, device)
    arch = meta["architecture"]
    trained = meta.get("config", {})
    dataset = args.dataset or arch["dataset"]
    get_dataset_spec(dataset)  # an unknown name is refused before any file is read
    data_dir = args.data_dir or (trained.get("data_dir") if dataset == trained.get("dataset") else None)
    test = load_dataset(dataset, "test", data_dir, size=args.n)
    want = (arch["num_classes"], arch["in_channels"], arch["image_size"], arch["image_size"])
    found = (test.num_classes, *test.x.shape[1:])
    if found != want:
        raise OtrobustError(f"the model was trained on {arch['dataset']!r} ({_geometry(want)}), but the "
                            f"{dataset!r} test images are {_geometry(found)}: they do not fit dataset "
                            f"{dataset!r}; pass the --dataset (and --data-dir) it was trained on")
    return ckpt, meta, model, dataset, test


def _geometry(shape: tuple[int, int, int, int]) -> str:
    classes, channels, height, width = shape
    return f"{classes} classes, {channels}-channel {height}x{width} images"


def run_audit(args: argparse.Namespace) -> int:
    """``otrobust audit``: the evaluation sanity checks; writes the report and returns 1 if any check fails."""
    import sys

    from otrobust.evaluation.audit import AuditSettings, audit_model, train_surrogate
    from otrobust.models import create_model
    from otrobust.reporting.audit import to_markdown, write_report
    from otrobust.training.loop import pick_device

    if args.n < 1:
        raise OtrobustError(f"--n must be at least 1, got {args.n}")
    device = pick_device(args.device)
    ckpt, meta, model, dataset, test = _load_for_evaluation(args, device)
    eps = get_dataset_spec(dataset).default_eps if args.eps is None else args.eps
    settings = AuditSettings.make(eps, args.norm, args.quick, steps=args.steps, restarts=args.restarts,
                                  seed=args.seed, batch_size=args.batch_size)
    arch = meta["architecture"]
    out = _audit_folder(args, ckpt)
    check_writable(out)  # before the checks run: their verdict must not be lost to a read-only --out

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    surrogate = None
    if args.surrogate:
        surrogate = load_model(args.surrogate, device)
    else:
        trained = meta.get("config", {})
        data_dir = args.data_dir or (trained.get("data_dir") if dataset == trained.get("dataset") else None)
        try:
            train_set = load_dataset(dataset, "train", data_dir, size=2000 if args.quick else 5000)
        except OtrobustError as exc:
            log(f"no transfer surrogate: {exc}")
        else:
            log(f"training a standard {arch['model']} surrogate on {len(train_set)} {dataset} training images")
            fresh = create_model(arch["model"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                                 image_size=arch["image_size"], latent=arch.get("latent", "penultimate"))
            surrogate = train_surrogate(fresh, train_set, settings.surrogate_epochs, seed=args.seed, device=device)
    report = audit_model(model, test, settings, surrogate=surrogate, device=device, log=log,
                         threat_extra={"dataset": dataset, "model": f"{arch['model']} from {ckpt}"})
    print(to_markdown(report).split("\n## ")[0].rstrip())  # first: a failed write cannot lose the verdict
    write_report(report, out)
    print(f"\nreport written to {out}/audit.md")
    return 1 if report.failed else 0


def _audit_folder(args: argparse.Namespace, ckpt: Path) -> Path:
    """--out, else RUN_DIR/audit for a run directory, else audit-NAME beside a checkpoint file."""
    if args.out:
        return Path(args.out)
    if Path(args.path).is_dir():
        return Path(args.path) / "audit"
    return ckpt.parent / f"audit-{ckpt.stem}"


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


def run_reproduce(args: argparse.Namespace) -> int:
    """``otrobust reproduce``: list the presets, or run one (see otrobust.experiments.reproduce)."""
    from otrobust.experiments.presets import PRESETS
    from otrobust.experiments.reproduce import parse_overrides, reproduce
    from otrobust.experiments.studies import STUDIES

    if args.preset is None:
        print(markdown_table(["preset", "paper", "runs", "what"],
                             [[p.name, p.reference, len(p.runs), p.description]
                              for p in (*PRESETS.values(), *STUDIES.values())]))
        print("\nrun one with: otrobust reproduce PRESET [--scale smoke|full] [--data-dir DIR] [--dry-run]")
        return 0
    result = reproduce(args.preset, scale=args.scale, out=args.out, data_dir=args.data_dir, dry_run=args.dry_run,
                       device=args.device, overrides=parse_overrides(args.overrides), audit=not args.no_audit,
                       seeds=args.seeds)
    if result is None or args.no_audit:
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


def run_report(args: argparse.Namespace) -> int:
    """``otrobust report``: one table (Markdown + CSV) and learning curves for any set of run directories."""
    from otrobust.experiments.reproduce import format_eps, write_csv

    out = Path(args.out)
    rows, histories, evals = [], {}, []
    for d in dict.fromkeys(Path(p) for p in args.runs):
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


def run_data_download(args: argparse.Namespace) -> int:
    """``otrobust data download NAME --root DIR``: fetch, verify and unpack a dataset."""
    from otrobust.data import download_dataset

    folder = download_dataset(args.name, Path(args.root), source=args.source)
    print(f"{args.name} is in {folder}; use --data-dir {args.root}")
    return 0
