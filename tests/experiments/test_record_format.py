"""A unit record's JSON is a fixed format: a record written before the record's fields became types reads back into
them and is written again byte for byte (records of a study in progress must still merge)."""

import json
from pathlib import Path

import pytest

from otrobust.errors import OtrobustError
from otrobust.experiments.records import read_record, record_from_json, record_to_json

# Written by ``reproduce fig6 --scale smoke --unit s0/trades`` on the bundled digits, so no dataset file is inside (its
# t-SNE features left out, one "not run" row added, both through the record writer of that time).
FIXTURE = Path(__file__).parent / "fixtures" / "unit-record-fig6-s0-trades.json"


def test_a_record_written_earlier_round_trips_to_identical_json():
    text = FIXTURE.read_text()
    record = read_record(FIXTURE)
    assert record_to_json(record) == text
    assert record_to_json(record_from_json(record_to_json(record), "again")) == text


def test_a_record_of_the_wrong_types_is_one_line(tmp_path):
    data = json.loads(FIXTURE.read_text())
    data["rows"][0]["n"] = "sixteen"
    with pytest.raises(OtrobustError, match=r"rows\[0\]") as err:
        record_from_json(json.dumps(data), "bad.json")
    assert "\n" not in str(err.value) and "bad.json" in str(err.value)


@pytest.mark.parametrize("edit, named", [
    (lambda row: row.update(accuracy=row["accuracy"] + 1.0), "but its images' correctness gives"),
    (lambda row: row.update(n=row["n"] + 1), "but the correctness of"),
])
def test_a_row_whose_numbers_disagree_with_its_images_is_refused(edit, named):
    # the merge prints a row's accuracy and draws its intervals from the images' correctness: never two stories
    data = json.loads(FIXTURE.read_text())
    edit(next(row for row in data["rows"] if "correct" in row))
    with pytest.raises(OtrobustError, match=named) as err:
        record_from_json(json.dumps(data), "edited.json")
    assert "\n" not in str(err.value) and "edited.json" in str(err.value)
