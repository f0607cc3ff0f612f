"""The training loop: epochs, β warm-up, the φ update, validation, checkpoints, resume. No maths here.

Every step is a deterministic function of (seed, epoch, step) and the model state: the data order is
drawn per epoch and the attack's randomness is re-seeded per step. That is what lets a run killed at
any point resume to exactly the weights and metrics of an uninterrupted run.

Read :meth:`Trainer.fit` and :meth:`Trainer.run_epoch` first: they are the loop. :meth:`Trainer.step` is one
optimisation step, :meth:`Trainer.end_epoch` the validation and checkpoints after each epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch

from otrobust import distributed
from otrobust.data import iterate_batches, random_crop_flip
from otrobust.devices import pick_device
from otrobust.errors import OtrobustError
from otrobust.models import unwrap
from otrobust.store.checkpoint import checkpoint_path, load_checkpoint, load_weights, resolve_checkpoint
from otrobust.store.events import EventLog, check_tensorboard
from otrobust.store.files import append_jsonl, atomic_write_text, fault_point
from otrobust.store.lock import run_lock
from otrobust.store.resume import check_nothing_lost
from otrobust.training.awp import awp_gamma_at, with_awp
from otrobust.training.config import TrainConfig
from otrobust.training.ema import WeightAverage
from otrobust.training.methods import StepContext, get_method, has_mode_dependent_layers, zero_step_warning
from otrobust.training.runfiles import (
    Optimisers,
    check_config_is_ours,
    checkpoint_score,
    prepare_run_dir,
    restore_run_state,
    save_run_state,
)
from otrobust.training.setup import (
    build_model,
    build_optimizers,
    chance_warning,
    epoch_order,
    eps_scale_at,
    gradients_finite,
    load_training_data,
    ot_weight_at,
    resolve,
    step_seed,
    training_precision,
    use_channels_last,
    validate_epoch,
)
from otrobust.training.stop_signals import Interrupted, StopFlag
from otrobust.training.train_state import EpochTotals, TrainState


def train(cfg: TrainConfig, *, show_progress: bool | None = None, log=print,
          argv: list[str] | None = None) -> dict[str, Any]:
    """Run (or resume) one training job; returns the last epoch's metrics.

    Under ``torchrun`` (RANK/WORLD_SIZE set) every process runs this with the same settings: data-parallel
    training on shards of each global batch of ``--batch-size``; rank 0 alone writes the run directory. A second
    run on the same ``--out`` while this one is alive is refused (otrobust.store.lock).
    """
    cfg = resolve(cfg)
    info = distributed.env_info()
    device, joined = distributed.setup(info, pick_device(cfg.device))
    try:
        with run_lock(cfg.out) if info.is_main else nullcontext():  # rank 0 writes, so rank 0 holds the lock
            trainer = Trainer(cfg, info, device, show_progress=show_progress if info.is_main else False,
                              log=log if info.is_main else (lambda text: None), argv=argv)
            result = trainer.fit()
        distributed.finish(joined)
        return result
    finally:
        distributed.teardown(joined)


class Trainer:
    """One training run, set up: the data, the model (restored on ``--resume``), its optimisers and the
    settings every step shares. ``fit()`` trains it to ``cfg.epochs``."""

    def __init__(self, cfg: TrainConfig, info: distributed.DistInfo, device: torch.device, *,
                 show_progress: bool | None, log, argv: list[str] | None):
        check_nothing_lost(Path(cfg.out), cfg.resume)  # before anything in the run directory is written
        check_config_is_ours(Path(cfg.out))
        if cfg.tensorboard:
            check_tensorboard()
        self.cfg, self.info, self.device, self.log, self.show_progress = cfg, info, device, log, show_progress
        # The training passes' precision; the per-epoch validation shares it, evaluation never does.
        self.precision = training_precision(cfg.amp, device)
        self.spec, self.train_data, self.val_data = load_training_data(cfg, info, device)
        self.run_dir = Path(cfg.out)  # written only once the model and any checkpoint have loaded
        self.last = checkpoint_path(self.run_dir, "last")
        model, self.reg = build_model(cfg, device, self.spec)
        self.channels_last = use_channels_last(cfg.channels_last)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = self.plain = model  # self.model becomes the DDP / compiled wrapper below; self.plain stays
        self.steps_per_epoch = math.ceil(len(self.train_data) / cfg.batch_size)
        self.opt, self.phi_opt, self.sched = build_optimizers(cfg, model, self.reg)
        self.ema = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
        self.events: EventLog | None = None  # TensorBoard, opened by fit() on rank 0
        self.state = TrainState()
        if cfg.resume and self.last.exists():
            self.restore()
        elif cfg.init:
            weights, meta, _ = load_checkpoint(resolve_checkpoint(cfg.init))
            load_weights(unwrap(model), weights, meta, cfg.init)
            if self.ema is not None:
                self.ema.restart_from(model)
            log(f"initialised from {cfg.init}")
        if info.is_main:  # rank 0 alone writes the run directory
            self.run_dir = prepare_run_dir(cfg, argv, str(device), self.precision.to_dict())
            # The log is rebuilt from the checkpoint so that a crash between the two writes cannot duplicate lines.
            atomic_write_text(self.run_dir / "metrics.jsonl",
                              "".join(json.dumps(r) + "\n" for r in self.state.history))
        self.model, self.eval_model = distributed.wrap_model(model, info, device, compile=cfg.compile)
        if self.ema is not None:  # the same average on every process (see end_epoch)
            distributed.broadcast_state(self.ema.model, info)
        if cfg.amp == "auto" and self.precision.dtype is not None:
            log(f"training in {self.precision.name} ({self.precision.reason}; --amp off trains in float32)")
        self.scaler = torch.amp.GradScaler(device.type) if self.precision.dtype == torch.float16 else None
        self.global_ot = info.enabled and self.reg is not None and cfg.ot_scope == "global"
        self.method = get_method(cfg.method)
        warning = zero_step_warning(cfg.method, cfg.steps)
        if warning:
            log(f"warning: {warning}")
        if cfg.awp_gamma > 0:
            self.method = with_awp(self.method, cfg.method)  # adversarial weight perturbation on any objective
        # What every step shares; step_context() adds the values that change from step to step.
        self.run_ctx = StepContext(
            eps=cfg.eps, step_size=cfg.step_size, steps=cfg.steps, norm=cfg.norm, attack_bn=cfg.attack_bn,
            adv_weight=cfg.adv_weight, clean_weight=cfg.clean_weight, regularizer=self.reg,
            reuse_clean=not has_mode_dependent_layers(self.model),
            attack_model=self.eval_model if self.eval_model is not self.model else None,
            attack_chunk=cfg.attack_chunk, attack_workers=cfg.attack_workers,
            # compiled models would recompile for each piece size; DDP wants one forward per backward
            forward_chunk=0 if cfg.compile or info.enabled else cfg.forward_chunk)
        self.totals = EpochTotals()

    # ------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train from the current state to ``cfg.epochs``; returns the last epoch's metrics."""
        if self.cfg.tensorboard and self.info.is_main:
            self.events = EventLog(self.run_dir, self.global_step(self.state.epoch, self.state.step))
        try:
            with StopFlag() as self.stop:
                for epoch in range(self.state.epoch, self.cfg.epochs):
                    self.run_epoch(epoch)
        finally:
            if self.events is not None:
                self.events.close()
        return self.state.history[-1] if self.state.history else {}

    def global_step(self, epoch: int, step: int) -> int:
        """The number of the step ``step`` (0-based) of ``epoch`` over the whole run, from 1: TensorBoard's x axis."""
        return epoch * self.steps_per_epoch + step + 1

    def run_epoch(self, epoch: int) -> None:
        t0 = time.perf_counter()
        # Each process sums its own shard; the saved totals (global) are carried by rank 0 alone.
        self.totals = (self.state.accum if self.info.is_main else None) or EpochTotals()
        first = self.state.step  # non-zero when resuming from a mid-epoch checkpoint
        order = epoch_order(self.cfg.seed, epoch, len(self.train_data))
        batches = iterate_batches(self.train_data.take(order.to(self.train_data.x.device)), self.cfg.batch_size,
                                  device=self.device)
        bar = self._progress_bar(epoch, first)
        self.model.train()
        for step, (x, y) in enumerate(batches):
            if step < first:  # trained before the checkpoint this run resumed from
                continue
            if not self.step(x, y, epoch, step):  # a non-finite batch, skipped (--nan-policy skip)
                continue
            if bar:
                t = self.totals
                bar.update(1)
                bar.set_postfix(loss=f"{t.loss / t.seen:.3f}", acc=f"{t.correct / t.seen:.3f}")
            self._checkpoint_if_due(epoch, step + 1, t0, bar)
        if bar:
            bar.close()
        self.end_epoch(epoch, t0)

    # ------------------------------------------------------------ one step
    def step_context(self, progress: float, shard: tuple[int, int] | None) -> StepContext:
        """The step's context: the run's settings with ε, the PGD step, β and AWP's γ at ``progress`` (epochs,
        fractional) and this process's ``shard`` of the global batch."""
        cfg = self.cfg
        eps_scale = eps_scale_at(cfg, progress)
        gather = None
        if self.global_ot:  # an OT term over the global batch: gather every process's rows
            gather = partial(distributed.all_gather_with_grad,
                             sizes=distributed.shard_sizes(shard[1], self.info.world_size))
        return dataclasses.replace(self.run_ctx, eps=cfg.eps * eps_scale, step_size=cfg.step_size * eps_scale,
                                   ot_weight=ot_weight_at(cfg, progress), shard=shard, gather=gather,
                                   awp_gamma=awp_gamma_at(cfg.awp_gamma, cfg.awp_warmup_epochs, progress))

    def step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> bool:
        """One optimisation step on global batch ``step`` of ``epoch``; False if it was skipped as non-finite."""
        info = self.info
        seed = step_seed(self.cfg.seed, epoch, step)
        torch.manual_seed(seed)  # the attack's random start: the same on a resumed run
        if self.spec.augment == "crop-flip":
            x = random_crop_flip(x, torch.Generator().manual_seed(seed))
        # Every process walks the same global batches and keeps its rows of each (distributed.py).
        x, y, shard = distributed.take_shard(x, y, info)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = self.step_context(epoch + step / self.steps_per_epoch, shard)
        with self._autocast():
            loss, logs = self.method(self.model, x, y, ctx)
        # One host sync per step: the finiteness check and the running totals, read together before backward
        # is queued (an .item() after it would wait for the backward and the optimiser step too).
        loss_value, correct, ot = torch.stack([
            loss.detach().float(), (logs["logits"].argmax(1) == y).sum().float(),
            logs["ot"].float() if "ot" in logs else loss.new_zeros((), dtype=torch.float32)]).tolist()
        finite = math.isfinite(loss_value)
        if info.enabled:  # every process takes the same branch
            finite = not distributed.any_process(not finite, info, self.device)
        if not finite:
            bad = [k for k, v in logs.items() if k != "logits" and not bool(torch.isfinite(v).all())]
            return self._skip_or_stop(", ".join(bad) or "loss", epoch, step)
        optimisers = [o for o in (self.opt, self.phi_opt) if o is not None]
        for o in optimisers:
            o.zero_grad(set_to_none=True)
        weighted = loss
        if info.enabled and shard[1] % info.world_size:  # unequal shards: see distributed.shard_weight
            weighted = loss * distributed.shard_weight(shard[1], info.rank, info.world_size)
        (self.scaler.scale(weighted) if self.scaler else weighted).backward()
        if self.reg is not None:
            distributed.average_gradients(self.reg.potential_parameters(), info)
        # A finite loss can still have a non-finite gradient (e.g. 0 * inf in a backward formula). With
        # fp16 the scaler already skips such steps. Gradients are all-reduced: every process agrees.
        if self.scaler is None and not gradients_finite(self.model, self.reg):
            return self._skip_or_stop("gradient (the loss was finite)", epoch, step)
        fault_point("step")
        for o in optimisers:
            o.step() if self.scaler is None else self.scaler.step(o)
        if self.scaler is not None:
            self.scaler.update()
        if self.ema is not None:  # the parameters are the same on every process: so is their average
            self.ema.update(self.plain)
        if self.events is not None:  # under torchrun: the loss and OT term of rank 0's shard
            self.events.scalars({"train/loss": loss_value, "train/ot": ot, "train/ot_weight": ctx.ot_weight,
                                 "train/eps": ctx.eps, "train/lr": self.opt.param_groups[0]["lr"]},
                                self.global_step(epoch, step))
        self.totals = self.totals.plus_step(loss_value, int(correct), len(y), ot)
        return True

    def _skip_or_stop(self, what: str, epoch: int, step: int) -> bool:
        """A non-finite ``what`` at this step: count the batch as skipped (``--nan-policy skip``; returns False)
        or stop with the error."""
        where = f"epoch {epoch + 1}, step {step + 1}"
        if self.cfg.nan_policy == "skip":
            self.totals = dataclasses.replace(self.totals, skipped=self.totals.skipped + 1)
            self.log(f"warning: non-finite {what} at {where}; batch skipped")
            return False
        kept = f"the last good checkpoint is {str(self.last)!r}" if self.last.exists() else "no checkpoint yet"
        raise OtrobustError(f"non-finite {what} at {where}; {kept} (try a lower --lr or --ot-weight, or "
                            "--nan-policy skip)")

    # ------------------------------------------------------------ epochs, checkpoints, resume
    def end_epoch(self, epoch: int, t0: float) -> None:
        """Validate, record the epoch's metrics, save ``last`` (and ``best`` if it improved), log."""
        cfg, info, device = self.cfg, self.info, self.device
        lr = self.opt.param_groups[0]["lr"]  # the rate this epoch trained with: the scheduler then sets the next one's
        if self.sched is not None:
            self.sched.step()
        totals = self.totals.summed(info, device)
        seen = max(totals.seen, 1)
        record = {"epoch": epoch + 1, "train_loss": totals.loss / seen, "train_acc": totals.correct / seen,
                  "ot": totals.ot / seen, "ot_weight": ot_weight_at(cfg, epoch + 1),
                  "train_eps": cfg.eps * eps_scale_at(cfg, epoch + 1),
                  "lr": lr, "skipped_batches": totals.skipped}
        scored = self.eval_model
        if self.ema is not None:  # the average is what is scored and kept; each process has averaged its own
            distributed.broadcast_state(self.ema.model, info)  # BN statistics: rank 0's are the ones saved
            scored = self.ema.model
        with self._autocast():
            record.update(validate_epoch(scored, self.val_data, cfg, device, step_seed(cfg.seed, epoch, -2)))
        record["seconds"] = round(totals.seconds + time.perf_counter() - t0, 3)
        if self.events is not None:  # before the checkpoint: a kill after it cannot lose the epoch's points
            self.events.epoch(record, self.global_step(epoch, self.steps_per_epoch - 1))
        score = checkpoint_score(record, cfg.method)
        improved = self.state.best_score is None or score > self.state.best_score
        state = TrainState(epoch=epoch + 1, step=0, history=self.state.history + [record], accum=None,
                           best_score=score if improved else self.state.best_score)
        if info.is_main:
            if improved:
                self.save("best", state)
            self.save("last", state)
            append_jsonl(self.run_dir / "metrics.jsonl", record)
        self.state = state
        self.log(f"epoch {epoch + 1}/{cfg.epochs}  loss {record['train_loss']:.4f}  train acc {record['train_acc']:.3f}"
                 f"  val clean {record['val_clean']:.3f}  val PGD-{cfg.val_steps} {record['val_pgd']:.3f}"
                 f"  ({record['seconds']:.1f}s)")
        warning = chance_warning(cfg, epoch + 1, record["val_clean"], self.val_data.y)
        if warning:
            self.log(warning)
        self.stop.signum = distributed.agree_on_signal(self.stop.signum, info, device)
        if self.stop.signum is not None and epoch + 1 < cfg.epochs:  # the signal came during validation
            raise Interrupted(f"stopped by signal {self.stop.signum} after epoch {epoch + 1}; checkpoint saved, "
                              f"continue with: otrobust train --resume --out {self.run_dir}")

    def _checkpoint_if_due(self, epoch: int, done: int, t0: float, bar) -> None:
        """After step ``done`` of ``epoch``: save ``last`` mid-epoch on a stop signal (then raise Interrupted) or
        every ``--checkpoint-every`` steps."""
        info = self.info
        self.stop.signum = distributed.agree_on_signal(self.stop.signum, info, self.device)
        every = self.cfg.checkpoint_every
        if self.stop.signum is None and not (every and done % every == 0 and done < self.steps_per_epoch):
            return
        totals = dataclasses.replace(self.totals.summed(info, self.device),
                                     seconds=self.totals.seconds + time.perf_counter() - t0)
        if info.enabled:  # the totals are now rank 0's to carry
            self.totals = dataclasses.replace(totals, seconds=self.totals.seconds) if info.is_main else EpochTotals()
        if info.is_main:
            self.save("last", dataclasses.replace(self.state, epoch=epoch, step=done, accum=totals))
        if self.stop.signum is not None:
            if bar:
                bar.close()
            raise Interrupted(f"stopped by signal {self.stop.signum} at epoch {epoch + 1}, step {done}; "
                              f"checkpoint saved, continue with: otrobust train --resume --out {self.run_dir}")

    def save(self, which: str, state: TrainState) -> None:
        """Checkpoint ``which`` (``last`` or ``best``) of the model, its optimisers and ``state``."""
        save_run_state(self.run_dir, which, self.cfg, self.model, self.reg,
                       Optimisers(self.opt, self.phi_opt, self.sched, self.ema),
                       {**dataclasses.asdict(state), **self.precision.to_dict()}, self.spec)

    def restore(self) -> None:
        """Load the ``last`` checkpoint into the model, its optimisers and the state (``--resume``)."""
        meta, changes = restore_run_state(self.last, self.cfg, self.model, self.reg, self.opt, self.phi_opt,
                                          self.sched, ema=self.ema)
        self.state = TrainState.from_meta(meta)
        started = self.state.epoch + (self.state.step > 0)  # epochs finished, and one begun
        if self.cfg.epochs < started:
            begun = f" and {self.state.step} steps of epoch {self.state.epoch + 1}" if self.state.step else ""
            raise OtrobustError(f"cannot resume {str(self.run_dir)!r} with --epochs {self.cfg.epochs}: it has trained "
                                f"{self.state.epoch} epoch{'' if self.state.epoch == 1 else 's'}{begun} already, so "
                                f"nothing was changed; give --epochs {started} or more (to keep fewer epochs, start a "
                                "new --out)")
        before = meta.get("precision")  # None in checkpoints written before the precision was recorded
        if before is not None and before != self.precision.name:
            changes.append(f"{self.precision.name} training passes ({self.precision.reason}; the checkpoint's "
                           f"steps ran in {before})")
        self.log(f"resuming {self.run_dir} at epoch {self.state.epoch + 1}, step {self.state.step}"
                 + "".join(f"\n  with {line}" for line in changes))

    def _autocast(self):
        dtype = self.precision.dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def _progress_bar(self, epoch: int, first: int):
        if self.show_progress is False:
            return None
        from tqdm.auto import tqdm  # a progress bar only where one is shown

        return tqdm(total=self.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                    leave=False, disable=None if self.show_progress is None else not self.show_progress)
