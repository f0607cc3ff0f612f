"""The OT term alone as the batch grows, against a ResNet-18 training step at the same batch.

    python benchmarks/ot_scaling.py                       # B = 64 … 2048, both solvers, CPU
    python benchmarks/ot_scaling.py --resnet-batches 64 256 1024 --resnet-step plain

The OT term (GOTRegularizer, label-matching variant, latent D = 512 as ResNet-18's penultimate layer,
10 classes) is timed forward + backward for the semi-dual and the Sinkhorn solver. Peak memory: on CPU the
growth of the peak resident set size while one forward + backward runs, measured in a fresh subprocess per
setting; on CUDA ``torch.cuda.max_memory_allocated``. ResNet-18 (CIFAR variant, 3×32×32) training steps
are timed at the batches in ``--resnet-batches``, interleaved with the OT term at the same batch:
``plain`` = clean cross-entropy step, ``pgd1`` = PGD-1 adversarial step.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import _timing as T
import torch
import torch.nn.functional as F

from otrobust.ot import GOTRegularizer

LATENT, CLASSES = 512, 10


def ot_inputs(batch: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(batch, d, generator=g).to(device).requires_grad_(True)
               for d in (LATENT, LATENT, CLASSES, CLASSES)]
    return (*tensors, (torch.arange(batch) % CLASSES).to(device))


def ot_fn(batch: int, solver: str, device):
    z, z_adv, logits, logits_adv, y = ot_inputs(batch, device)
    reg = GOTRegularizer(LATENT, variant="lm", solver=solver).to(device)
    return lambda: reg(z, z_adv, logits, logits_adv, y).backward()


def resnet_fn(batch: int, kind: str, device):
    from otrobust.attacks.gradient import PGD, last_iterate
    from otrobust.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_channels=3, image_size=32).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)

    def step():
        model.train()
        inputs = x
        if kind == "pgd1":
            model.eval()
            inputs = last_iterate(PGD(eps=8 / 255, step_size=10 / 255, steps=1), model, x, y)
            model.train()
        loss = F.cross_entropy(model(inputs), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def peak_memory(batch: int, solver: str, device) -> float:
    """Extra peak memory (MiB) of one OT forward + backward."""
    if device.type == "cuda":
        f = ot_fn(batch, solver, device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        f()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    out = subprocess.run([sys.executable, __file__, "--child", str(batch), solver], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(batch: int, solver: str) -> None:
    """Run in a fresh process: peak RSS growth of one OT forward + backward (inputs already allocated).

    The kernel's high-water mark is reset first (``5 > /proc/self/clear_refs``) so that peaks from imports
    do not hide the OT term's; without that file the lifetime peak (ru_maxrss) is used, a lower bound.
    """
    f = ot_fn(batch, solver, torch.device("cpu"))
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        f()
        after = _status_kib("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        f()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (after - before) / 1024}))  # KiB -> MiB


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        torch.set_num_threads(1)
        child(int(sys.argv[2]), sys.argv[3])
        return
    ap = T.parser("ot_scaling", __doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--solvers", nargs="+", default=["semidual", "sinkhorn"])
    ap.add_argument("--resnet-batches", type=int, nargs="*", default=[64, 256, 1024])
    ap.add_argument("--resnet-step", choices=("plain", "pgd1"), default="plain")
    args = ap.parse_args()
    device = T.setup(args)
    t0 = time.perf_counter()
    rows, results = [], []
    for b in args.batches:
        fns = {s: ot_fn(b, s, device) for s in args.solvers}
        if b in args.resnet_batches:
            fns["resnet18"] = resnet_fn(b, args.resnet_step, device)
        print(f"B = {b}: timing {', '.join(fns)}")
        times = T.interleaved(fns, args.reps, args.warmup, device)
        for s in args.solvers:
            rec = {"batch": b, "solver": s, "seconds": T.stats(times[s]),
                   "peak_mib": peak_memory(b, s, device)}
            if "resnet18" in times:
                rec["resnet18_step_seconds"] = T.stats(times["resnet18"])
                rec["fraction_of_resnet18_step"] = T.paired_ratio(times[s], times["resnet18"])
            results.append(rec)
            frac = rec.get("fraction_of_resnet18_step")
            rows.append([b, s, T.fmt(rec["seconds"], 4), f"{rec['peak_mib']:.1f}",
                         T.fmt(rec["resnet18_step_seconds"], 2) if frac else "–",
                         f"{100 * frac['median']:.2f} % ({100 * frac['min']:.2f}–{100 * frac['max']:.2f})"
                         if frac else "–"])
    text = T.table(["B", "solver", "OT fwd+bwd s", "peak MiB", f"ResNet-18 {args.resnet_step} step s",
                    "OT / ResNet-18 step"], rows)
    T.finish(args, "ot_scaling", device, results, text,
             f"OT term alone (LM, D = {LATENT}, {CLASSES} classes), {device}", t0)


if __name__ == "__main__":
    main()
