"""A training run's files: the run directory, its provenance, and the checkpoints the loop saves and resumes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otrobust.data import DatasetSpec, get_dataset_spec
from otrobust.errors import OtrobustError
from otrobust.models import unwrap
from otrobust.models.architecture import Architecture
from otrobust.store.checkpoint import checkpoint_path, load_checkpoint, load_weights, save_checkpoint
from otrobust.store.files import append_jsonl, atomic_write_text, remove_stale_temp_files
from otrobust.store.provenance import provenance, versions
from otrobust.store.resume import check_resume_compatible
from otrobust.training.config import TrainConfig, config_yaml
from otrobust.training.ema import WeightAverage


def architecture(cfg: TrainConfig, spec: DatasetSpec | None = None) -> dict[str, Any]:
    """What rebuilds the run's model from a checkpoint (``store.checkpoint.load_model`` reads it)."""
    spec = spec or get_dataset_spec(cfg.dataset)
    return Architecture(cfg.model, spec.num_classes, spec.in_channels, spec.image_size, cfg.latent,
                        cfg.dataset).to_dict()


@dataclass(frozen=True, slots=True)
class Optimisers:
    """What a run's steps update beside the model's weights: the optimiser, the potential φ's optimiser and the
    learning-rate schedule (None where the run has none), and the weight average ``ema`` (None without one)."""

    opt: Any
    phi_opt: Any = None
    sched: Any = None
    ema: WeightAverage | None = None


def save_run_state(run_dir: Path, which: str, cfg, model, reg, optimisers: Optimisers, state: dict[str, Any],
                   spec: DatasetSpec | None = None) -> None:
    """Write checkpoint ``which`` (``last`` or ``best``): weights, optimiser/φ/scheduler state, and ``state``
    (the loop's counters) with the architecture, settings and versions in its metadata.

    With weight averaging (``ema``) the checkpoint's model weights are the average -- what ``load_model``,
    evaluation and ``--init`` read -- and the raw weights that training continues from go with the optimiser
    state (``raw``), beside the number of updates the average has had (``ema_updates``)."""
    opt, phi_opt, sched, ema = optimisers.opt, optimisers.phi_opt, optimisers.sched, optimisers.ema
    extra = {"optim": opt.state_dict(), "phi": reg.state_dict() if reg is not None else None,
             "phi_optim": phi_opt.state_dict() if phi_opt is not None else None,
             "sched": sched.state_dict() if sched is not None else None}
    weights = unwrap(model).state_dict()
    if ema is not None:
        extra.update(raw=weights, ema_updates=ema.updates)
        weights = ema.model.state_dict()
    meta = {"architecture": architecture(cfg, spec), "config": cfg.to_dict(), "versions": versions(), **state}
    save_checkpoint(checkpoint_path(run_dir, which), weights, meta, extra)


def checkpoint_score(record: dict[str, Any], method: str) -> list[float]:
    """What the best checkpoint maximises, from an epoch's metrics record: robust methods keep the epoch with the
    best validation PGD accuracy (then clean), standard training, which has none to speak of, the best clean
    accuracy. The first epoch of the highest score is the one kept."""
    return [record["val_clean"]] if method == "standard" else [record["val_pgd"], record["val_clean"]]


def check_config_is_ours(run_dir: Path) -> None:
    """Refuse to train into ``run_dir`` if it holds a config.json that is not an otrobust run's (another program's
    settings, which training would overwrite)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return
    try:
        values = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        values = None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if not (isinstance(values, dict) and {"dataset", "method"} <= set(values) <= known):
        raise OtrobustError(f"--out {str(run_dir)!r} holds a config.json that is not an otrobust run's settings; "
                            "training there would overwrite it: choose another --out")


def prepare_run_dir(cfg: TrainConfig, argv: list[str] | None = None, device: str | None = None,
                    precision: dict[str, str] | None = None) -> Path:
    """Create (or re-open with --resume) the run directory; record the resolved config (config.json, and the same
    as config.yaml) and provenance (with ``precision``: the training passes' precision and why, see
    ``training.setup.Precision``)."""
    run_dir = Path(cfg.out)
    has_run = checkpoint_path(run_dir, "last").exists()
    if has_run and not cfg.resume:
        raise OtrobustError(f"{str(run_dir)!r} already holds a run; add --resume to continue it "
                            f"or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OtrobustError(f"cannot create run directory {str(run_dir)!r}: {exc.strerror or exc}") from None
    remove_stale_temp_files(run_dir)  # left by a run killed mid-write
    atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    # The same settings for reading (and for --config): config.json is the one a resumed run reads.
    atomic_write_text(run_dir / "config.yaml", config_yaml(cfg))
    record = provenance(argv)
    record.update(event="resume" if cfg.resume else "start", seed=cfg.seed, device=device, **(precision or {}),
                  config=cfg.to_dict())
    append_jsonl(run_dir / "provenance.jsonl", record)
    return run_dir


def apply_changed_hyperparameters(saved: dict[str, Any], cfg: TrainConfig, opt, phi_opt, sched) -> list[str]:
    """Apply the learning rates, momentum and weight decay given on --resume where they differ from the
    checkpoint's (its optimiser state would otherwise keep the old ones); returns one line per change.

    A new ``--lr`` rescales the current rate (and a schedule's base rates) by new / old, so a schedule
    carries on from where it was at the new scale."""
    changes = []

    def changed(name: str) -> bool:
        old = saved.get(name)
        if old is None or old == getattr(cfg, name):
            return False
        changes.append(f"--{name.replace('_', '-')} {getattr(cfg, name)} (the checkpoint had {old})")
        return True

    if changed("lr"):
        ratio = cfg.lr / saved["lr"]
        for group in opt.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio
        if sched is not None:
            sched.base_lrs = [lr * ratio for lr in sched.base_lrs]
            sched._last_lr = [group["lr"] for group in opt.param_groups]
    for name in ("momentum", "weight_decay"):
        if name in opt.param_groups[0] and changed(name):
            for group in opt.param_groups:
                group[name] = getattr(cfg, name)
    if phi_opt is not None and changed("phi_lr"):
        for group in phi_opt.param_groups:
            group["lr"] = cfg.phi_lr
    return changes


def restore_run_state(last: Path, cfg: TrainConfig, model, reg, opt, phi_opt, sched,
                      ema: WeightAverage | None = None) -> tuple[dict[str, Any], list[str]]:
    """Load weights and optimiser/φ/scheduler state from ``last`` (for --resume); returns the checkpoint's
    metadata (the loop's counters among it) and the hyperparameters that --resume changed (see
    :func:`apply_changed_hyperparameters`).

    ``ema``: the weight average to restore; a checkpoint without one (written before averaging existed) starts
    it again from the raw weights."""
    weights, meta, extra = load_checkpoint(last)
    check_resume_compatible(meta.get("config") or {}, cfg.to_dict(), str(last))
    raw = extra.get("raw")
    if raw is not None and not isinstance(raw, dict) or not isinstance(extra.get("ema_updates", 0), int):
        raise OtrobustError(f"cannot resume from {str(last)!r}: its weight average is not readable")
    load_weights(unwrap(model), weights if raw is None else raw, meta, str(last))
    if ema is not None and raw is None:
        ema.restart_from(unwrap(model))
    elif ema is not None:
        load_weights(ema.model, weights, meta, str(last))
        ema.updates = int(extra.get("ema_updates") or 0)
    try:
        opt.load_state_dict(extra["optim"])
        if reg is not None and extra.get("phi") is not None:
            reg.load_state_dict(extra["phi"])
        if phi_opt is not None and extra.get("phi_optim") is not None:
            phi_opt.load_state_dict(extra["phi_optim"])
        if sched is not None and extra.get("sched") is not None:
            sched.load_state_dict(extra["sched"])
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise OtrobustError(f"cannot resume from {str(last)!r}: its optimiser state does not fit this run "
                            f"({type(exc).__name__})") from None
    return meta, apply_changed_hyperparameters(meta.get("config") or {}, cfg, opt, phi_opt, sched)
