"""Count the bad inputs the command-line tests try: every call of ``otrobust.cli.main.main`` in a test that ends
in exit status 2 (the tests assert that each printed exactly one ``otrobust: error:`` line and no traceback),
by test file and by surface (the command, and for eval and audit whether the model is a checkpoint or any
model), and the property tests' generated cases that must give exactly the right number or one line.

    PYTHONPATH=src python tests/count_bad_inputs.py tests/cli tests/evaluation/test_any_model.py -q

Not collected by pytest (the name does not start with ``test_``); it runs pytest with a counting plugin.
"""

from __future__ import annotations

import collections
import importlib
import sys
from pathlib import Path

import pytest

# Property tests whose every generated case must give the number the undamaged input gives, or one error line.
RIGHT_NUMBER_OR_ONE_LINE = ("test_random_model_factories_give_the_right_number_or_one_line",
                            "test_damaged_recorded_batches_give_the_same_numbers_or_one_line")


def surface(argv: list[str]) -> str:
    command = argv[0] if argv else "?"
    if command in ("eval", "audit"):
        return f"{command} " + ("any model (--model)" if "--model" in argv else "checkpoint")
    return command


class Counter:
    """Counts, per (test file, surface), the CLI calls ending in status 2; and the calls of the right-number
    property tests."""

    def __init__(self):
        self.refused: collections.Counter = collections.Counter()
        self.checked: collections.Counter = collections.Counter()
        self.test: tuple[str, str] | None = None

    def pytest_configure(self, config):
        cli = importlib.import_module("otrobust.cli.main")  # the module (otrobust.cli.main is also the function)
        real = cli.main

        def counted(argv=None):
            code = real(argv)
            if self.test is not None:
                where, name = self.test
                if code == 2:
                    self.refused[where, surface(list(argv or []))] += 1
                if name in RIGHT_NUMBER_OR_ONE_LINE:
                    self.checked[name] += 1
            return code

        cli.main = counted  # before collection: the test files import it by name

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        self.test = (Path(item.path).name, item.originalname)
        yield
        self.test = None

    def pytest_sessionfinish(self, session):
        print("\n\nbad inputs refused in one line (exit status 2), by test file and surface:")
        for where in sorted({w for w, _ in self.refused}):
            rows = {s: n for (w, s), n in self.refused.items() if w == where}
            print(f"  {where}: {sum(rows.values())}")
            for name, n in sorted(rows.items(), key=lambda kv: -kv[1]):
                print(f"    {name}: {n}")
        print(f"  total: {sum(self.refused.values())}")
        for name, n in self.checked.items():
            print(f"generated cases of {name} (each the right number or one line): {n}")


if __name__ == "__main__":
    sys.exit(pytest.main(sys.argv[1:], plugins=[Counter()]))
