"""Setting a training run up: resolving its defaults, the data split, the model, the optimisers, the
per-step schedules (β and ε warm-up, the step seed, the data order) and the per-epoch validation.

Plain functions of the settings; :mod:`otrobust.training.loop` calls them in order.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from otrobust import distributed
from otrobust.attacks.gradient import PGD, default_step_size
from otrobust.data import DatasetSpec, ImageData, get_dataset_spec, load_dataset
from otrobust.errors import OtrobustError
from otrobust.evaluation.evaluate import EvalOptions, evaluate_model
from otrobust.models.architecture import Architecture
from otrobust.ot import GOTRegularizer
from otrobust.store.files import fault_point
from otrobust.training.config import TrainConfig, check_eps, validate
from otrobust.training.method_registry import DEFAULT_OT_WEIGHT, ot_variant


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


@dataclasses.dataclass(frozen=True)
class Precision:
    """The precision of a run's training passes: the autocast ``dtype`` (None: float32) and why it was chosen."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def to_dict(self) -> dict[str, str]:
        return {"precision": self.name, "precision_reason": self.reason}


def cpuinfo_has_amx(path: Path = Path("/proc/cpuinfo")) -> bool:
    """True if the ``flags`` line of a ``/proc/cpuinfo`` lists ``amx_bf16`` and ``amx_tile``."""
    try:
        text = path.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return {"amx_bf16", "amx_tile"} <= set(line.partition(":")[2].split())
    return False


def cpu_has_amx() -> bool:
    """True if this CPU's bf16 matrix products can run on AMX tiles (Intel Xeon from Sapphire Rapids on).

    AMX is reached through oneDNN, so it needs a PyTorch built with it and no ``ONEDNN_MAX_CPU_ISA`` (or its
    old name ``DNNL_MAX_CPU_ISA``) that keeps oneDNN below AMX; the processor is asked through PyTorch's own
    capability query, or ``/proc/cpuinfo`` where this PyTorch has none."""
    if not torch.backends.mkldnn.is_available():
        return False
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(name, "").strip().upper()
        if cap and cap not in ("ALL", "DEFAULT") and "AMX" not in cap:
            return False
    query = getattr(torch.cpu, "get_capabilities", None)
    if query is None:
        return cpuinfo_has_amx()
    caps = query()
    return bool(caps.get("amx_bf16") and caps.get("amx_tile"))


def training_precision(amp: str, device: torch.device) -> Precision:
    """The autocast dtype of the training passes for ``--amp`` on ``device``, with the reason recorded.

    ``auto`` is bf16 where the hardware has bf16 matrix units: a CUDA GPU that supports bf16, or a CPU with
    AMX. Other CPUs stay in float32: without those units bf16 autocast is slower, not faster."""
    if amp != "auto":
        return Precision({"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp], f"--amp {amp}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "--amp auto: the CUDA GPU supports bf16")
        return Precision(None, "--amp auto: the CUDA GPU does not support bf16")
    if cpu_has_amx():
        return Precision(torch.bfloat16, "--amp auto: the CPU has AMX bf16 units")
    return Precision(None, "--amp auto: the CPU has no AMX bf16 units (bf16 would be slower there)")


def gradients_finite(model: nn.Module, reg: nn.Module | None = None) -> bool:
    """True if every gradient of the model (and of the OT potential) is finite: one host sync for all of them."""
    grads = [p.grad for m in (model, reg) if m is not None for p in m.parameters() if p.grad is not None]
    return not grads or bool(torch.stack(torch._foreach_norm(grads)).isfinite().all())


def use_channels_last(setting: str) -> bool:
    """``--channels-last``: ``auto`` turns it on. CUDA tensor cores want NHWC, and oneDNN's NHWC convolutions
    are the faster ones on a CPU too (benchmarks/README.md has the measurements)."""
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
        model = Architecture(cfg.model, spec.num_classes, spec.in_channels, spec.image_size, cfg.latent).build()
        model = model.to(device)
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
    attacks = {"pgd": PGD(eps=cfg.eps, step_size=step, steps=cfg.val_steps, norm=cfg.norm, chunk=cfg.attack_chunk,
                          workers=cfg.attack_workers)}
    batch = 512 if torch.device(device).type != "cuda" else max(len(val), 1)  # GPU: the largest batch that fits
    while True:
        try:
            res = evaluate_model(model, val, attacks if cfg.val_steps > 0 else {}, batch_size=batch, device=device,
                                 options=EvalOptions(nhwc=use_channels_last(cfg.channels_last)))
            break
        except torch.cuda.OutOfMemoryError:
            if batch <= 16:
                raise
            batch //= 2
            torch.cuda.empty_cache()
            torch.manual_seed(seed)
    fault_point("validation")
    return {"val_clean": res.accuracy("clean"), "val_pgd": res.accuracy("worst")}


def load_training_data(cfg: TrainConfig, info: distributed.DistInfo,
                       device: torch.device) -> tuple[DatasetSpec, ImageData, ImageData]:
    """The dataset's spec (with the geometry of the images found) and the (train, validation) split, checked
    against the settings; on CUDA the training images are moved to the device once."""
    full_train = load_dataset(cfg.dataset, "train", cfg.data_dir)
    spec = with_data_geometry(get_dataset_spec(cfg.dataset), full_train)
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
    return spec, train_data, val_data
