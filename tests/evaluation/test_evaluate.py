"""Evaluation: intervals, worst case over attacks, label sources, the attack registry, and ``otrobust eval``."""

import json

import pytest
import torch

from otrobust.attacks.table import ATTACK_NAMES as ATTACKS
from otrobust.cli.main import main
from otrobust.data import load_dataset
from otrobust.errors import NoInputGradient, OtrobustError
from otrobust.evaluation.evaluate import (
    EvalResult,
    ThreatModel,
    build_attacks,
    eval_record,
    evaluate_model,
    robustbench_summary,
)
from otrobust.evaluation.statistics import binomial_interval


def test_wilson_interval_known_values():
    lo, hi = binomial_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert binomial_interval(0, 20)[0] == 0.0 and binomial_interval(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    assert binomial_interval(20, 20)[1] == 1.0
    assert binomial_interval(0, 0) == (0.0, 1.0)


def test_worst_case_is_per_example_and_respects_label_source():
    clean = torch.tensor([True, True, True, False])
    a = torch.tensor([True, False, True, True])
    b = torch.tensor([True, True, False, True])
    true = EvalResult(clean=clean, per_attack={"a": a, "b": b}, labels="true")
    assert true.worst.tolist() == [True, False, False, False]
    assert true.accuracy("worst") == 0.25 and true.accuracy("a") == 0.75
    assert true.interval("worst") == binomial_interval(1, 4)
    # Predicted labels (the paper's protocol) can count a clean mistake as robust: that is the inflation.
    predicted = EvalResult(clean=clean, per_attack={"a": a, "b": b}, labels="predicted")
    assert predicted.worst.tolist() == [True, False, False, True]
    summary = true.summary()
    assert set(summary) == {"clean", "a", "b", "worst_case"} and summary["worst_case"]["correct"] == 1
    with pytest.raises(OtrobustError, match="no attack named"):
        true.accuracy("c")


def test_every_attack_builds_with_one_call_shape():
    attacks = build_attacks(list(ATTACKS) + ["pgd"], eps=0.1, steps=3)
    assert list(attacks) == list(ATTACKS)  # duplicates dropped, order kept
    assert all(callable(a) for a in attacks.values())
    with pytest.raises(OtrobustError, match="unknown attack"):
        build_attacks(["pgd", "deepfool"], eps=0.1)
    with pytest.raises(OtrobustError, match="schedule"):
        build_attacks(["pgd"], eps=0.1, schedule="linear")


def test_label_sources_agree_on_clean_correct_examples(trained_digits_model):
    data = load_dataset("digits", "test", size=150)
    attacks = build_attacks(["pgd"], eps=0.1, steps=5)
    torch.manual_seed(0)
    true = evaluate_model(trained_digits_model, data, attacks, labels="true", batch_size=64)
    torch.manual_seed(0)
    pred = evaluate_model(trained_digits_model, data, attacks, labels="predicted", batch_size=64)
    cc = true.clean
    assert torch.equal(true.per_attack["pgd"][cc], pred.per_attack["pgd"][cc])
    assert not bool(true.per_attack["pgd"][~cc].any())  # true labels: a clean mistake is never robust
    assert pred.accuracy() >= true.accuracy()
    assert true.seconds["pgd"] > 0


def test_attack_warnings_are_collected_once():
    class Flagging:
        def __init__(self):
            self.warnings = ["old finding"]

        def __call__(self, model, x, y):
            self.warnings.append("model looks odd")
            return x

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    data = load_dataset("digits", "test", size=20)
    res = evaluate_model(model, data, {"flag": Flagging()}, batch_size=10)
    assert res.warnings == {"flag": ["model looks odd", "model looks odd"]}


def test_records_state_the_label_source_and_robustbench_fields():
    clean = torch.tensor([True, True, False, True])
    res = EvalResult(clean=clean, per_attack={"autoattack": torch.tensor([True, False, False, True])},
                     labels="predicted")
    rec = eval_record(res, ThreatModel(norm="linf", eps=0.3, n=4, labels="predicted"))
    assert 0 <= rec["robust_accuracy"] <= 1 and rec["labels"] == "predicted" and "PREDICTED" in rec["labels_note"]
    rb = robustbench_summary(res, dataset="cifar10", eps=8 / 255, norm="linf", architecture="resnet18", name="r")
    assert rb["eps"] == "8/255" and rb["autoattack_acc"] == "50.00" and rb["clean_acc"] == "75.00"
    assert rb["additional_data"] is False and rb["unreliable"] is True and rb["threat_model"] == "Linf"
    with pytest.raises(OtrobustError, match="needs the 'square' attack"):
        robustbench_summary(res, dataset="d", eps=0.3, norm="linf", architecture="a", name="r", attack="square")


# ---------------------------------------------------------------- the CLI
@pytest.mark.parametrize("labels", ["true", "predicted"])
def test_cli_eval_states_the_threat_model_and_writes_json(trained_digits_run, tmp_path, capsys, labels):
    out = tmp_path / "eval.json"
    code = main(["eval", str(trained_digits_run), "--attack", "fgsm", "pgd", "pgd-cw", "--n", "40", "--eps", "0.1",
                 "--steps", "5", "--labels", labels, "--seed", "3", "--json", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert "linf" in text and "eps = 0.1" in text and "n = 40" in text and "seed = 3" in text
    assert f"labels = {labels}" in text and "95% CI" in text and "worst_case" in text and "time:" in text
    assert ("PREDICTED" in text) == (labels == "predicted")
    record = json.loads(out.read_text())
    assert 0 <= record["robust_accuracy"] <= 1 and record["labels"] == labels
    assert record["threat_model"]["eps"] == 0.1 and record["n"] == 40 and record["threat_model"]["seed"] == 3
    lo, hi = record["robust_accuracy_ci95"]
    assert lo <= record["robust_accuracy"] <= hi
    per_attack = [record["attacks"][name]["accuracy"] for name in ("fgsm", "pgd", "pgd-cw")]
    assert record["robust_accuracy"] <= min(per_attack)
    assert ("labels_note" in record) == (labels == "predicted")


def test_cli_eval_prints_each_attacks_budget(trained_digits_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(trained_digits_run), "--attack", "pgd", "pgd-cw", "fgsm", "square", "--n", "8", "--eps",
                 "0.1", "--steps", "7", "--step-size", "0.02", "--restarts", "2", "--aa-queries", "5",
                 "--json", str(out), "--no-progress"]) == 0
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")}
    assert rows["pgd"] == rows["pgd-cw"] == "7 steps of 0.02, 2 restarts"
    assert rows["fgsm"] == "1 step of 0.1" and rows["square"] == "5 queries" and rows["clean"] == ""
    assert json.loads(out.read_text())["budgets"]["pgd"] == "7 steps of 0.02, 2 restarts"


def test_zero_steps_are_refused_for_iterative_attacks_only(trained_digits_model):
    with pytest.raises(OtrobustError, match="too few for pgd, pgd-dlr"):
        build_attacks(["fgsm", "pgd", "pgd-dlr"], eps=0.1, steps=0)
    assert list(build_attacks(["fgsm", "square"], eps=0.1, steps=0)) == ["fgsm", "square"]


def test_cli_eval_with_one_or_three_attack_workers_agrees(trained_digits_run, tmp_path, capsys):
    records = []
    for workers in ("1", "3"):
        out = tmp_path / f"eval-{workers}.json"
        assert main(["eval", str(trained_digits_run), "--n", "90", "--eps", "0.1", "--steps", "5", "--batch-size",
                     "90", "--attack-workers", workers, "--json", str(out), "--no-progress"]) == 0
        records.append(json.loads(out.read_text()))
    # 90 images in one piece, or in three pieces on three workers at once: the same attack, float rounding aside
    assert abs(records[0]["robust_accuracy"] - records[1]["robust_accuracy"]) <= 1 / 90


def test_cli_eval_robustbench_summary(trained_digits_run, tmp_path, capsys):
    rb = tmp_path / "rb.json"
    code = main(["eval", str(trained_digits_run), "--attack", "autoattack", "--n", "16", "--aa-iter", "3",
                 "--aa-queries", "20", "--robustbench", str(rb), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0 and "NOT standard AutoAttack" in text
    summary = json.loads(rb.read_text())
    assert summary["n_examples"] == 16 and summary["architecture"] == "small-cnn" and summary["eps"] == "0.2"
    assert summary["unreliable"] is True and float(summary["autoattack_acc"]) <= float(summary["clean_acc"])


@pytest.mark.parametrize("argv,message", [
    (["--attack", "deepfool"], "unknown attack"),
    (["--attack", "pgd", "--robustbench", "x.json"], "add autoattack"),
    (["--aa-iter", "0", "--attack", "apgd-ce"], "--aa-iter"),
])
def test_cli_eval_errors_are_one_line(trained_digits_run, capsys, argv, message):
    assert main(["eval", str(trained_digits_run), "--n", "4", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


class _DetachInput(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.detach())


@pytest.mark.parametrize("attack", ["pgd", "pgd-cw", "fgsm", "autoattack-fast"])
def test_a_model_without_input_gradients_is_an_error_naming_it(trained_digits_model, attack):
    data = load_dataset("digits", "test", size=16)
    with pytest.raises(NoInputGradient, match="the model gives no input gradient"):
        evaluate_model(_DetachInput(trained_digits_model), data, build_attacks([attack], eps=0.1, steps=2,
                                                                               aa_iter=2))
    # a black-box attack needs no gradient: it runs
    square = build_attacks(["square"], eps=0.1, aa_queries=5)
    assert evaluate_model(_DetachInput(trained_digits_model), data, square).n == 16
