"""TensorBoard event files for a training run (``--tensorboard``), so that a TensorBoard kept open beside the
job shows it as it trains. An optional extra: ``pip install otrobust[tensorboard]``."""

from __future__ import annotations

from pathlib import Path

from otrobust.errors import OtrobustError

INSTALL = "pip install otrobust[tensorboard]"
EVENTS_DIR = "tensorboard"  # inside a run folder
# An epoch's figures: TensorBoard tag -> key of the epoch's metrics.jsonl record
EPOCH_TAGS = {"val/clean": "val_clean", "val/pgd": "val_pgd", "epoch/train_loss": "train_loss",
              "epoch/train_acc": "train_acc", "epoch/ot": "ot"}


def check_tensorboard() -> None:
    """Raise OtrobustError naming the install command if TensorBoard's writer cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports tensorboard)
    except ImportError:
        raise OtrobustError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}") from None


class EventLog:
    """Scalars written to ``run_dir/tensorboard`` as TensorBoard events; ``first_step``: the step the run continues
    from, so that on ``--resume`` the steps an earlier, killed process logged past its last checkpoint are
    dropped from the curves (TensorBoard's ``purge_step``) instead of drawn twice."""

    def __init__(self, run_dir: Path, first_step: int = 0):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / EVENTS_DIR), purge_step=first_step or None)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One point per ``tag: value`` at global step ``step``."""
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def epoch(self, record: dict[str, float], step: int) -> None:
        """An epoch's metrics record (as metrics.jsonl holds it) at ``step``, written out at once."""
        self.scalars({tag: record[key] for tag, key in EPOCH_TAGS.items()}, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
