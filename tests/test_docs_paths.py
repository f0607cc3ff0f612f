"""Every module path and dotted name the docs mention exists, so that the docs cannot drift from the code unseen.

Checked: the README, the changelog and every page under docs/ (the API pages' ``::: otrobust.x`` blocks too).
A file path (``src/otrobust/attacks/gradient.py``, or ``training/loop.py`` relative to the package) must be a
file; a dotted name (``otrobust.ot.ground_cost``) must import or be an attribute of what imports.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "otrobust"
SUBPACKAGES = "attacks|models|data|store|evaluation|training|reporting|experiments|cli"
PATH = re.compile(rf"(?<![\w/.-])(?:src/otrobust/|otrobust/|(?=(?:{SUBPACKAGES})/))([\w/]+\.py)\b")
DOTTED = re.compile(r"(?<![\w/.-])otrobust(?:\.[A-Za-z_]\w*)+")
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md")])


def mentions(pattern: re.Pattern[str], group: int) -> list[tuple[str, str]]:
    found = set()
    for page in PAGES:
        for m in pattern.finditer(page.read_text(encoding="utf-8")):
            found.add((page.relative_to(ROOT).as_posix(), m.group(group).rstrip(".")))
    return sorted(found)


def resolves(dotted: str) -> bool:
    """Whether the longest importable prefix of ``dotted`` holds the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_the_docs_mention_paths_and_names():
    """The patterns find what they must (a check of the check): the docs do name modules both ways."""
    assert len(mentions(PATH, 1)) > 20
    assert len(mentions(DOTTED, 0)) > 10


@pytest.mark.parametrize("page, path", mentions(PATH, 1))
def test_module_path_exists(page, path):
    assert (PACKAGE / path).is_file(), f"{page} names src/otrobust/{path}, which does not exist"


@pytest.mark.parametrize("page, name", mentions(DOTTED, 0))
def test_dotted_name_resolves(page, name):
    assert resolves(name), f"{page} names {name}, which does not import"


def test_a_moved_module_is_caught():
    assert PATH.search("see `otrobust/autoattack.py`").group(1) == "autoattack.py"
    assert not (PACKAGE / "autoattack.py").is_file()
    assert not resolves("otrobust.reproduce.evaluate_run")
    assert resolves("otrobust.experiments.run_stages.evaluate_run")


def test_architecture_diagram_follows_the_layers():
    """docs/architecture.md's import diagram lists the layers of tests/test_layering.py, in its order."""
    from test_layering import LAYERS

    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    diagram = page.split("```")[1]
    drawn = [tuple(re.findall(r"([a-z_]+)(?:\.py|/)?", line.replace("└─", "").strip().split("  ")[0]))
             for line in diagram.strip().splitlines()]
    assert drawn == [tuple(names) for names in LAYERS]
