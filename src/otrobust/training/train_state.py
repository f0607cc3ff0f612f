"""Where a training run is: its position and history (:class:`TrainState`), and an epoch's running totals
(:class:`EpochTotals`). Both are saved in every checkpoint and restored by ``--resume``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from otrobust import distributed
from otrobust.store.files import typed_fields


@dataclass
class TrainState:
    """Where a run is. Saved in every checkpoint's metadata and restored by ``--resume``."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished in the current epoch (non-zero only in a mid-epoch checkpoint)
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics record per finished epoch
    best_score: list[float] | None = None  # the best checkpoint's score (see Trainer.end_epoch)
    accum: EpochTotals | None = None  # the epoch's running totals, in a mid-epoch checkpoint only

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TrainState:
        values = {f.name: meta[f.name] for f in dataclasses.fields(cls) if f.name in meta}
        if values.get("accum") is not None:
            values["accum"] = EpochTotals.from_json(values["accum"], "the checkpoint's running totals")
        return cls(**values)


_TOTALS_TYPES = {"loss": (int, float), "correct": int, "seen": int, "ot": (int, float), "skipped": int,
                 "seconds": (int, float)}


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochTotals:
    """An epoch's running totals: the loss and the OT term summed over the ``seen`` images, how many of them the
    model got right, the batches skipped as non-finite and the wall time before the current stretch. Saved (as
    ``to_json()``) in a mid-epoch checkpoint, so that a resumed epoch reports what an uninterrupted one would."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    ot: float = 0.0
    skipped: int = 0
    seconds: float = 0.0

    def plus_step(self, loss: float, correct: int, seen: int, ot: float) -> EpochTotals:
        """The totals after one step of ``seen`` images with mean ``loss`` and ``ot``."""
        return dataclasses.replace(self, loss=self.loss + loss * seen, correct=self.correct + correct,
                                   seen=self.seen + seen, ot=self.ot + ot * seen)

    def summed(self, info: distributed.DistInfo, device: torch.device) -> EpochTotals:
        """Every process's totals summed (the wall time stays this process's)."""
        return EpochTotals(**distributed.totals(self.to_json(), info, device))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any, source: str) -> EpochTotals:
        return cls(**typed_fields(data, _TOTALS_TYPES, source, required=tuple(_TOTALS_TYPES)))
