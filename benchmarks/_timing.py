"""Shared helpers of the speed benchmarks: interleaved timing, medians with ranges, tables, JSON.

Every benchmark times the things it compares in the SAME process, interleaved (A B A B …, the order
reversed on every other repetition), so that a change in machine load hits all of them alike; ratios are
taken per repetition (paired) and summarised by their median and min–max.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--reps", type=int, default=7, help="timed repetitions of everything compared (>= 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / f"{name}.json"), help="where to write the JSON results")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    if args.reps < 5:
        raise SystemExit("--reps must be at least 5 (every figure is a median of >= 5 repetitions)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int, device: torch.device,
                log: bool = True) -> dict[str, list[float]]:
    """Seconds of each call, ``reps`` times each, interleaved (ABAB…, reversed every other repetition)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        if log:
            print(f"  rep {rep + 1}/{reps}: " + "  ".join(f"{n} {times[n][-1]:.3f}s" for n in names), flush=True)
    return times


def restarting(model: torch.nn.Module, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` preceded by resetting ``model`` to the weights it has now, so that every repetition times the
    same computation: models trained by different objectives drift apart (GOT with a large β collapses,
    docs/method.md §5), and the speed of the same kernels depends on the values they see."""
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def run():
        model.load_state_dict(init)
        return fn()

    return run


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": list(values)}


def paired_ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """Per-repetition ``num[i] / den[i]`` summarised (the pairs were timed next to each other)."""
    return stats([a / b for a, b in zip(num, den, strict=True)])


def fmt(s: dict[str, float], digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, rule, *body])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures depend on: hardware, threads, versions, and the machine's load when measured."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "load_average": list(os.getloadavg()), "git_commit": _git_commit(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    for pkg in ("torchattacks", "art"):
        try:
            env[pkg] = __import__(pkg).__version__
        except Exception:  # a peer that is not installed is recorded as absent
            env[pkg] = None
    return env


def save(path: str | Path, name: str, args: argparse.Namespace, device: torch.device, results: Any,
         text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "command": "python " + " ".join(os.sys.argv), "args": vars(args),
               "environment": environment(device), "results": results, "table": text}
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nwrote {path}")


def finish(args: argparse.Namespace, name: str, device: torch.device, results: Any, text: str, title: str,
           started: float) -> None:
    """Print the run's title (with its repetitions and wall time) and table, then save both with the results."""
    print(f"\n{title}, {args.reps} reps ({time.perf_counter() - started:.0f}s)\n")
    print(text)
    save(args.out, name, args, device, results, text)


# ---------------------------------------------------------------- our training step, as train.py runs it
def otrobust_step(method_name: str, model: torch.nn.Module, *, eps: float, steps: int, step_size: float | None = None,
                  lr: float = 1e-3, ot_weight: float = 10.0, solver: str = "semidual",
                  clean_weight: float = 0.0, reuse_clean: bool | None = None,
                  channels_last: bool = True, attack_chunk: int | None = None, attack_workers: int | None = None,
                  forward_chunk: int | None = None,
                  amp: torch.dtype | None = None) -> Callable:
    """``step(x, y)``: one otrobust training step exactly as ``train.py``'s loop runs it (objective,
    finiteness checks of the loss and the gradients, backward, optimiser and φ steps, the per-step
    loss/accuracy bookkeeping), with train.py's defaults: channels-last on, the attack in pieces by device
    (``attack_chunk``, ``attack_workers`` and ``forward_chunk`` None)."""
    from otrobust.attacks.gradient import default_step_size
    from otrobust.ot import GOTRegularizer
    try:
        from otrobust.training.method_registry import ot_variant
    except ModuleNotFoundError:  # a source tree from before the rename (pgd_before_after.py times old trees)
        from otrobust.training.registry import ot_variant
    from otrobust.training.methods import StepContext, get_method, has_mode_dependent_layers
    from otrobust.training.setup import gradients_finite

    device = next(model.parameters()).device
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    variant = ot_variant(method_name)
    reg = GOTRegularizer(model.latent_dim, variant=variant, solver=solver).to(device) if variant else None
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    phi_opt = torch.optim.Adam(reg.potential_parameters(), lr=1e-3, maximize=True) \
        if reg is not None and reg.potential_parameters() else None
    method = get_method(method_name)
    ctx = StepContext(eps=eps, step_size=step_size or default_step_size(eps, steps), steps=steps, regularizer=reg,
                      clean_weight=clean_weight, ot_weight=ot_weight, attack_chunk=attack_chunk,
                      attack_workers=attack_workers, forward_chunk=forward_chunk,
                      reuse_clean=not has_mode_dependent_layers(model) if reuse_clean is None else reuse_clean)
    totals = {"loss": 0.0, "correct": 0}

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        model.train()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss, logs = method(model, x, y, ctx)
        if not bool(torch.isfinite(loss)):
            raise RuntimeError(f"non-finite loss in the {method_name} benchmark step")
        opt.zero_grad(set_to_none=True)
        if phi_opt is not None:
            phi_opt.zero_grad(set_to_none=True)
        loss.backward()
        if not gradients_finite(model, reg):
            raise RuntimeError(f"non-finite gradient in the {method_name} benchmark step")
        opt.step()
        if phi_opt is not None:
            phi_opt.step()
        totals["loss"] += float(loss.detach()) * len(y)
        totals["correct"] += int((logs["logits"].argmax(1) == y).sum())

    return step


def cw_cnn(device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The Carlini–Wagner MNIST CNN (docs/method.md §3) from otrobust's registry, same weights for every contender."""
    from otrobust.models import create_model

    torch.manual_seed(seed)
    return create_model("cw-cnn", num_classes=10, in_channels=1, image_size=28).to(device)


def mnist_like(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` MNIST-size images (1×28×28): the real MNIST training images when /work/shared/data has them,
    uniform noise otherwise (the timing does not depend on the pixel values)."""
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if root.is_dir():
        try:
            from otrobust.data import load_dataset

            data = load_dataset("mnist", "train", root, size=n)
            if len(data) == n:
                return data.x.to(device), data.y.to(device)
        except Exception as exc:  # fall back to noise, and say so
            print(f"(real MNIST not readable: {exc}; timing on uniform noise)")
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g).to(device), torch.randint(0, 10, (n,), generator=g).to(device)


def eval_setup(n: int, device: torch.device, seed: int = 0):
    """(the CW CNN in eval mode, ``n`` MNIST-size test images as ``ImageData``) for the evaluation benchmarks."""
    from otrobust.data import ImageData

    x, y = mnist_like(n, device, seed)
    return cw_cnn(device, seed).eval(), ImageData(x, y, 10)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
