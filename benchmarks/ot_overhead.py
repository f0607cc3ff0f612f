"""What does the OT term cost? A GOT training step against its base step, same model, batch and attack.

    python benchmarks/ot_overhead.py                 # CW CNN, 1×28×28, batch 128, PGD-10, CPU
    python benchmarks/ot_overhead.py --reps 9 --steps-per-rep 2

Pairs: got-trades-lm vs trades, and got-pgd-lm vs pgd-at. GOT-PGD needs the benign latent, which plain
PGD-AT (adversarial CE only, the paper's MNIST/CIFAR setting) never computes, so it is also compared with
PGD-AT that has the same passes (``--clean-weight`` > 0: clean and adversarial images in one forward): that
ratio is the OT term's own cost. The last row times the OT term alone (forward + backward of
GOTRegularizer on this batch's shapes) as a fraction of the base step. Every contender starts each
repetition from the same weights.
"""

from __future__ import annotations

import copy
import time

import _timing as T
import torch

from otrobust.ot import GOTRegularizer

PAIRS = [("got-trades-lm", "trades"), ("got-pgd-lm", "pgd-at"), ("got-pgd-lm", "pgd-at (+clean pass)")]


def ot_term_alone(batch: int, latent_dim: int, classes: int, device, solver: str = "semidual"):
    """Forward + backward of the OT term on random latents/logits of one training batch."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, latent_dim, generator=g).to(device).requires_grad_(True)
    z_adv = torch.randn(batch, latent_dim, generator=g).to(device).requires_grad_(True)
    logits = torch.randn(batch, classes, generator=g).to(device).requires_grad_(True)
    logits_adv = torch.randn(batch, classes, generator=g).to(device).requires_grad_(True)
    y = torch.arange(batch, device=device) % classes
    reg = GOTRegularizer(latent_dim, variant="lm", solver=solver).to(device)

    def run():
        reg(z, z_adv, logits, logits_adv, y).backward()

    return run


def main() -> None:
    ap = T.parser("ot_overhead", __doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--steps-per-rep", type=int, default=2, help="training steps per timed repetition")
    args = ap.parse_args()
    device = T.setup(args)
    base_model = T.cw_cnn(device, args.seed)
    n = args.batch_size * args.steps_per_rep
    data = T.batches(*T.mnist_like(n, device, args.seed), args.batch_size)
    contenders = {"trades": ("trades", 0.0), "got-trades-lm": ("got-trades-lm", 0.0), "pgd-at": ("pgd-at", 0.0),
                  "pgd-at (+clean pass)": ("pgd-at", 1.0), "got-pgd-lm": ("got-pgd-lm", 0.0)}
    fns = {}
    for name, (method, clean_weight) in contenders.items():
        model = copy.deepcopy(base_model)
        step = T.otrobust_step(method, model, eps=args.eps, steps=args.attack_steps, clean_weight=clean_weight)
        fns[name] = T.restarting(model, lambda step=step: [step(x, y) for x, y in data])
    fns["OT term alone"] = lambda f=ot_term_alone(args.batch_size, base_model.latent_dim, 10, device): \
        [f() for _ in range(args.steps_per_rep)]
    print(f"timing {len(fns)} contenders x {args.reps} reps, {args.steps_per_rep} steps each "
          f"(batch {args.batch_size}, PGD-{args.attack_steps}, {device}, {torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    times = T.interleaved(fns, args.reps, args.warmup, device)
    per_step = {k: [t / args.steps_per_rep for t in v] for k, v in times.items()}
    rows, results = [], {"seconds_per_step": {k: T.stats(v) for k, v in per_step.items()}, "ratios": {}}
    for got, base in PAIRS:
        r = T.paired_ratio(per_step[got], per_step[base])
        results["ratios"][f"{got} / {base}"] = r
        rows.append([f"{got} vs {base}", T.fmt(T.stats(per_step[base])), T.fmt(T.stats(per_step[got])), T.fmt(r)])
    for base in ("trades", "pgd-at"):
        r = T.paired_ratio(per_step["OT term alone"], per_step[base])
        results["ratios"][f"OT term alone / {base}"] = r
        rows.append([f"OT term alone vs {base}", T.fmt(T.stats(per_step[base])),
                     T.fmt(T.stats(per_step["OT term alone"]), 4), T.fmt(r, 4)])
    text = T.table(["comparison", "base s/step", "GOT (or OT) s/step", "ratio (median, min–max)"], rows)
    T.finish(args, "ot_overhead", device, results, text,
             f"OT overhead, CW CNN 1x28x28, batch {args.batch_size}, PGD-{args.attack_steps}, {device}", t0)


if __name__ == "__main__":
    main()
