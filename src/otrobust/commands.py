"""The bodies of the CLI commands: load, run the core, print and save. Parsing stays in cli.py."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from otrobust import runs
from otrobust.data import get_dataset_spec, load_dataset
from otrobust.errors import OtrobustError
from otrobust.evaluate import build_attacks, evaluate_model
from otrobust.report import eval_table, markdown_table


def run_eval(args: argparse.Namespace) -> int:
    """``otrobust eval``: clean + attacked accuracy of a saved model on the first --n test images."""
    from otrobust.train import pick_device

    device = pick_device(args.device)
    ckpt = runs.resolve_checkpoint(args.path)
    _, meta, _ = runs.load_checkpoint(ckpt)
    model = runs.load_model(ckpt, device)
    trained = meta.get("config", {})
    dataset = args.dataset or meta["architecture"]["dataset"]
    spec = get_dataset_spec(dataset)
    if (spec.num_classes, spec.in_channels) != (meta["architecture"]["num_classes"],
                                                  meta["architecture"]["in_channels"]):
        raise OtrobustError(f"the model was trained on {meta['architecture']['dataset']!r}, whose images "
                            f"do not fit dataset {dataset!r}")
    data_dir = args.data_dir or (trained.get("data_dir") if dataset == trained.get("dataset") else None)
    test = load_dataset(dataset, "test", data_dir, size=args.n)
    eps = spec.default_eps if args.eps is None else args.eps
    attacks = build_attacks(args.attack, eps=eps, steps=args.steps, step_size=args.step_size,
                            restarts=args.restarts, norm=args.norm)
    torch.manual_seed(args.seed)
    bar = None
    if args.progress is not False:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(test) * max(len(attacks), 1), desc="attacking", leave=False,
                   disable=None if args.progress is None else not args.progress)
    t0 = time.perf_counter()
    result = evaluate_model(model, test, attacks, labels=args.labels, batch_size=args.batch_size,
                            device=device, progress=bar.update if bar else None)
    if bar:
        bar.close()
    threat = {"norm": args.norm, "eps": eps, "n": len(test), "labels": args.labels, "seed": args.seed,
              "dataset": dataset, "steps": args.steps, "restarts": args.restarts}
    summary = result.summary()
    print(eval_table(summary, threat))
    if args.json_path:
        out = {"checkpoint": str(ckpt), "threat_model": threat, "clean_accuracy": result.accuracy("clean"),
               "robust_accuracy": result.accuracy("worst") if attacks else None, "attacks": summary,
               "seconds": round(time.perf_counter() - t0, 3)}
        runs.atomic_write_text(Path(args.json_path), json.dumps(out, indent=2))
        print(f"\nwrote {args.json_path}")
    return 0


DEMO_EPOCHS = 20


def run_demo(epochs: int | None = None, out: str = "runs/demo", seed: int = 0) -> int:
    """Train ``standard`` and ``got-trades-lm`` on the bundled digits; print clean and PGD-20 accuracy."""
    from otrobust.config import TrainConfig
    from otrobust.train import train

    epochs = epochs or DEMO_EPOCHS
    spec = get_dataset_spec("digits")
    test = load_dataset("digits", "test")
    rows = []
    for method in ("standard", "got-trades-lm"):
        run_dir = Path(out) / method
        cfg = TrainConfig(dataset="digits", method=method, epochs=epochs, out=str(run_dir), seed=seed,
                          val_size=200, ot_warmup_epochs=epochs / 4)
        resume = runs.checkpoint_path(run_dir, "last").exists()
        print(f"== training {method} on digits ({epochs} epochs)" + (" — resuming" if resume else ""))
        train(TrainConfig(**{**cfg.to_dict(), "resume": resume}), log=lambda s: None)
        model = runs.load_model(run_dir)
        torch.manual_seed(seed)
        attacks = build_attacks(["pgd"], eps=spec.default_eps, steps=20)
        res = evaluate_model(model, test, attacks)
        rows.append([method, 100 * res.accuracy("clean"), 100 * res.accuracy("worst")])
    print(f"\ndigits test set ({len(test)} images), PGD-20, linf eps = {spec.default_eps}, true labels\n")
    print(markdown_table(["method", "clean %", "PGD-20 %"], rows))
    print(f"\nruns saved under {out}/")
    return 0
