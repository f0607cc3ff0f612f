"""The MNIST study's committed records regenerate its committed results page (docs/results-mnist/)."""

from pathlib import Path

import pytest

from otrobust.cli.main import main

PAGE = Path(__file__).resolve().parents[2] / "docs" / "results-mnist"


def test_the_committed_records_regenerate_the_results_page(tmp_path):
    records = sorted((PAGE / "records").rglob("*.json"))
    if not records:
        pytest.skip(f"no study records committed under {PAGE / 'records'}")
    main(["reproduce", "mnist-study", "--scale", "full", "--seeds", "4", "--merge", "--records", str(PAGE / "records"),
          "--out", str(tmp_path)])
    merged = tmp_path / "full" / "mnist-study"
    assert (merged / "results.md").read_text() == (PAGE / "results.md").read_text()
    assert (merged / "results.csv").read_text() == (PAGE / "results.csv").read_text()
