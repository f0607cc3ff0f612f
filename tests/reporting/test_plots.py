"""Every figure function writes a PNG and an SVG from plain data, and refuses empty data with one message."""

import numpy as np
import pytest

from otrobust.errors import OtrobustError
from otrobust.reporting import plots

pytest.importorskip("matplotlib")


def _written(paths):
    assert [p.suffix for p in paths] == [".png", ".svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 5_000
    assert b"<svg" in paths[1].read_bytes()[:500]
    return paths


def test_accuracy_against_eps_steps_and_beta(tmp_path):
    eps = [0.1, 0.2, 0.3]
    ours = {"MNIST": {"TRADES": list(zip(eps, [90.0, 70.0, 40.0], strict=True)),
                      "GOT-TRADES-LM": list(zip(eps, [92.0, 75.0, 45.0], strict=True))},
            "CIFAR-10": {"TRADES": list(zip(eps, [50.0, 20.0, 5.0], strict=True))}}
    paper = {"MNIST": {"TRADES": list(zip(eps, [98.0, 97.0, 95.0], strict=True))}}
    _written(plots.plot_accuracy_vs_eps(ours, tmp_path / "eps", paper=paper))
    _written(plots.plot_accuracy_vs_steps({"MNIST": {"TRADES": [(10, 50.0), (20, 48.0), (40, 47.5)]}},
                                          tmp_path / "sub" / "steps"))
    _written(plots.plot_accuracy_vs_beta({"MNIST": {"clean": [(0.01, 98.0), (1.0, 97.0), (100.0, 90.0)],
                                                    "PGD-40": [(0.01, 60.0), (1.0, 65.0), (100.0, 50.0)]}},
                                         tmp_path / "beta"))
    with pytest.raises(OtrobustError, match="nothing to plot"):
        plots.plot_accuracy_vs_eps({}, tmp_path / "empty")


def test_tsne_of_clean_and_adversarial_features(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    z = rng.normal(size=(30, 8)) + 4 * y[:, None]
    panels = {"TRADES": {"z_clean": z, "z_adv": z + rng.normal(size=z.shape), "y": y},
              "GOT-TRADES-LM": {"z_clean": z, "z_adv": z + 0.1 * rng.normal(size=z.shape), "y": y}}
    _written(plots.plot_tsne(panels, tmp_path / "tsne", class_names=("cat", "dog", "ship")))
    with pytest.raises(OtrobustError):
        plots.plot_tsne({}, tmp_path / "none")


def test_learning_curves(tmp_path):
    history = [{"epoch": e, "val_clean": 0.5 + 0.1 * e, "val_pgd": 0.2 + 0.05 * e, "train_loss": 2.0 / e}
               for e in (1, 2, 3)]
    _written(plots.plot_learning_curves({"a": history, "b": history[:1], "empty": []}, tmp_path / "curves"))
    with pytest.raises(OtrobustError, match="no run has a finished epoch"):
        plots.plot_learning_curves({"empty": []}, tmp_path / "none")


def test_plateau_panels_a_line_per_seed(tmp_path):
    seeds = {f"seed {s}": [(e, 80.0 + e + s) for e in range(1, 11)] for s in range(3)}
    _written(plots.plot_plateau({"TRADES": seeds, "GOT": {"seed 0": [(1, 50.0)]}}, tmp_path / "plateau"))
    with pytest.raises(OtrobustError, match="no run has a finished epoch"):
        plots.plot_plateau({"TRADES": {"seed 0": []}}, tmp_path / "none")
    _written(plots.plot_plateau({"Tuning": seeds}, tmp_path / "tuning", last=0))  # no window shaded


def test_estimates_against_their_claims_with_and_without_an_interval(tmp_path):
    found = [plots.Estimate(label="GOT − TRADES\nPGD-40", mean=0.25, low=-2.9, high=3.4, points=(0.02, 0.49),
                            target=1.24, note="not resolved"),
             plots.Estimate(label="GOT − PGD-AT\nAutoAttack", mean=1.2, low=None, high=None, points=(1.2,),
                            target=2.84, note="one seed")]
    svg = _written(plots.plot_estimates(found, tmp_path / "claims", x_label="points", target_label="claimed",
                                        title="Claims"))[1].read_text()
    assert "not resolved" in svg and "one seed" in svg and "claimed" in svg
    with pytest.raises(OtrobustError, match="no estimate to plot"):
        plots.plot_estimates([], tmp_path / "none", x_label="x", target_label="t", title="t")


def test_the_same_figure_is_the_same_bytes(tmp_path):
    history = [{"epoch": e, "val_clean": 0.9, "val_pgd": 0.1 * e, "train_loss": 1.0 / e} for e in (1, 2, 3)]
    first = plots.plot_learning_curves({"a": history}, tmp_path / "one")
    second = plots.plot_learning_curves({"a": history}, tmp_path / "two")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]  # committed figures do not churn


def test_the_plot_command_draws_two_runs_into_one_png(tmp_path, capsys):
    from conftest import tiny_flags

    from otrobust.cli.main import main

    for name, method in (("trades", "trades"), ("got", "got-trades-lm")):
        assert main(["train", *tiny_flags(method=method, epochs=2), "--out", str(tmp_path / name)]) == 0
    out = tmp_path / "figs" / "curves.png"
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "trades"), str(tmp_path / "got"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.png"]  # the PNG asked for, nothing else
    from matplotlib.image import imread

    height, width = imread(str(out)).shape[:2]
    assert width > 2 * height  # three panels side by side
    assert main(["plot", str(tmp_path / "trades"), "--out", str(tmp_path / "curves.svg")]) == 2
    assert main(["plot", str(tmp_path / "figs")]) == 2  # not a run directory
    assert "not a run directory" in capsys.readouterr().err
