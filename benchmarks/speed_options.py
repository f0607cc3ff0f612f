"""Before/after of each speed change in the library, measured as a ratio in one process.

    python benchmarks/speed_options.py                   # CW CNN, 1×28×28, batch 128, PGD-10, CPU
    python benchmarks/speed_options.py --only channels-last "attack pieces" --reps 7
    python benchmarks/speed_options.py --compile         # adds torch.compile (slow to compile on CPU)

Each row times the same work with the change off ("before") and on ("after"), interleaved; the figure is
the paired speed-up before/after (> 1: the change helps). Changes:

- ``frozen weights in attack``: attacks with the model's parameters out of autograd
  (``attacks.gradient.frozen_parameters``) against the weights recorded in every step's graph, PGD-10 only;
- ``in-place attack``: the attack update done in place (``attacks.norms.Norm.step_and_project_``) against the
  previous out-of-place formula ``project(ascent_step(...))`` (kept below as the reference), PGD-10 only;
- ``channels-last``: ``--channels-last on`` vs ``off``, PGD-AT training step, attack on the whole batch;
- ``attack pieces``: the attack in pieces of 64 images one after the other vs the whole batch (128), PGD-AT
  training step, one worker;
- ``attack workers``: the attack in two pieces of 64 images on two worker threads of one core each (the
  default on a 2-thread CPU) vs the whole batch on two threads, PGD-AT training step;
- ``forward pieces``: the training step's forward passes on pieces of 64 images (the CPU default for models
  without BN) vs the whole batch, GOT-PGD-LM training step (its clean and adversarial images make one
  forward of 256);
- ``amp``: ``--amp bf16`` vs ``off``, PGD-AT training step;
- ``trades clean pass``: TRADES reusing the clean forward pass for the adversary's target (models without
  BN/dropout) vs a separate no-grad pass;
- ``got-pgd one pass``: GOT-PGD's clean and adversarial images in one concatenated forward (models without
  BN) vs two forwards;
- ``eval layout``: PGD-20 evaluation of ``--eval-n`` images in batches of 256, with ``evaluate_model``'s
  defaults (channels-last, attack pieces by device) vs NCHW and the attack on the whole batch;
- ``compile`` (with ``--compile``): ``torch.compile`` vs eager, PGD-AT training step, after compiling;
- ``data on device`` (CUDA only): batches sliced from a device-resident set vs copied from the host.
"""

from __future__ import annotations

import contextlib
import copy
import time

import _timing as T
import torch
import torch.nn.functional as F

from otrobust.attacks import gradient
from otrobust.attacks.gradient import PGD, bn_mode, frozen_parameters, last_iterate, margin_loss
from otrobust.attacks.norms import get_norm, project
from otrobust.data import ImageData
from otrobust.evaluation.evaluate import EvalOptions, evaluate_model
from otrobust.training import methods


def ascent_step(x_adv, grad, step_size):
    """The ℓ∞ ascent step out of place, as it was before the in-place update."""
    return x_adv + step_size * grad.sign()


def pgd_out_of_place(model, x, y, eps, step_size, steps):
    """The training PGD as it was before the in-place update: the reference for ``in-place attack``."""
    x = x.detach()
    x_adv = project(get_norm("linf").random_start(x, eps), x, eps, "linf")
    with frozen_parameters(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(margin_loss(model(x_adv), y).sum(), x_adv)
            x_adv = project(ascent_step(x_adv.detach(), grad, step_size), x, eps, "linf")
    return x_adv.detach()


@contextlib.contextmanager
def weights_in_attack_graph():
    """Attacks as they were before ``frozen_parameters``: the weights recorded in every step's graph."""
    saved = gradient.frozen_parameters
    gradient.frozen_parameters = contextlib.nullcontext
    try:
        yield
    finally:
        gradient.frozen_parameters = saved


@contextlib.contextmanager
def two_pass_got_pgd():
    """Make GOT-PGD take separate clean and adversarial forwards, as it must for models with BN."""
    saved = methods.has_mode_dependent_layers
    methods.has_mode_dependent_layers = lambda model: True
    try:
        yield
    finally:
        methods.has_mode_dependent_layers = saved


def pairs(args, device):
    """{change: (before fn, after fn)}."""
    base = T.cw_cnn(device, args.seed)
    x, y = T.mnist_like(max(args.batch_size, args.eval_n), device, args.seed)
    xb, yb = x[:args.batch_size], y[:args.batch_size]
    eps, k = args.eps, args.attack_steps
    step = 2.5 * eps / k
    out = {}

    def train_step(method, **kw):
        model = copy.deepcopy(base)
        s = T.otrobust_step(method, model, eps=eps, steps=k, **kw)
        return T.restarting(model, lambda: s(xb, yb))

    if "frozen weights in attack" in args.only:
        model = copy.deepcopy(base).eval()
        attack = lambda: last_iterate(PGD(eps=eps, step_size=step, steps=k), model, xb, yb)  # noqa: E731
        out["frozen weights in attack"] = (lambda: _under(weights_in_attack_graph, attack), attack)
    if "in-place attack" in args.only:
        model = copy.deepcopy(base).eval()
        out["in-place attack"] = (lambda: pgd_out_of_place(model, xb, yb, eps, step, k),
                                  lambda: last_iterate(PGD(eps=eps, step_size=step, steps=k), model, xb, yb))
    if "channels-last" in args.only:
        out["channels-last"] = (train_step("pgd-at", channels_last=False, attack_chunk=0),
                                train_step("pgd-at", channels_last=True, attack_chunk=0))
    if "attack pieces" in args.only:
        out["attack pieces"] = (train_step("pgd-at", attack_chunk=0, attack_workers=1),
                                train_step("pgd-at", attack_chunk=64, attack_workers=1))
    if "attack workers" in args.only:
        out["attack workers"] = (train_step("pgd-at", attack_chunk=0, attack_workers=1),
                                 train_step("pgd-at", attack_chunk=64, attack_workers=2))
    if "forward pieces" in args.only:
        out["forward pieces"] = (train_step("got-pgd-lm", forward_chunk=0), train_step("got-pgd-lm"))
    if "amp" in args.only:
        out["amp bf16"] = (train_step("pgd-at"), train_step("pgd-at", amp=torch.bfloat16))
    if "trades clean pass" in args.only:
        out["trades clean pass"] = (train_step("trades", reuse_clean=False), train_step("trades", reuse_clean=True))
    if "got-pgd one pass" in args.only:
        before = train_step("got-pgd-lm")
        out["got-pgd one pass"] = (lambda: _under(two_pass_got_pgd, before), train_step("got-pgd-lm"))
    if "eval layout" in args.only:
        n = args.eval_n
        model, data = copy.deepcopy(base).eval(), ImageData(x[:n], y[:n], 10)
        whole = {"pgd": PGD(eps=eps, step_size=2.5 * eps / 20, steps=20, chunk=0, workers=1)}
        pieces = {"pgd": PGD(eps=eps, step_size=2.5 * eps / 20, steps=20)}
        out["eval layout"] = (
            lambda: evaluate_model(model, data, whole, batch_size=256, device=device,
                                   options=EvalOptions(nhwc=False)),
            lambda: evaluate_model(model, data, pieces, batch_size=256, device=device))
    if args.compile:
        compiled = torch.compile(copy.deepcopy(base))
        s = T.otrobust_step("pgd-at", compiled, eps=eps, steps=k)
        print("compiling (the first compiled steps are not timed)…", flush=True)
        for _ in range(3):
            s(xb, yb)
        out["compile"] = (train_step("pgd-at"), T.restarting(compiled, lambda: s(xb, yb)))
    if device.type == "cuda" and "data on device" in args.only:
        host_x, host_y = x.cpu().pin_memory(), y.cpu().pin_memory()
        model = copy.deepcopy(base)

        def consume(xs, ys):
            with bn_mode(model, "train"):
                F.cross_entropy(model(xs), ys).backward()

        out["data on device"] = (
            lambda: [consume(host_x[i:i + 128].to(device, non_blocking=True), host_y[i:i + 128].to(device))
                     for i in range(0, 1024, 128)],
            lambda: [consume(x[i:i + 128], y[i:i + 128]) for i in range(0, 1024, 128)])
    return out


def _under(context, fn):
    with context():
        return fn()


CHANGES = ("frozen weights in attack", "in-place attack", "channels-last", "attack pieces", "attack workers",
           "forward pieces", "amp",
           "trades clean pass", "got-pgd one pass", "eval layout", "data on device")


def main() -> None:
    ap = T.parser("speed_options", __doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--eval-n", type=int, default=512, help="images in the eval-batch comparison")
    ap.add_argument("--only", nargs="+", default=list(CHANGES), choices=CHANGES, help="which changes to time")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = ap.parse_args()
    device = T.setup(args)
    t0 = time.perf_counter()
    rows, results = [], {}
    for change, (before, after) in pairs(args, device).items():
        print(f"{change}:")
        times = T.interleaved({"before": before, "after": after}, args.reps, args.warmup, device)
        speedup = T.paired_ratio(times["before"], times["after"])
        results[change] = {"before_s": T.stats(times["before"]), "after_s": T.stats(times["after"]),
                           "speedup": speedup}
        rows.append([change, T.fmt(T.stats(times["before"])), T.fmt(T.stats(times["after"])), T.fmt(speedup, 2)])
    text = T.table(["change", "before s", "after s", "speed-up before/after (median, min–max)"], rows)
    T.finish(args, "speed_options", device, results, text,
             f"Speed changes, CW CNN 1x28x28, batch {args.batch_size}, PGD-{args.attack_steps}, {device}, "
             f"{torch.get_num_threads()} threads", t0)


if __name__ == "__main__":
    main()
