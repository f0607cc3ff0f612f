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

FORMAT = "otrobust-unit-record-1"
RECORD_SUFFIX = ".json"
MAX_RECORD_BYTES = 64 << 20  # a record is tens of kilobytes; anything this large is not one


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
    specifications that applied, as dictionaries. ``rows``: their result rows (accuracies in %), each with
    ``correct``, the per-image correctness packed by :func:`pack_bits`. ``audit``: the audit's summary (None when
    the unit has no audit). ``features``: base64 of a compressed ``.npz`` for t-SNE evaluations (else None).
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
    rows: tuple[dict[str, Any], ...]
    audit: dict[str, Any] | None
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
    return json.dumps({"format": FORMAT, **dataclasses.asdict(record)}, indent=1, sort_keys=False) + "\n"


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
            values[name] = tuple(values[name])
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
    checks += [(f"rows[{i}]", row, dict) for i, row in enumerate(r.rows)]
    checks += [(f"metrics[{i}]", m, dict) for i, m in enumerate(r.metrics)]
    checks += [(f"evaluations[{i}]", e, dict) for i, e in enumerate(r.evaluations)]
    for name, value, kind in checks:
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise OtrobustError(f"{source}: {name} should be {kind.__name__}, found {type(value).__name__}")
    for i, row in enumerate(r.rows):
        for key in ("evaluation", "metric"):
            if not isinstance(row.get(key), str):
                raise OtrobustError(f"{source}: rows[{i}].{key} should be a string")
        if row.get("accuracy") is not None and not isinstance(row["accuracy"], int | float):
            raise OtrobustError(f"{source}: rows[{i}].accuracy should be a number")


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
