"""Data-parallel training: shards, the autograd all-gather, and a 2-process gloo run against a 1-process run.

The end-to-end check uses ``--steps 0`` (the random start only, no gradient-sign steps): PGD's ``sign()``
turns float-rounding differences between batch sizes into whole ±step_size moves of single pixels, so with
attack steps the two runs agree only to ~1e-3; without them they agree to float tolerance, which is what
tests the contract (same random starts, same OT term over the gathered batch, same averaged gradients).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_RUN, tiny_flags

from otrobust import distributed
from otrobust.errors import OtrobustError
from otrobust.store.checkpoint import load_checkpoint
from otrobust.training.config import TrainConfig
from otrobust.training.loop import train


@pytest.mark.parametrize("n,world", [(8, 2), (9, 2), (10, 3), (128, 4), (3, 3)])
def test_shards_cover_the_global_batch_in_order(n, world):
    bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = distributed.shard_sizes(n, world)
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    # DDP averages over processes: the weights make the average of the weighted shard means the global mean.
    weights = [distributed.shard_weight(n, r, world) for r in range(world)]
    values = torch.rand(n, dtype=torch.float64)
    averaged = sum(w * values[a:b].mean() for w, (a, b) in zip(weights, bounds, strict=True)) / world
    assert float(averaged) == pytest.approx(float(values.mean()))
    assert sum(weights) == pytest.approx(world)


def test_env_info_reads_the_torchrun_variables(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.env_info() == distributed.DistInfo(0, 1, 0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.env_info()
    assert (info.rank, info.world_size, info.enabled, info.is_main) == (1, 4, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(OtrobustError, match="RANK=4"):
        distributed.env_info()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(OtrobustError, match="RANK"):
        distributed.env_info()


def test_a_batch_smaller_than_the_process_count_is_refused():
    distributed.check_batches(251, 64, 2)  # last batch 59: fine
    with pytest.raises(OtrobustError, match="cannot be split over 3 processes"):
        distributed.check_batches(129, 64, 3)  # last batch of 1


def test_single_process_helpers_are_identities():
    info = distributed.DistInfo()
    t = torch.randn(5, 3, requires_grad=True)
    assert distributed.all_gather_with_grad(t) is t
    assert distributed.totals({"loss": 1.5, "seen": 3}, info, torch.device("cpu")) == {"loss": 1.5, "seen": 3}
    assert distributed.agree_on_signal(None, info, torch.device("cpu")) is None
    x, y = torch.zeros(4, 1, 2, 2), torch.arange(4)
    assert distributed.take_shard(x, y, info) == (x, y, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SIZES = [3, 5]


def _objective(full: torch.Tensor) -> torch.Tensor:
    """A function of the whole gathered batch in which every row depends on every other one."""
    return (full.softmax(0) * torch.arange(1.0, len(full) + 1)[:, None]).sum() + full.pow(2).mean()


def _join(rank: int, world: int, port: int):
    """This worker process as rank ``rank`` of ``world`` CPU processes (one thread each): (info, device, joined)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = distributed.env_info()
    return (info, *distributed.setup(info, torch.device("cpu")))


def _gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    info, device, joined = _join(rank, world, port)
    try:
        full = torch.randn(sum(SIZES), 4, generator=torch.Generator().manual_seed(0))
        start = sum(SIZES[:rank])
        local = full[start:start + SIZES[rank]].clone().requires_grad_(True)
        gathered = distributed.all_gather_with_grad(local)  # sizes found by communication
        labels = distributed.all_gather_with_grad(torch.arange(start, start + SIZES[rank]), SIZES)
        _objective(distributed.all_gather_with_grad(local, SIZES)).backward()
        phi = torch.nn.Parameter(torch.zeros(2))
        phi.grad = torch.full((2,), float(rank))
        distributed.average_gradients([phi], info)
        result = {"gathered": gathered.tolist(), "labels": labels.tolist(), "grad": local.grad.tolist(),
                  "phi_grad": phi.grad.tolist(),
                  "totals": distributed.totals({"seen": SIZES[rank], "seconds": 1.0 + rank}, info, device),
                  "any": distributed.any_process(rank == 1, info, device),
                  "signal": distributed.agree_on_signal(15 if rank == 1 else None, info, device)}
        Path(out_dir, f"{rank}.json").write_text(json.dumps(result))
    finally:
        distributed.teardown(joined)


def test_all_gather_with_grad_matches_one_process_with_uneven_shards(tmp_path):
    mp.start_processes(_gather_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    full = torch.randn(sum(SIZES), 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    _objective(full).backward()
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        start = sum(SIZES[:rank])
        assert torch.allclose(torch.tensor(got["gathered"]), full.detach())
        assert got["labels"] == list(range(sum(SIZES)))
        # Each process gets the gradient of ITS rows, summed over every process's copy of the objective; the
        # objective is the same on both, so that is twice the single-process gradient (DDP then halves it).
        assert torch.allclose(torch.tensor(got["grad"]), 2 * full.grad[start:start + SIZES[rank]], atol=1e-6)
        assert got["phi_grad"] == [0.5, 0.5]
        assert got["totals"] == {"seen": sum(SIZES), "seconds": 1.0 + rank}
        assert got["any"] is True and got["signal"] == 15


# ---------------------------------------------------------------- end to end: torchrun, 2 processes, gloo
# No epochs key: every use gives its own.
TINY = {k: v for k, v in {**TINY_RUN, "train_size": 251, "val_size": 64, "batch_size": 64, "steps": 0, "val_steps": 2,
                          "method": "got-pgd-lm", "ot_warmup_epochs": 1.0}.items() if k != "epochs"}


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def _assert_same_run(a: Path, b: Path) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert len(ma) == len(mb)
    for ra, rb in zip(ma, mb, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), k
    wa, _, _ = load_checkpoint(a / "checkpoints" / "last.safetensors")
    wb, _, _ = load_checkpoint(b / "checkpoints" / "last.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


def test_two_gloo_processes_match_one_process_and_resume_on_one(tmp_path):
    quiet = dict(show_progress=False, log=lambda text: None)
    train(TrainConfig(**TINY, epochs=1, out=str(tmp_path / "one-1")), **quiet)
    train(TrainConfig(**TINY, epochs=2, out=str(tmp_path / "one-2")), **quiet)

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "otrobust", "train", *tiny_flags(**TINY, epochs=1, out=two)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(tmp_path / "one-1", two)
    # Rank 0 alone wrote the run directory.
    assert len((two / "provenance.jsonl").read_text().splitlines()) == 1
    assert proc.stdout.count("epoch 1/1") == 1

    # A run started on 2 processes continues on 1 (same global batch): as if it had run on 1 throughout.
    train(TrainConfig(**TINY, epochs=2, out=str(two), resume=True), **quiet)
    _assert_same_run(tmp_path / "one-2", two)


# ---------------------------------------------------------------- weight averaging under 2 processes
# wrn-16-1 has batch norm, whose running statistics each process updates from its own shard.
EMA_RUN = {**TINY_RUN, "model": "wrn-16-1", "method": "pgd-at", "train_size": 64, "epochs": 1, "ema": 0.9}


def _ema_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from safetensors.torch import save_file

    from otrobust.models import unwrap
    from otrobust.training.loop import Trainer
    from otrobust.training.setup import resolve

    info, device, joined = _join(rank, world, port)
    try:
        cfg = resolve(TrainConfig(**EMA_RUN, out=str(Path(out_dir) / "run")))
        trainer = Trainer(cfg, info, device, show_progress=False, log=lambda text: None, argv=None)
        trainer.fit()
        tensors = {**{f"ema.{k}": v for k, v in trainer.ema.model.state_dict().items()},
                   **{f"raw.{k}": v for k, v in unwrap(trainer.model).state_dict().items()}}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(out_dir) / f"{rank}.safetensors"))
        distributed.finish(joined)
    finally:
        distributed.teardown(joined)


def test_every_process_holds_the_same_average_and_rank_0_saves_it(tmp_path):
    """The parameters are replicated, so their average is; the batch-norm statistics are not (each process
    updates them from its shard), so the average's are rank 0's, given to every process before validation."""
    from safetensors.torch import load_file

    mp.start_processes(_ema_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [load_file(str(tmp_path / f"{rank}.safetensors")) for rank in range(2)]
    ema = [k for k in ranks[0] if k.startswith("ema.")]
    assert ema and all(torch.equal(ranks[0][k], ranks[1][k]) for k in ema)
    raw_stats = [k for k in ranks[0] if k.startswith("raw.") and k.endswith("running_mean")]
    assert raw_stats and any(not torch.equal(ranks[0][k], ranks[1][k]) for k in raw_stats)  # what the sync is for
    saved, _, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(saved[k], ranks[0][f"ema.{k}"]) for k in saved)
