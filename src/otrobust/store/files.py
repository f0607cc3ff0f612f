"""Atomic files: write-to-temp-then-rename, JSONL append, writability checks, and the fault-injection hook
the crash-safety tests use.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from otrobust.errors import OtrobustError

CHECKPOINT_DIR = "checkpoints"  # inside a run folder
TEMP_SUFFIX = ".tmp"

# ---------------------------------------------------------------- fault injection (test hook)
FAULT_ENV = "OTROBUST_TEST_KILL_AT"
FAULT_PHASES = ("step", "validation", "checkpoint", "write", "append")
_fault_counts: dict[str, int] = {}


def fault_point(phase: str) -> None:
    """Test hook for the crash-safety tests; does nothing unless ``OTROBUST_TEST_KILL_AT`` is set.

    ``OTROBUST_TEST_KILL_AT=PHASE:N[:SIGNAL]`` makes the process send itself SIGNAL (default SIGKILL)
    the N-th time it reaches PHASE: ``step`` (after the backward pass, before the optimiser step),
    ``validation`` (inside the per-epoch validation), ``checkpoint`` (half-way through writing a
    ``.safetensors`` file), ``write`` (half-way through any other atomic write) or ``append``
    (half-way through appending a line to provenance.jsonl or metrics.jsonl). Counts start at 1 in
    each process.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in FAULT_PHASES or not parts[1].isdigit():
        raise OtrobustError(f"{FAULT_ENV}={spec!r} is not PHASE:N[:SIGNAL] with PHASE one of "
                            f"{', '.join(FAULT_PHASES)}")
    if parts[0] != phase:
        return
    _fault_counts[phase] = _fault_counts.get(phase, 0) + 1
    if _fault_counts[phase] == int(parts[1]):
        os.kill(os.getpid(), getattr(signal, parts[2]) if len(parts) == 3 else signal.SIGKILL)


# ---------------------------------------------------------------- atomic files
def _write_error(path: Path, exc: OSError) -> OtrobustError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "the disk is full; free some space (the previous file is intact)"
    elif exc.errno == errno.EROFS:
        hint = "the file system is read-only; choose another --out"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        hint = "no permission to write there; choose another --out"
    else:
        hint = exc.strerror or str(exc)
    return OtrobustError(f"could not write {str(path)!r}: {hint}")


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a reader sees old or new, never half.

    Any OSError (a full disk, no permission) leaves the old file untouched, removes the temp file and
    becomes one OtrobustError.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            # mkstemp makes the file private (0600); give it the usual mode so that shared runs stay readable
            os.chmod(tmp, 0o666 & ~_umask())
            view, half = memoryview(data), len(data) // 2
            _write_all(fd, view[:half])
            fault_point("checkpoint" if path.suffix == ".safetensors" else "write")
            _write_all(fd, view[half:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, exc) from None
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8; a file name that is not UTF-8 (held in surrogates) is
    written back as its own bytes."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name can hold
        data = text.encode("utf-8", "backslashreplace")
    atomic_write_bytes(path, data)


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write and remove a probe file in it, so that a read-only or otherwise
    unwritable output folder is refused before the work whose results would go there, with the same
    one-line OtrobustError as a failed write."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _write_error(folder, exc) from None


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files (``.NAME.*.tmp``) that a writer killed mid-write left in a run directory
    or its checkpoint folder; returns them."""
    stale = [p for folder in (Path(run_dir), Path(run_dir) / CHECKPOINT_DIR) if folder.is_dir()
             for p in sorted(folder.glob(f".*{TEMP_SUFFIX}"))]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it; on a write error the file is cut back to its old length."""
    line = (json.dumps(record) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise _write_error(Path(path), exc) from None
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, memoryview(line)[:len(line) // 2])
            fault_point("append")
            _write_all(fd, memoryview(line)[len(line) // 2:])
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass  # read_jsonl ignores a torn last line, and training rewrites the log on start
            raise _write_error(Path(path), exc) from None
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a metrics log, ignoring a torn last line left by a crash."""
    if not Path(path).exists():
        return []
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records




def cache_key(files: dict[str, Path], **settings: Any) -> str:
    """A short hash of files (each by name, size and modification time) and of the settings of what was computed
    from them: the name of a cache entry, which a changed file or other settings make stale."""
    ident = {label: [f.name, f.stat().st_size, f.stat().st_mtime_ns] for label, f in files.items()}
    return hashlib.sha256(json.dumps({**ident, **settings}, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # a loop of links, an unreadable folder
        return False


def check_outputs_spare_inputs(outputs: dict[str, str | Path | None], inputs: list[Path],
                               input_folders: list[Path] = ()) -> None:
    """Refuse (OtrobustError) an output that is one of the ``inputs`` (a checkpoint, a run's config.json, a weights
    file...), an existing file inside one of ``input_folders`` (a data folder) or another output: writing it would
    destroy what it was computed from. ``outputs`` maps each flag to its path (None: not asked for)."""
    named = {flag: Path(path).expanduser() for flag, path in outputs.items() if path is not None}
    for i, (flag, path) in enumerate(named.items()):
        hit = next((f for f in inputs if _same_file(path, Path(f))), None)
        if hit is not None:
            raise OtrobustError(f"{flag} {str(path)!r} is an input of this command ({str(hit)!r}); writing it would "
                                f"destroy it: choose another {flag}")
        for folder in input_folders:
            if path.exists() and path.resolve().is_relative_to(Path(folder).resolve()):
                raise OtrobustError(f"{flag} {str(path)!r} is a file of the data folder {str(folder)!r}; writing it "
                                    f"would destroy it: choose another {flag}")
        twin = next((other for other, p in list(named.items())[:i] if _same_file(path, p)), None)
        if twin is not None:
            raise OtrobustError(f"{twin} and {flag} name the same file {str(path)!r}; give each its own")


def typed_fields(data: Any, types: dict[str, type | tuple[type, ...]], source: str,
                 required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data`` (a JSON object read back from a file) checked against ``types``, key by key: the keys ``required``
    must be there, none other than those of ``types`` may; a value may be None where its key is not required or its
    types include ``type(None)``, and a bool is not a number. Anything else is one OtrobustError naming ``source``
    and the key. Returns a copy of ``data``."""
    if not isinstance(data, dict):
        raise OtrobustError(f"{source} should be an object, found {type(data).__name__}")
    unknown = [k for k in data if k not in types]
    if unknown:
        raise OtrobustError(f"{source} has unknown field(s) {', '.join(map(repr, unknown))}")
    missing = [k for k in required if k not in data]
    if missing:
        raise OtrobustError(f"{source} lacks {', '.join(missing)}")
    for key, value in data.items():
        kind = types[key]
        if value is None and (key not in required or type(None) in _kinds(kind)):
            continue
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            names = " or ".join(k.__name__ for k in _kinds(kind))
            raise OtrobustError(f"{source}: {key} should be {names}, found {type(value).__name__}")
    return dict(data)


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
