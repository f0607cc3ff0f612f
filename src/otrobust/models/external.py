"""A model otrobust did not define: a factory named ``FILE.py:NAME`` or ``package.module:NAME``.

The factory is called with whichever of ``num_classes``, ``in_channels`` and ``image_size`` it accepts and must
return an ``nn.Module`` taking ``(N, C, H, W)`` images and returning ``(N, num_classes)`` logits. Naming a file
runs it, as ``python FILE.py`` would: name only code you trust. (Weights never run code; see
``store.weights``.)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from otrobust.errors import OtrobustError

GEOMETRY = ("num_classes", "in_channels", "image_size")


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable that ``spec`` (``FILE.py:NAME`` or ``module:NAME``) names; OtrobustError if it is not there."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise OtrobustError(f"--model {spec!r} must be FILE.py:FACTORY or package.module:FACTORY")
    module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
    factory = getattr(module, name, None)
    if factory is None:
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise OtrobustError(f"--model: {where} defines no {name!r}" + (f"; it defines {', '.join(defined[:8])}"
                                                                      if defined else ""))
    if not callable(factory):
        raise OtrobustError(f"--model: {where}:{name} is a {type(factory).__name__}, not a factory function or class")
    return factory


def _import_file(path: Path):
    path = path.expanduser()
    if not path.is_file():
        raise OtrobustError(f"--model: no file {str(path)!r}")
    # A name of its own per file, so that two model files called model.py do not collide.
    name = "otrobust_user_model_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any error it raises is reported in one line
        del sys.modules[name]
        raise OtrobustError(f"--model: running {str(path)!r} failed: {type(exc).__name__}: {exc}") from None
    return module


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise OtrobustError(f"--model: no module {exc.name!r} (for a file, give its path ending in .py)") from None
    except Exception as exc:
        raise OtrobustError(f"--model: importing {name!r} failed: {type(exc).__name__}: {exc}") from None


def build_external(factory: Callable[..., nn.Module], *, num_classes: int, in_channels: int, image_size: int,
                   name: str = "the factory") -> nn.Module:
    """``factory(**the geometry it accepts)``, checked to be an ``nn.Module``."""
    given = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in given.items() if takes_all or k in params}
    except (TypeError, ValueError):  # a builtin without a signature
        kwargs = {}
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise OtrobustError(f"--model: {name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed: "
                            f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise OtrobustError(f"--model: {name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
