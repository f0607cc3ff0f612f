"""The audit catches planted gradient masking and passes honestly trained models."""

import json

import pytest
import torch
from conftest import Noisy
from torch import nn

from otrobust.cli.main import main
from otrobust.data import load_dataset
from otrobust.errors import OtrobustError
from otrobust.evaluation.audit import audit_model
from otrobust.evaluation.audit_types import AuditSettings
from otrobust.evaluation.gradient_checks import eps_grid
from otrobust.evaluation.statistics import higher_than, one_sided_sign_test
from otrobust.reporting.audit_report import to_markdown, write_report
from otrobust.store.checkpoint import load_checkpoint, load_model, resolve_checkpoint, save_checkpoint

N = 60
# Small budgets: enough to expose each planted defect in seconds; the CLI default is 4-10x larger.
SETTINGS = dict(quick=True, steps=5, restarts=2, unbounded_steps=20, square_queries=150, aa_iter=5)


# ---------------------------------------------------------------- planted defects
class Quantise(nn.Module):
    """Input quantisation: ``round`` has a zero gradient almost everywhere (shattered gradients)."""

    def __init__(self, model: nn.Module, levels: int = 4):
        super().__init__()
        self.model, self.levels = model, levels

    def forward(self, x):
        return self.model(torch.round(x * self.levels) / self.levels)


class Saturate(nn.Module):
    """Logits scaled by 10^4: the softmax saturates and the cross-entropy gradient underflows to zero."""

    def __init__(self, model: nn.Module, scale: float = 1e4):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.scale * self.model(x)


class _RandomGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.randn_like(grad)


class Shattered(nn.Module):
    """The backward pass returns noise: gradients exist but point nowhere."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_RandomGradient.apply(x))


class Detached(nn.Module):
    """Logits computed outside the graph: constant as far as any gradient can tell."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.no_grad():
            logits = self.model(x)
        return logits + 0 * x.flatten(1).sum(1, keepdim=True)


class DetachInput(nn.Module):
    """A forward that detaches its input (``forward = lambda x: net(x.detach())``): no input gradient at all."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.detach())


PLANTED = {
    "quantise": (Quantise, {"gradients", "unbounded", "black-box"}),
    "saturate": (Saturate, {"gradients", "loss-path"}),
    "noise": (Noisy, {"determinism", "autoattack"}),
    "shattered": (Shattered, {"black-box", "transfer"}),
    "detached": (Detached, {"gradients", "eps-curve", "unbounded"}),
    # every gradient attack is impossible: those checks fail as well instead of ending the audit
    "detach-input": (DetachInput, {"gradients", "loss-path", "eps-curve", "unbounded", "fgsm-vs-pgd", "autoattack"}),
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "test", size=N)


@pytest.fixture(scope="module")
def trades_digits_model(tmp_path_factory):
    """A small-cnn trained briefly with TRADES on the bundled digits: honest, somewhat robust."""
    from otrobust.training.config import TrainConfig
    from otrobust.training.loop import train

    out = tmp_path_factory.mktemp("digits-trades")
    train(TrainConfig(dataset="digits", method="trades", epochs=3, steps=5, val_size=100, val_steps=0, seed=0,
                      out=str(out)), show_progress=False, log=lambda text: None)
    return load_model(out)


# ---------------------------------------------------------------- statistics
def test_sign_test_and_paired_comparison():
    assert one_sided_sign_test(5, 0) == pytest.approx(1 / 32)
    assert one_sided_sign_test(0, 0) == 1.0
    assert one_sided_sign_test(3, 3) > 0.5
    a = torch.tensor([True] * 10 + [False] * 10)
    b = torch.tensor([False] * 10 + [False] * 10)
    significant, detail = higher_than(a, b)
    assert significant and detail["robust_only_a"] == 10 and detail["acc_a"] == 0.5
    assert not higher_than(b, a)[0]


def test_settings_and_grid():
    quick = AuditSettings.make(0.3, quick=True, steps=7)
    assert quick.steps == 7 and quick.square_queries == 1000 and quick.aa_iter == 20
    assert AuditSettings.make(0.3).aa_iter is None  # standard AutoAttack by default
    assert eps_grid(AuditSettings.make(0.3), 1)[-1] == 0.5
    assert 64 / 255 in eps_grid(AuditSettings.make(8 / 255), 3)
    with pytest.raises(OtrobustError, match="eps"):
        AuditSettings.make(0.0)
    with pytest.raises(OtrobustError, match="--steps"):
        AuditSettings.make(0.3, steps=0)


# ---------------------------------------------------------------- planted masking is caught
@pytest.mark.parametrize("name", list(PLANTED))
def test_planted_gradient_masking_fails_the_audit(name, trained_digits_model, digits):
    wrap, expected = PLANTED[name]
    report = audit_model(wrap(trained_digits_model), digits, AuditSettings.make(0.3, **SETTINGS),
                         surrogate=trained_digits_model)
    failed = {c.name for c in report.checks if c.status == "fail"}
    assert report.failed and expected <= failed, failed


@pytest.mark.parametrize("which", ["standard", "trades"])
def test_honest_models_have_no_failure(which, trained_digits_model, trades_digits_model, digits):
    model, surrogate = ((trained_digits_model, trades_digits_model) if which == "standard"
                        else (trades_digits_model, trained_digits_model))
    report = audit_model(model, digits, AuditSettings.make(0.1, **SETTINGS), surrogate=surrogate)
    assert not report.failed, [(c.name, c.finding) for c in report.checks if c.status == "fail"]
    assert {c.name for c in report.checks} >= {"eps-curve", "unbounded", "steps-restarts", "fgsm-vs-pgd",
                                                "black-box", "transfer", "loss-path", "labels", "autoattack"}
    curve = report.curve
    assert curve["eps"][0] == 0 and curve["eps"][-1] == 0.5
    assert curve["accuracy"][-1] <= curve["trivial_bound"]
    assert curve["trivial_bound"] == pytest.approx(max(torch.bincount(digits.y).tolist()) / N)


def test_report_files_state_the_threat_model(trained_digits_model, digits, tmp_path):
    report = audit_model(trained_digits_model, digits.first(20), AuditSettings.make(0.3, **SETTINGS))
    assert {c.name: c.status for c in report.checks}["transfer"] == "skip"  # no surrogate given
    paths = write_report(report, tmp_path)
    assert {p.name for p in paths} == {"audit.md", "audit.json", "accuracy_vs_eps.png", "accuracy_vs_eps.svg"}
    assert all(p.stat().st_size > 0 for p in paths)
    md = (tmp_path / "audit.md").read_text()
    assert "linf, ε = 0.3, n = 20" in md and "labels = true" in md and "seed = 0" in md
    data = json.loads((tmp_path / "audit.json").read_text())
    assert data["threat_model"]["labels"] == "true" and len(data["checks"]) == len(report.checks)
    assert to_markdown(report).startswith("# Robustness evaluation audit")


# ---------------------------------------------------------------- the CLI
def test_cli_audit_passes_an_honest_run(trained_digits_run, tmp_path, capsys):
    out = tmp_path / "audit"
    code = main(["audit", str(trained_digits_run), "--n", "30", "--quick", "--steps", "4", "--restarts", "2",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "n = 30" in text and "labels = true" in text and "FAIL" not in text
    assert (out / "audit.md").exists() and (out / "accuracy_vs_eps.png").exists()


def test_cli_audit_exits_non_zero_on_a_saturated_checkpoint(trained_digits_run, tmp_path, capsys):
    state, meta, _ = load_checkpoint(resolve_checkpoint(trained_digits_run))
    state = {k: v * 1e4 if k.startswith("head.") else v for k, v in state.items()}
    ckpt = tmp_path / "saturated.safetensors"
    save_checkpoint(ckpt, state, meta)
    code = main(["audit", str(ckpt), "--n", "24", "--quick", "--steps", "4", "--restarts", "2"])
    text = capsys.readouterr().out
    assert code == 1 and "FAIL" in text and "gradients" in text
    assert (tmp_path / "audit-saturated" / "audit.md").exists()
