"""SIGINT and SIGTERM during training: a flag checked between steps, and the exception raised once the last
checkpoint is on disk."""

from __future__ import annotations

import signal


class Interrupted(Exception):
    """Raised after SIGINT/SIGTERM once the last checkpoint is safely on disk; ``signum`` is the signal (the CLI
    exits with 128 + signum: 130 for SIGINT, 143 for SIGTERM)."""

    signum: int = signal.SIGINT


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the checkpoint written is consistent."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self.saved:
            try:
                signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, Interrupted) and self.signum is not None:
            exc.signum = self.signum
        for s, h in self.saved.items():
            try:
                signal.signal(s, h)
            except ValueError:
                pass
