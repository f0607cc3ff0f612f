"""The one adapter around the reference AutoAttack code (Croce & Hein 2020), as packaged on PyPI as
``pyautoattack`` (pinned: 0.2.0). Nothing else in otrobust imports that package.

Every attack here has otrobust's call shape ``attack(model, x, y) -> x_adv``:

- ``standard``: APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes), Square (5,000 queries),
  each run only on the points that the previous ones left unbroken — the reference's own sequence;
- ``fast``: APGD-CE then APGD-T with the standard settings;
- ``rand``: APGD-CE and APGD-DLR with expectation over 20 draws (EOT), for randomised models;
- single attacks: ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab`` (the targeted FAB-T of the standard
  version) and ``square``, with the standard version's settings.

The reference reports what it notices (a randomised model, probabilities instead of logits, zero
gradients, Square beating the gradient attacks…) through the ``auto-attack`` logger, ``print`` and
``warnings``; the adapter captures all three and keeps them in ``warnings`` / ``messages`` instead of
letting them scroll past. It adds two checks of its own: the points returned stay inside the threat
model, and the model's clean predictions are the same before and after the run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings as pywarnings
from dataclasses import dataclass, field

import torch
from torch import nn

from otrobust.attacks.gradient import require_input_gradient
from otrobust.errors import OtrobustError

REFERENCE = "pyautoattack==0.2.0"
VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "fast": ("apgd-ce", "apgd-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
SINGLE_ATTACKS: dict[str, str] = {"apgd-ce": "apgd-ce", "apgd-dlr": "apgd-dlr", "apgd-t": "apgd-t",
                                  "fab": "fab-t", "square": "square"}
# The reference attacks that use no gradient (the table's black-box family runs them).
GRADIENT_FREE = ("square",)
REFERENCE_NORMS = {"linf": "Linf", "l2": "L2"}
STANDARD_ITERATIONS = 100
STANDARD_QUERIES = 5000
STANDARD_TARGETS = 9
# The reference's DLR losses rank the logits: the untargeted one needs a third-largest, the targeted one a
# fourth-largest logit, and with fewer classes it indexes out of range.
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4}
# Which of the reference's messages make an evaluation unreliable (``fail``) rather than worth a look.
SEVERE_MARKERS = ("randomized defense", "probability distribution", "zero gradient", "outside the threat model",
                  "changed between")


def _reference():
    try:
        import pyautoattack
        from pyautoattack import checks
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    except ImportError:
        raise OtrobustError(f"AutoAttack needs the reference package: pip install {REFERENCE}") from None
    return pyautoattack.AutoAttack, checks, APGDAttack, APGDAttack_targeted


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class AutoAttackRunner:
    """AutoAttack as ``attack(model, x, y) -> x_adv``; every call's findings accumulate in ``warnings``.

    attacks: the reference's attack names, run in order on what is left unbroken.
    n_iter / n_queries / n_targets: overrides for cheap runs (fewer APGD/FAB iterations, Square queries,
    target classes); anything but ``None`` makes the run *not* standard AutoAttack, and ``standard``
    says so.
    """

    eps: float
    norm: str = "linf"
    attacks: tuple[str, ...] = VERSIONS["standard"]
    eot_iter: int = 1
    seed: int = 0
    n_iter: int | None = None
    n_queries: int | None = None
    n_targets: int | None = None
    warnings: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    # Of the latest call: per example (N,) bool, robust after each attack in order (``last_stages[name]``),
    # starting with ``"clean"`` (the reference's own clean check): which attack broke which point.
    last_stages: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.norm not in REFERENCE_NORMS:
            raise OtrobustError(f"AutoAttack supports norms {', '.join(REFERENCE_NORMS)}, not {self.norm!r}")
        if not self.eps > 0:
            raise OtrobustError(f"AutoAttack needs eps > 0, got {self.eps}")

    @property
    def standard(self) -> bool:
        """True when every setting is the reference's own (no iteration, query or target overrides)."""
        return self.n_iter is None and self.n_queries is None and self.n_targets is None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if any(name not in GRADIENT_FREE for name in self.attacks):  # Square alone needs no gradient
            require_input_gradient(model, x)
        reference = self._build(model, x)
        with torch.no_grad():
            before = model(x).argmax(1)
        # The reference flattens gradients shaped like x with .view, which a channels-last colour batch does not
        # allow; the model keeps its own memory format.
        x_adv = self._run_stages(reference, x.contiguous(), y, before == y)
        with torch.no_grad():
            after = model(x).argmax(1)
        self._check(x, x_adv, before, after)
        return x_adv

    def _build(self, model: nn.Module, x: torch.Tensor):
        AutoAttack, _, APGDAttack, APGDAttack_targeted = _reference()
        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        short = too_few_classes(self.attacks, n_classes)
        if short:
            raise OtrobustError(f"AutoAttack's {', '.join(short)} cannot attack a model with {n_classes} classes (its "
                                f"DLR loss needs at least {max(MIN_CLASSES[a] for a in short)}); use apgd-ce, fab, "
                                "square or pgd-cw instead")
        ref = AutoAttack(model, attacks=list(self.attacks), device=x.device, eps=self.eps,
                         norm=REFERENCE_NORMS[self.norm], seed=self.seed, version="custom")
        if self.n_iter is not None:
            # APGD derives its checkpoint schedule from n_iter in its constructor: build new ones.
            common = dict(n_iter=self.n_iter, verbose=False, eps=self.eps, norm=REFERENCE_NORMS[self.norm],
                          eot_iter=1, rho=0.75, seed=self.seed, device=x.device, logger=ref.logger)
            ref.apgd = APGDAttack(model, n_restarts=1, **common)
            ref.apgd_targeted = APGDAttack_targeted(model, n_restarts=1, **common)
            ref.fab.n_iter = self.n_iter
        # The standard version's settings (the reference applies them only for version="standard").
        ref.apgd.n_restarts = 1
        ref.apgd.eot_iter = self.eot_iter
        ref.apgd_targeted.n_restarts = 1
        ref.fab.n_restarts = 1
        targets = min(self.n_targets or STANDARD_TARGETS, n_classes - 1)
        ref.apgd_targeted.n_target_classes = targets
        ref.fab.n_target_classes = targets
        ref.square.n_queries = self.n_queries or STANDARD_QUERIES
        return ref

    def _run_stages(self, reference, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor) -> torch.Tensor:
        """The reference's sequence, one attack at a time, each on the points the earlier ones left unbroken (as
        the reference itself does), recording in ``last_stages`` which points survive each attack."""
        x_adv, robust = x.clone(), robust.clone()
        self.last_stages = {"clean": robust.cpu().clone()}
        for name in self.attacks:
            idx = robust.nonzero().flatten()
            if len(idx):
                reference.attacks_to_run = [name]
                found = self._run(reference, x[idx], y[idx])
                with torch.no_grad():
                    broken = reference.model(found).argmax(1) != y[idx]
                x_adv[idx[broken]] = found[broken]
                robust[idx[broken]] = False
            self.last_stages[name] = robust.cpu().clone()
        return x_adv

    def _run(self, reference, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, checks, _, _ = _reference()
        # The reference counts gradient calls seen during a forward pass in a module-level dict that it
        # never resets, so one dynamic model would flag every later one; start each run from zero.
        for key in checks.funcs:
            checks.funcs[key] = 0
        logger = logging.getLogger("auto-attack")
        handler = _Collect()
        saved = (logger.level, logger.propagate)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(handler)
        printed = io.StringIO()
        devices = [x.device] if x.device.type == "cuda" else []
        try:
            with pywarnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed), \
                    torch.random.fork_rng(devices=devices):
                pywarnings.simplefilter("always")
                x_adv, _ = reference.run_standard_evaluation(x, y, batch_size=max(len(x), 1))
        finally:
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
        for record in handler.records:
            text = record.getMessage()
            self.messages.append(text)
            if record.levelno >= logging.WARNING:
                self._warn(text)
        self.messages += [line for line in printed.getvalue().splitlines() if line.strip()]
        for w in caught:
            self._warn(str(w.message))
        return x_adv.detach()

    def _check(self, x: torch.Tensor, x_adv: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> None:
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)
        tol = 1e-5 * max(1.0, self.eps)
        if not bool(torch.isfinite(x_adv).all()) or bool((size > self.eps + tol).any()) or \
                float(x_adv.min()) < -1e-6 or float(x_adv.max()) > 1 + 1e-6:
            self._warn(f"adversarial points outside the threat model: largest {self.norm} perturbation "
                       f"{float(size.max()):.6f} for eps {self.eps:.6f}, range [{float(x_adv.min()):.4f}, "
                       f"{float(x_adv.max()):.4f}]")
        if not bool((before == after).all()):
            self._warn(f"clean predictions changed between two passes on the same images "
                       f"({int((before != after).sum())} of {len(x)}): the model is randomised or stateful")

    def _warn(self, text: str) -> None:
        # The same finding on another batch differs only in its counts: keep the first.
        key = re.sub(r"[0-9.]+", "#", text)
        if all(re.sub(r"[0-9.]+", "#", w) != key for w in self.warnings):
            self.warnings.append(text)


def too_few_classes(attacks: tuple[str, ...], n_classes: int) -> list[str]:
    """The reference attacks among ``attacks`` that cannot run on a model with ``n_classes`` classes."""
    return [a for a in attacks if n_classes < MIN_CLASSES.get(a, 2)]


def is_severe(warning: str) -> bool:
    """True for the reference's findings that make a gradient-based evaluation unreliable."""
    return any(marker in warning for marker in SEVERE_MARKERS)


def autoattack(eps: float, norm: str = "linf", version: str = "standard", *, seed: int = 0,
               n_iter: int | None = None, n_queries: int | None = None,
               n_targets: int | None = None) -> AutoAttackRunner:
    """AutoAttack ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``fast`` (APGD-CE, APGD-T) or ``rand``
    (APGD-CE and APGD-DLR with 20-draw EOT), ℓ∞ or ℓ2, as ``attack(model, x, y) -> x_adv``."""
    if version not in VERSIONS:
        raise OtrobustError(f"unknown AutoAttack version {version!r}; choose one of: {', '.join(VERSIONS)}")
    return AutoAttackRunner(eps=eps, norm=norm, attacks=VERSIONS[version], eot_iter=20 if version == "rand" else 1,
                            seed=seed, n_iter=n_iter, n_queries=n_queries, n_targets=n_targets)


def single_attack(name: str, eps: float, norm: str = "linf", *, seed: int = 0, n_iter: int | None = None,
                  n_queries: int | None = None, n_targets: int | None = None) -> AutoAttackRunner:
    """One of AutoAttack's attacks on its own (``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``square``)."""
    if name not in SINGLE_ATTACKS:
        raise OtrobustError(f"unknown AutoAttack component {name!r}; choose one of: {', '.join(SINGLE_ATTACKS)}")
    return AutoAttackRunner(eps=eps, norm=norm, attacks=(SINGLE_ATTACKS[name],), seed=seed, n_iter=n_iter,
                            n_queries=n_queries, n_targets=n_targets)
