"""A unit's record: everything a finished unit measured, in one small JSON file that travels without its checkpoint.

A record holds the unit's resolved settings, the data's fingerprint, the per-epoch metrics, every evaluation's rows
with each image's correctness, the audit's summary, the SHA-256 of the checkpoint it came from, how it was executed
(threads, precision, processor), the versions and the wall time. ``otrobust reproduce PRESET --merge`` writes the
results page from records alone (:mod:`otrobust.experiments.merge`); before it does, :func:`check_record` compares
each record with the unit the plan expects and names the first field that differs.

The record is a frozen dataclass; JSON exists only in :func:`record_to_json` and :func:`record_from_json`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrobust.errors import OtrobustError
from otrobust.store.files import typed_fields

FORMAT = "otrobust-unit-record-1"
RECORD_SUFFIX = ".json"
MAX_RECORD_BYTES = 64 << 20  # a record is tens of kilobytes; anything this large is not one


_NUMBER = (int, float)
_MAYBE_NUMBER = (int, float, type(None))
_MAYBE_INT = (int, type(None))
_ROW_TYPES: dict[str, type | tuple[type, ...]] = {
    "evaluation": str, "metric": str, "labels": str, "eps": _MAYBE_NUMBER, "steps": _MAYBE_INT,
    "step_size": _MAYBE_NUMBER, "n": int, "accuracy": _MAYBE_NUMBER, "ci_low": _MAYBE_NUMBER,
    "ci_high": _MAYBE_NUMBER, "note": str, "correct": str}
_RAN_ONLY = ("labels", "step_size", "correct")  # a row of an attack that could not run has none of these


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultRow:
    """One measured accuracy of one evaluation: ``metric`` (``clean``, an attack, an AutoAttack stage or
    ``worst-case``) at radius ``eps`` and ``steps``, on ``n`` images, in % with its 95 % interval (``ci_low``,
    ``ci_high``); ``correct`` each image's correctness packed by :func:`pack_bits`. An attack that could not run is
    a row with ``n`` 0, no accuracy and the reason in ``note`` (and no ``labels``, ``step_size`` or ``correct``).

    ``to_json()`` is the row as the evaluation cache and a unit record store it; :meth:`from_json` reads it back.
    """

    evaluation: str
    metric: str
    labels: str | None = None
    eps: float | None = None
    steps: int | None = None
    step_size: float | None = None
    n: int = 0
    accuracy: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    note: str = ""
    correct: str | None = None

    @property
    def ran(self) -> bool:
        return self.correct is not None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _ROW_TYPES if self.ran or k not in _RAN_ONLY}

    @classmethod
    def from_json(cls, data: Any, source: str) -> ResultRow:
        if isinstance(data, dict) and 0 < sum(k in data for k in _RAN_ONLY) < len(_RAN_ONLY):
            raise OtrobustError(f"{source} should have all or none of {', '.join(_RAN_ONLY)}")
        ran = isinstance(data, dict) and "correct" in data
        required = tuple(k for k in _ROW_TYPES if ran or k not in _RAN_ONLY)
        row = cls(**typed_fields(data, _ROW_TYPES, source, required=required))
        if ran:
            row.check_correct(source)
        return row

    def check_correct(self, source: str) -> None:
        """Refuse a row whose ``n`` or ``accuracy`` is not what its per-image correctness gives: the merge prints
        the one and draws intervals from the other, so they must not disagree."""
        bits = unpack_bits(self.correct)
        if len(bits) != self.n:
            raise OtrobustError(f"{source}: {self.metric!r} of {self.evaluation!r} has n = {self.n} but the "
                                f"correctness of {len(bits)} images")
        given = percent_correct(int(bits.sum()), self.n)
        if self.accuracy is None or abs(self.accuracy - given) > 1e-9:
            raise OtrobustError(f"{source}: {self.metric!r} of {self.evaluation!r} has accuracy {self.accuracy!r}, "
                                f"but its images' correctness gives {given:g}")


def percent_correct(k: int, n: int) -> float:
    """The accuracy (%) a row records for ``k`` of ``n`` images correct (0 for no image)."""
    return 100 * k / max(n, 1)


_AUDIT_KEYS = {"run": "run", "seed": "seed", "verdict": "verdict", "pass": "passed", "warn": "warned",
               "fail": "failed", "failed_checks": "failed_checks", "report": "report"}  # JSON key -> field


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditSummary:
    """An audit of one run in a line: its verdict (``pass``, ``warn`` or ``fail``), how many checks passed, warned
    and failed, the failed checks' names and ``report``, the path of its audit.md from the folder above the run
    folders. ``to_json()`` is an entry of audits.json (keys ``pass``, ``warn``, ``fail`` for the counts)."""

    run: str
    seed: int
    verdict: str
    passed: int
    warned: int
    failed: int
    failed_checks: tuple[str, ...]
    report: str

    def to_json(self) -> dict[str, Any]:
        out = {key: getattr(self, name) for key, name in _AUDIT_KEYS.items()}
        return {**out, "failed_checks": list(self.failed_checks)}

    @classmethod
    def from_json(cls, data: Any, source: str) -> AuditSummary:
        types = {"run": str, "seed": int, "verdict": str, "pass": int, "warn": int, "fail": int,
                 "failed_checks": list, "report": str}
        data = typed_fields(data, types, source, required=tuple(types))
        if not all(isinstance(c, str) for c in data["failed_checks"]):
            raise OtrobustError(f"{source}: failed_checks should hold names")
        data["failed_checks"] = tuple(data["failed_checks"])
        return cls(**{name: data[key] for key, name in _AUDIT_KEYS.items()})


@dataclass(frozen=True)
class UnitExecution:
    """How a unit ran. ``threads`` and ``attack_workers`` change floating-point results on a CPU, so the plan fixes
    them and the record keeps them; the rest is stated, not compared."""

    threads: int
    attack_workers: int
    device: str
    precision: str
    processor: str


@dataclass(frozen=True)
class UnitRecord:
    """What one finished unit (one run's training, its evaluations and its audit) produced.

    ``run_folder``: the name of the run's folder (``OUT/SCALE/runs/<run_folder>``), where its checkpoints are.
    ``settings``: the run's training settings that decide what it learns (paths left out; a fine-tuning run's
    starting checkpoint is named by the unit it comes from, ``init_unit``). ``evaluations``: the evaluation
    specifications that applied, as dictionaries. ``rows``: their :class:`ResultRow` (accuracies in %), each with
    ``correct``, the per-image correctness packed by :func:`pack_bits`. ``audit``: the :class:`AuditSummary` (None
    when the unit has no audit). ``metrics``: the run's metrics.jsonl, one dictionary per epoch. ``features``:
    base64 of a compressed ``.npz`` for t-SNE evaluations (else None).
    """

    preset: str
    scale: str
    unit: str
    run: str
    run_folder: str
    seed: int
    seed_index: int
    settings: dict[str, Any]
    init_unit: str | None
    data: str | None
    evaluations: tuple[dict[str, Any], ...]
    audit_settings: dict[str, Any] | None
    metrics: tuple[dict[str, Any], ...]
    rows: tuple[ResultRow, ...]
    audit: AuditSummary | None
    checkpoint_sha256: str
    init_sha256: str | None
    execution: UnitExecution
    versions: dict[str, Any]
    wall_seconds: dict[str, float]
    finished: str
    features: str | None = None

    def expected(self) -> dict[str, Any]:
        """The fields that must equal the plan's for the record to belong to it (see :func:`check_record`)."""
        return {"preset": self.preset, "scale": self.scale, "run": self.run, "seed": self.seed,
                "settings": self.settings, "init_unit": self.init_unit, "evaluations": list(self.evaluations),
                "audit_settings": self.audit_settings, "threads": self.execution.threads,
                "attack_workers": self.execution.attack_workers}


def pack_bits(correct) -> str:
    """A boolean vector (one entry per image) as base64 of its bits: 10,000 images take 1,668 characters."""
    import numpy as np

    flags = np.asarray(correct, dtype=bool)
    return f"{len(flags)}:" + base64.b64encode(np.packbits(flags).tobytes()).decode("ascii")


def unpack_bits(text: str):
    """The boolean vector :func:`pack_bits` packed (a numpy array)."""
    import numpy as np

    try:
        n_text, _, data = text.partition(":")
        n = int(n_text)
        bits = np.unpackbits(np.frombuffer(base64.b64decode(data, validate=True), dtype=np.uint8))
    except (ValueError, TypeError) as exc:
        raise OtrobustError(f"a per-example field is not packed correctness ({exc})") from None
    if n < 0 or len(bits) < n or len(bits) - n >= 8:
        raise OtrobustError(f"a per-example field holds {len(bits)} bits for {n} images")
    return bits[:n].astype(bool)


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's contents (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_to_json(record: UnitRecord) -> str:
    """The record file's text: the fields in order under ``format``, rows and audit as their ``to_json()``."""
    data: dict[str, Any] = {"format": FORMAT}
    for f in dataclasses.fields(UnitRecord):
        value = getattr(record, f.name)
        if f.name == "rows":
            value = [row.to_json() for row in value]
        elif f.name == "audit":
            value = None if value is None else value.to_json()
        else:
            value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        data[f.name] = value
    return json.dumps(data, indent=1, sort_keys=False) + "\n"


def record_from_json(text: str, source: str) -> UnitRecord:
    """Parse a record, checking its format and the type of every field; anything else is one OtrobustError that
    names ``source``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise OtrobustError(f"{source} is not a unit record (not JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise OtrobustError(f"{source} is not a unit record (format {found!r}, expected {FORMAT!r})")
    fields = {f.name: f for f in dataclasses.fields(UnitRecord)}
    missing = [name for name, f in fields.items() if name not in data and f.default is dataclasses.MISSING]
    if missing:
        raise OtrobustError(f"{source}: the record lacks {', '.join(missing)}")
    try:
        execution = UnitExecution(**data["execution"])
        values = {name: data.get(name, fields[name].default) for name in fields if name != "execution"}
        for name in ("evaluations", "metrics", "rows"):
            if not isinstance(values[name], list):
                raise OtrobustError(f"{source}: {name} should be list, found {type(values[name]).__name__}")
            values[name] = tuple(values[name])
        values["rows"] = tuple(ResultRow.from_json(row, f"{source}: rows[{i}]")
                               for i, row in enumerate(values["rows"]))
        if values["audit"] is not None:
            values["audit"] = AuditSummary.from_json(values["audit"], f"{source}: audit")
        record = UnitRecord(**values, execution=execution)
    except TypeError as exc:
        raise OtrobustError(f"{source}: a field of the record is malformed ({exc})") from None
    _check_types(record, source)
    return record


def _check_types(r: UnitRecord, source: str) -> None:
    checks = [("preset", r.preset, str), ("scale", r.scale, str), ("unit", r.unit, str), ("run", r.run, str),
              ("run_folder", r.run_folder, str),
              ("seed", r.seed, int), ("seed_index", r.seed_index, int), ("settings", r.settings, dict),
              ("checkpoint_sha256", r.checkpoint_sha256, str), ("versions", r.versions, dict),
              ("wall_seconds", r.wall_seconds, dict), ("execution.threads", r.execution.threads, int)]
    checks += [(f"metrics[{i}]", m, dict) for i, m in enumerate(r.metrics)]
    checks += [(f"evaluations[{i}]", e, dict) for i, e in enumerate(r.evaluations)]
    for name, value, kind in checks:
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise OtrobustError(f"{source}: {name} should be {kind.__name__}, found {type(value).__name__}")


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_RECORD_BYTES:
            raise OtrobustError(f"{str(path)!r} is {size:,} bytes, too large for a unit record")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise OtrobustError(f"{str(path)!r} is not a unit record (not UTF-8 text)") from None
    except OSError as exc:
        raise OtrobustError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def read_record(path: Path) -> UnitRecord:
    """Read one record file (at most :data:`MAX_RECORD_BYTES`)."""
    return record_from_json(_read_text(path), repr(str(path)))


def find_records(folders: list[str | Path]) -> list[tuple[Path, UnitRecord]]:
    """Every record under ``folders`` (``*.json``, searched recursively); a folder that does not exist is one
    OtrobustError. JSON files that are not records at all (no ``format`` and no ``unit`` field: a copied results
    folder may hold some) are skipped; one that claims to be a record and is not is an error."""
    found = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise OtrobustError(f"--records {str(folder)!r} is not a folder")
        for path in sorted(folder.rglob(f"*{RECORD_SUFFIX}")):
            if not path.is_file():
                continue
            text = _read_text(path)
            try:
                data = json.loads(text)
            except ValueError:
                data = {"format": None}  # a damaged record: record_from_json names the problem
            if isinstance(data, dict) and ("format" in data or "unit" in data):
                found.append((path, record_from_json(text, repr(str(path)))))
    return found


def check_record(record: UnitRecord, expected: dict[str, Any], source: str) -> None:
    """Refuse a record that was not made by the unit the plan expects, naming the first field that differs."""
    have = record.expected()
    for key, want in expected.items():
        got = have.get(key)
        if key in ("settings", "audit_settings") and isinstance(want, dict) and isinstance(got, dict):
            for k in sorted(set(want) | set(got)):
                if want.get(k) != got.get(k):
                    what = "the audit's " if key == "audit_settings" else ""
                    raise OtrobustError(f"{source} was made with {what}{k} = {got.get(k)!r}, but unit "
                                        f"{record.unit!r} of this plan has {want.get(k)!r}")
        elif key == "evaluations" and got != want:
            names = [e.get("name") for e in got or []]
            for ev in want:
                match = [e for e in got or [] if e.get("name") == ev["name"]]
                if not match:
                    raise OtrobustError(f"{source} lacks evaluation {ev['name']!r} of unit {record.unit!r} "
                                        f"(it has {', '.join(map(str, names)) or 'none'})")
                for k in ev:
                    if all(e.get(k) != ev[k] for e in match):
                        raise OtrobustError(f"{source}: evaluation {ev['name']!r} was made with {k} = "
                                            f"{match[0].get(k)!r}, but this plan has {ev[k]!r}")
            raise OtrobustError(f"{source} has evaluations this plan does not give unit {record.unit!r}: "
                                f"{', '.join(map(str, names))}")
        elif got != want:
            raise OtrobustError(f"{source} was made with {key} = {got!r}, but unit {record.unit!r} of this plan has "
                                f"{want!r}")
