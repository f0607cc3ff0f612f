"""Weight averaging (``--ema DECAY``): an exponential moving average of the weights, updated after every
optimisation step, that validation scores and the checkpoints hold for evaluation. Training itself steps the raw
weights and never reads the average, so a run with ``--ema`` trains exactly the weights of the same run
without it.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

EMA_WARMUP = 10  # the decay's warm-up constant: update t uses min(decay, (1 + t) / (EMA_WARMUP + t))


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (0 for the first): ``min(decay, (1 + t) / (10 + t))``.

    Without the warm-up the average would remember the random initial weights for about ``1 / (1 - decay)``
    steps; with it the first updates follow the weights closely (0.1, 0.18, 0.25, ...) and the decay reaches
    ``decay`` after ``(10 decay - 1) / (1 - decay)`` updates (890 for 0.99, 8,990 for 0.999).
    """
    return min(decay, (1 + updates) / (EMA_WARMUP + updates))


class WeightAverage:
    """The averaged copy of a model: ``model`` (in eval mode, no gradients) and the number of ``updates`` so far.

    Every floating-point tensor of the state -- parameters and the batch-norm running mean and variance -- is
    averaged with the same decay, so the statistics describe the same window of training as the weights they
    normalise; integer buffers (batch norm's ``num_batches_tracked``) are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return list(itertools.chain(model.parameters(), model.buffers()))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights: ``avg <- decay_t * avg + (1 - decay_t) * w``."""
        decay = ema_decay_at(self.decay, self.updates)
        averaged, current, copied = [], [], []
        for mine, theirs in zip(self._tensors(self.model), self._tensors(model), strict=True):
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs.detach())
            else:
                copied.append((mine, theirs))
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)  # avg + (1 - decay) (w - avg), in place
        for mine, theirs in copied:
            mine.copy_(theirs)
        self.updates += 1

    @torch.no_grad()
    def restart_from(self, model: nn.Module) -> None:
        """Start the average again at ``model``'s weights (a run that had no average so far)."""
        for mine, theirs in zip(self._tensors(self.model), self._tensors(model), strict=True):
            mine.copy_(theirs)
        self.updates = 0
