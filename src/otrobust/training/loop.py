"""The training loop: epochs, β warm-up, the φ update, validation, checkpoints, resume. No maths here.

Every step is a deterministic function of (seed, epoch, step) and the model state: the data order is
drawn per epoch and the attack's randomness is re-seeded per step. That is what lets a run killed at
any point resume to exactly the weights and metrics of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from otrobust import distributed
from otrobust.attacks.gradient import default_step_size, pgd
from otrobust.data import DatasetSpec, ImageData, get_dataset_spec, iterate_batches, load_dataset, random_crop_flip
from otrobust.errors import OtrobustError
from otrobust.evaluation.evaluate import evaluate_model
from otrobust.models import create_model, unwrap
from otrobust.ot import GOTRegularizer
from otrobust.store.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from otrobust.store.files import append_jsonl, atomic_write_text, fault_point, remove_stale_temp_files
from otrobust.store.lock import run_lock
from otrobust.store.provenance import provenance, versions
from otrobust.store.resume import check_nothing_lost, check_resume_compatible
from otrobust.training.awp import awp_gamma_at, with_awp
from otrobust.training.config import TrainConfig, check_eps, validate
from otrobust.training.methods import (
    DEFAULT_OT_WEIGHT,
    StepContext,
    get_method,
    has_mode_dependent_layers,
    ot_variant,
    zero_step_warning,
)


class Interrupted(Exception):
    """Raised after SIGINT/SIGTERM once the last checkpoint is safely on disk; ``signum`` is the signal (the CLI
    exits with 128 + signum: 130 for SIGINT, 143 for SIGTERM)."""

    signum: int = signal.SIGINT


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill dataset-dependent defaults (model, ε, step size) and validate."""
    spec = get_dataset_spec(cfg.dataset)
    if cfg.norm == "l2" and cfg.eps is None:
        raise OtrobustError(f"--norm l2 needs an --eps: the {cfg.dataset} default radius is an l-inf one "
                            "(common l2 radii: 0.5 on CIFAR, 2.0 on MNIST)")
    eps = spec.default_eps if cfg.eps is None else cfg.eps
    step_size = cfg.step_size if cfg.step_size is not None else default_step_size(eps, cfg.steps)
    variant = ot_variant(cfg.method)
    ot_weight = cfg.ot_weight if cfg.ot_weight is not None else DEFAULT_OT_WEIGHT[variant] if variant else 0.0
    return validate(dataclasses.replace(cfg, model=cfg.model or spec.default_model, eps=eps, step_size=step_size,
                                        batch_size=cfg.batch_size or spec.default_batch_size, ot_weight=ot_weight,
                                        val_size=cfg.val_size or spec.default_val_size))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OtrobustError(f"--device {name} asked for, but no CUDA device is available")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise OtrobustError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OtrobustError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    return device


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` (None: full float32). ``auto`` is bf16 on a CUDA GPU that has it;
    on CPU it is off: without native bf16 units (AVX-512-BF16/AMX) autocast there is slower, not faster."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def gradients_finite(model: nn.Module, reg: nn.Module | None = None) -> bool:
    """True if every gradient of the model (and of the OT potential) is finite: one host sync for all of them."""
    grads = [p.grad for m in (model, reg) if m is not None for p in m.parameters() if p.grad is not None]
    return not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())


def use_channels_last(setting: str) -> bool:
    """``--channels-last``: ``auto`` turns it on. CUDA tensor cores want NHWC; on CPU oneDNN's NHWC convolutions
    were 1.1-1.3x faster for every model measured (benchmarks/README.md)."""
    return setting != "off"


def split_train_val(data: ImageData, train_size: int | None, val_size: int) -> tuple[ImageData, ImageData]:
    """Validation = the last ``val_size`` training images; training = the first ``train_size`` of the rest."""
    if val_size >= len(data):
        raise OtrobustError(f"--val-size {val_size} leaves no training images (the split has {len(data)})")
    rest = len(data) - val_size
    n_train = rest if train_size is None else min(train_size, rest)
    return data.take(slice(0, n_train)), data.take(slice(rest, len(data)))


def step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step) % (2**63 - 1)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order (n,) in which an epoch visits the training images: a function of the seed and the epoch alone,
    so runs with the same seed see the same batches (paired comparisons) and a resumed run the same order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, epoch, -1)))


def ot_weight_at(cfg: TrainConfig, epoch_progress: float) -> float:
    """β after the linear warm-up: the OT term pulls every latent to one point (docs/method.md §5) unless
    cross-entropy has first separated the classes, so it is phased in."""
    if cfg.ot_warmup_epochs <= 0:
        return cfg.ot_weight
    return cfg.ot_weight * min(1.0, epoch_progress / cfg.ot_warmup_epochs)


def eps_scale_at(cfg: TrainConfig, epoch_progress: float) -> float:
    """The share of ``--eps`` (and of the step size) the training attack uses after the linear ε warm-up: from
    scratch, a full-radius adversary can stop the model from ever leaving chance (the worst case of a random
    network is uninformative), so small perturbations come first."""
    if cfg.eps_warmup_epochs <= 0:
        return 1.0
    return min(1.0, epoch_progress / cfg.eps_warmup_epochs)


CHANCE_MARGIN = 0.05  # within 5 points of always predicting the commonest class: nothing learnt yet


def chance_warning(cfg: TrainConfig, epochs_done: int, val_clean: float, val_labels: torch.Tensor) -> str | None:
    """One line saying the run has not left chance level, with the likely fixes; None once it has learnt.

    Chance is the share of the commonest class among the validation labels (what a constant prediction scores)."""
    chance = float(torch.bincount(val_labels).max()) / max(len(val_labels), 1)
    if val_clean > chance + CHANCE_MARGIN:
        return None
    fixes = ["a lower --lr", "a smaller --batch-size (more steps per epoch)"]
    if cfg.method != "standard":
        fixes = [f"a longer --eps-warmup-epochs (now {cfg.eps_warmup_epochs:g})", f"a smaller --eps (now {cfg.eps:g})",
                 *fixes]
    if ot_variant(cfg.method):
        fixes.append(f"a smaller --ot-weight or a longer --ot-warmup-epochs (beta is {cfg.ot_weight:g})")
    return (f"warning: accuracy is at chance level ({100 * val_clean:.1f} %, a constant prediction scores "
            f"{100 * chance:.1f} %) after {epochs_done} epoch{'s' * (epochs_done != 1)}: the model has not started "
            f"to learn; try {', '.join(fixes)}")


def with_data_geometry(spec: DatasetSpec, data: ImageData) -> DatasetSpec:
    """``spec`` with the classes, channels and image size that it leaves 0 (``folder``) read from ``data``."""
    return dataclasses.replace(spec, num_classes=spec.num_classes or data.num_classes,
                               in_channels=spec.in_channels or data.x.shape[1],
                               image_size=spec.image_size or data.x.shape[-1])


def build_model(cfg: TrainConfig, device: torch.device,
                spec: DatasetSpec | None = None) -> tuple[nn.Module, GOTRegularizer | None]:
    """The model and (GOT methods) its OT regulariser; ``spec`` defaults to the registered dataset's."""
    spec = spec or get_dataset_spec(cfg.dataset)
    torch.manual_seed(cfg.seed)
    try:
        model = create_model(cfg.model, num_classes=spec.num_classes, in_channels=spec.in_channels,
                             image_size=spec.image_size, latent=cfg.latent).to(device)
    except ValueError as exc:  # e.g. an architecture too deep for the dataset's image size
        raise OtrobustError(f"--model {cfg.model} cannot be used with --dataset {cfg.dataset}: {exc}") from None
    variant = ot_variant(cfg.method)
    reg = None
    if variant:
        reg = GOTRegularizer(model.latent_dim, variant=variant, solver=cfg.ot_solver, theta=cfg.theta,
                             lam=cfg.lam, dx=cfg.dx, dy=cfg.dy, phi_grad=cfg.phi_grad).to(device)
    return model, reg


def build_optimizers(cfg: TrainConfig, model: nn.Module, reg: GOTRegularizer | None):
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # φ ascends W: same backward pass, its own optimiser stepping uphill.
    phi_opt = (torch.optim.Adam(reg.potential_parameters(), lr=cfg.phi_lr, maximize=True)
               if reg is not None and reg.potential_parameters() else None)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    elif cfg.schedule == "step":  # ×0.1 at 50 % and 75 % of training (Madry / TRADES style)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [cfg.epochs // 2, (3 * cfg.epochs) // 4], 0.1)
    else:
        sched = None
    return opt, phi_opt, sched


def validate_epoch(model: nn.Module, val: ImageData, cfg: TrainConfig, device, seed: int) -> dict[str, float]:
    """Clean and PGD-``val_steps`` accuracy (true labels) on the held-out training images."""
    torch.manual_seed(seed)
    step = default_step_size(cfg.eps, cfg.val_steps)
    attacks = {"pgd": lambda m, x, y: pgd(m, x, y, cfg.eps, step, cfg.val_steps, norm=cfg.norm,
                                          chunk=cfg.attack_chunk, workers=cfg.attack_workers)}
    batch = 512 if torch.device(device).type != "cuda" else max(len(val), 1)  # GPU: the largest batch that fits
    while True:
        try:
            res = evaluate_model(model, val, attacks if cfg.val_steps > 0 else {}, batch_size=batch, device=device,
                                 nhwc=use_channels_last(cfg.channels_last))
            break
        except torch.cuda.OutOfMemoryError:
            if batch <= 16:
                raise
            batch //= 2
            torch.cuda.empty_cache()
            torch.manual_seed(seed)
    fault_point("validation")
    return {"val_clean": res.accuracy("clean"), "val_pgd": res.accuracy("worst")}


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the checkpoint written is consistent."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self.saved:
            try:
                signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, Interrupted) and self.signum is not None:
            exc.signum = self.signum
        for s, h in self.saved.items():
            try:
                signal.signal(s, h)
            except ValueError:
                pass


def _arch(cfg: TrainConfig, spec: DatasetSpec | None = None) -> dict[str, Any]:
    spec = spec or get_dataset_spec(cfg.dataset)
    return {"model": cfg.model, "num_classes": spec.num_classes, "in_channels": spec.in_channels,
            "image_size": spec.image_size, "latent": cfg.latent, "dataset": cfg.dataset}


def _save(run_dir: Path, which: str, cfg, model, reg, opt, phi_opt, sched, state: dict[str, Any],
          spec: DatasetSpec | None = None) -> None:
    extra = {"optim": opt.state_dict(), "phi": reg.state_dict() if reg is not None else None,
             "phi_optim": phi_opt.state_dict() if phi_opt is not None else None,
             "sched": sched.state_dict() if sched is not None else None}
    meta = {"architecture": _arch(cfg, spec), "config": cfg.to_dict(), "versions": versions(), **state}
    save_checkpoint(checkpoint_path(run_dir, which), unwrap(model).state_dict(), meta, extra)


def prepare_run_dir(cfg: TrainConfig, argv: list[str] | None = None, device: str | None = None) -> Path:
    """Create (or re-open with --resume) the run directory; record the resolved config and provenance."""
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
    record = provenance(argv)
    record.update(event="resume" if cfg.resume else "start", seed=cfg.seed, device=device, config=cfg.to_dict())
    append_jsonl(run_dir / "provenance.jsonl", record)
    return run_dir


def _changed_hyperparameters(saved: dict[str, Any], cfg: TrainConfig, opt, phi_opt, sched) -> list[str]:
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


def _restore(last: Path, cfg: TrainConfig, model, reg, opt, phi_opt, sched, state: dict[str, Any]) -> list[str]:
    """Load weights, optimiser/φ/scheduler state and the loop counters from ``last`` (for --resume); returns
    the hyperparameters that --resume changed (see :func:`_changed_hyperparameters`)."""
    weights, meta, extra = load_checkpoint(last)
    check_resume_compatible(meta.get("config") or {}, cfg.to_dict(), str(last))
    load_weights(unwrap(model), weights, meta, str(last))
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
    state.update({k: meta[k] for k in state if k in meta})
    return _changed_hyperparameters(meta.get("config") or {}, cfg, opt, phi_opt, sched)


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
            result = _train(cfg, info, device, show_progress=show_progress if info.is_main else False,
                            log=log if info.is_main else (lambda text: None), argv=argv)
        distributed.finish(joined)
        return result
    finally:
        distributed.teardown(joined)


def _train(cfg: TrainConfig, info: distributed.DistInfo, device: torch.device, *, show_progress: bool | None,
           log, argv: list[str] | None) -> dict[str, Any]:
    check_nothing_lost(Path(cfg.out), cfg.resume)  # before anything in the run directory is written
    spec = get_dataset_spec(cfg.dataset)
    full_train = load_dataset(cfg.dataset, "train", cfg.data_dir)
    spec = with_data_geometry(spec, full_train)
    if cfg.norm == "l2":
        check_eps(cfg.eps, cfg.norm, spec.in_channels * spec.image_size ** 2)
    if tuple(full_train.x.shape[1:]) != (spec.in_channels, spec.image_size, spec.image_size):
        raise OtrobustError(f"the {cfg.dataset} images found have shape {tuple(full_train.x.shape[1:])}, expected "
                            f"{(spec.in_channels, spec.image_size, spec.image_size)}; check --data-dir")
    train_data, val_data = split_train_val(full_train, cfg.train_size, cfg.val_size)
    if info.enabled:
        distributed.check_batches(len(train_data), cfg.batch_size, info.world_size)
    if device.type == "cuda":  # data on the device once; batches are sliced there (no host copies per step)
        train_data = ImageData(train_data.x.to(device), train_data.y.to(device), train_data.num_classes)
    run_dir = Path(cfg.out)  # written only once the model and any checkpoint have loaded
    model, reg = build_model(cfg, device, spec)
    channels_last = use_channels_last(cfg.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    opt, phi_opt, sched = build_optimizers(cfg, model, reg)

    state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "best_score": None, "accum": None}
    last = checkpoint_path(run_dir, "last")
    if cfg.resume and last.exists():
        changes = _restore(last, cfg, model, reg, opt, phi_opt, sched, state)
        log(f"resuming {run_dir} at epoch {state['epoch'] + 1}, step {state['step']}"
            + "".join(f"\n  with {line}" for line in changes))
    elif cfg.init:
        weights, meta, _ = load_checkpoint(resolve_checkpoint(cfg.init))
        load_weights(unwrap(model), weights, meta, cfg.init)
        log(f"initialised from {cfg.init}")
    if info.is_main:  # rank 0 alone writes the run directory
        run_dir = prepare_run_dir(cfg, argv, str(device))
        # The log is rebuilt from the checkpoint so that a crash between the two writes cannot duplicate lines.
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state["history"]))
    model, eval_model = distributed.wrap_model(model, info, device, compile=cfg.compile)
    autocast_dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    global_ot = info.enabled and reg is not None and cfg.ot_scope == "global"

    method = get_method(cfg.method)
    if zero_step_warning(cfg.method, cfg.steps):
        log(f"warning: {zero_step_warning(cfg.method, cfg.steps)}")
    if cfg.awp_gamma > 0:
        method = with_awp(method, cfg.method)  # adversarial weight perturbation on top of any objective
    ctx = StepContext(eps=cfg.eps, step_size=cfg.step_size, steps=cfg.steps, norm=cfg.norm,
                      attack_bn=cfg.attack_bn, adv_weight=cfg.adv_weight, clean_weight=cfg.clean_weight,
                      regularizer=reg, reuse_clean=not has_mode_dependent_layers(model),
                      attack_model=eval_model if eval_model is not model else None, attack_chunk=cfg.attack_chunk,
                      attack_workers=cfg.attack_workers,
                      # compiled models would recompile for each piece size; DDP wants one forward per backward
                      forward_chunk=0 if cfg.compile or info.enabled else cfg.forward_chunk)
    def skip_or_stop(what: str, epoch: int, step: int) -> None:
        """A non-finite ``what`` at this step: count the batch as skipped (``--nan-policy skip``) or stop."""
        where = f"epoch {epoch + 1}, step {step + 1}"
        if cfg.nan_policy == "skip":
            acc["skipped"] += 1
            log(f"warning: non-finite {what} at {where}; batch skipped")
            return
        kept = f"the last good checkpoint is {str(last)!r}" if last.exists() else "no checkpoint yet"
        raise OtrobustError(f"non-finite {what} at {where}; {kept} (try a lower --lr or --ot-weight, or "
                            "--nan-policy skip)")

    bar_cls = None
    if show_progress is not False:
        from tqdm.auto import tqdm as bar_cls

    with _StopFlag() as stop:
        for epoch in range(state["epoch"], cfg.epochs):
            t0 = time.perf_counter()
            order = epoch_order(cfg.seed, epoch, len(train_data))
            zeros = {"loss": 0.0, "correct": 0, "seen": 0, "ot": 0.0, "skipped": 0, "seconds": 0.0}
            # Each process sums its own shard; the saved totals (global) are carried by rank 0 alone.
            acc = (state["accum"] if info.is_main else None) or dict(zeros)
            first = state["step"]
            batches = iterate_batches(train_data.take(order.to(train_data.x.device)), cfg.batch_size, device=device)
            bar = (bar_cls(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           leave=False, disable=None if show_progress is None else not show_progress)
                   if bar_cls else None)
            model.train()
            for step, (x, y) in enumerate(batches):
                if step < first:
                    continue
                seed = step_seed(cfg.seed, epoch, step)
                torch.manual_seed(seed)
                if spec.augment == "crop-flip":
                    x = random_crop_flip(x, torch.Generator().manual_seed(seed))
                # Every process walks the same global batches and keeps its rows of each (distributed.py).
                x, y, ctx.shard = distributed.take_shard(x, y, info)
                if global_ot:
                    ctx.gather = partial(distributed.all_gather_with_grad,
                                         sizes=distributed.shard_sizes(ctx.shard[1], info.world_size))
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                ctx.ot_weight = ot_weight_at(cfg, epoch + step / steps_per_epoch)
                eps_scale = eps_scale_at(cfg, epoch + step / steps_per_epoch)
                ctx.eps, ctx.step_size = cfg.eps * eps_scale, cfg.step_size * eps_scale
                ctx.awp_gamma = awp_gamma_at(cfg.awp_gamma, cfg.awp_warmup_epochs, epoch + step / steps_per_epoch)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    loss, logs = method(model, x, y, ctx)
                finite = bool(torch.isfinite(loss))
                if info.enabled:  # every process takes the same branch
                    finite = not distributed.any_process(not finite, info, device)
                if not finite:
                    bad = [k for k, v in logs.items() if k != "logits" and not bool(torch.isfinite(v).all())]
                    skip_or_stop(", ".join(bad) or "loss", epoch, step)
                    continue
                opt.zero_grad(set_to_none=True)
                if phi_opt is not None:
                    phi_opt.zero_grad(set_to_none=True)
                weighted = loss
                if info.enabled and ctx.shard[1] % info.world_size:  # unequal shards: see distributed.shard_weight
                    weighted = loss * distributed.shard_weight(ctx.shard[1], info.rank, info.world_size)
                (scaler.scale(weighted) if scaler else weighted).backward()
                if reg is not None:
                    distributed.average_gradients(reg.potential_parameters(), info)
                # A finite loss can still have a non-finite gradient (e.g. 0 * inf in a backward formula). With
                # fp16 the scaler already skips such steps. Gradients are all-reduced: every process agrees.
                if scaler is None and not gradients_finite(model, reg):
                    skip_or_stop("gradient (the loss was finite)", epoch, step)
                    continue
                fault_point("step")
                for o in (opt, phi_opt):
                    if o is not None:
                        o.step() if scaler is None else scaler.step(o)
                if scaler is not None:
                    scaler.update()
                acc["loss"] += float(loss.detach()) * len(y)
                acc["correct"] += int((logs["logits"].argmax(1) == y).sum())
                acc["seen"] += len(y)
                acc["ot"] += float(logs.get("ot", 0.0)) * len(y)
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{acc['loss'] / acc['seen']:.3f}", acc=f"{acc['correct'] / acc['seen']:.3f}")
                done = step + 1
                stop.signum = distributed.agree_on_signal(stop.signum, info, device)
                if stop.signum is not None or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0
                                               and done < steps_per_epoch):
                    acc_now = dict(distributed.totals(acc, info, device),
                                   seconds=acc["seconds"] + time.perf_counter() - t0)
                    if info.enabled:  # the totals are now rank 0's to carry
                        acc = dict(acc_now, seconds=acc["seconds"]) if info.is_main else dict(zeros)
                    if info.is_main:
                        _save(run_dir, "last", cfg, model, reg, opt, phi_opt, sched,
                              {**state, "epoch": epoch, "step": done, "accum": acc_now}, spec)
                    if stop.signum is not None:
                        if bar:
                            bar.close()
                        raise Interrupted(f"stopped by signal {stop.signum} at epoch {epoch + 1}, step {done}; "
                                          f"checkpoint saved, continue with: otrobust train --resume --out {run_dir}")
            if bar:
                bar.close()
            if sched is not None:
                sched.step()
            acc = distributed.totals(acc, info, device)
            seen = max(acc["seen"], 1)
            record = {"epoch": epoch + 1, "train_loss": acc["loss"] / seen, "train_acc": acc["correct"] / seen,
                      "ot": acc["ot"] / seen, "ot_weight": ot_weight_at(cfg, epoch + 1),
                      "train_eps": cfg.eps * eps_scale_at(cfg, epoch + 1),
                      "lr": opt.param_groups[0]["lr"], "skipped_batches": acc["skipped"]}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                record.update(validate_epoch(eval_model, val_data, cfg, device, step_seed(cfg.seed, epoch, -2)))
            record["seconds"] = round(acc["seconds"] + time.perf_counter() - t0, 3)
            # Robust methods keep the checkpoint with the best validation PGD accuracy; standard training,
            # which has none to speak of, the best clean accuracy.
            score = ([record["val_clean"]] if cfg.method == "standard"
                     else [record["val_pgd"], record["val_clean"]])
            history = state["history"] + [record]
            improved = state["best_score"] is None or score > state["best_score"]
            new_state = {"epoch": epoch + 1, "step": 0, "history": history, "accum": None,
                         "best_score": score if improved else state["best_score"]}
            if info.is_main:
                if improved:
                    _save(run_dir, "best", cfg, model, reg, opt, phi_opt, sched, new_state, spec)
                _save(run_dir, "last", cfg, model, reg, opt, phi_opt, sched, new_state, spec)
                append_jsonl(run_dir / "metrics.jsonl", record)
            state = new_state
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {record['train_loss']:.4f}  train acc {record['train_acc']:.3f}"
                f"  val clean {record['val_clean']:.3f}  val PGD-{cfg.val_steps} {record['val_pgd']:.3f}"
                f"  ({record['seconds']:.1f}s)")
            warning = chance_warning(cfg, epoch + 1, record["val_clean"], val_data.y)
            if warning:
                log(warning)
            stop.signum = distributed.agree_on_signal(stop.signum, info, device)
            if stop.signum is not None and epoch + 1 < cfg.epochs:  # the signal came during validation
                raise Interrupted(f"stopped by signal {stop.signum} after epoch {epoch + 1}; checkpoint saved, "
                                  f"continue with: otrobust train --resume --out {run_dir}")
    return state["history"][-1] if state["history"] else {}
