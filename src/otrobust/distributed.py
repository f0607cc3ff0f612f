"""Data-parallel training under ``torchrun``: who this process is, its shard of each global batch, DDP
wrapping, and an autograd-aware all-gather so the OT term can see the global batch.

The contract that lets a run on N processes reproduce a run on one process with the same global batch
and seed (up to float rounding):

- every process walks the same global batches (same data order, same per-step seed) and takes rows
  ``shard_bounds(B, rank, N)`` of each one, after augmentation;
- random attack starts are drawn for the whole global batch and sliced (``attacks.last_iterate(shard=...)``);
- each process's mean loss is weighted by ``shard_weight`` so that DDP's gradient *average* over processes
  equals the gradient of the global-batch mean, even when B is not a multiple of N;
- with ``--ot-scope global`` the OT term is computed on the gathered batch (identical on every process),
  and :func:`all_gather_with_grad` sends each process the gradient summed over all processes for its rows.

Without ``RANK``/``WORLD_SIZE`` in the environment everything here is a no-op for one process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from otrobust.errors import OtrobustError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and logs; the others only compute."""
        return self.rank == 0


def env_info() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by ``torchrun``); one process when they are absent."""
    if "WORLD_SIZE" not in os.environ and "RANK" not in os.environ:
        return DistInfo()
    values = {}
    for name in ENV_VARS:
        text = os.environ.get(name, "0" if name != "WORLD_SIZE" else "1")
        try:
            values[name] = int(text)
        except ValueError:
            raise OtrobustError(f"environment variable {name}={text!r} is not a whole number; "
                                f"launch with torchrun, which sets it") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise OtrobustError(f"inconsistent RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}; "
                            f"launch with torchrun, which sets them")
    return DistInfo(rank, world, local)


def setup(info: DistInfo, device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group (NCCL on CUDA, gloo on CPU); return this process's device and whether the
    group was created here (and so is :func:`teardown`'s to destroy).

    On CUDA each process takes ``cuda:LOCAL_RANK``. Does nothing for a single process.
    """
    if not info.enabled:
        return device, False
    if device.type == "cuda":
        if device.index is not None and device.index != info.local_rank:
            raise OtrobustError(f"--device {device} with several processes: each process uses cuda:LOCAL_RANK; "
                                f"pass --device cuda or auto")
        if info.local_rank >= torch.cuda.device_count():
            raise OtrobustError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                                f"lower --nproc-per-node")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if dist.is_initialized():
        if dist.get_world_size() != info.world_size or dist.get_rank() != info.rank:
            raise OtrobustError(f"the process group already set up is rank {dist.get_rank()} of "
                                f"{dist.get_world_size()}, but RANK={info.rank} WORLD_SIZE={info.world_size}")
        return device, False
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise OtrobustError(f"{name} is not set; launch several processes with torchrun")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank,
                            world_size=info.world_size)
    return device, True


def finish(joined: bool) -> None:
    """After a run that ended normally on every process: wait until all have, so that no process closes its
    connections while another still has collective work in flight (gloo aborts the process then)."""
    if joined and dist.is_initialized():
        dist.barrier()


def teardown(joined: bool) -> None:
    """Leave the process group if :func:`setup` created it."""
    if joined and dist.is_initialized():
        dist.destroy_process_group()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a global batch of ``n`` that process ``rank`` trains on (sizes differ by ≤ 1).

    Examples:
        >>> [shard_bounds(10, r, 3) for r in range(3)]
        [(0, 3), (3, 6), (6, 10)]
    """
    return rank * n // world_size, (rank + 1) * n // world_size


def shard_sizes(n: int, world_size: int) -> list[int]:
    """The number of rows each process takes from a global batch of ``n``."""
    return [stop - start for start, stop in (shard_bounds(n, r, world_size) for r in range(world_size))]


def shard_weight(n: int, rank: int, world_size: int) -> float:
    """Factor on a process's mean loss so that DDP's averaged gradient is that of the global mean.

    DDP averages gradients over processes; a process holding ``n_r`` of ``n`` rows must count
    ``n_r · world_size / n`` times its mean for the average to be ``(1/n) Σ`` over all rows.
    """
    start, stop = shard_bounds(n, rank, world_size)
    return (stop - start) * world_size / n


def check_batches(n_train: int, batch_size: int, world_size: int) -> None:
    """Every global batch (the last one of an epoch included) must give each process at least one row."""
    last = n_train % batch_size or batch_size
    smallest = min(batch_size, last) if n_train >= batch_size else n_train
    if smallest < world_size:
        raise OtrobustError(f"a batch of {smallest} images cannot be split over {world_size} processes; "
                            f"choose --batch-size and --train-size so that every batch (the last one is "
                            f"{last}) holds at least {world_size}")


def take_shard(x: torch.Tensor, y: torch.Tensor, info: DistInfo
               ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int] | None]:
    """This process's rows of a global batch, and ``(first row, global size)`` for the attack's random start."""
    if not info.enabled:
        return x, y, None
    start, stop = shard_bounds(len(y), info.rank, info.world_size)
    return x[start:stop], y[start:stop], (start, len(y))


class _AllGather(torch.autograd.Function):
    """Concatenate every process's rows; the backward hands each process the summed gradient of its rows.

    The sum is the adjoint of the gather: process r's loss may depend on process s's rows, and all those
    contributions belong to s. (gloo has no reduce-scatter, so this is an all-reduce followed by a slice.)
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: Sequence[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = list(sizes), rank
        widest = max(sizes)
        padded = t.new_zeros((widest, *t.shape[1:]))
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def all_gather_with_grad(t: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """All processes' ``t`` concatenated along dim 0, in rank order; differentiable w.r.t. the local ``t``.

    t: (n_r, ...) on this process -> (Σ n_r, ...). ``sizes`` (every process's n_r) saves a round of
    communication when known. Works for labels too (no gradient). Identity for one process.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    if sizes is None:
        mine = torch.tensor([len(t)], device=t.device)
        every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        sizes = [int(s) for s in every]
    if len(sizes) != dist.get_world_size() or sizes[dist.get_rank()] != len(t):
        raise OtrobustError(f"all_gather_with_grad: sizes {list(sizes)} do not match this process's {len(t)} rows")
    return _AllGather.apply(t, sizes, dist.get_rank())


def sum_over_processes(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Sum each number over all processes (float64, so integer counts stay exact); identity for one process."""
    if not info.enabled:
        return values
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return {k: type(values[k])(v) for k, v in zip(keys, packed.tolist(), strict=True)}


def totals(acc: dict[str, float], info: DistInfo, device: torch.device, keep: tuple[str, ...] = ("seconds",)
           ) -> dict[str, float]:
    """The epoch accumulators summed over processes, except ``keep`` (rank-local, e.g. wall time)."""
    if not info.enabled:
        return acc
    return {**acc, **sum_over_processes({k: v for k, v in acc.items() if k not in keep}, info, device)}


def agree_on_signal(signum: int | None, info: DistInfo, device: torch.device) -> int | None:
    """The stop signal if any process caught one (every process must then stop at the same step)."""
    if not info.enabled:
        return signum
    t = torch.tensor([float(signum or 0)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item()) or None


def any_process(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every process if ``flag`` is True on any (so that all take the same branch)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def average_gradients(params: Sequence[nn.Parameter], info: DistInfo) -> None:
    """Average ``.grad`` over processes for parameters outside the DDP wrapper (the potential φ)."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_state(module: nn.Module, info: DistInfo) -> None:
    """Give every process rank 0's parameters and buffers of ``module`` (in place); nothing for one process."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in (*module.parameters(), *module.buffers()):
            sent = t.data.contiguous()  # a copy only for a tensor in another memory format (channels-last)
            dist.broadcast(sent, src=0)
            if sent.data_ptr() != t.data.data_ptr():
                t.data.copy_(sent)


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device, compile: bool = False
               ) -> tuple[nn.Module, nn.Module]:
    """(model for the training passes, model for attacks and validation), wrapped as the job needs.

    Several processes: the training passes go through ``DistributedDataParallel`` (BN buffers broadcast from
    rank 0 at each training forward, DDP's default); attacks need input gradients only, so they run on the
    inner module and skip DDP's gradient hooks. ``compile``: ``torch.compile`` both (DDP first, as PyTorch
    recommends). ``models.unwrap`` recovers the plain model from either for saving.
    """
    fast = torch.compile(model) if compile else model
    if not info.enabled:
        return fast, fast
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)
    return (torch.compile(wrapped) if compile else wrapped), fast


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def check_same(values: dict[str, object], info: DistInfo, what: str) -> None:
    """Raise OtrobustError on every process if any of ``values`` (settings, fingerprints of the model and data)
    differs between the processes: merging their shares of ``what`` would give a wrong number. Each process is
    started with its own command line (one per machine in a multi-node job), so nothing else guarantees it."""
    if not info.enabled:
        return
    every: list[dict[str, object] | None] = [None] * info.world_size
    dist.all_gather_object(every, values)
    for rank, other in enumerate(every):
        differ = sorted(k for k in {*values, *other} if other.get(k) != every[0].get(k))
        if differ:
            shown = "; ".join(f"{k}: {every[0].get(k)!r} on rank 0, {other.get(k)!r} on rank {rank}"
                              for k in differ[:3])
            raise OtrobustError(f"the processes of this torchrun job are not running the same {what} ({shown}): "
                                "start every process with the same arguments, model and data")
