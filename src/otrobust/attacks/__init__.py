"""Evasion attacks with one call shape, ``attack(model, x, y, ...) -> x_adv``: FGSM, PGD (losses, norms,
restarts, step schedules), the TRADES adversary, and the adapter around AutoAttack's reference code."""

from otrobust.attacks.gradient import (
    LOSSES,
    NORMS,
    SCHEDULES,
    PGDResult,
    bn_mode,
    default_step_size,
    fgsm,
    frozen_parameters,
    input_gradient,
    margin_loss,
    pgd,
    pgd_trace,
    project,
    require_input_gradient,
    step_sizes,
    trades_adversary,
)

__all__ = ["LOSSES", "NORMS", "SCHEDULES", "PGDResult", "bn_mode", "default_step_size", "fgsm", "frozen_parameters",
           "input_gradient", "margin_loss", "pgd", "pgd_trace", "project", "require_input_gradient", "step_sizes",
           "trades_adversary"]
