"""Evasion attacks with one call shape, ``attack(model, x, y, ...) -> x_adv``: FGSM, PGD (losses, norms,
restarts, step schedules), the TRADES adversary, the adapter around AutoAttack's reference code, and the table of
the attacks known by name (:mod:`otrobust.attacks.table`)."""

from otrobust.attacks.gradient import (
    LOSSES,
    PGD,
    SCHEDULES,
    Iterate,
    PGDResult,
    TradesAdversary,
    ascent,
    best_iterate,
    bn_mode,
    default_step_size,
    fgsm,
    frozen_parameters,
    input_gradient,
    last_iterate,
    margin_loss,
    require_input_gradient,
    step_sizes,
)
from otrobust.attacks.norms import NORMS, Norm, get_norm, project

__all__ = ["LOSSES", "NORMS", "PGD", "SCHEDULES", "Iterate", "Norm", "PGDResult", "TradesAdversary", "ascent",
           "best_iterate", "bn_mode", "default_step_size", "fgsm", "frozen_parameters", "get_norm", "input_gradient",
           "last_iterate", "margin_loss", "project", "require_input_gradient", "step_sizes"]
