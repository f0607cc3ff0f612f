"""No function outside the command-line edge (``cli/``) takes more than 8 parameters: longer lists are grouped into
the settings dataclasses or small frozen option records."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "otrobust"
MOST = 8


def passed_parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The parameters a caller passes: every named one (positional, keyword-only) and ``*args`` / ``**kwargs``,
    without the ``self`` / ``cls`` of a method."""
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + (a.vararg is not None) + (a.kwarg is not None)


def too_long(source: str, limit: int = MOST) -> list[tuple[str, int, int]]:
    """(name, line, count) of every function of ``source`` with more than ``limit`` parameters."""
    return [(node.name, node.lineno, passed_parameters(node)) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and passed_parameters(node) > limit]


def test_the_check_finds_a_planted_long_signature_and_counts_as_a_caller_does():
    planted = '''
class Model:
    def fit(self, a, b, c, d, e, f, g, h): ...          # 8 passed: self does not count
    @classmethod
    def make(cls, a, b, c, d, e, f, g, *, h, i): ...    # 9
def short(a, b, *args, **kwargs): ...
def long(a, b, c, d, e, f, g, *rest, **options): ...   # 9
async def fetch(a, b, c, d, e, f, g, h, i): ...        # 9
'''
    assert sorted(name for name, _, _ in too_long(planted)) == ["fetch", "long", "make"]
    assert [count for name, _, count in too_long(planted) if name == "long"] == [9]


def test_no_function_outside_the_cli_takes_more_than_eight_parameters():
    found = [f"{path.relative_to(SRC)}:{line} {name} ({count})" for path in sorted(SRC.rglob("*.py"))
             if "cli" not in path.relative_to(SRC).parts for name, line, count in too_long(path.read_text())]
    assert not found, f"more than {MOST} parameters: " + ", ".join(found)
