"""Adversarial-training throughput: otrobust's training step against its peers on the same model and attack.

    pip install --no-deps torchattacks            # benchmark-only peers, never otrobust dependencies
    pip install adversarial-robustness-toolbox
    python benchmarks/train_vs_peers.py           # CW CNN, 1×28×28, batch 128, PGD-10, CPU

Contenders, all starting from the same weights and fed the same batches:

- PGD-AT (Madry): otrobust ``pgd-at``; a training step built on torchattacks' ``PGD``; ART's
  ``AdversarialTrainerMadryPGD`` (its attack batch set to the training batch; ART's default is 32).
- TRADES: otrobust ``trades`` (KL adversary); a step built on torchattacks' ``TPGD`` (the TRADES KL attack)
  plus the TRADES loss; ART's ``AdversarialTrainerTRADESPyTorch`` (it takes a PGD-CE attack: same pass count).

Every contender takes ``--batches-per-rep`` optimiser steps per repetition, from the same starting weights
in every repetition; the figure is images per second. ``otrobust`` runs with its defaults (channels-last, and
on a CPU the attack in pieces of at most 128 images); ``otrobust, NCHW whole batch`` turns both off, to show what they
give. The peers get the model as it is; ``--peers-channels-last`` also times torchattacks with the model and
batches converted to channels-last by hand (what a peer's user could do).
"""

from __future__ import annotations

import copy
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # ART's progress bars would flood the output

import _timing as T  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def _nhwc(x):
    return x.contiguous(memory_format=torch.channels_last)


def torchattacks_pgd_step(model, eps: float, alpha: float, steps: int, nhwc: bool = False):
    import torchattacks

    if nhwc:
        model.to(memory_format=torch.channels_last)
    atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        x = _nhwc(x) if nhwc else x
        x_adv = atk(x, y)
        model.train()
        loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())

    return step


def torchattacks_trades_step(model, eps: float, alpha: float, steps: int, nhwc: bool = False, beta: float = 6.0):
    import torchattacks

    if nhwc:
        model.to(memory_format=torch.channels_last)
    atk = torchattacks.TPGD(model, eps=eps, alpha=alpha, steps=steps)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        x = _nhwc(x) if nhwc else x
        x_adv = atk(x)
        model.train()
        logits, logits_adv = model(x), model(x_adv)
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
        loss = F.cross_entropy(logits, y) + beta * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        float(loss.detach())

    return step


def _art_classifier(model, device):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(),
                             optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), input_shape=(1, 28, 28),
                             nb_classes=10, clip_values=(0.0, 1.0),
                             device_type="gpu" if device.type == "cuda" else "cpu")


def art_madry(model, device, eps, alpha, steps, batch_size):
    from art.defences.trainer import AdversarialTrainerMadryPGD

    trainer = AdversarialTrainerMadryPGD(_art_classifier(model, device), nb_epochs=1, batch_size=batch_size,
                                         eps=eps, eps_step=alpha, max_iter=steps, num_random_init=1)
    trainer.attack.set_params(batch_size=batch_size, verbose=False)
    return lambda x, y: trainer.fit(x, y, nb_epochs=1, batch_size=batch_size)


def art_trades(model, device, eps, alpha, steps, batch_size, beta: float = 6.0):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.defences.trainer import AdversarialTrainerTRADESPyTorch

    clf = _art_classifier(model, device)
    attack = ProjectedGradientDescent(clf, eps=eps, eps_step=alpha, max_iter=steps, num_random_init=1,
                                      batch_size=batch_size, verbose=False)
    trainer = AdversarialTrainerTRADESPyTorch(clf, attack, beta=beta)
    return lambda x, y: trainer.fit(x, y, nb_epochs=1, batch_size=batch_size)


def main() -> None:
    ap = T.parser("train_vs_peers", __doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--eps", type=float, default=0.3)
    ap.add_argument("--batches-per-rep", type=int, default=2)
    ap.add_argument("--peers-channels-last", action="store_true",
                    help="also time torchattacks with the model and batches converted to channels-last")
    ap.add_argument("--skip-art", action="store_true", help="leave ART out (it is the slowest)")
    args = ap.parse_args()
    device = T.setup(args)
    alpha = 2.5 * args.eps / args.attack_steps
    base = T.cw_cnn(device, args.seed)
    x, y = T.mnist_like(args.batch_size * args.batches_per_rep, device, args.seed)
    data = T.batches(x, y, args.batch_size)
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()

    def ours(method, **kw):
        model = copy.deepcopy(base)
        step = T.otrobust_step(method, model, eps=args.eps, steps=args.attack_steps, **kw)
        return T.restarting(model, lambda: [step(xb, yb) for xb, yb in data])

    def peer(make, **kw):
        model = copy.deepcopy(base)
        step = make(model, args.eps, alpha, args.attack_steps, **kw)
        return T.restarting(model, lambda: [step(xb, yb) for xb, yb in data])

    plain = {"channels_last": False, "attack_chunk": 0, "attack_workers": 1}
    groups = {"PGD-AT": {"otrobust": ours("pgd-at"), "otrobust, NCHW whole batch": ours("pgd-at", **plain),
                         "torchattacks PGD": peer(torchattacks_pgd_step)},
              "TRADES": {"otrobust": ours("trades"), "otrobust, NCHW whole batch": ours("trades", **plain),
                         "torchattacks TPGD": peer(torchattacks_trades_step)}}
    if args.peers_channels_last:
        groups["PGD-AT"]["torchattacks PGD, channels-last by hand"] = peer(torchattacks_pgd_step, nhwc=True)
        groups["TRADES"]["torchattacks TPGD, channels-last by hand"] = peer(torchattacks_trades_step, nhwc=True)
    if not args.skip_art:
        m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
        madry = art_madry(m1, device, args.eps, alpha, args.attack_steps, args.batch_size)
        trades = art_trades(m2, device, args.eps, alpha, args.attack_steps, args.batch_size)
        groups["PGD-AT"]["ART AdversarialTrainerMadryPGD"] = T.restarting(m1, lambda: madry(x_np, y_np))
        groups["TRADES"]["ART AdversarialTrainerTRADESPyTorch"] = T.restarting(m2, lambda: trades(x_np, y_np))

    fns = {f"{g}: {name}": fn for g, members in groups.items() for name, fn in members.items()}
    n_images = len(x)
    print(f"timing {len(fns)} contenders x {args.reps} reps of {args.batches_per_rep} steps "
          f"(CW CNN, batch {args.batch_size}, PGD-{args.attack_steps}, {device}, {torch.get_num_threads()} threads)")
    t0 = time.perf_counter()
    times = T.interleaved(fns, args.reps, args.warmup, device)
    rows, results = [], {}
    for g, members in groups.items():
        ours_t = times[f"{g}: otrobust"]
        peers = [m for m in members if not m.startswith("otrobust")]
        best = max(peers, key=lambda m: n_images / T.stats(times[f"{g}: {m}"])["median"])
        for name in members:
            t = times[f"{g}: {name}"]
            ips = T.stats([n_images / s for s in t])
            vs = T.paired_ratio(t, ours_t) if name != "otrobust" else None
            results[f"{g}: {name}"] = {"images_per_s": ips, "otrobust_speedup_vs_this": vs}
            rows.append([g, name, T.fmt(ips, 1), T.fmt(vs, 2) if vs else "1 (reference)"])
        results[f"{g}: speedup vs best peer"] = {"best_peer": best, **T.paired_ratio(times[f"{g}: {best}"], ours_t)}
    text = T.table(["attack", "contender", "images/s (median, min–max)", "otrobust speed-up vs this"], rows)
    summary = "\n".join(f"{g}: otrobust ÷ best peer ({results[f'{g}: speedup vs best peer']['best_peer']}) = "
                        f"{T.fmt(results[f'{g}: speedup vs best peer'], 2)}" for g in groups)
    T.finish(args, "train_vs_peers", device, results, text + "\n\n" + summary,
             f"Training throughput, CW CNN 1x28x28, batch {args.batch_size}, PGD-{args.attack_steps}, {device}", t0)


if __name__ == "__main__":
    main()
