"""PGD-20 evaluation throughput: otrobust's evaluation against torchattacks' PGD on the same model and images.

    pip install --no-deps torchattacks            # benchmark-only peer, never an otrobust dependency
    python benchmarks/eval_vs_peers.py            # CW CNN, 1×28×28, 512 images, batch 256, CPU
    python benchmarks/eval_vs_peers.py --batch-sizes 128 256 512

Both produce the robust accuracy of the same images: otrobust through ``evaluate_model`` with its ``pgd``
(clean pass, PGD-20 with a random start that keeps the best iterate per example, final check), torchattacks
through ``PGD(steps=20, random_start=True)`` followed by the same final check. The figure is images per
second; each repetition evaluates all ``--n`` images at each batch size. ``otrobust`` runs with
``evaluate_model``'s defaults (channels-last; on a CPU the attack in pieces of at most 128 images); ``otrobust, NCHW
whole batch`` turns both off. ``torchattacks PGD, channels-last by hand`` gives torchattacks its own copy of
the model and the batches converted to channels-last (what a peer's user could do).
"""

from __future__ import annotations

import time

import _timing as T
import torch

from otrobust.attacks.gradient import PGD
from otrobust.data import ImageData
from otrobust.evaluation.evaluate import EvalOptions, evaluate_model


def otrobust_eval(model, data: ImageData, eps: float, steps: int, batch_size: int, device, defaults: bool = True):
    step = 2.5 * eps / steps
    pieces = {} if defaults else {"chunk": 0, "workers": 1}
    attacks = {"pgd": PGD(eps=eps, step_size=step, steps=steps, **pieces)}
    return lambda: evaluate_model(model, data, attacks, batch_size=batch_size, device=device,
                                  options=EvalOptions(nhwc=defaults)).accuracy("worst")


def torchattacks_eval(model, data: ImageData, eps: float, steps: int, batch_size: int, device, nhwc: bool = False):
    import torchattacks

    if nhwc:
        model.to(memory_format=torch.channels_last)
    atk = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)

    def run():
        model.eval()
        correct = 0
        for i in range(0, len(data), batch_size):
            x, y = data.x[i:i + batch_size].to(device), data.y[i:i + batch_size].to(device)
            x_adv = atk(x.contiguous(memory_format=torch.channels_last) if nhwc else x, y)
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == y).sum())
        return correct / len(data)

    return run


def main() -> None:
    ap = T.parser("eval_vs_peers", __doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=512, help="images evaluated per repetition")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--attack-steps", type=int, default=20)
    ap.add_argument("--eps", type=float, default=0.3)

    args = ap.parse_args()
    device = T.setup(args)
    model, data = T.eval_setup(args.n, device, args.seed)
    fns = {}
    for b in args.batch_sizes:
        fns[f"otrobust, batch {b}"] = otrobust_eval(model, data, args.eps, args.attack_steps, b, device)
        fns[f"torchattacks PGD, batch {b}"] = torchattacks_eval(model, data, args.eps, args.attack_steps, b, device)
        fns[f"torchattacks PGD, channels-last by hand, batch {b}"] = torchattacks_eval(
            T.cw_cnn(device, args.seed).eval(), data, args.eps, args.attack_steps, b, device, nhwc=True)
        fns[f"otrobust NCHW whole batch, batch {b}"] = otrobust_eval(model, data, args.eps, args.attack_steps, b,
                                                                     device, defaults=False)
    print(f"timing {len(fns)} contenders x {args.reps} reps ({args.n} images, PGD-{args.attack_steps}, {device}, "
          f"{torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    times = T.interleaved(fns, args.reps, args.warmup, device)
    rows, results = [], {}
    for b in args.batch_sizes:
        ours = times[f"otrobust, batch {b}"]
        for name in [k for k in fns if k.endswith(f"batch {b}")]:
            ips = T.stats([args.n / s for s in times[name]])
            vs = T.paired_ratio(times[name], ours) if not name.startswith("otrobust,") else None
            results[name] = {"images_per_s": ips, "otrobust_speedup_vs_this": vs}
            rows.append([b, name.rsplit(", batch", 1)[0], T.fmt(ips, 1), T.fmt(vs, 2) if vs else "1 (reference)"])
    text = T.table(["batch", "contender", "images/s (median, min–max)", "otrobust speed-up vs this"], rows)
    T.finish(args, "eval_vs_peers", device, results, text,
             f"PGD-{args.attack_steps} evaluation throughput, CW CNN 1x28x28, {args.n} images, {device}", t0)


if __name__ == "__main__":
    main()
