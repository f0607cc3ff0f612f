"""One name, one room, one address: a file is named for what it holds, a name is imported from the module that
defines it, and the package's own modules are imported at the top of a file.

- No two modules of one file name in different subpackages (``__init__.py`` aside): ``evaluation/settings.py``
  beside ``settings.py`` leaves a reader guessing which one a mention means.
- No re-export shims: outside a package's ``__init__.py`` (the public face, and the imports that register models
  and datasets), a module imports only the otrobust names it uses itself; and every ``from otrobust.x.y import
  NAME`` in the sources, the tests and the benchmarks names the module that defines ``NAME``.
- An import of otrobust inside a function carries a comment saying why it is not at the top (an optional
  dependency, the command line's start-up time, an import cycle), on its line or on the line above its group.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "otrobust"
IMPORTERS = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def shared_file_names(paths: list[Path]) -> dict[str, list[str]]:
    """File name -> the modules of that name, for every name held by modules in more than one folder."""
    by_name = defaultdict(list)
    for p in paths:
        by_name[p.name].append(p.relative_to(PACKAGE).as_posix())
    return {name: sorted(where) for name, where in by_name.items() if len(where) > 1}


def _otrobust_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
            and node.module.split(".")[0] == "otrobust"]


def unused_imports(source: str) -> list[str]:
    """The names a module imports from otrobust and never uses itself: re-exports."""
    tree = ast.parse(source)
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    # A quoted annotation ("Foo") uses Foo too.
    used |= {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and node.value.isidentifier()}
    return sorted(alias.asname or alias.name for node in _otrobust_imports(tree) for alias in node.names
                  if (alias.asname or alias.name) not in used)


def defined_names(path: Path) -> set[str]:
    """The names a module defines at its top level (functions, classes, assignments), not those it imports."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(sub.name)
            elif isinstance(sub, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def borrowed_names(source: str) -> list[str]:
    """``module.NAME`` for every ``from otrobust.module import NAME`` whose module is a file (not a package) that
    does not define NAME: the name was imported from a module that only passes it on."""
    found = []
    for node in _otrobust_imports(ast.parse(source)):
        file = PACKAGE.joinpath(*node.module.split(".")[1:]).with_suffix(".py")
        if not file.is_file():
            continue  # a package (its __init__ is its public face) or a submodule imported by name
        defined = defined_names(file)
        found += [f"{node.module}.{a.name}" for a in node.names if a.name not in defined]
    return found


def _says_why(line: str) -> bool:
    """Whether ``line`` carries a comment with words in it (a bare ``# noqa: ...`` says nothing)."""
    comment = line.partition("#")[2]
    return bool(re.sub(r"noqa(:\s*[A-Z]+\d+(,\s*[A-Z]+\d+)*)?", "", comment).strip(" ()"))


def uncommented_local_imports(source: str) -> list[int]:
    """Line numbers of the imports of otrobust made inside a function without a comment saying why: a comment on
    the import itself, or on the line above it or above the run of imports it belongs to."""
    tree, lines = ast.parse(source), source.splitlines()
    bad = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            is_ours = (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                       and node.module.split(".")[0] == "otrobust") or (
                isinstance(node, ast.Import) and any(a.name.split(".")[0] == "otrobust" for a in node.names))
            if not is_ours:
                continue
            if any(_says_why(line) for line in lines[node.lineno - 1:node.end_lineno]):
                continue
            above = node.lineno - 2
            while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
                above -= 1
            if above < 0 or not (lines[above].strip().startswith("#") and _says_why(lines[above])):
                bad.append(node.lineno)
    return sorted(set(bad))


def test_no_two_modules_share_a_file_name():
    assert shared_file_names(_modules()) == {}, "name each file for what it holds"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_what_it_uses(path):
    unused = unused_imports(path.read_text(encoding="utf-8"))
    assert unused == [], f"{_rel(path)} imports {unused} without using them (a re-export: import from the source)"


@pytest.mark.parametrize("path", IMPORTERS, ids=_rel)
def test_every_name_is_imported_from_its_module(path):
    borrowed = borrowed_names(path.read_text(encoding="utf-8"))
    assert borrowed == [], f"{_rel(path)} imports {borrowed} from modules that do not define them"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_function_level_import_says_why(path):
    lines = uncommented_local_imports(path.read_text(encoding="utf-8"))
    assert lines == [], f"{_rel(path)}: an import of otrobust inside a function without a why-comment, lines {lines}"


def test_the_checks_catch_what_they_must():
    """Each check fails on a planted example and passes on its mended form."""
    planted = [PACKAGE / "evaluation" / "settings.py", PACKAGE / "settings.py", PACKAGE / "ot.py"]
    assert shared_file_names(planted) == {"settings.py": ["evaluation/settings.py", "settings.py"]}

    shim = ("from otrobust.ot import ground_cost, label_mask  # noqa: F401\n\n"
            "def cost(a, b):\n    return ground_cost(a, b)\n")
    assert unused_imports(shim) == ["label_mask"]
    assert unused_imports(shim.replace(", label_mask", "")) == []
    assert unused_imports("from otrobust.ot import GOTRegularizer\n\ndef f(r: 'GOTRegularizer'): ...\n") == []

    assert borrowed_names("from otrobust.evaluation.audit import audit_model, AuditSettings\n") == [
        "otrobust.evaluation.audit.AuditSettings"]
    assert borrowed_names("from otrobust.evaluation.audit_types import AuditSettings\n") == []
    assert borrowed_names("from otrobust.models import create_model\n") == []  # a package's public face

    hidden = "def f():\n    from otrobust.ot import ground_cost\n    return ground_cost\n"
    assert uncommented_local_imports(hidden) == [2]
    said = "def f():\n    # an import cycle: ot imports this module\n    from otrobust.ot import ground_cost\n"
    assert uncommented_local_imports(said) == []
    grouped = ("def f():\n    # the command line starts faster\n    from otrobust.ot import ground_cost\n"
               "    from otrobust.ot import label_mask\n")
    assert uncommented_local_imports(grouped) == []
    assert uncommented_local_imports("def f():\n    import otrobust.ot  # cycle\n") == []
    assert uncommented_local_imports("def f():\n    import otrobust.ot  # noqa: F401\n") == [2]
