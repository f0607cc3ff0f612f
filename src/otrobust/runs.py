"""Everything on disk about a run: layout, metrics.jsonl, provenance, atomic checkpoints, safe loading.

A checkpoint is ONE safetensors file: the model's weights, optimiser/scheduler tensors under
prefixed keys, and everything else (config, epoch, step, non-tensor optimiser state) as JSON in the
file's metadata, plus a CRC-32 of all of it. Nothing is ever unpickled, one atomic rename makes the
whole state visible, and a file damaged after it was written is refused instead of half-trusted.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from otrobust.errors import OtrobustError, path_kind

CHECKPOINT_DIR = "checkpoints"
FORMAT = "otrobust-checkpoint-1"
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
    atomic_write_bytes(path, text.encode())


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


# ---------------------------------------------------------------- state flattening
def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure by ``{"__tensor__": key}``; collect the tensors."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, f"{prefix}.k{i}", tensors), _flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """CRC-32 over the metadata and every tensor's name, dtype, shape and bytes, in a fixed order."""
    crc = zlib.crc32(json.dumps(metadata, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        crc = zlib.crc32(f"{key}|{t.dtype}|{tuple(t.shape)}".encode(), crc)
        crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], meta: dict[str, Any],
                    extra_state: dict[str, Any] | None = None) -> None:
    """Atomically write weights (keys ``model.*``), extra state (optimiser, scheduler…) and JSON meta."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model_state.items()}
    structure = _flatten(extra_state or {}, "state", tensors)
    metadata = {"format": FORMAT, "meta": json.dumps(meta), "state": json.dumps(structure)}
    metadata["crc32"] = _checksum(tensors, metadata)
    atomic_write_bytes(Path(path), st_save(tensors, metadata=metadata))


def _parse_checkpoint(path: Path, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file; any parse failure becomes OtrobustError."""
    try:
        if len(data) < 8:
            raise ValueError("file too short")
        header_len = int.from_bytes(data[:8], "little")
        if header_len > len(data) - 8:
            raise ValueError("header longer than the file")
        header = json.loads(data[8:8 + header_len])
        metadata = (header.get("__metadata__") or {}) if isinstance(header, dict) else None
        if not isinstance(metadata, dict):
            raise ValueError("bad header")
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises several types; whatever fails to parse is "not ours"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OtrobustError(f"{str(path)!r} is not a valid otrobust checkpoint (safetensors): {reason}") from None
    return tensors, metadata


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint safely -> ``(model_state, meta, extra_state)``; never executes code."""
    path = Path(path)
    kind = path_kind(path)
    if kind != "a file":  # a FIFO would block the read and /dev/zero never end it
        what = "does not exist" if kind == "missing" else f"is {kind}, not a checkpoint file"
        raise OtrobustError(f"checkpoint {str(path)!r} {what}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OtrobustError(f"cannot read checkpoint {str(path)!r}: {exc.strerror or exc}") from None
    tensors, metadata = _parse_checkpoint(path, data)
    if metadata.get("format") != FORMAT:
        raise OtrobustError(f"{str(path)!r} is a safetensors file but not an otrobust checkpoint")
    stored = metadata.pop("crc32", None)
    if stored is not None and stored != _checksum(tensors, metadata):
        raise OtrobustError(f"checkpoint {str(path)!r} is corrupt (checksum mismatch); use another copy")
    try:
        meta = json.loads(metadata["meta"])
        extra = _unflatten(json.loads(metadata["state"]), tensors)
        if not isinstance(meta, dict) or not isinstance(extra, dict):
            raise ValueError("meta and state must be JSON objects")
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise OtrobustError(f"checkpoint {str(path)!r} has corrupt metadata: {exc}") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return model_state, meta, extra


def checkpoint_path(run_dir: Path, which: str) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"{which}.safetensors"


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's best (else last) checkpoint."""
    path = Path(path)
    if path.is_dir():
        for which in ("best", "last"):
            if checkpoint_path(path, which).is_file():
                return checkpoint_path(path, which)
        raise OtrobustError(f"run directory {str(path)!r} holds no checkpoint ({CHECKPOINT_DIR}/best|last)")
    if not path.exists():
        raise OtrobustError(f"no run directory or checkpoint at {str(path)!r}")
    return path


def describe_architecture(meta: dict[str, Any]) -> str:
    arch = meta.get("architecture") if isinstance(meta.get("architecture"), dict) else {}
    return (f"a {arch.get('model', '?')} model with {arch.get('num_classes', '?')} classes and "
            f"{arch.get('in_channels', '?')} input channels (latent {arch.get('latent', '?')})")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], meta: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``model`` or raise OtrobustError saying which architecture the file holds."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise OtrobustError(f"checkpoint {source!r} holds {describe_architecture(meta)}, which does not match "
                            f"the model being loaded") from None


ARCH_FIELDS = {"model": str, "num_classes": int, "in_channels": int, "image_size": int, "latent": str,
               "dataset": str}


def checkpoint_architecture(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """The ``architecture`` record of a checkpoint's meta, checked field by field."""
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise OtrobustError(f"checkpoint {source!r} does not record its architecture")
    for name, kind in ARCH_FIELDS.items():
        value = arch.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and not 0 < value <= 100_000):
            raise OtrobustError(f"checkpoint {source!r} has a bad architecture record: {name}={value!r}")
    return arch


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from a run directory or checkpoint; returns an ``nn.Module`` in eval mode
    taking [0, 1] images ``(N, C, H, W)`` and returning logits ``(N, M)``."""
    from otrobust.models import create_model

    ckpt = resolve_checkpoint(path)
    state, meta, _ = load_checkpoint(ckpt)
    arch = checkpoint_architecture(meta, str(ckpt))

    def build() -> nn.Module:
        try:
            return create_model(arch["model"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                                image_size=arch["image_size"], latent=arch["latent"])
        except ValueError as exc:
            raise OtrobustError(f"checkpoint {str(ckpt)!r} records an impossible architecture: {exc}") from None

    # Check names and shapes on the meta device first: a wrong record must not allocate a huge model.
    with torch.device("meta"):
        skeleton = build().state_dict()
    if {k: tuple(v.shape) for k, v in skeleton.items()} != {k: tuple(v.shape) for k, v in state.items()}:
        raise OtrobustError(f"checkpoint {str(ckpt)!r} claims to hold {describe_architecture(meta)}, "
                            f"but its weights do not fit that architecture")
    model = build()
    load_weights(model, state, meta, str(ckpt))
    return model.to(device).eval()


# ---------------------------------------------------------------- provenance
@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the git checkout holding this package, if it is one."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)

    try:
        # The package must be tracked by that repository: a venv inside someone's project is not us.
        if git("ls-files", "--error-unmatch", Path(__file__).name).returncode != 0:
            return None, None
        commit = git("rev-parse", "HEAD").stdout.strip() or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def versions() -> dict[str, Any]:
    """Versions of everything that changes a run's numbers, and the git commit of otrobust if any."""
    import numpy
    import safetensors

    from otrobust import __version__

    commit, dirty = _git_state()
    return {
        "otrobust": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
    }


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Versions, git commit (if any), the command line, working folder, time and CPU thread count."""
    return {
        **versions(),
        "argv": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- resume
# Settings that fix what a step index means or which state the checkpoint holds: changing one on
# --resume would silently give a different run, so it is refused.
RESUME_FIXED = ("dataset", "model", "latent", "method", "ot_solver", "optimizer", "schedule", "seed",
                "batch_size", "train_size", "val_size")


def restart_would_overwrite(run_dir: Path) -> list[str]:
    """What starting ``run_dir`` from epoch 1 would overwrite when it has no last checkpoint: the epochs logged
    in metrics.jsonl and the best checkpoint. Empty when nothing would be lost: a new folder, a run killed
    before its first checkpoint, or one killed between its first best and its first last checkpoint (both
    hold epoch 1 and nothing is logged yet; the restart writes the same best checkpoint again)."""
    records = read_jsonl(Path(run_dir) / "metrics.jsonl")
    found = [f"metrics.jsonl with {len(records)} logged epoch{'' if len(records) == 1 else 's'}"] if records else []
    best = checkpoint_path(run_dir, "best")
    if best.is_file():
        epoch = load_checkpoint(best)[1].get("epoch")
        if records or epoch != 1:
            found.append(f"{CHECKPOINT_DIR}/best.safetensors (epoch {epoch})")
    return found


def check_nothing_lost(run_dir: Path, resume: bool) -> None:
    """Raise OtrobustError if training in ``run_dir`` would start from epoch 1 (no last checkpoint, e.g. it was
    deleted) over what an earlier run left there (see :func:`restart_would_overwrite`), naming what survives
    and how to start over deliberately."""
    if checkpoint_path(run_dir, "last").exists():
        return
    found = restart_would_overwrite(run_dir)
    if found:
        how = "--resume would start again from epoch 1" if resume else "training there would start from epoch 1"
        best = checkpoint_path(run_dir, "best")
        init = f" (add --init {best} to start from its best weights)" if best.is_file() else ""
        raise OtrobustError(f"{str(run_dir)!r} has no {CHECKPOINT_DIR}/last.safetensors but holds "
                            f"{' and '.join(found)}: {how} and overwrite them, so nothing was changed; to start "
                            f"over deliberately, move or delete {str(run_dir)!r} first, or train into a new "
                            f"--out{init}")


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Raise OtrobustError if ``current`` changes a setting in RESUME_FIXED from the checkpoint's config, or
    asks for an ``--init`` other than the one the run started from (resuming would ignore it)."""
    if current.get("init") and current["init"] != saved.get("init"):
        started = f"--init {saved['init']}" if saved.get("init") else "fresh weights"
        raise OtrobustError(f"--resume and --init {current['init']} cannot go together: a resumed run continues from "
                            f"its own last checkpoint ({source!r}; the run started from {started}), so --init would "
                            "be ignored; drop --init to resume, or start a new --out with --init to train from those "
                            "weights")
    for name in RESUME_FIXED:
        if name in saved and saved[name] != current.get(name):
            raise OtrobustError(f"cannot resume {source!r} with --{name.replace('_', '-')} {current.get(name)!r}: "
                                f"the run was started with {saved[name]!r} (start a new --out instead)")
    schedule = saved.get("schedule", "none")
    if schedule != "none" and "epochs" in saved and saved["epochs"] != current.get("epochs"):
        raise OtrobustError(f"cannot resume {source!r} with --epochs {current.get('epochs')}: its {schedule} "
                            f"learning-rate schedule is laid out over {saved['epochs']} epoch"
                            f"{'' if saved['epochs'] == 1 else 's'} (to train longer, "
                            f"start a new --out with --init {source})")
