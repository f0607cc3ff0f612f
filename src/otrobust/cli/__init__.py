"""The ``otrobust`` command: flags, the commands behind them, one-line errors. Nothing in the library
imports this package."""

from otrobust.cli.main import main

__all__ = ["main"]
