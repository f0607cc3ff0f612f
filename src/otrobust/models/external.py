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
import io
import sys
from collections.abc import Callable
from pathlib import Path

import torch
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
    # The file runs as `python FILE.py` would run it, with no arguments: a script that parses sys.argv at import
    # must not read otrobust's own. What it prints to stderr is held back and shown if it fails.
    argv, stderr, held = sys.argv, sys.stderr, io.StringIO()
    sys.argv, sys.stderr = [str(path)], held
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's code: whatever ends it is reported in one line
        del sys.modules[name]
        said = held.getvalue().strip().splitlines()
        raise OtrobustError(f"--model: running {str(path)!r} failed: {_what_failed(exc)}"
                            + (f" (it said: {said[-1][:200]})" if said else "")
                            + ("; guard the file's script code with if __name__ == '__main__':"
                               if isinstance(exc, SystemExit) else "")) from None
    finally:
        sys.argv, sys.stderr = argv, stderr
    stderr.write(held.getvalue())
    return module


def _what_failed(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) when imported"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


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
    except (Exception, SystemExit) as exc:
        raise OtrobustError(f"--model: {name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed: "
                            f"{_what_failed(exc)}") from None
    if not isinstance(model, nn.Module):
        raise OtrobustError(f"--model: {name} returned a {type(model).__name__}, not a torch.nn.Module")
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise OtrobustError(f"--model: {name} returned a model on the meta device (its weights hold no values); "
                            "build it with real tensors (otrobust loads --weights into them)")
    return model


class UserModel(nn.Module):
    """A model otrobust did not write, as it is evaluated: in float32 (``model.float()``), any error its forward
    raises turned into one OtrobustError line, and with ``copy_input`` a copy of its input handed to each forward
    (for a model that writes into its input, which would otherwise change the test images or the attack's
    variable)."""

    def __init__(self, model: nn.Module, copy_input: bool = False):
        super().__init__()
        self.model, self.copy_input = model.float(), copy_input

    def forward(self, x):
        try:
            return self.model(x.clone() if self.copy_input else x)
        except OtrobustError:
            raise
        except (Exception, SystemExit) as exc:
            raise OtrobustError(f"the model's forward failed on a batch of {len(x)} images: "
                                f"{_what_failed(exc)}") from None


def writes_into_input(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether a forward of ``model`` changes its input ``x`` (checked on a copy; ``x`` is left as it was)."""
    probe = x.clone()
    version = probe._version  # counts in-place writes, even those that leave the values as they were
    with torch.no_grad():
        model(probe)
    return probe._version != version or not torch.equal(probe, x)


def dtypes_cast(model: nn.Module) -> list[str]:
    """The floating dtypes other than float32 among ``model``'s weights and buffers (what ``.float()`` changes)."""
    return sorted({str(t.dtype).removeprefix("torch.") for t in (*model.parameters(), *model.buffers())
                   if t.is_floating_point() and t.dtype != torch.float32})
