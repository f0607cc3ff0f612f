"""Clean, per-attack and worst-case robust accuracy, against the true labels by default."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from otrobust.data.base import ImageData
from otrobust.errors import OtrobustError

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, x, y) -> x_adv
LABEL_SOURCES = ("true", "predicted")


def binomial_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion (Wilson 1927); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalResult:
    """Per-example outcomes. Tensors are bool (N,): True where the model is right."""

    clean: torch.Tensor
    per_attack: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: str = "true"
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.clean)

    @property
    def worst(self) -> torch.Tensor:
        """Robust on an example only if no attack broke it (and, with true labels, clean-correct)."""
        out = self.clean.clone() if self.labels == "true" else torch.ones_like(self.clean)
        for correct in self.per_attack.values():
            out &= correct
        return out

    def accuracy(self, name: str = "worst") -> float:
        t = {"clean": self.clean, "worst": self.worst}.get(name, self.per_attack.get(name))
        return float(t.float().mean()) if len(t) else float("nan")

    def summary(self) -> dict:
        rows = {"clean": self.clean, **self.per_attack}
        if self.per_attack:
            rows["worst_case"] = self.worst
        out = {}
        for name, t in rows.items():
            k = int(t.sum())
            lo, hi = binomial_interval(k, self.n)
            out[name] = {"accuracy": k / self.n if self.n else float("nan"), "correct": k, "n": self.n,
                         "ci95": [lo, hi], "seconds": self.seconds.get(name)}
        return out


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted classes (N,) in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def evaluate_model(model: nn.Module, data: ImageData, attacks: dict[str, Attack] | None = None, *,
                   labels: str = "true", batch_size: int = 256, device: torch.device | str = "cpu",
                   progress: Callable[[int], None] | None = None) -> EvalResult:
    """Run every attack on every example of ``data`` (model in eval mode).

    labels="true": attacks move away from the true label; an example counts as robust only if it is
    also clean-correct. labels="predicted" (the paper's protocol, for comparison only): attacks move
    away from the model's own prediction and the result is compared with the true label.
    ``progress`` is called with the number of examples finished after each batch and attack.
    """
    if labels not in LABEL_SOURCES:
        raise OtrobustError(f"unknown label source {labels!r}; use 'true' or 'predicted'")
    attacks = attacks or {}
    was_training = model.training
    model.eval()
    clean, per_attack = [], {name: [] for name in attacks}
    seconds = dict.fromkeys(attacks, 0.0)
    try:
        for start in range(0, len(data), batch_size):
            x = data.x[start:start + batch_size].to(device)
            y = data.y[start:start + batch_size].to(device)
            with torch.no_grad():
                pred = model(x).argmax(1)
            target = y if labels == "true" else pred
            clean.append((pred == y).cpu())
            for name, attack in attacks.items():
                t0 = time.perf_counter()
                x_adv = attack(model, x, target)
                with torch.no_grad():
                    correct = model(x_adv).argmax(1) == y
                if labels == "true":
                    correct &= pred == y
                per_attack[name].append(correct.cpu())
                seconds[name] += time.perf_counter() - t0
                if progress:
                    progress(len(y))
    finally:
        model.train(was_training)
    return EvalResult(torch.cat(clean) if clean else torch.zeros(0, dtype=torch.bool),
                      {k: torch.cat(v) for k, v in per_attack.items()}, labels, seconds)


def build_attacks(names: list[str], *, eps: float, steps: int = 20, step_size: float | None = None,
                  restarts: int = 1, norm: str = "linf") -> dict[str, Attack]:
    """Attacks by name with one threat model: ``fgsm``, ``pgd`` (CE), ``pgd-cw`` (CW margin loss)."""
    from otrobust.attacks import fgsm, pgd

    step = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    factories: dict[str, Attack] = {
        "fgsm": lambda m, x, y: fgsm(m, x, y, eps, norm=norm),
        "pgd": lambda m, x, y: pgd(m, x, y, eps, step, steps, restarts=restarts, norm=norm),
        "pgd-cw": lambda m, x, y: pgd(m, x, y, eps, step, steps, restarts=restarts, loss="cw", norm=norm),
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise OtrobustError(f"unknown attack(s) {', '.join(unknown)}; choose from: {', '.join(factories)}")
    return {n: factories[n] for n in names}
