"""Config files: YAML and JSON give the same run; YAML is read without constructing any object; a run's resolved
settings come back from its config.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN
from safetensors.torch import load_file

from otrobust.cli.main import build_parser, config_from_args, main
from otrobust.errors import OtrobustError
from otrobust.store.checkpoint import checkpoint_path
from otrobust.training.config import config_from_dict, load_config_file

SETTINGS = {**TINY_RUN, "method": "trades", "epochs": 2, "eps": "8/255", "lr": "2e-3", "amp": "off"}
YAML_SETTINGS = """\
# the same settings as SETTINGS, written as a person would
dataset: digits
train_size: 32
val_size: 16
batch_size: 16
steps: 1
val_steps: 1
epochs: 2
device: cpu
method: trades
eps: 8/255
lr: 2e-3        # YAML 1.1 reads this as text; it is coerced like JSON's "2e-3"
amp: off        # text, as in JSON: settings files read booleans as true/false only
"""


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_yaml_and_json_configs_give_identical_runs(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps(SETTINGS))
    (tmp_path / "cfg.yaml").write_text(YAML_SETTINGS)
    assert load_config_file(tmp_path / "cfg.yaml") == SETTINGS
    for kind in ("json", "yaml"):
        assert main(["train", "--config", str(tmp_path / f"cfg.{kind}"), "--out", str(tmp_path / kind),
                     "--no-progress"]) == 0
    configs = [json.loads((tmp_path / kind / "config.json").read_text()) for kind in ("json", "yaml")]
    assert {**configs[0], "out": None} == {**configs[1], "out": None}
    assert configs[0]["eps"] == 8 / 255 and configs[0]["lr"] == 2e-3 and configs[0]["amp"] == "off"
    assert _metrics(tmp_path / "json") == _metrics(tmp_path / "yaml") and len(_metrics(tmp_path / "json")) == 2
    for which in ("best", "last"):
        a, b = (load_file(checkpoint_path(tmp_path / kind, which)) for kind in ("json", "yaml"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_runs_config_yaml_gives_back_its_settings(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--config", str(_write(tmp_path / "cfg.yaml", YAML_SETTINGS)), "--epochs", "1",
                 "--out", str(run), "--no-progress"]) == 0
    resolved = json.loads((run / "config.json").read_text())
    assert load_config_file(run / "config.yaml") == resolved
    # The file starts a new run with the same settings (flags still override it).
    args = build_parser().parse_args(["train", "--config", str(run / "config.yaml"), "--out", str(tmp_path / "new")])
    assert config_from_args(args) == config_from_dict({**resolved, "out": str(tmp_path / "new")})


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/object:otrobust.training.config.TrainConfig {{out: '{marker}'}}",
    "!!python/name:os.system",
])
def test_a_yaml_file_with_python_tags_is_refused_and_constructs_nothing(tmp_path, capsys, tag):
    marker = tmp_path / "constructed"
    path = _write(tmp_path / "evil.yaml", f"epochs: 1\nseed: {tag.format(marker=marker)}\n")
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not determine a constructor for the tag" in err[0] and "python/" in err[0]
    assert not marker.exists() and not (tmp_path / "run").exists()
    with pytest.raises(OtrobustError, match="no tags such as !!python/object"):
        load_config_file(path)
