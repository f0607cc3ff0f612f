"""Settings as dataclasses: each field is one setting, with its help text and choices beside its default.

Every command's settings are such a dataclass (:class:`otrobust.training.config.TrainConfig`,
:class:`otrobust.evaluation.command_settings.EvalSettings`, ...), and the command line is generated from them, one flag
per field, so a setting is declared once. ``setting`` records what the flag generator needs in the field's
metadata; nothing here parses anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Flag:
    """How a setting looks on the command line, where it differs from ``--field-name VALUE``: ``name`` overrides the
    flag's name; ``positional`` makes it a positional argument; ``nargs`` / ``metavar`` are passed to the flag;
    ``repeatable``: a list setting whose flag is given once per item; ``aliases``: more names for the flag."""

    name: str | None = None
    positional: bool = False
    nargs: str | None = None
    metavar: str | None = None
    repeatable: bool = False
    aliases: tuple[str, ...] = ()


def setting(default: Any = None, help: str = "", choices: tuple | None = None, *, flag: Flag | None = None,
            default_text: str | None = None, factory: Any = None) -> Any:
    """A dataclass field for one setting.

    ``flag``: how its flag looks (:class:`Flag`; default ``--field-name VALUE``); ``default_text`` is what
    ``--help`` shows as the default when the value itself would not say it (``None`` meaning "the dataset's");
    ``factory`` builds a mutable default (a list).

    Examples:
        >>> @dataclasses.dataclass
        ... class Settings:
        ...     eps: float = setting(0.3, "attack radius")
        ...     attacks: list = setting(help="attacks to run", factory=lambda: ["pgd"], flag=Flag(nargs="+"))
        >>> eps, attacks = dataclasses.fields(Settings)
        >>> eps.metadata["help"], default_of(eps), default_of(attacks), attacks.metadata["nargs"]
        ('attack radius', 0.3, ['pgd'], '+')
    """
    f = flag or Flag()
    metadata = {"help": help, "choices": choices, "flag": f.name, "positional": f.positional, "nargs": f.nargs,
                "metavar": f.metavar, "default_text": default_text, "repeatable": f.repeatable,
                "aliases": f.aliases}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def default_of(f: dataclasses.Field) -> Any:
    """The field's default value (built fresh for a ``factory`` default)."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

