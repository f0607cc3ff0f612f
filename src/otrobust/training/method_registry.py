"""The training methods otrobust knows, as data: one :class:`MethodSpec` per method.

Everything that names a method — the ``--method`` choices, the default weights, which base objective a GOT
method extends, the label in a results table, the presets' method lists — reads it from :data:`METHOD_SPECS`.
The objectives themselves are functions in :mod:`otrobust.training.methods`.
"""

from __future__ import annotations

from dataclasses import dataclass

from otrobust.errors import OtrobustError


@dataclass(frozen=True)
class MethodSpec:
    """One training method.

    ``base`` is the objective the method's loss is built on (itself for a base method); ``ot_variant`` is the GOT
    cost (``"s"``: all pairs, ``"lm"``: label matching) or None for a method without the OT term. ``adv_weight``
    is the default α of a base method's adversarial term (None where it has none); a GOT method takes its base's.
    ``ot_weight`` is the default β (None without the OT term).
    """

    name: str
    label: str
    base: str
    ot_variant: str | None = None
    adv_weight: float | None = None
    ot_weight: float | None = None

    @property
    def is_got(self) -> bool:
        return self.ot_variant is not None


# β by OT variant: the standard variant's cost also matches adversarial points to benign points of other classes,
# a stronger pull towards one latent point than label matching's, so it gets half the weight (docs/training.md).
_BETA = {"lm": 1.0, "s": 0.5}

METHOD_SPECS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("standard", "standard", "standard"),
    MethodSpec("pgd-at", "PGD-AT", "pgd-at", adv_weight=1.0),
    MethodSpec("trades", "TRADES", "trades", adv_weight=6.0),
    MethodSpec("mart", "MART", "mart", adv_weight=6.0),
    MethodSpec("got-pgd-s", "GOT-PGD-S", "pgd-at", "s", ot_weight=_BETA["s"]),
    MethodSpec("got-pgd-lm", "GOT-PGD-LM", "pgd-at", "lm", ot_weight=_BETA["lm"]),
    MethodSpec("got-trades-s", "GOT-TRADES-S", "trades", "s", ot_weight=_BETA["s"]),
    MethodSpec("got-trades-lm", "GOT-TRADES-LM", "trades", "lm", ot_weight=_BETA["lm"]),
)}
"""Every training method by name: the one list that the CLI choices, the objectives and the presets read."""

METHOD_NAMES: tuple[str, ...] = tuple(METHOD_SPECS)
GOT_METHODS: tuple[str, ...] = tuple(n for n, s in METHOD_SPECS.items() if s.is_got)
DEFAULT_ADV_WEIGHT: dict[str, float] = {n: s.adv_weight for n, s in METHOD_SPECS.items() if s.adv_weight is not None}
DEFAULT_OT_WEIGHT: dict[str, float] = dict(_BETA)


def method_spec(name: str) -> MethodSpec:
    """The spec of method ``name``; an unknown name is an :class:`OtrobustError` listing the known ones."""
    if name not in METHOD_SPECS:
        raise OtrobustError(f"unknown method {name!r}; choose one of: {', '.join(METHOD_NAMES)}")
    return METHOD_SPECS[name]


def ot_variant(method: str) -> str | None:
    """``"s"`` / ``"lm"`` for GOT methods, None otherwise."""
    return method_spec(method).ot_variant


def base_method(method: str) -> str:
    """The objective a method adds the OT term to (``got-trades-lm`` -> ``trades``)."""
    return method_spec(method).base


def default_adv_weight(method: str) -> float | None:
    """The α a method trains with when ``--adv-weight`` is unset: its base objective's (None where it has none)."""
    return DEFAULT_ADV_WEIGHT.get(base_method(method))
