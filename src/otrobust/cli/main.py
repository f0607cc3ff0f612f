"""Command-line parsing only: ``otrobust train | eval | demo``. Errors print as one line."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

from otrobust.errors import OtrobustError
from otrobust.training.config import TrainConfig, config_from_dict, load_config_file, parse_number

NUMBER_FIELDS = {"eps", "step_size", "lr", "ot_weight", "theta", "lam", "adv_weight", "clean_weight",
                 "phi_lr", "weight_decay", "momentum", "ot_warmup_epochs", "eps_warmup_epochs", "awp_gamma",
                 "awp_warmup_epochs"}


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``otrobust: error: ...``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"otrobust: error: {' '.join(message.splitlines())}\n")


def _number(text: str) -> float:
    try:
        value = parse_number(text)
    except OtrobustError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _whole_number(text: str) -> int:
    """A whole-number flag. Its range is the setting's own check (TrainConfig names the flag and the bound)."""
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
            parser.add_argument(flag, type=_whole_number, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=str, choices=choices, default=argparse.SUPPRESS, help=help_text)


def _add_train_parser(sub) -> None:
    """``otrobust train``: a flag per TrainConfig field."""
    tr = sub.add_parser("train", help="train a model", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        description="Train a classifier with one of the methods. Every setting is a flag; "
                        "--config FILE reads them from a JSON file first.")
    tr.add_argument("--config", help="JSON file of settings (flags given here override it)")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="show a progress bar (default: when the terminal is interactive)")
    add_config_flags(tr)


def _add_eval_parser(sub) -> None:
    """``otrobust eval``: attack a saved model."""
    ev = sub.add_parser(
        "eval", help="evaluate a trained model's clean and robust accuracy",
        description="Attack a saved model on the first --n test images (RobustBench-style) and report clean "
        "accuracy, each attack's accuracy and the worst case over all of them, each with a 95% binomial "
        "interval. Robust accuracy is counted against the TRUE labels unless --labels predicted is given. "
        "Attacks: fgsm, pgd (cross-entropy), pgd-cw (CW margin), pgd-dlr (DLR), apgd-ce, apgd-dlr, apgd-t, "
        "fab (FAB-T), square, autoattack (standard: APGD-CE, APGD-T, FAB-T, Square), autoattack-fast "
        "(APGD-CE, APGD-T), autoattack-rand (EOT, for randomised models); the AutoAttack ones run the "
        "reference code.")
    ev.add_argument("path", help="run directory (its best checkpoint) or checkpoint file")
    ev.add_argument("--attack", nargs="+", default=["pgd"], metavar="NAME",
                    help="one or more attacks; the worst case over all of them is reported (default: pgd)")
    ev.add_argument("--eps", type=_number, default=None, help="attack radius, e.g. 0.3 or 8/255 (default: the "
                    "dataset's)")
    ev.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model (default: linf)")
    ev.add_argument("--steps", type=int, default=20, help="PGD steps (default: 20)")
    ev.add_argument("--step-size", type=_number, default=None, help="PGD step (default: 2.5 * eps / steps)")
    ev.add_argument("--restarts", type=int, default=1, help="PGD random restarts (default: 1)")
    ev.add_argument("--schedule", choices=("constant", "cosine", "step"), default="constant",
                    help="PGD step-size schedule (default: constant)")
    ev.add_argument("--aa-iter", type=int, default=None, help="APGD/FAB iterations instead of AutoAttack's 100 "
                    "(cheaper; the result is then NOT standard AutoAttack)")
    ev.add_argument("--aa-queries", type=int, default=None, help="Square queries instead of 5000 (cheaper; "
                    "NOT standard AutoAttack)")
    ev.add_argument("--n", type=int, default=None, help="evaluate on the first N test images (default: all)")
    ev.add_argument("--labels", choices=("true", "predicted"), default="true",
                    help="labels the attacks move away from (default: true; predicted is the paper's protocol, "
                    "labelled as such in every output)")
    ev.add_argument("--dataset", default=None, help="dataset (default: the one the model was trained on)")
    ev.add_argument("--data-dir", default=None, help="dataset folder (default: the training run's)")
    ev.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: 256)")
    ev.add_argument("--seed", type=int, default=0, help="seed for random starts (default: 0)")
    ev.add_argument("--attack-workers", type=int, default=None, metavar="N",
                    help="PGD pieces attacked at the same time (default: one per torch thread on CPU, 1 on GPU; "
                         "use 1 to repeat the evaluation of a model that draws random numbers exactly)")
    ev.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    ev.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON here "
                    "(top-level robust_accuracy in [0, 1] is the worst case)")
    ev.add_argument("--robustbench", default=None, metavar="PATH", help="also write a RobustBench-style summary "
                    "(clean and AutoAttack accuracy, eps, norm, n, architecture); needs --attack autoattack")
    ev.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")


def _add_audit_parser(sub) -> None:
    """``otrobust audit``: the gradient-masking checks."""
    au = sub.add_parser(
        "audit", help="check that a robustness evaluation can be trusted (gradient masking, weak attacks)",
        description="Run the sanity checks of Carlini et al. 2019 and Pintor et al. 2022 on a saved model: "
        "accuracy vs eps down to the trivial bound, unbounded attack, more steps/restarts, FGSM vs PGD, "
        "white-box vs Square and transfer, loss along the attack path, zero gradients, label sources and "
        "AutoAttack's own warnings. Writes audit.md, audit.json and plots to --out; exits 1 if any check "
        "fails.")
    au.add_argument("path", help="run directory (its best checkpoint) or checkpoint file")
    au.add_argument("--dataset", default=None, help="dataset (default: the one the model was trained on)")
    au.add_argument("--data-dir", default=None, help="dataset folder (default: the training run's)")
    au.add_argument("--n", type=int, default=200, help="audit on the first N test images (default: 200)")
    au.add_argument("--out", default=None, help="report folder (default: RUN_DIR/audit, or next to the "
                    "checkpoint)")
    au.add_argument("--eps", type=_number, default=None, help="attack radius (default: the dataset's)")
    au.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model (default: linf)")
    au.add_argument("--steps", type=int, default=None, help="PGD steps; the ladder is 1x, 2x, 4x (default: 20; "
                    "10 with --quick)")
    au.add_argument("--restarts", type=int, default=None, help="restarts compared with one (default: 5; 3 with "
                    "--quick)")
    au.add_argument("--quick", action="store_true", help="smaller budgets for CPUs (fewer steps, 1000 Square "
                    "queries, a cheaper AutoAttack); the report says so")
    au.add_argument("--surrogate", default=None, help="checkpoint or run directory of the transfer surrogate "
                    "(default: a standard model of the same architecture trained briefly here)")
    au.add_argument("--seed", type=int, default=0, help="seed for random starts and the surrogate (default: 0)")
    au.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    au.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")


def _add_demo_parser(sub) -> None:
    """``otrobust demo``: three methods on the bundled digits."""
    de = sub.add_parser("demo", help="train standard, trades and got-trades-lm on the bundled digits and compare")
    de.add_argument("--epochs", type=int, default=None, help="epochs per method (default: 15)")
    de.add_argument("--out", default="runs/demo", help="where the three runs go (default: runs/demo)")
    de.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="otrobust", description="Adversarial training with an optimal-transport regulariser (GOT), "
        "and honest robustness evaluation.")
    sub = parser.add_subparsers(dest="command", required=True)

    for add in (_add_train_parser, _add_eval_parser, _add_audit_parser, _add_demo_parser):
        add(sub)
    add_reproduce_parsers(sub)
    return parser


def add_reproduce_parsers(sub) -> None:
    """``reproduce``, ``report`` and ``data download``."""
    rp = sub.add_parser(
        "reproduce", help="run one of the paper's experiments (a preset) end to end",
        description="Train every run of a preset (skipping finished runs, resuming unfinished ones), evaluate "
        "them, and write results.csv, results.md (our numbers beside the paper's) and figures to "
        "OUT/SCALE/PRESET. --scale smoke is a seconds-long pipeline check on CPU; --scale full is the paper's "
        "setting. Without a preset, lists them.")
    rp.add_argument("preset", nargs="?", default=None, help="preset name (omit to list them)")
    rp.add_argument("--scale", choices=("smoke", "full"), default="smoke", help="smoke: tiny subsets, one epoch, "
                    "tiny models, the bundled digits as stand-in data without --data-dir; full: the paper's "
                    "settings (default: smoke)")
    rp.add_argument("--out", default="runs/reproduce", help="output folder, shared by presets so that identical "
                    "runs are trained once (default: runs/reproduce)")
    rp.add_argument("--data-dir", default=None, help="dataset folder, or a folder holding one sub-folder per "
                    "dataset named after it (mnist/, cifar10/, ...)")
    rp.add_argument("--dry-run", action="store_true", help="list the runs, their status and an estimated GPU "
                    "cost; train nothing")
    rp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    rp.add_argument("--seeds", type=int, default=1, help="train and evaluate every run with seeds 0..N-1 (default: "
                    "1); results.md then gives mean ± sd over seeds and each GOT run's paired difference from its "
                    "base method")
    rp.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a training setting in every run, e.g. --set lr=1e-4 (repeatable)")
    rp.add_argument("--no-audit", action="store_true", help="skip the evaluation audit of each run (by default "
                    "every run is audited, its verdict is in every table, and a failed audit exits 1)")

    rep = sub.add_parser("report", help="collect training runs into one comparison table and learning curves",
                         description="Summarise any set of run directories: settings, epochs, validation "
                         "accuracies, cached evaluations; writes report.md, report.csv and learning-curve plots.")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    rep.add_argument("--out", default="report", help="output folder (default: report)")

    da = sub.add_parser("data", help="dataset utilities")
    da_sub = da.add_subparsers(dest="data_command", required=True)
    dl = da_sub.add_parser("download", help="download a dataset, verify its checksums and unpack it",
                           description="Fetch cifar10, cifar100, svhn, mnist or fashion-mnist from its official "
                           "mirror (or --source), check the published md5 and unpack it under --root.")
    dl.add_argument("name", help="dataset: cifar10, cifar100, svhn, mnist, fashion-mnist")
    dl.add_argument("--root", required=True, help="folder to put it in (then use it as --data-dir)")
    dl.add_argument("--source", default=None, help="a URL or local file/folder to use instead of the official "
                    "mirror")


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
    from otrobust.training.loop import train

    cfg = config_from_args(args)
    train(cfg, show_progress=args.progress, argv=getattr(args, "command_line", None))
    print(f"run saved in {cfg.out}")
    return 0


def check_eval_args(args: argparse.Namespace) -> None:
    """The ``eval`` flags argparse cannot check by type alone."""
    limits = [("--steps", args.steps, args.steps >= 0, ">= 0"),
              ("--restarts", args.restarts, args.restarts >= 1, ">= 1"),
              ("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
              ("--attack-workers", args.attack_workers, args.attack_workers is None or args.attack_workers >= 1,
               ">= 1"),
              ("--n", args.n, args.n is None or args.n >= 1, ">= 1"),
              ("--step-size", args.step_size, args.step_size is None or args.step_size > 0, "positive"),
              ("--eps", args.eps, args.eps is None or args.eps >= 0, ">= 0"),
              ("--seed", args.seed, 0 <= args.seed < 2**63, "between 0 and 2**63 - 1")]
    for flag, value, ok, rule in limits:
        if not ok:
            raise OtrobustError(f"{flag} must be {rule}, got {value}")
    if args.norm == "linf" and args.eps is not None and args.eps > 1:
        raise OtrobustError(f"--eps {args.eps} is outside [0, 1] (images are in [0, 1]; try 0.3 or 8/255)")


def cmd_eval(args: argparse.Namespace) -> int:
    from otrobust.cli.commands import run_eval

    check_eval_args(args)
    return run_eval(args)


def cmd_audit(args: argparse.Namespace) -> int:
    from otrobust.cli.commands import run_audit

    return run_audit(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from otrobust.cli.commands import run_demo

    return run_demo(epochs=args.epochs, out=args.out, seed=args.seed)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from otrobust.cli.commands import run_reproduce

    return run_reproduce(args)


def cmd_report(args: argparse.Namespace) -> int:
    from otrobust.cli.commands import run_report

    return run_report(args)


def cmd_data(args: argparse.Namespace) -> int:
    from otrobust.cli.commands import run_data_download

    return run_data_download(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "audit": cmd_audit, "demo": cmd_demo,
            "reproduce": cmd_reproduce, "report": cmd_report, "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (already printed as one line) or --help
        return exc.code if isinstance(exc.code, int) else 0
    args.command_line = ["otrobust", *argv]  # recorded in the run's provenance
    try:
        return COMMANDS[args.command](args)
    except OtrobustError as exc:
        print(f"otrobust: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otrobust: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a training run (of train or reproduce) stopped by a signal, its checkpoint saved
        from otrobust.training.loop import Interrupted

        if not isinstance(exc, Interrupted):
            raise
        print(f"otrobust: {exc}", file=sys.stderr)
        return 128 + exc.signum  # the shell's convention: 130 after SIGINT, 143 after SIGTERM


if __name__ == "__main__":
    sys.exit(main())
