"""PGD-10 adversarial training on a GPU: images/s and model FLOP utilisation (MFU) against the physical limit.

    python benchmarks/gpu_throughput.py                                  # ResNet-18 and WRN-34-10, batch 128
    python benchmarks/gpu_throughput.py --models resnet18 --batch-size 256 --compile
    python benchmarks/gpu_throughput.py --device cpu --models resnet18 --batch-size 8 --reps 5   # smoke test

One otrobust ``pgd-at`` training step (PGD-10 on CIFAR-size 3×32×32 inputs, then the training pass) is
counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward and backward matmul/conv FLOPs, the
attack's input-gradient passes included). The physical limit is the GPU's dense peak FLOP/s for the
precision used; MFU = achieved FLOP/s ÷ peak = measured images/s ÷ the images/s the peak would allow.
Rows: the library's CUDA defaults (bf16 autocast, channels-last) and, with ``--fp32``, float32 (TF32
convolutions, PyTorch's default) for reference.
"""

from __future__ import annotations

import time

import _timing as T
import torch
from torch.utils.flop_counter import FlopCounterMode

from otrobust.models import create_model

# Dense (no sparsity) peak FLOP/s from the vendors' data sheets; matched against torch.cuda.get_device_name.
PEAKS = {
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    "H100": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},  # SXM
    "H200": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
    "A10": {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
}


def peak_flops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAKS.items():  # the more specific keys come first
        if key in name:
            return peaks[precision]
    return None


class _FlopCounter(FlopCounterMode):
    """FlopCounterMode without its per-module breakdown: the module tracker's backward hooks refuse
    ``torch.autograd.grad`` w.r.t. an input (the attack's passes); the totals are counted the same way."""

    def __enter__(self):
        self.mod_tracker.__enter__ = self.mod_tracker.__exit__ = lambda *a: None  # per-module table off
        return super().__enter__()


def step_flops(step, x, y) -> int:
    with _FlopCounter(display=False) as counter:
        step(x, y)
    return counter.get_total_flops()


def main() -> None:
    ap = T.parser("gpu_throughput", __doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "wrn-34-10"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--steps-per-rep", type=int, default=5)
    ap.add_argument("--fp32", action="store_true", help="also time float32 (TF32 convolutions)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (as --compile does)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the peak TFLOP/s of the device")
    args = ap.parse_args()
    device = T.setup(args)
    x = torch.rand(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    modes = [("bf16 + channels-last", torch.bfloat16, True, "bf16")]
    if args.fp32 or device.type != "cuda":
        modes.append(("fp32", None, False, "tf32" if device.type == "cuda" else "fp32"))
    rows, results, t0 = [], [], time.perf_counter()
    for name in args.models:
        fns, flops = {}, {}
        for label, amp, cl, _ in modes:
            torch.manual_seed(args.seed)
            model = create_model(name, num_classes=10, in_channels=3, image_size=32).to(device)
            if args.compile:
                model = torch.compile(model)
            step = T.otrobust_step("pgd-at", model, eps=8 / 255, steps=args.attack_steps, lr=0.1,
                                   channels_last=cl, amp=amp)
            flops[label] = step_flops(step, x, y)
            fns[label] = (lambda step=step: [step(x, y) for _ in range(args.steps_per_rep)])
        print(f"{name}: timing {', '.join(fns)}")
        times = T.interleaved(fns, args.reps, args.warmup, device)
        for label, _, _, precision in modes:
            ips = T.stats([args.batch_size * args.steps_per_rep / s for s in times[label]])
            peak = peak_flops(device, precision, args.peak_tflops)
            limit = peak / flops[label] * args.batch_size if peak else None
            mfu = T.stats([v / limit for v in ips["values"]]) if limit else None
            results.append({"model": name, "mode": label, "images_per_s": ips, "step_flops": flops[label],
                            "peak_flops": peak, "images_per_s_limit": limit, "mfu": mfu})
            rows.append([name, label, T.fmt(ips, 1), f"{flops[label] / 1e12:.3f}",
                         f"{limit:.0f}" if limit else "–", f"{100 * mfu['median']:.1f} %" if mfu else "–"])
    text = T.table(["model", "mode", "images/s (median, min–max)", "TFLOP / step", "images/s at peak", "MFU"],
                   rows)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    T.finish(args, "gpu_throughput", device, results, text,
             f"PGD-{args.attack_steps} training, batch {args.batch_size}, {gpu}", t0)


if __name__ == "__main__":
    main()
