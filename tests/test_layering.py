"""The package's import direction: a module imports only from its own layer or the layers below it.

Layers, lowest first. ``ot``, ``distributed`` and ``devices`` are self-contained; ``store`` knows the checkpoint format
and the models it rebuilds; evaluation sits below training because training validates with it; reporting
renders what evaluation and training produce; experiments drive all of it; nothing imports ``cli``.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "otrobust"
LAYERS = (
    ("errors", "settings"),
    ("ot", "distributed", "devices"),
    ("models", "data"),
    ("attacks",),
    ("store",),
    ("evaluation",),
    ("training",),
    ("reporting",),
    ("experiments",),
    ("cli",),
)
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
TOP = ("__init__", "__main__")  # the public API and the entry point may import anything


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0].removesuffix(".py") not in TOP)


def _unit(path: Path) -> str:
    """The top-level module or subpackage a file belongs to: ``training/loop.py`` -> ``training``."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_units(path: Path) -> set[str]:
    """Every otrobust unit the file imports, at the top or inside a function."""
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "otrobust":
                units.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "otrobust" and len(parts) > 1:
                    units.add(parts[1])
    return units - {"__version__"}


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in _modules()}
    assert units - set(LEVEL) == set(), "add the new module or subpackage to LAYERS"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    unit = _unit(path)
    upward = {u for u in _imported_units(path) if u in LEVEL and LEVEL[u] > LEVEL[unit]}
    assert upward == set(), f"{path.relative_to(PACKAGE)} ({unit}) imports the higher layer(s) {sorted(upward)}"


def test_the_library_never_imports_cli():
    importers = [p for p in _modules() if _unit(p) != "cli" and "cli" in _imported_units(p)]
    assert importers == []


def test_the_check_catches_an_upward_import(tmp_path):
    fake = PACKAGE / "attacks" / "gradient.py"
    source = fake.read_text() + "\nfrom otrobust.training.config import TrainConfig\n"
    (tmp_path / "x.py").write_text(source)
    tree_units = _imported_units(tmp_path / "x.py")
    assert "training" in tree_units and LEVEL["training"] > LEVEL["attacks"]
