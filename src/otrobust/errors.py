"""The one user-facing error type: a one-line message naming the bad input and the fix."""

from __future__ import annotations

import stat
from pathlib import Path


class OtrobustError(Exception):
    """A problem with the user's input (config, data, checkpoint); the CLI prints it as one line."""


class NoInputGradient(OtrobustError):
    """The model's output does not depend on its input in the autograd graph, so no gradient attack can run.

    The audit reports it as a failed check instead of stopping; everywhere else it is an ordinary error."""


KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def path_kind(path: str | Path) -> str:
    """What ``path`` is, for an error message: "a folder", "a file", "a named pipe (FIFO)", ... or "missing"."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return next((name for test, name in KINDS if test(mode)), "not a file")


def printable(text: object) -> str:
    """``text`` safe to show on a terminal or in a Markdown file: every character that is not printable (control
    characters such as ESC, which could retitle or clear a terminal, line breaks, bidirectional overrides, the
    surrogates of a file name that is not UTF-8) written as its escape, e.g. ``\\x1b``."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)
