"""One writer per folder: ``train`` holds ``RUN_DIR/.otrobust-lock`` while it runs, ``eval`` its recorded batches'
folder's.

Two runs writing the same checkpoints and metrics would corrupt each other's resume state, so the second
one is refused with one line. A lock left behind by a process that no longer exists (killed, machine
restarted) is taken over, so ``--resume`` after a crash needs nothing by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from otrobust.errors import OtrobustError, path_kind

LOCK_NAME = ".otrobust-lock"


def lock_owner(path: Path) -> int | None:
    """The pid written in a lock file (None if unreadable or not a number)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _running(pid: int) -> bool:
    """True if ``pid`` is a live process that could be otrobust (on Linux, its command line is checked, so a
    recycled pid of an unrelated program does not hold the lock)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes().decode(errors="replace").lower()
        except OSError:
            return True
        return "otrobust" in text or "python" in text
    return True


@contextmanager
def run_lock(run_dir: str | Path, flag: str = "--out") -> Iterator[Path]:
    """Hold the run directory's lock for the block; raise OtrobustError if another live process holds it (the
    message tells the user to choose another ``flag``).

    The directory is created if needed, and removed again on exit if the block left it empty.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise OtrobustError(f"{flag} {str(run_dir)!r} is {path_kind(run_dir)}, not a folder; choose another {flag}")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OtrobustError(f"cannot create the run directory {str(run_dir)!r}: {exc.strerror or exc}") from exc
    path = run_dir / LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = lock_owner(path)
            if owner is not None and owner != os.getpid() and _running(owner):
                raise OtrobustError(f"another otrobust process (pid {owner}) is writing to {str(run_dir)!r}; wait "
                                    f"for it or stop it, or choose another {flag} (its lock: {str(path)!r})") from None
            path.unlink(missing_ok=True)  # left by a process that is gone
            continue
        except OSError as exc:
            raise OtrobustError(f"cannot lock the run directory {str(run_dir)!r}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise OtrobustError(f"could not take the lock {str(path)!r}: another process keeps recreating it")
    try:
        yield path
    finally:
        if lock_owner(path) == os.getpid():
            path.unlink(missing_ok=True)
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
