"""The statistics of per-example verdicts: a Wilson interval for an accuracy, and the paired comparison of two
attacks on the same examples (does one leave more examples correct than the other beyond binomial noise? a
one-sided exact sign test on the discordant pairs)."""

from __future__ import annotations

import math

import torch


def binomial_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion (Wilson 1927); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def one_sided_sign_test(wins: int, losses: int) -> float:
    """P(X >= wins) for X ~ Binomial(wins + losses, 1/2): is ``wins`` more than chance among the discordant pairs?"""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def higher_than(a: torch.Tensor, b: torch.Tensor, alpha: float = 0.05) -> tuple[bool, dict]:
    """Is accuracy ``a`` (per-example bool) above accuracy ``b`` beyond binomial noise on the same examples?"""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = one_sided_sign_test(only_a, only_b)
    return p < alpha, {"acc_a": fraction_true(a), "acc_b": fraction_true(b), "robust_only_a": only_a,
                       "robust_only_b": only_b, "p_value": round(p, 5)}


def fraction_true(t: torch.Tensor) -> float:
    """The fraction of True entries of a per-example bool tensor (NaN when empty)."""
    return int(t.sum()) / len(t) if len(t) else float("nan")
