"""The commands' own contracts (cli/commands.py): reproduce's exit status after its audits."""

from __future__ import annotations

import json

import pytest

from otrobust.cli.main import main
from otrobust.experiments.reproduce import ReproduceSettings


@pytest.mark.parametrize("scale, status", [("smoke", 0), ("full", 1)])
def test_a_failed_audit_fails_reproduce_only_at_full_scale(tmp_path, monkeypatch, capsys, scale, status):
    """At smoke scale the models are trained for seconds and their audits mean nothing: the command says so and
    exits 0; at full scale a failed audit is the study's finding and exits 1."""
    def finished(self, log=print):
        folder = tmp_path / scale / "mnist-study"
        folder.mkdir(parents=True)
        (folder / "audits.json").write_text(json.dumps([
            {"run": "std", "verdict": "fail", "failed_checks": ["eps-curve"], "report": "std/audit.md"},
            {"run": "got", "verdict": "pass", "failed_checks": [], "report": "got/audit.md"}]))
        return folder

    monkeypatch.setattr(ReproduceSettings, "run", finished)
    assert main(["reproduce", "mnist-study", "--scale", scale, "--out", str(tmp_path)]) == status
    out = capsys.readouterr().out
    if scale == "smoke":
        assert "at smoke scale an audit verdict means nothing" in out and "AUDIT FAILED" not in out
    else:
        assert f"AUDIT FAILED for std: eps-curve (see {tmp_path / 'full' / 'std' / 'audit.md'})" in out
