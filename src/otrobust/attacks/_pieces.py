"""Attacking a batch in pieces, several at a time: the shared worker pools (private to attacks)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import TypeVar

import torch

from otrobust.errors import OtrobustError

# Images per attack piece on a CPU, where a batch of 512 CW-CNN images ran PGD at half the speed of batches
# of 128 (activations fall out of cache). GPUs take the whole batch.
CPU_ATTACK_CHUNK = 128
# Smallest piece the automatic split makes when it spreads a batch over worker threads: on a many-core CPU the
# batch goes to at most B / 32 workers (each then runs its kernels on several cores), which keeps the threads'
# Python dispatch, serialised by the interpreter lock, small next to their kernels.
MIN_WORKER_CHUNK = 32

T = TypeVar("T")


def attack_workers(workers: int | None, x: torch.Tensor) -> int:
    """Threads that attack pieces of a batch at the same time: ``workers`` if given, else on a CPU one per
    torch thread (each worker then runs its kernels on its own core), 1 elsewhere.

    On a CPU, independent pieces on separate cores share nothing, where a kernel split across cores
    synchronises at every op (benchmarks/README.md has the measurements). A model that draws random numbers
    in its forward pass repeats its attacks exactly only with ``workers=1``."""
    if workers is None:
        workers = torch.get_num_threads() if x.device.type == "cpu" else 1
    if workers < 1:
        raise OtrobustError(f"attack workers must be >= 1, got {workers}")
    return workers


def attack_chunk(chunk: int | None, x: torch.Tensor, workers: int = 1) -> int:
    """Images per attack piece: ``chunk`` if given (0: the whole batch), else on a CPU the batch split evenly
    over ``workers`` (pieces of MIN_WORKER_CHUNK to CPU_ATTACK_CHUNK images), the whole batch elsewhere. The
    attack on each example does not depend on the others in its piece (the model is in eval mode), so the
    pieces change the speed, not the attack."""
    if chunk is None:
        if x.device.type != "cpu":
            chunk = 0
        else:
            chunk = min(CPU_ATTACK_CHUNK, max(MIN_WORKER_CHUNK, -(-len(x) // workers)))
    if chunk < 0:
        raise OtrobustError(f"attack chunk must be >= 0 (0: the whole batch), got {chunk}")
    return chunk or max(1, len(x))


def _pieces(n: int, chunk: int) -> list[slice]:
    return [slice(i, min(i + chunk, n)) for i in range(0, n, chunk)] or [slice(0, 0)]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_IN_WORKER = threading.local()  # .active: this thread is one of the pools' workers


def _forget_pools() -> None:
    global _POOLS_LOCK
    _POOLS.clear()  # a forked child has none of its parent's threads: it starts its own pools
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def _worker_pool(workers: int, threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads that each run torch ops on ``threads`` cores."""
    with _POOLS_LOCK:
        pool = _POOLS.get((workers, threads))
        if pool is not None:
            return pool
        caller = torch.get_num_threads()

        def init() -> None:
            # A thread takes torch's process-wide thread count on its first op; take it now, then set this
            # thread's own, so that later changes of the default (below) do not reach it.
            torch.get_num_threads()
            torch.set_num_threads(threads)
            _IN_WORKER.active = True

        pool = ThreadPoolExecutor(workers, initializer=init, thread_name_prefix="otrobust-attack")
        started = threading.Barrier(workers)
        list(pool.map(lambda _: started.wait(), range(workers)))  # start every thread now
        torch.set_num_threads(caller)  # set_num_threads also set the process default: give the caller's back
        _POOLS[(workers, threads)] = pool
        return pool


def map_pieces(fn: Callable[[slice], T], n: int, chunk: int, workers: int) -> list[T]:
    """``[fn(rows) for rows in pieces of n rows]``, the pieces run on up to ``workers`` threads at a time.

    The workers see the caller's grad mode and autocast (both are per thread in torch); ``fn`` must not draw
    random numbers (draw them for the whole batch first), so the result does not depend on how the pieces
    are scheduled."""
    pieces = _pieces(n, chunk)
    workers = min(workers, len(pieces))
    if workers <= 1 or getattr(_IN_WORKER, "active", False):  # a worker waiting on its own pool could deadlock
        return [fn(rows) for rows in pieces]
    grad = torch.is_grad_enabled()
    amp = [(kind, torch.get_autocast_dtype(kind)) for kind in ("cpu", "cuda") if torch.is_autocast_enabled(kind)]

    def run(rows: slice) -> T:
        with ExitStack() as stack:
            stack.enter_context(torch.set_grad_enabled(grad))
            for kind, dtype in amp:
                stack.enter_context(torch.autocast(kind, dtype=dtype))
            return fn(rows)

    return list(_worker_pool(workers, max(1, torch.get_num_threads() // workers)).map(run, pieces))

