"""An evaluation in fixed batches: each (attack, batch) seeded by its own position, recorded as it finishes,
and shared out among the processes of a ``torchrun`` job.

Because the random numbers of batch ``b`` of attack ``a`` depend only on ``(seed, b, a)`` and on that batch's
images, the per-example verdicts are the same whether the batches run in one process or in several, in one
go or across a kill and a rerun. :class:`BatchCache` keeps the finished batches in a folder (one atomic file
each); :func:`run_evaluation` skips those, runs this process's share of the rest, and merges every process's
batches into one :class:`EvalResult`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from otrobust.attacks.table import Attack
from otrobust.data.base import ImageData
from otrobust.distributed import DistInfo
from otrobust.errors import OtrobustError, path_kind
from otrobust.evaluation.evaluate import EvalOptions, EvalResult, channels_last, evaluate_model
from otrobust.store.files import TEMP_SUFFIX, atomic_write_text, remove_stale_temp_files

CLEAN = "clean"  # the pseudo-attack of a clean-only evaluation
CLEAN_INDEX = -1  # the clean pass's place in batch_seed (attacks are 0, 1, ...)


def batch_seed(seed: int, start: int, attack_index: int) -> int:
    """The seed of one (attack, batch): a function of its position only (SplitMix-style mixing)."""
    z = (seed * 0x9E3779B97F4A7C15 + start * 0xBF58476D1CE4E5B9 + attack_index * 0x94D049BB133111EB) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    return (z ^ (z >> 31)) % 2**63


CACHE_FORMAT = "otrobust-eval-batches-1"  # in settings.json: the folder is one of ours
_RECORD_NAME = re.compile(r"^[a-z0-9-]+-[0-9]{9}\.json$")  # the only files of batches/ ever deleted


class BatchCache:
    """Finished batches in ``folder``: ``settings.json`` (a format marker, the key and the settings it hashes)
    and one ``batches/<attack>-<start>.json`` per finished (attack, batch).

    Every record carries the key of the settings that made it and a SHA-256 of its contents, and is checked
    when read: a record of other settings, or one damaged or edited by hand, is recomputed (``log`` says so),
    never trusted. A folder opened under other settings has its records removed (``log`` says so); a folder
    that otrobust did not make (a foreign ``settings.json``, or ``batches/`` without one) is refused with an
    OtrobustError, and nothing in it is touched.

    ``first``: this process opens the folder before any other does (it also removes the temporary files a
    killed run left); under torchrun rank 0 opens it first and the others after a barrier, which on a shared
    disk find the key already theirs."""

    def __init__(self, folder: Path, key: str, settings: dict[str, Any], log: Callable[[str], None] = print,
                 first: bool = True):
        self.folder, self.batches, self.key, self.log = Path(folder), Path(folder) / "batches", key, log
        meta = self.folder / "settings.json"
        old = self._recorded_key(meta)
        if old != key:
            if old is not None:
                log(f"the settings differ from those of the batches recorded in {self.folder}: starting afresh")
                self._clear()
            atomic_write_text(meta, json.dumps({"format": CACHE_FORMAT, "key": key, "settings": settings},
                                               indent=1, default=str))
        try:
            self.batches.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OtrobustError(f"cannot make the folder {str(self.batches)!r} for the recorded batches: "
                                f"{exc.strerror or exc}") from None
        if first:
            remove_stale_temp_files(self.batches)

    def _recorded_key(self, meta: Path) -> str | None:
        """The key in ``settings.json`` (None for a new folder); OtrobustError for a folder that is not ours."""
        where = f"--cache {str(self.folder)!r}"
        if self.folder.exists() and not self.folder.is_dir():
            raise OtrobustError(f"{where} is {path_kind(self.folder)}, not a folder; choose another --cache")
        if not meta.exists():
            if self.batches.exists():
                raise OtrobustError(f"{where} holds a batches folder without otrobust's settings.json: it was not "
                                    "made by otrobust eval, so it is left alone; choose another --cache")
            return None
        try:
            record = json.loads(meta.read_bytes())
        except (OSError, ValueError, RecursionError):
            record = None
        earlier = isinstance(record, dict) and set(record) == {"key", "settings"}  # before the format marker
        ours = isinstance(record, dict) and record.get("format") == CACHE_FORMAT or earlier
        if not ours or not isinstance(record.get("key"), str):
            raise OtrobustError(f"{where} holds a settings.json that is not otrobust's record of an evaluation "
                                "(unreadable, damaged or another program's); it is left alone: choose another "
                                "--cache, or delete the folder if it is an old otrobust one")
        # A folder of the earlier format is ours too; its records, which have no checksum, go.
        return f"earlier format {record['key']}" if earlier else record["key"]

    def _clear(self) -> None:
        """Remove the record files (and their temporary files) from batches/: nothing else in it."""
        if not self.batches.is_dir():
            return
        for path in self.batches.iterdir():
            temporary = path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)
            if path.is_file() and (_RECORD_NAME.match(path.name) or temporary):
                path.unlink(missing_ok=True)  # processes on one disk may race here

    def _path(self, attack: str, start: int) -> Path:
        return self.batches / f"{attack}-{start:09d}.json"

    def get(self, attack: str, start: int, size: int) -> dict[str, Any] | None:
        """The record of (``attack``, the batch of ``size`` images at ``start``) if one was made under this key and
        is intact; else None (and ``log`` says why, for a record that is there)."""
        path = self._path(attack, start)
        if not path.is_file():
            return None
        problem = "damaged or edited by hand"
        try:
            stored = json.loads(path.read_bytes())
            body = stored["record"]
            if stored["sha256"] == _digest(body):
                if body.get("key") != self.key or body.get("attack") != attack or body.get("start") != start:
                    problem = "made under other settings"
                elif _well_formed(body, attack, size):
                    return body
        except (OSError, ValueError, RecursionError, TypeError, KeyError, AttributeError):
            pass
        self.log(f"warning: the recorded batch {path.name} in {self.batches} was {problem}: recomputing it")
        return None

    def put(self, attack: str, start: int, record: dict[str, Any]) -> None:
        body = {**record, "key": self.key, "attack": attack, "start": start}
        atomic_write_text(self._path(attack, start), json.dumps({"record": body, "sha256": _digest(body)}))

    def done(self) -> int:
        return len([p for p in self.batches.glob("*.json") if _RECORD_NAME.match(p.name)]) \
            if self.batches.is_dir() else 0


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _well_formed(body: dict[str, Any], attack: str, size: int) -> bool:
    """Whether a record holds ``size`` verdicts and predictions of the right types (for ``attack``)."""
    def flags(v) -> bool:
        return isinstance(v, list) and len(v) == size and all(isinstance(b, bool) for b in v)

    def classes(v) -> bool:
        return isinstance(v, list) and len(v) == size and all(type(c) is int and c >= 0 for c in v)

    ok = flags(body.get("clean")) and classes(body.get("clean_pred")) and isinstance(body.get("seconds"),
                                                                                      (int, float))
    if attack == CLEAN:
        return ok
    stages, warnings = body.get("stages"), body.get("warnings")
    return (ok and flags(body.get("correct")) and classes(body.get("pred")) and isinstance(stages, dict)
            and all(flags(v) for v in stages.values()) and isinstance(warnings, list)
            and all(isinstance(w, str) for w in warnings))


def _record(res: EvalResult, name: str) -> dict[str, Any]:
    """One (attack, batch) as plain lists (JSON)."""
    if name == CLEAN:
        return {"clean_pred": res.clean_pred.tolist(), "clean": res.clean.tolist(), "seconds": 0.0}
    return {"clean_pred": res.clean_pred.tolist(), "clean": res.clean.tolist(),
            "correct": res.per_attack[name].tolist(), "pred": res.predictions[name].tolist(),
            "stages": {k: v.tolist() for k, v in res.stages.get(name, {}).items()},
            "seconds": res.seconds[name], "warnings": res.warnings.get(name, [])}


def fingerprint(model: nn.Module, data: ImageData) -> dict[str, str]:
    """Short SHA-256s of the model's weights and buffers and of the test images and labels: what processes on
    other machines compare (see ``distributed.check_same``) when their files' paths may differ."""
    weights = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        weights.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        weights.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    images = hashlib.sha256()
    for t in (data.x, data.y):
        t = t.detach().cpu().contiguous()
        images.update(f"{t.dtype}|{tuple(t.shape)}".encode())
        images.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"model weights": weights.hexdigest()[:16], "test images": images.hexdigest()[:16]}


def shard_starts(n: int, batch_size: int, info: DistInfo) -> list[int]:
    """The first image of each batch of ``n`` that this process attacks: whole batches, dealt round-robin."""
    return list(range(0, n, batch_size))[info.rank::info.world_size]


@dataclass(frozen=True, kw_only=True)
class RunOptions(EvalOptions):
    """:class:`~otrobust.evaluation.evaluate.EvalOptions` for :func:`run_evaluation`, with where its batches go:
    ``cache`` records each finished batch (None: nothing is recorded), ``info`` the torchrun processes the batches
    are shared out among (None: this process alone). ``progress(images)`` is called after each batch this process
    finishes or reads back."""

    cache: BatchCache | None = None
    info: DistInfo | None = None


def run_evaluation(model: nn.Module, data: ImageData, attacks: dict[str, Attack], *, labels: str = "true",
                   batch_size: int = 256, device: torch.device | str = "cpu", seed: int = 0,
                   options: RunOptions | None = None) -> EvalResult:
    """Every attack on every batch of ``data`` (see the module's contract); the same result on every process.

    A batch's attacks not yet recorded run in one :func:`evaluate_model` call (one clean pass for all of them).
    ``options``: the batch cache, the processes, progress and ``allow_non_finite`` (as :func:`evaluate_model`'s),
    see :class:`RunOptions`."""
    options = options or RunOptions()
    cache, progress, info = options.cache, options.progress, options.info or DistInfo()
    names = list(attacks) or [CLEAN]
    records: dict[tuple[str, int], dict[str, Any]] = {}
    with channels_last(model, data.x.ndim == 4):  # once for the whole run, not once a batch
        for start in shard_starts(len(data), batch_size, info):
            size = min(batch_size, len(data) - start)
            done = {name: cache.get(name, start, size) if cache else None for name in names}
            todo = [name for name in names if done[name] is None]
            if todo:
                pending = {name: attacks[name] for name in todo if name != CLEAN}
                seeds = {name: batch_seed(seed, start, names.index(name)) for name in pending}
                torch.manual_seed(batch_seed(seed, start, CLEAN_INDEX))  # a randomised model's clean pass too
                res = evaluate_model(model, data.take(slice(start, start + batch_size)), pending, labels=labels,
                                     batch_size=batch_size, device=device, attack_seeds=seeds,
                                     options=EvalOptions(allow_non_finite=options.allow_non_finite))
                for name in todo:
                    done[name] = _record(res, name)
                    if cache:
                        cache.put(name, start, done[name])
            records.update(((name, start), record) for name, record in done.items())
            if progress:
                progress(size)
    if info.enabled:
        shares: list[dict | None] = [None] * info.world_size
        dist.all_gather_object(shares, records)
        records = {key: record for share in shares for key, record in share.items()}
    return merge(records, names, list(range(0, len(data), batch_size)), labels)


def merge(records: dict[tuple[str, int], dict[str, Any]], names: list[str], starts: list[int],
          labels: str) -> EvalResult:
    """The :class:`EvalResult` of the whole data from its (attack, batch) records."""
    def cat(name: str, key: str, dtype) -> torch.Tensor:
        return torch.tensor([v for s in starts for v in records[name, s][key]], dtype=dtype)

    first = names[0]
    attacked = [n for n in names if n != CLEAN]
    stages: dict[str, dict[str, torch.Tensor]] = {}
    for name in attacked:
        for stage in records[name, starts[0]].get("stages", {}) if starts else ():
            stages.setdefault(name, {})[stage] = torch.tensor(
                [v for s in starts for v in records[name, s]["stages"][stage]], dtype=torch.bool)
    warnings = {n: list(dict.fromkeys(w for s in starts for w in records[n, s]["warnings"])) for n in attacked}
    return EvalResult(
        clean=cat(first, "clean", torch.bool) if starts else torch.zeros(0, dtype=torch.bool),
        per_attack={n: cat(n, "correct", torch.bool) for n in attacked}, labels=labels,
        seconds={n: sum(records[n, s]["seconds"] for s in starts) for n in attacked},
        warnings={n: w for n, w in warnings.items() if w}, stages=stages,
        clean_pred=cat(first, "clean_pred", torch.long) if starts else torch.zeros(0, dtype=torch.long),
        predictions={n: cat(n, "pred", torch.long) for n in attacked})
