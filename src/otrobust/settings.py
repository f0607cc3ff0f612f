"""Settings as dataclasses: each field is one setting, with its help text and choices beside its default.

Every command's settings are such a dataclass (:class:`otrobust.training.config.TrainConfig`,
:class:`otrobust.evaluation.command_settings.EvalSettings`, ...), and the command line is generated from them, one flag
per field, so a setting is declared once. ``setting`` records what the flag generator needs in the field's
metadata; nothing here parses anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def setting(default: Any = None, help: str = "", choices: tuple | None = None, *, flag: str | None = None,
            positional: bool = False, nargs: str | None = None, metavar: str | None = None,
            default_text: str | None = None, factory: Any = None, repeatable: bool = False,
            aliases: tuple[str, ...] = ()) -> Any:
    """A dataclass field for one setting.

    ``flag`` overrides the flag's name (default ``--field-name``); ``positional`` makes it a positional
    argument; ``nargs`` / ``metavar`` are passed to the flag; ``default_text`` is what ``--help`` shows as the
    default when the value itself would not say it (``None`` meaning "the dataset's"); ``factory`` builds a
    mutable default (a list); ``repeatable``: a list setting whose flag is given once per item; ``aliases``:
    more names for the flag.

    Examples:
        >>> @dataclasses.dataclass
        ... class Settings:
        ...     eps: float = setting(0.3, "attack radius")
        ...     attacks: list = setting(help="attacks to run", factory=lambda: ["pgd"], nargs="+")
        >>> eps, attacks = dataclasses.fields(Settings)
        >>> eps.metadata["help"], default_of(eps), default_of(attacks)
        ('attack radius', 0.3, ['pgd'])
    """
    metadata = {"help": help, "choices": choices, "flag": flag, "positional": positional, "nargs": nargs,
                "metavar": metavar, "default_text": default_text, "repeatable": repeatable,
                "aliases": aliases}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def default_of(f: dataclasses.Field) -> Any:
    """The field's default value (built fresh for a ``factory`` default)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

