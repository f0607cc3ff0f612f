"""Everything on disk about a run: layout, metrics.jsonl, provenance, atomic checkpoints, safe loading.

A checkpoint is ONE safetensors file: the model's weights, optimiser/scheduler tensors under
prefixed keys, and everything else (config, epoch, step, non-tensor optimiser state) as JSON in the
file's metadata. Nothing is ever unpickled, and one atomic rename makes the whole state visible.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from otrobust.errors import OtrobustError

CHECKPOINT_DIR = "checkpoints"
FORMAT = "otrobust-checkpoint-1"


# ---------------------------------------------------------------- atomic files
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a reader sees old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OtrobustError(f"could not write {str(path)!r}: {exc.strerror or exc}") from None
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a metrics log, ignoring a torn last line left by a crash."""
    if not Path(path).exists():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
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


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], meta: dict[str, Any],
                    extra_state: dict[str, Any] | None = None) -> None:
    """Atomically write weights (keys ``model.*``), extra state (optimiser, scheduler…) and JSON meta."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model_state.items()}
    structure = _flatten(extra_state or {}, "state", tensors)
    metadata = {"format": FORMAT, "meta": json.dumps(meta), "state": json.dumps(structure)}
    atomic_write_bytes(Path(path), st_save(tensors, metadata=metadata))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint safely -> ``(model_state, meta, extra_state)``; never executes code."""
    path = Path(path)
    if not path.is_file():
        raise OtrobustError(f"checkpoint {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        from safetensors import safe_open  # metadata lives in the header

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, ValueError, OSError, Exception) as exc:  # any parse failure is "not ours"
        raise OtrobustError(f"{str(path)!r} is not a valid otrobust checkpoint (safetensors): "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if metadata.get("format") != FORMAT:
        raise OtrobustError(f"{str(path)!r} is a safetensors file but not an otrobust checkpoint")
    try:
        meta = json.loads(metadata["meta"])
        extra = _unflatten(json.loads(metadata["state"]), tensors)
    except (KeyError, ValueError) as exc:
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


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], meta: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``model`` or raise OtrobustError saying which architecture the file holds."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        arch = meta.get("architecture", {})
        raise OtrobustError(
            f"checkpoint {source!r} holds a {arch.get('model', '?')} model with {arch.get('num_classes', '?')} "
            f"classes and {arch.get('in_channels', '?')} input channels (latent {arch.get('latent', '?')}), "
            f"which does not match the model being loaded") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from a run directory or checkpoint; returns an ``nn.Module`` in eval mode
    taking [0, 1] images ``(N, C, H, W)`` and returning logits ``(N, M)``."""
    from otrobust.models import create_model

    ckpt = resolve_checkpoint(path)
    state, meta, _ = load_checkpoint(ckpt)
    arch = meta.get("architecture")
    if not arch:
        raise OtrobustError(f"checkpoint {str(ckpt)!r} does not record its architecture")
    model = create_model(arch["model"], num_classes=arch["num_classes"], in_channels=arch["in_channels"],
                         image_size=arch["image_size"], latent=arch.get("latent", "penultimate"))
    load_weights(model, state, meta, str(ckpt))
    return model.to(device).eval()


# ---------------------------------------------------------------- provenance
def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Versions, git commit (if any) and the command line, for the run record."""
    from otrobust import __version__

    commit = None
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "otrobust": __version__,
        "git_commit": commit,
        "platform": platform.platform(),
        "argv": list(sys.argv if argv is None else argv),
    }
