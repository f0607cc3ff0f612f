"""The training precision: ``--amp auto`` is bf16 on a CPU with AMX and float32 on other CPUs (the capability
query mocked both ways, so no test depends on the processor running it), every run records which precision it
used and why, resume is exact under bf16, and evaluation and the audit run in float32 whatever training used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN
from safetensors.torch import load_file

from otrobust.cli.main import main
from otrobust.models.cnn import SplitCNN
from otrobust.store import files
from otrobust.store.checkpoint import checkpoint_path, load_checkpoint
from otrobust.store.files import FAULT_ENV, read_jsonl
from otrobust.training import setup
from otrobust.training.config import TrainConfig
from otrobust.training.loop import train
from otrobust.training.setup import cpuinfo_has_amx, training_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AMX = {"amx_bf16": True, "amx_tile": True, "avx512_bf16": True, "architecture": "x86_64"}
NO_AMX = {"amx_bf16": False, "amx_tile": False, "avx2": True, "architecture": "x86_64"}


def _processor(monkeypatch, caps: dict) -> None:
    """This process's CPU, as PyTorch's capability query reports it, with oneDNN free to use all of it."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)


@pytest.fixture
def amx_cpu(monkeypatch):
    _processor(monkeypatch, AMX)


def test_auto_trains_in_bf16_on_a_cpu_with_amx(amx_cpu):
    p = training_precision("auto", CPU)
    assert p.dtype is torch.bfloat16 and p.name == "bf16" and "AMX" in p.reason
    assert p.to_dict() == {"precision": "bf16", "precision_reason": "--amp auto: the CPU has AMX bf16 units"}


@pytest.mark.parametrize("caps", [NO_AMX, {"amx_bf16": True, "amx_tile": False}, {"architecture": "arm64"}])
def test_auto_stays_float32_on_a_cpu_without_amx(monkeypatch, caps):
    _processor(monkeypatch, caps)
    p = training_precision("auto", CPU)
    assert p.dtype is None and p.name == "float32" and "no AMX" in p.reason


@pytest.mark.parametrize("cap, bf16", [("AVX512_CORE_BF16", False), ("avx2", False), ("AVX512_CORE_AMX", True),
                                       ("DEFAULT", True)])
def test_auto_follows_a_onednn_isa_cap(amx_cpu, monkeypatch, cap, bf16):
    """oneDNN capped below AMX runs bf16 on slower units (or none): then auto stays float32."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert (training_precision("auto", CPU).dtype is torch.bfloat16) is bf16


def test_auto_needs_onednn(amx_cpu, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert training_precision("auto", CPU).dtype is None


@pytest.mark.parametrize("caps", [AMX, NO_AMX])
def test_off_bf16_and_fp16_are_forced_whatever_the_processor(monkeypatch, caps):
    _processor(monkeypatch, caps)
    got = {amp: training_precision(amp, CPU) for amp in ("off", "bf16", "fp16")}
    assert {amp: p.name for amp, p in got.items()} == {"off": "float32", "bf16": "bf16", "fp16": "fp16"}
    assert {p.reason for p in got.values()} == {"--amp off", "--amp bf16", "--amp fp16"}


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_is_unchanged(amx_cpu, monkeypatch, supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
    assert (training_precision("auto", CUDA).dtype is torch.bfloat16) is supported


def test_without_pytorchs_query_the_cpu_flags_decide(amx_cpu, monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(setup, "cpuinfo_has_amx", lambda: cpuinfo_has_amx(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    assert training_precision("auto", CPU).dtype is torch.bfloat16
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert training_precision("auto", CPU).dtype is None


def test_cpuinfo_flags_are_read_whole_words(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("model name\t: amx_bf16 amx_tile in a name\nflags\t\t: amx_bf16x amx_tile\n")
    assert not cpuinfo_has_amx(path)
    path.write_text("flags\t\t: amx_tile sse amx_bf16\n")
    assert cpuinfo_has_amx(path)
    assert not cpuinfo_has_amx(tmp_path / "missing")


# ---------------------------------------------------------------- runs
TINY = {**TINY_RUN, "train_size": 64, "method": "got-trades-lm", "epochs": 2}


def _dtypes_seen(monkeypatch) -> list[torch.dtype]:
    """The dtype of every latent the tiny CNN computes from now on (bf16 under autocast, float32 otherwise)."""
    seen, forward = [], SplitCNN.forward_features

    def recording(self, x):
        z = forward(self, x)
        seen.append(z.dtype)
        return z

    monkeypatch.setattr(SplitCNN, "forward_features", recording)
    return seen


def test_a_run_records_its_precision_and_why(amx_cpu, monkeypatch, tmp_path):
    seen = _dtypes_seen(monkeypatch)
    lines: list[str] = []
    train(TrainConfig(**TINY, out=str(tmp_path / "bf16")), show_progress=False, log=lines.append)
    assert set(seen) == {torch.bfloat16}  # training passes and the per-epoch validation
    assert "training in bf16 (--amp auto: the CPU has AMX bf16 units; --amp off trains in float32)" in lines
    record = read_jsonl(tmp_path / "bf16" / "provenance.jsonl")[0]
    assert (record["precision"], record["precision_reason"]) == ("bf16", "--amp auto: the CPU has AMX bf16 units")
    assert load_checkpoint(checkpoint_path(tmp_path / "bf16", "last"))[1]["precision"] == "bf16"

    _processor(monkeypatch, NO_AMX)
    seen.clear()
    lines.clear()
    train(TrainConfig(**TINY, out=str(tmp_path / "fp32")), show_progress=False, log=lines.append)
    assert set(seen) == {torch.float32} and not any("training in" in line for line in lines)
    record = read_jsonl(tmp_path / "fp32" / "provenance.jsonl")[0]
    assert record["precision"] == "float32" and "no AMX" in record["precision_reason"]


def test_evaluation_and_the_audit_run_in_float32_after_bf16_training(amx_cpu, monkeypatch, tmp_path):
    """A weaker gradient must never make a model look more robust: whatever precision trained it, a model is
    attacked in float32, even on a processor where ``--amp auto`` trains in bf16."""
    seen = _dtypes_seen(monkeypatch)
    run = tmp_path / "run"
    assert main(["train", *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()], "--amp", "bf16",
                 "--out", str(run), "--no-progress"]) == 0
    assert set(seen) == {torch.bfloat16}
    seen.clear()
    assert main(["eval", str(run), "--n", "32", "--attack", "pgd", "--steps", "3"]) == 0
    assert seen and set(seen) == {torch.float32}
    seen.clear()
    assert main(["audit", str(run), "--n", "24", "--quick", "--steps", "2", "--restarts", "1", "--out",
                 str(tmp_path / "audit")]) in (0, 1)  # 1: a check failed on this barely trained model
    assert seen and set(seen) == {torch.float32}


def _run_flags(**changes) -> list[str]:
    settings = {**TINY, "steps": 1, "val_steps": 1, **changes}
    return [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()] + ["--no-progress"]


def _same_run(a: Path, b: Path) -> bool:
    def metrics(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run / "metrics.jsonl")]

    got, want = (load_file(checkpoint_path(d, "last")) for d in (a, b))
    return metrics(a) == metrics(b) and sorted(got) == sorted(want) and all(torch.equal(got[k], want[k])
                                                                             for k in want)


def test_a_bf16_run_stopped_mid_epoch_resumes_exactly(amx_cpu, monkeypatch, tmp_path, capsys):
    """The same contract as float32 (tests/training/test_crash_resume.py): stopped at a step, resumed, the run
    ends with the weights and metrics of an uninterrupted one; the resumed process picks bf16 again."""
    assert main(["train", *_run_flags(), "--out", str(tmp_path / "ref")]) == 0
    monkeypatch.setenv(FAULT_ENV, "step:3:SIGINT")
    monkeypatch.setattr(files, "_fault_counts", {})
    assert main(["train", *_run_flags(), "--out", str(tmp_path / "run")]) == 130
    assert load_checkpoint(checkpoint_path(tmp_path / "run", "last"))[1]["step"] == 3
    monkeypatch.delenv(FAULT_ENV)
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert _same_run(tmp_path / "run", tmp_path / "ref")
    assert [r["precision"] for r in read_jsonl(tmp_path / "run" / "provenance.jsonl")] == ["bf16", "bf16"]
    assert "the checkpoint's steps ran in" not in capsys.readouterr().out


def test_resuming_in_another_precision_says_so(amx_cpu, monkeypatch, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_run_flags(epochs=1), "--out", str(run)]) == 0
    _processor(monkeypatch, NO_AMX)  # the run moved to a machine without AMX
    capsys.readouterr()
    assert main(["train", "--resume", "--epochs", "2", "--out", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "with float32 training passes (--amp auto: the CPU has no AMX" in out
    assert "the checkpoint's steps ran in bf16)" in out
    assert [r["precision"] for r in read_jsonl(run / "provenance.jsonl")] == ["bf16", "float32"]
    assert json.loads((run / "config.json").read_text())["amp"] == "auto"
