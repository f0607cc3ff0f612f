"""Resume safety: what a restart would overwrite, and which settings a resumed run may not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from otrobust.errors import OtrobustError
from otrobust.store.checkpoint import checkpoint_path, load_checkpoint
from otrobust.store.files import CHECKPOINT_DIR, read_jsonl

# ---------------------------------------------------------------- resume
# Settings that fix what a step index means or which state the checkpoint holds: changing one on
# --resume would silently give a different run, so it is refused. (``ema`` decides what a checkpoint's
# model weights are: the average or the raw weights.)
RESUME_FIXED = ("dataset", "model", "latent", "method", "ot_solver", "optimizer", "schedule", "seed",
                "batch_size", "train_size", "val_size", "ema")


def restart_would_overwrite(run_dir: Path) -> list[str]:
    """What starting ``run_dir`` from epoch 1 would overwrite when it has no last checkpoint: the epochs logged
    in metrics.jsonl and the best checkpoint. Empty when nothing would be lost: a new folder, a run killed
    before its first checkpoint, or one killed between its first best and its first last checkpoint (both
    hold epoch 1 and nothing is logged yet; the restart writes the same best checkpoint again)."""
    records = read_jsonl(Path(run_dir) / "metrics.jsonl")
    found = [f"metrics.jsonl with {len(records)} logged epoch{'' if len(records) == 1 else 's'}"] if records else []
    best = checkpoint_path(run_dir, "best")
    if best.is_file():
        epoch = load_checkpoint(best)[1].get("epoch")
        if records or epoch != 1:
            found.append(f"{CHECKPOINT_DIR}/best.safetensors (epoch {epoch})")
    return found


def check_nothing_lost(run_dir: Path, resume: bool) -> None:
    """Raise OtrobustError if training in ``run_dir`` would start from epoch 1 (no last checkpoint, e.g. it was
    deleted) over what an earlier run left there (see :func:`restart_would_overwrite`), naming what survives
    and how to start over deliberately."""
    if checkpoint_path(run_dir, "last").exists():
        return
    found = restart_would_overwrite(run_dir)
    if found:
        how = "--resume would start again from epoch 1" if resume else "training there would start from epoch 1"
        best = checkpoint_path(run_dir, "best")
        init = f" (add --init {best} to start from its best weights)" if best.is_file() else ""
        raise OtrobustError(f"{str(run_dir)!r} has no {CHECKPOINT_DIR}/last.safetensors but holds "
                            f"{' and '.join(found)}: {how} and overwrite them, so nothing was changed; to start "
                            f"over deliberately, move or delete {str(run_dir)!r} first, or train into a new "
                            f"--out{init}")


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Raise OtrobustError if ``current`` changes a setting in RESUME_FIXED from the checkpoint's config, or
    asks for an ``--init`` other than the one the run started from (resuming would ignore it)."""
    if current.get("init") and current["init"] != saved.get("init"):
        started = f"--init {saved['init']}" if saved.get("init") else "fresh weights"
        raise OtrobustError(f"--resume and --init {current['init']} cannot go together: a resumed run continues from "
                            f"its own last checkpoint ({source!r}; the run started from {started}), so --init would "
                            "be ignored; drop --init to resume, or start a new --out with --init to train from those "
                            "weights")
    for name in RESUME_FIXED:
        if name in saved and saved[name] != current.get(name):
            raise OtrobustError(f"cannot resume {source!r} with --{name.replace('_', '-')} {current.get(name)!r}: "
                                f"the run was started with {saved[name]!r} (start a new --out instead)")
    schedule = saved.get("schedule", "none")
    if schedule != "none" and "epochs" in saved and saved["epochs"] != current.get("epochs"):
        raise OtrobustError(f"cannot resume {source!r} with --epochs {current.get('epochs')}: its {schedule} "
                            f"learning-rate schedule is laid out over {saved['epochs']} epoch"
                            f"{'' if saved['epochs'] == 1 else 's'} (to train longer, "
                            f"start a new --out with --init {source})")
