"""Evaluating and auditing a model otrobust did not train: a factory in a file, a state dict saved with
torch.save, normalisation in front. Nothing here trains: the model is a nearest-centroid linear classifier whose
weights are the class means of the digits."""

import json
import pickle

import pytest
import torch

from otrobust.cli.main import main
from otrobust.data import load_dataset
from otrobust.errors import OtrobustError
from otrobust.evaluation.command_settings import EvalSettings
from otrobust.evaluation.target import check_model
from otrobust.store.weights import load_state_dict_file

MODEL_FILE = '''
import torch
from torch import nn


class Quantised(nn.Sequential):
    """Input quantisation: a gradient-masking defence (the rounding has a zero gradient everywhere)."""

    def forward(self, x):
        return super().forward(torch.round(x * 4) / 4)


def linear(num_classes=10, in_channels=1, image_size=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))


def quantised(num_classes=10, in_channels=1, image_size=8):
    return Quantised(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))


def probabilities(num_classes=10, in_channels=1, image_size=8):
    return nn.Sequential(linear(num_classes, in_channels, image_size), nn.Softmax(dim=1))


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = linear()

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


def noisy():
    return Noisy()


class NoisySequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x + 0.3 * torch.randn_like(x))


def noisy_linear(num_classes=10, in_channels=1, image_size=8):
    return NoisySequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))


def three_outputs():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


class Rescaled(nn.Sequential):
    def forward(self, x):
        return super().forward(2 * x - 1)


class RescaledInPlace(nn.Sequential):
    """Rescaled, written into its input (which changes the caller's images, and breaks autograd on a leaf)."""

    def forward(self, x):
        x.mul_(2).sub_(1)
        return super().forward(x)


class Holder(nn.Module):
    """A model with a submodule called ``module``, as DataParallel names its own."""

    def __init__(self):
        super().__init__()
        self.module = linear()

    def forward(self, x):
        return self.module(x)


def rescaled():
    return Rescaled(nn.Flatten(), nn.Linear(64, 10))


def rescaled_in_place():
    return RescaledInPlace(nn.Flatten(), nn.Linear(64, 10))


def float64():
    return linear().double()


def float16():
    return linear().half()


def bfloat16():
    return linear().bfloat16()


def holder():
    return Holder()


NOT_A_FACTORY = 3
'''
MEAN, STD = 0.3, 0.4
QUICK = ["--n", "60", "--device", "cpu", "--no-progress"]


def _centroids(mean: float = 0.0, std: float = 1.0) -> dict[str, torch.Tensor]:
    """Weights of ``linear`` that classify ``u = (x - mean) / std`` by the nearest class mean (no training)."""
    train = load_dataset("digits", "train")
    u = ((train.x - mean) / std).flatten(1)
    centres = torch.stack([u[train.y == c].mean(0) for c in range(10)])
    return {"1.weight": centres, "1.bias": -0.5 * (centres ** 2).sum(1)}


def _folded(state: dict[str, torch.Tensor], mean: float, std: float) -> dict[str, torch.Tensor]:
    """The same classifier on raw [0, 1] pixels: ``W (x - m) / s + b = (W / s) x + (b - W m / s)``."""
    w, b = state["1.weight"], state["1.bias"]
    return {"1.weight": w / std, "1.bias": b - (w * mean / std).sum(1)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("external")
    (d / "models.py").write_text(MODEL_FILE)
    torch.save(_centroids(MEAN, STD), d / "normalized.pt")
    torch.save(_folded(_centroids(MEAN, STD), MEAN, STD), d / "folded.pt")
    return d


def _eval_json(capsys, argv: list[str], path) -> dict:
    assert main(["eval", *argv, "--json", str(path)]) == 0
    capsys.readouterr()
    record = json.loads(path.read_text())
    record.pop("timing")
    return record


def test_normalize_inside_the_model_equals_the_normalisation_folded_into_its_first_layer(model_dir, tmp_path,
                                                                                          capsys):
    common = ["--model", f"{model_dir / 'models.py'}:linear", "--dataset", "digits", "--attack", "pgd", "fgsm",
              "--steps", "10", *QUICK]
    inside = _eval_json(capsys, [*common, "--weights", str(model_dir / "normalized.pt"), "--normalize", str(MEAN),
                                 str(STD), "--per-example", str(tmp_path / "a.csv")], tmp_path / "a.json")
    folded = _eval_json(capsys, [*common, "--weights", str(model_dir / "folded.pt"), "--per-example",
                                 str(tmp_path / "b.csv")], tmp_path / "b.json")
    assert inside["clean_accuracy"] > 0.7  # the centroid classifier is a real model
    assert inside["attacks"]["clean"] == folded["attacks"]["clean"]
    for attack in ("pgd", "fgsm"):  # float rounding may move one image's attack, no more
        assert abs(inside["attacks"][attack]["correct"] - folded["attacks"][attack]["correct"]) <= 1
    assert inside["robust_accuracy"] < inside["clean_accuracy"]


def test_the_audit_passes_the_honest_model_and_fails_input_quantisation(model_dir, tmp_path, capsys):
    weights = ["--weights", str(model_dir / "folded.pt"), "--dataset", "digits", "--quick", "--steps", "5",
               "--restarts", "2", "--square-queries", "200", "--aa-iter", "10", "--n", "60", "--device", "cpu"]
    assert main(["audit", "--model", f"{model_dir / 'models.py'}:linear", *weights,
                 "--out", str(tmp_path / "honest")]) == 0
    assert main(["audit", "--model", f"{model_dir / 'models.py'}:quantised", *weights,
                 "--out", str(tmp_path / "masked")]) == 1
    checks = {c["name"]: c["status"] for c in json.loads((tmp_path / "masked" / "audit.json").read_text())["checks"]}
    assert checks["gradients"] == "fail"
    assert "clean accuracy" in capsys.readouterr().out


def _fails(capsys, argv: list[str], match: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("otrobust: error:") and match in err[0], err


@pytest.mark.parametrize("factory, extra, match", [
    ("nowhere.py:linear", [], "no file"),
    ("{dir}/models.py:absent", [], "defines no 'absent'; it defines"),
    ("{dir}/models.py:NOT_A_FACTORY", [], "not a factory"),
    ("no_such_package.models:linear", [], "no module 'no_such_package'"),
    ("{dir}/models.py", [], "must be FILE.py:FACTORY"),
    ("{dir}/models.py:three_outputs", [], "expected logits (16, 10)"),
    ("{dir}/models.py:noisy", [], "pass --randomized"),
    ("{dir}/models.py:linear", ["--normalize", "0.5"], "--normalize takes MEAN... STD..."),
    ("{dir}/models.py:linear", ["--normalize", "0.1", "0.2", "0.3", "0.4"], "give one of each or 1 of each"),
    ("{dir}/models.py:linear", ["--input-size", "3", "8", "8"], "do not fit dataset 'digits'"),
])
def test_bad_models_are_one_line_errors(model_dir, capsys, factory, extra, match):
    _fails(capsys, ["eval", "--model", factory.format(dir=model_dir), "--dataset", "digits", *extra, *QUICK], match)


def test_weights_that_do_not_fit_name_the_first_keys(model_dir, tmp_path, capsys):
    state = {**_centroids(), "extra.weight": torch.zeros(1)}
    state["1.weight"] = state["1.weight"][:, :32]
    torch.save(state, tmp_path / "bad.pt")
    _fails(capsys, ["eval", "--model", f"{model_dir / 'models.py'}:linear", "--weights", str(tmp_path / "bad.pt"),
                    "--dataset", "digits", *QUICK],
           "1 unexpected: extra.weight; 1 of another shape: 1.weight (file [10, 32], model [10, 64])")
    torch.save({"model": {"1.bias": torch.zeros(10)}}, tmp_path / "nested.pt")  # unwrapped, then 1 missing
    _fails(capsys, ["eval", "--model", f"{model_dir / 'models.py'}:linear", "--weights",
                    str(tmp_path / "nested.pt"), "--dataset", "digits", *QUICK], "1 missing: 1.weight")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_holding_code_is_refused_without_running_it(tmp_path, capsys):
    torch.save({"1.weight": torch.zeros(10, 64), "payload": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(OtrobustError, match="pickle holding code"):
        load_state_dict_file(tmp_path / "evil.pt")
    assert "this must never run" not in capsys.readouterr().out
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(OtrobustError, match="not a PyTorch weights file|pickle holding code"):
        load_state_dict_file(tmp_path / "evil.bin")
    assert "this must never run" not in capsys.readouterr().out
    (tmp_path / "w.safetensors").write_bytes(b"junk")
    with pytest.raises(OtrobustError, match="not a valid safetensors file"):
        load_state_dict_file(tmp_path / "w.safetensors")


def test_probabilities_are_warned_about_and_a_declared_randomised_model_is_attacked_with_eot(model_dir, capsys):
    assert main(["eval", "--model", f"{model_dir / 'models.py'}:probabilities", "--dataset", "digits",
                 "--steps", "2", *QUICK]) == 0
    assert "outputs are probabilities" in capsys.readouterr().out
    assert main(["eval", "--model", f"{model_dir / 'models.py'}:noisy", "--dataset", "digits", "--randomized",
                 "--steps", "2", "--eot-draws", "2", *QUICK]) == 0
    assert "average 2 forwards (EOT)" in capsys.readouterr().out


def test_check_model_on_logits_is_quiet():
    x = torch.rand(4, 1, 8, 8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert check_model(model, x, 10) == []
    with pytest.raises(OtrobustError, match=r"expected logits \(4, 3\)"):
        check_model(model, x, 3)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "neither"),
    ({"path": "run", "model": "m.py:f"}, "both"),
    ({"path": "run", "weights": "w.pt"}, "describe a --model"),
    ({"model": "m.py:f"}, "--model needs --dataset"),
    ({"model": "m.py:f", "dataset": "digits", "input_size": [3, 8]}, "--input-size must be C H W or H"),
])
def test_model_settings_are_checked_when_made(kwargs, match):
    with pytest.raises(OtrobustError, match=match):
        EvalSettings(**kwargs)


def test_a_randomised_models_evaluation_reruns_and_resumes_exactly(model_dir, tmp_path, capsys):
    """--randomized: the clean pass and every attack of a batch are seeded by its position, so a rerun gives the
    same JSON, and so does a run that finds half its batches recorded (a resumed one)."""
    args = ["--model", f"{model_dir / 'models.py'}:noisy_linear", "--dataset", "digits", "--randomized", "--eot-draws",
            "2",
            "--attack", "pgd", "fgsm", "--steps", "3", "--batch-size", "10", "--weights",
            str(model_dir / "folded.pt"), *QUICK]
    first = _eval_json(capsys, args, tmp_path / "first.json")
    again = _eval_json(capsys, args, tmp_path / "again.json")
    assert again == {**first, "model": again["model"]}
    for record in sorted((tmp_path / "first.json.parts" / "batches").glob("*.json"))[::2]:
        record.unlink()
    resumed = _eval_json(capsys, args, tmp_path / "first.json")
    assert resumed == first


def test_the_audit_honours_randomized(model_dir, tmp_path, capsys):
    """A declared randomised model: its determinism check passes and says why, the attacks use EOT, and two audits
    give the same report."""
    args = ["audit", "--model", f"{model_dir / 'models.py'}:noisy_linear", "--weights", str(model_dir / "folded.pt"),
            "--dataset", "digits", "--randomized", "--eot-draws", "2", "--quick", "--steps", "2", "--restarts", "2",
            "--unbounded-steps", "4", "--square-queries", "20", "--aa-iter", "2", "--n", "20", "--device", "cpu"]
    reports = []
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) in (0, 1)
        report = json.loads((tmp_path / name / "audit.json").read_text())
        reports.append([(c["name"], c["status"], c["finding"], c["evidence"]) for c in report["checks"]])
    assert reports[0] == reports[1]
    checks = {name: (status, finding) for name, status, finding, _ in reports[0]}
    assert checks["determinism"][0] == "pass" and "declared randomised" in checks["determinism"][1]
    assert report["threat_model"]["randomized"] is True
    assert dict((c[0], c[3]) for c in reports[0])["autoattack"]["version"].startswith("rand")



def _weights(state: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    """The folded classifier's weights as ``how`` stores them."""
    if how in ("float16", "bfloat16"):  # what a half-precision model holds
        return {k: v.to(getattr(torch, how)) for k, v in state.items()}
    if how == "sparse":
        return {k: v.to_sparse() for k, v in state.items()}
    if how == "holder":
        return {f"module.{k}": v for k, v in state.items()}
    if how == "data-parallel holder":
        return {f"module.module.{k}": v for k, v in state.items()}
    return state


@pytest.mark.parametrize("factory, how, reference", [
    ("float64", "plain", "plain"), ("float16", "float16", "float16"), ("bfloat16", "bfloat16", "bfloat16"),
    ("linear", "sparse", "plain"), ("holder", "holder", "plain"), ("holder", "data-parallel holder", "plain"),
])
def test_models_of_other_dtypes_layouts_and_names_give_the_float32_models_result(model_dir, tmp_path, capsys, factory,
                                                                                 how, reference):
    """Evaluated in float32 (and saying so); sparse weights made dense; a submodule called ``module`` kept: the
    same verdicts as the float32 linear model with the same weights."""
    folded = _folded(_centroids(MEAN, STD), MEAN, STD)
    torch.save(_weights(folded, how), tmp_path / "w.pt")
    torch.save({k: v.float() for k, v in _weights(folded, reference).items()}, tmp_path / "ref.pt")
    common = ["--dataset", "digits", "--attack", "pgd", "fgsm", "--steps", "5", *QUICK]
    got = _eval_json(capsys, ["--model", f"{model_dir / 'models.py'}:{factory}", "--weights", str(tmp_path / "w.pt"),
                              *common], tmp_path / "got.json")
    want = _eval_json(capsys, ["--model", f"{model_dir / 'models.py'}:linear", "--weights", str(tmp_path / "ref.pt"),
                               *common], tmp_path / "want.json")
    assert got["clean_accuracy"] > 0.7 and got["attacks"] == want["attacks"]
    assert ("evaluated in float32" in got["model"]) == (factory != "linear" and factory != "holder")


def test_a_model_that_writes_into_its_input_gets_a_copy_and_the_out_of_place_result(model_dir, tmp_path, capsys):
    torch.save(_folded(_centroids(MEAN, STD), MEAN, STD), tmp_path / "w.pt")
    common = ["--dataset", "digits", "--weights", str(tmp_path / "w.pt"), "--attack", "pgd", "--steps", "5", *QUICK]
    got = _eval_json(capsys, ["--model", f"{model_dir / 'models.py'}:rescaled_in_place", *common], tmp_path / "a.json")
    want = _eval_json(capsys, ["--model", f"{model_dir / 'models.py'}:rescaled", *common], tmp_path / "b.json")
    assert got["attacks"] == want["attacks"] and "given a copy" in got["model"]
