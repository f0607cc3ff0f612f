"""Weights files from elsewhere: a safetensors file, or a PyTorch state-dict file read with
``weights_only=True`` (tensors and plain containers only: a pickle holding code is refused, never run).

The two functions are the contract for a model otrobust did not train: :func:`load_state_dict_file` reads the
file, :func:`load_into` checks that it fits the model (names and shapes) and loads it.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from otrobust.errors import OtrobustError, path_kind

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")  # how repositories nest them
SHOWN = 3  # names listed per kind of mismatch


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, by name, on the CPU.

    A checkpoint that nests its weights (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped; sparse tensors
    are made dense. OtrobustError, in one line, for a missing file, a file that is not weights, tensors without
    values (meta), or a pickle that would run code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise OtrobustError(f"--weights {str(path)!r} {path_kind(path)}; give a .safetensors or PyTorch "
                            "state-dict file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise OtrobustError(f"--weights {str(path)!r} is not a valid safetensors file ({exc})") from None
    else:
        state = _torch_file(path)
    return _unwrap(state, path)


def _torch_file(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found or zipfile.is_zipfile(path):
            what = f" ({found.group(1)})" if found else ""
            raise OtrobustError(f"--weights {str(path)!r} is a pickle holding code or objects other than tensors"
                                f"{what}; otrobust never unpickles those: save model.state_dict() with torch.save, "
                                "or as safetensors") from None
        raise OtrobustError(f"--weights {str(path)!r} is not a PyTorch weights file") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise OtrobustError(f"--weights {str(path)!r} is not a PyTorch weights file "
                            f"({' '.join(str(exc).split())[:120]})") from None


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"state_dict": {"model": {...}}} at most
        if isinstance(state, dict) and not _all_tensors(state):
            inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        raise OtrobustError(f"--weights {str(path)!r} holds no state dict (a mapping of names to tensors); found "
                            f"{type(state).__name__}" + (f" with keys {', '.join(map(str, list(state)[:SHOWN]))}"
                                                         if isinstance(state, dict) else ""))
    if any(t.is_meta for t in state.values()):
        raise OtrobustError(f"--weights {str(path)!r} holds tensors on the meta device, which have no values")
    # A sparse tensor holds the same numbers as its dense form, which is what a module's parameters take.
    return {k: v.to_dense() if v.layout != torch.strided else v for k, v in state.items()}


def _all_tensors(d: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _without_data_parallel_prefix(state: dict[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with the ``module.`` prefix that ``DataParallel`` adds dropped, when every name has it and
    dropping it is what makes the names the model's (a model with a submodule called ``module`` keeps it)."""
    if not state or not all(k.startswith("module.") for k in state) or set(state) == names:
        return state
    stripped = {k.removeprefix("module."): v for k, v in state.items()}
    if all(k.startswith("module.") for k in names) and set(stripped) != names:
        return state  # the model's own names start with module.: only a prefix that makes them match goes
    return stripped


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``model`` after checking that it fits: OtrobustError naming the first few missing and
    unexpected names and shape mismatches otherwise. The ``module.`` prefix of a ``DataParallel`` model's names is
    dropped where that makes them the model's."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = _without_data_parallel_prefix(state, set(want))
    have = {k: tuple(v.shape) for k, v in state.items()}
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    shapes = [f"{k} (file {list(have[k])}, model {list(want[k])})" for k in want if k in have and have[k] != want[k]]
    problems = [f"{len(names)} {kind}: {', '.join(names[:SHOWN])}" + (", ..." if len(names) > SHOWN else "")
                for kind, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
                if names]
    if problems:
        raise OtrobustError(f"--weights {source!r} do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model
