"""The checkpoint format and safe loading.

A checkpoint is ONE safetensors file: the model's weights, optimiser/scheduler tensors under
prefixed keys, and everything else (config, epoch, step, non-tensor optimiser state) as JSON in the
file's metadata, plus a CRC-32 of all of it. Nothing is ever unpickled, one atomic rename makes the
whole state visible, and a file damaged after it was written is refused instead of half-trusted.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from otrobust.errors import OtrobustError, path_kind
from otrobust.models.architecture import Architecture
from otrobust.store.files import CHECKPOINT_DIR, atomic_write_bytes

FORMAT = "otrobust-checkpoint-1"


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


def checkpoint_architecture(meta: dict[str, Any], source: str) -> Architecture:
    """The :class:`Architecture` a checkpoint's meta records, checked field by field."""
    return Architecture.from_dict(meta.get("architecture"), source)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from a run directory or checkpoint; returns an ``nn.Module`` in eval mode
    taking [0, 1] images ``(N, C, H, W)`` and returning logits ``(N, M)``."""
    return load_model_with_meta(path, device)[0]


def load_model_with_meta(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any],
                                                                                     Path]:
    """:func:`load_model`, with the checkpoint's metadata and file, from one read of the file."""
    ckpt = resolve_checkpoint(path)
    state, meta, _ = load_checkpoint(ckpt)
    arch = checkpoint_architecture(meta, str(ckpt))

    def build() -> nn.Module:
        try:
            return arch.build()
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
    return model.to(device).eval(), meta, ckpt


