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
    assert (merged / "units.md").read_text() == (PAGE / "units.md").read_text()


def test_the_tuned_arms_train_the_best_trials_settings():
    from otrobust.experiments.records import find_records
    from otrobust.experiments.studies import MNIST_STUDY
    from otrobust.experiments.study_findings import tunings

    records = {r.unit: r for _, r in find_records([PAGE / "records"])}
    results = tunings(MNIST_STUDY, records)
    if all(t.best is not None for t in results):  # every trial is in: the tuned arms (added together, one the
        for t in results:                         # other's baseline) must be in the preset and train the winners
            assert t.tuning.tuned is not None, f"{t.tuning.name}: the trials are in, best {t.best}; add its tuned arm"
            assert t.tuned_is_best, f"{t.tuning.name}: {t.tuning.tuned} does not train the best trial, {t.best}"


def _table(text: str, header: str) -> list[str]:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(header)), None)
    assert start is not None, f"no table headed {header!r}"
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


@pytest.mark.parametrize("header", ["| claim | paper: run |", "| run − baseline | measurement |",
                                    "| run | clean | PGD-40 | AutoAttack |", "| run | seed | epochs | validation PGD"])
def test_the_study_page_shows_the_tables_the_records_give(header):
    page, generated = (PAGE.parent / "results-mnist.md").read_text(), (PAGE / "results.md").read_text()
    assert _table(page, header) == _table(generated, header)  # the page's numbers are the records', not typed in


def test_the_study_page_opens_with_the_verdict_the_records_give():
    page, generated = (PAGE.parent / "results-mnist.md").read_text(), (PAGE / "results.md").read_text()
    verdict = generated.split("## The paper's claims\n\n", 1)[1].split("\n\n", 1)[0]
    assert verdict.startswith(("**No verdict yet", "**The paper's")), verdict[:80]
    assert page.split("\n\n")[1] == verdict  # the paragraph under the title, word for word
