"""What an attack is, only the attack table says: no module outside ``attacks/table.py`` decides it from the
attack's name (``name == "fgsm"``, ``name.startswith("pgd")``, ``{"pgd": ...}[name]``). Names as data (a CLI
default, a result's key, ``build_attacks(["pgd"], ...)``) are fine."""

import ast
from pathlib import Path

import pytest

from otrobust.attacks.table import ATTACK_NAMES

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "otrobust"
TABLE = PACKAGE / "attacks" / "table.py"
MIN_PREFIX = 3  # "pgd", "fab", "apgd": shorter strings ("-", "a") are no attack's name


def _strings(node: ast.AST) -> list[str]:
    """The string constants ``node`` is, or holds as a tuple, list or set literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for elt in node.elts for s in _strings(elt)]
    return []


def _is_name(text: str) -> bool:
    return text in ATTACK_NAMES


def _is_prefix(text: str) -> bool:
    return len(text) >= MIN_PREFIX and any(name.startswith(text) for name in ATTACK_NAMES)


def _is_suffix(text: str) -> bool:
    return len(text) >= MIN_PREFIX and any(name.endswith(text) and name != text for name in ATTACK_NAMES)


def name_tests(source: str) -> list[tuple[int, str]]:
    """(line, what) for every place in ``source`` that decides something from an attack's name: a comparison with
    one (``==``, ``!=``, ``in``, ``not in``, ``match``), a prefix or suffix test, a lookup in a dict literal keyed by
    them."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            texts = [s for operand in (node.left, *node.comparators) for s in _strings(operand)]
            found += [(node.lineno, f"compares with {t!r}") for t in texts if _is_name(t)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            texts = [s for arg in node.args for s in _strings(arg)]
            if node.func.attr in ("startswith", "removeprefix"):
                found += [(node.lineno, f"prefix test {t!r}") for t in texts if _is_prefix(t)]
            elif node.func.attr in ("endswith", "removesuffix"):
                found += [(node.lineno, f"suffix test {t!r}") for t in texts if _is_suffix(t) or _is_name(t)]
            elif node.func.attr == "get" and isinstance(node.func.value, ast.Dict):
                keys = [s for k in node.func.value.keys if k is not None for s in _strings(k)]
                found += [(node.lineno, "lookup in a dict keyed by attack names")] * any(map(_is_name, keys))
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Dict):
            keys = [s for k in node.value.keys if k is not None for s in _strings(k)]
            found += [(node.lineno, "lookup in a dict keyed by attack names")] * any(map(_is_name, keys))
        elif isinstance(node, ast.MatchValue):
            found += [(node.lineno, f"match case {t!r}") for t in _strings(node.value) if _is_name(t)]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != TABLE)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_tells_attacks_apart_by_name(path):
    found = name_tests(path.read_text())
    assert found == [], f"{path.relative_to(PACKAGE)}: ask attacks/table.py instead: {found}"


PLANTED = '''
def f(name, names, key, spec):
    a = name == "fgsm"
    b = "autoattack" not in names
    c = name.startswith("pgd")
    d = key.startswith(("square", "apgd"))
    e = {"pgd": "ce", "pgd-cw": "cw"}[name]
    g = {"autoattack": 1}.get(name, 0)
    h = key.endswith("-rand")
    i = name in ("fab", "other")
    match name:
        case "square":
            pass
'''


def test_the_check_catches_every_way_of_testing_a_name():
    lines = [line for line, _ in name_tests(PLANTED)]
    assert sorted(set(lines)) == list(range(3, 11)) + [12]


def test_the_check_leaves_names_as_data_alone():
    source = '''
attacks = build_attacks(["pgd", "autoattack"], eps=0.3)
DEFAULT = ["pgd"]
key = f"pgd-{loss}"
ok = name == "pgd-at" or method.startswith("got-") or path.endswith(".py") or text.startswith("p")
spec = ATTACK_SPECS["pgd"]
'''
    assert name_tests(source) == []
