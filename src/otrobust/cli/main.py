"""Command-line parsing only: ``otrobust train | eval | audit | demo | reproduce | report | plot | data``. Errors
print as one line."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
from pathlib import Path
from typing import Any

from otrobust.cli.commands import run_data_download, run_demo, run_plot, run_report, run_reproduce
from otrobust.cli.eval_audit import run_audit, run_eval
from otrobust.cli.flags import add_flags, from_args
from otrobust.errors import OtrobustError, printable
from otrobust.evaluation.command_settings import AuditCommandSettings, EvalSettings
from otrobust.experiments.reproduce import ReproduceSettings
from otrobust.training.config import TrainConfig, config_from_dict, load_config_file
from otrobust.training.loop import train
from otrobust.training.stop_signals import Interrupted


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``otrobust: error: ...``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"otrobust: error: {' '.join(message.splitlines())}\n")


def _add_train_parser(sub) -> None:
    """``otrobust train``: a flag per TrainConfig field."""
    tr = sub.add_parser("train", help="train a model", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                        description="Train a classifier with one of the methods. Every setting is a flag; "
                        "--config FILE reads them from a YAML or JSON file first.")
    tr.add_argument("--config", help="YAML (.yaml, .yml) or JSON file of settings, e.g. a run's config.yaml "
                    "(flags given here override it)")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="show a progress bar (default: when the terminal is interactive)")
    add_flags(tr, TrainConfig, layered=True)


def _add_eval_parser(sub) -> None:
    """``otrobust eval``: attack a saved model."""
    ev = sub.add_parser(
        "eval", help="evaluate a trained model's clean and robust accuracy",
        description="Attack a saved model on the first --n test images (RobustBench-style) and report clean "
        "accuracy, each attack's accuracy and the worst case over all of them, each with a 95% binomial "
        "interval. Robust accuracy is counted against the TRUE labels unless --labels predicted is given. "
        "The attacks are listed under --attack; the AutoAttack ones run its reference code.")
    add_flags(ev, EvalSettings)


def _add_audit_parser(sub) -> None:
    """``otrobust audit``: the gradient-masking checks."""
    au = sub.add_parser(
        "audit", help="check that a robustness evaluation can be trusted (gradient masking, weak attacks)",
        description="Run the sanity checks of Carlini et al. 2019 and Pintor et al. 2022 on a saved model: "
        "accuracy vs eps down to the trivial bound, unbounded attack, more steps/restarts, FGSM vs PGD, "
        "white-box vs Square and transfer, loss along the attack path, zero gradients, label sources and "
        "AutoAttack's own warnings. Writes audit.md, audit.json and plots to --out; exits 1 if any check "
        "fails.")
    add_flags(au, AuditCommandSettings)


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
    """``reproduce``, ``report``, ``plot`` and ``data download``."""
    rp = sub.add_parser(
        "reproduce", help="run one of the paper's experiments (a preset) end to end",
        description="Train every run of a preset (skipping finished runs, resuming unfinished ones), evaluate "
        "them, and write results.csv, results.md (our numbers beside the paper's) and figures to "
        "OUT/SCALE/PRESET. --scale smoke is a seconds-long pipeline check on CPU; --scale full is the paper's "
        "setting. Without a preset, lists them.")
    add_flags(rp, ReproduceSettings)

    rep = sub.add_parser("report", help="collect training runs into one comparison table and learning curves, or "
                         "compare two per-example evaluations",
                         description="Summarise any set of run directories: settings, epochs, validation "
                         "accuracies, cached evaluations; writes report.md, report.csv and learning-curve plots. "
                         "Given two per-example CSV files (otrobust eval --per-example), compares them image by "
                         "image instead and writes diff.md.")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or two per-example .csv files")
    rep.add_argument("--out", default="report", help="output folder (default: report)")

    pl = sub.add_parser("plot", help="draw the learning curves of runs into a PNG",
                        description="Draw validation clean and PGD accuracy and the OT term, epoch by epoch, of any "
                        "run directories (from their metrics.jsonl; a run still training too) into one PNG.")
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    pl.add_argument("--out", default="learning_curves.png", help="the PNG to write (default: learning_curves.png)")

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
    cfg = config_from_args(args)
    train(cfg, show_progress=args.progress, argv=getattr(args, "command_line", None))
    print(f"run saved in {cfg.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    return run_eval(from_args(EvalSettings, args))


def cmd_audit(args: argparse.Namespace) -> int:
    return run_audit(from_args(AuditCommandSettings, args))


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(epochs=args.epochs, out=args.out, seed=args.seed)


def cmd_reproduce(args: argparse.Namespace) -> int:
    return run_reproduce(from_args(ReproduceSettings, args))


def cmd_report(args: argparse.Namespace) -> int:
    return run_report(args.runs, args.out)


def cmd_plot(args: argparse.Namespace) -> int:
    return run_plot(args.runs, args.out)


def cmd_data(args: argparse.Namespace) -> int:
    return run_data_download(args.name, args.root, args.source)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "audit": cmd_audit, "demo": cmd_demo,
            "reproduce": cmd_reproduce, "report": cmd_report, "plot": cmd_plot, "data": cmd_data}


class _SafeStream:
    """stdout or stderr as the commands see it: a character the terminal's encoding lacks ("ε" under
    PYTHONIOENCODING=ascii or a C locale) is written as an escape, and a reader that went away (``otrobust ... |
    head``) stops the output, not the work, so that what the command writes to files is still written."""

    def __init__(self, stream):
        self.stream, self.pipe_closed = stream, False

    def write(self, text: str) -> int:
        if self.pipe_closed:
            return len(text)
        try:
            try:
                return self.stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(self.stream, "encoding", None) or "ascii"
                return self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
        except BrokenPipeError:
            self._close()
            return len(text)

    def flush(self) -> None:
        if not self.pipe_closed:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._close()

    def _close(self) -> None:
        self.pipe_closed = True
        try:  # so that the flush at exit, of what is still buffered, cannot fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error is one line on stderr and exit status 2, a closed stdout pipe status 141 after the
    command has finished its work."""
    argv = sys.argv[1:] if argv is None else list(argv)
    out, err = _SafeStream(sys.stdout), _SafeStream(sys.stderr)
    sys.stdout, sys.stderr = out, err
    try:
        code = _main(argv)
        out.flush()
    finally:
        sys.stdout, sys.stderr = out.stream, err.stream
    return 141 if out.pipe_closed else code  # 128 + SIGPIPE, the shell's status for a closed pipe


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (already printed as one line) or --help
        return exc.code if isinstance(exc.code, int) else 0
    args.command_line = ["otrobust", *argv]  # recorded in the run's provenance
    try:
        return COMMANDS[args.command](args)
    except OtrobustError as exc:
        print(f"otrobust: error: {printable(' '.join(str(exc).splitlines()))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otrobust: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (otrobust ... | head): stop quietly, as a shell tool does
        try:  # so that the flush at exit cannot fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass
        return 141  # 128 + SIGPIPE
    except Exception as exc:  # a training run (of train or reproduce) stopped by a signal, its checkpoint saved

        if not isinstance(exc, Interrupted):
            raise
        print(f"otrobust: {exc}", file=sys.stderr)
        return 128 + exc.signum  # the shell's convention: 130 after SIGINT, 143 after SIGTERM


if __name__ == "__main__":
    sys.exit(main())
