"""Command-line parsing only: ``otrobust train | eval | demo``. Errors print as one line."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from otrobust.config import TrainConfig, config_from_dict, load_config_file, parse_number
from otrobust.errors import OtrobustError

NUMBER_FIELDS = {"eps", "step_size", "lr", "ot_weight", "theta", "lam", "adv_weight", "clean_weight",
                 "phi_lr", "weight_decay", "momentum", "ot_warmup_epochs"}


def _number(text: str) -> float:
    try:
        return parse_number(text)
    except OtrobustError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    return value


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--train-size`` for ``train_size``), defaults shown in --help."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        choices = f.metadata.get("choices")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif f.name in NUMBER_FIELDS:
            parser.add_argument(flag, type=_number, default=argparse.SUPPRESS, help=help_text)
        elif "int" in str(f.type):
            parser.add_argument(flag, type=_positive_int, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=str, choices=choices, default=argparse.SUPPRESS, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otrobust", description="Adversarial training with an optimal-transport regulariser (GOT), "
        "and honest robustness evaluation.")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a model", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        description="Train a classifier with one of the methods. Every setting is a flag; "
                        "--config FILE reads them from a JSON file first.")
    tr.add_argument("--config", help="JSON file of settings (flags given here override it)")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="show a progress bar (default: when the terminal is interactive)")
    add_config_flags(tr)

    ev = sub.add_parser("eval", help="evaluate a trained model's clean and robust accuracy",
                        description="Attack a saved model on the first --n test images. Robust accuracy "
                        "is counted against the TRUE labels unless --labels predicted is given.")
    ev.add_argument("path", help="run directory (its best checkpoint) or checkpoint file")
    ev.add_argument("--attack", nargs="+", default=["pgd"], help="attacks to run (default: pgd)")
    ev.add_argument("--eps", type=_number, default=None, help="attack radius (default: the dataset's)")
    ev.add_argument("--steps", type=int, default=20, help="PGD steps (default: 20)")
    ev.add_argument("--step-size", type=_number, default=None, help="PGD step (default: 2.5 * eps / steps)")
    ev.add_argument("--restarts", type=int, default=1, help="PGD random restarts (default: 1)")
    ev.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model (default: linf)")
    ev.add_argument("--n", type=int, default=None, help="evaluate on the first N test images (default: all)")
    ev.add_argument("--labels", choices=("true", "predicted"), default="true",
                    help="labels the attacks move away from (default: true; predicted is the paper's protocol)")
    ev.add_argument("--dataset", default=None, help="dataset (default: the one the model was trained on)")
    ev.add_argument("--data-dir", default=None, help="dataset folder (default: the training run's)")
    ev.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: 256)")
    ev.add_argument("--seed", type=int, default=0, help="seed for random starts (default: 0)")
    ev.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    ev.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON here")
    ev.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")

    de = sub.add_parser("demo", help="train standard and got-trades-lm on the bundled digits and compare")
    de.add_argument("--epochs", type=int, default=None, help="epochs per method (default: 20)")
    de.add_argument("--out", default="runs/demo", help="where the two runs go (default: runs/demo)")
    de.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Settings = dataclass defaults < --config file < (with --resume) the run's saved config < flags."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_config_file(args.config))
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if given.get("resume"):
        out = given.get("out", values.get("out", TrainConfig.out))
        saved = Path(out) / "config.json"
        if not saved.exists():
            raise OtrobustError(f"--resume: {str(saved)!r} not found; is --out the run directory?")
        values.update(load_config_file(saved))
    values.update(given)
    return config_from_dict(values)


def cmd_train(args: argparse.Namespace) -> int:
    from otrobust.train import Interrupted, train

    cfg = config_from_args(args)
    try:
        train(cfg, show_progress=args.progress)
    except Interrupted as exc:
        print(f"otrobust: {exc}", file=sys.stderr)
        return 130
    print(f"run saved in {cfg.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from otrobust.commands import run_eval

    return run_eval(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from otrobust.commands import run_demo

    return run_demo(epochs=args.epochs, out=args.out, seed=args.seed)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except OtrobustError as exc:
        print(f"otrobust: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otrobust: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
