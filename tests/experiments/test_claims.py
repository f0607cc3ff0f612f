"""The paper's claims judged by the paired interval, the verdict paragraph, and tuned GOT against the tuned base."""

import dataclasses

import pytest

from otrobust.experiments import claims as sf
from otrobust.experiments import study
from otrobust.experiments.spec import PaperValue, Preset, Run, Tuning
from otrobust.experiments.studies import MNIST_STUDY

PRESET = Preset(
    name="p", description="", reference="", evaluations=(), paper_settings={},
    runs=(Run("base", "Base", {"method": "trades"}), Run("got", "GOT", {"method": "got-trades-lm"}, baseline="base"),
          Run("tuned/base", "Base tuned", {"method": "trades", "adv_weight": 6.0}, seeds=(1, 2))),
    paper_results=(PaperValue("base", "pgd", 90.0), PaperValue("got", "pgd", 92.0),
                   PaperValue("base", "autoattack", 85.0), PaperValue("got", "autoattack", 90.0)),
)
NAMES = {"base": "Base", "got": "GOT"}


def _row(run, seed, acc, evaluation="pgd", metric="pgd"):
    return {"run": run, "seed": seed, "evaluation": evaluation, "metric": metric, "labels": "true", "eps": 0.3,
            "steps": 40, "step_size": 0.01, "accuracy": acc}


def test_the_verdict_follows_the_interval():
    assert sf.verdict(1.24, -0.4, 0.6, 3) == sf.REFUTED  # below the claim, 0 inside: the claimed gain is ruled out
    assert sf.verdict(1.24, 0.1, 0.9, 3) == sf.REFUTED  # a smaller gain shown is still not the claim
    assert sf.verdict(1.24, 0.3, 2.5, 3) == sf.REPRODUCED
    assert sf.verdict(1.24, 1.5, 3.0, 3) == sf.REPRODUCED  # a larger gain than claimed
    assert sf.verdict(1.24, -0.5, 2.0, 3) == sf.NOT_RESOLVED
    assert sf.verdict(1.24, None, None, 3) == sf.NOT_RESOLVED


def test_no_verdict_below_three_seeds_or_from_an_interval_of_no_width():
    # two seeds whose AutoAttack differences agree exactly (+1.2 and +1.2) give the interval [+1.2, +1.2]: it
    # measures no noise, so it must not refute a claimed +2.84
    assert sf.verdict(2.84, 1.2, 1.2, 3) == sf.NOT_RESOLVED
    assert sf.verdict(2.84, 0.5, 1.5, 2) == sf.NOT_RESOLVED
    assert sf.verdict(2.84, 0.5, 1.5, 3) == sf.REFUTED
    assert sf.shown(1.2, 1.2) == "no interval (the seeds agree exactly)"
    assert sf.verdict(2.84, 1.2 - 1e-12, 1.2 + 1e-12, 3) == sf.NOT_RESOLVED  # rounding error is no spread
    assert study.interval(1.2, 1.2) == "[+1.20, +1.20] (no spread)" and study.interval(-0.5, 1.2) == "[-0.50, +1.20]"


def test_the_mnist_study_tests_the_papers_four_claims():
    gains = {(c.run, c.metric): round(c.gain, 2) for c in sf.claims(MNIST_STUDY)}
    assert gains == {("got-trades-lm", "pgd"): 1.24, ("got-trades-lm", "autoattack"): 4.75,
                     ("got-pgd-lm", "pgd"): 1.57, ("got-pgd-lm", "autoattack"): 2.84}


def test_claims_are_judged_on_paired_seeds():
    rows = [_row("base", s, a) for s, a in ((0, 90.0), (1, 95.0), (2, 85.0))]
    rows += [_row("got", s, a) for s, a in ((0, 90.1), (1, 95.2), (2, 84.9))]  # ~0 gain, tight when paired
    rows += [_row("base", 0, 80.0, "autoattack", "autoattack"), _row("got", 0, 90.0, "autoattack", "autoattack")]
    pgd, aa = sf.judge(sf.claims(PRESET), rows)
    assert pgd.seeds == (0, 1, 2) and pgd.mean == pytest.approx(0.0667, abs=1e-3) and pgd.verdict == sf.REFUTED
    assert aa.seeds == (0,) and aa.verdict == sf.NOT_RESOLVED  # one seed: no interval, whatever its size


def test_tuned_got_against_the_tuned_base_says_what_the_interval_shows():
    runs = (*PRESET.runs, Run("tuned/got", "GOT tuned", {"method": "got-trades-lm"}, baseline="tuned/base",
                              seeds=(1, 2)))
    preset = dataclasses.replace(PRESET, runs=runs, tunings=(Tuning("Base", ("base",), tuned="tuned/base"),
                                                             Tuning("GOT", ("got",), tuned="tuned/got")))
    rows = [_row("tuned/base", 1, 90.0), _row("tuned/base", 2, 91.0), _row("tuned/got", 1, 91.0),
            _row("tuned/got", 2, 92.2), _row("base", 1, 95.0), _row("got", 1, 80.0),
            _row("tuned/base", 1, 80.0, "autoattack", "autoattack"), _row("tuned/got", 1, 79.0, "autoattack",
                                                                          "autoattack")]
    found = {d["evaluation"]: d for d in sf.tuned_differences(preset, rows)}
    assert set(found) == {"pgd", "autoattack"} and found["pgd"]["baseline"] == "tuned/base"  # main arms left out
    assert found["pgd"]["mean"] == pytest.approx(1.1)  # +1.0 and +1.2: two seeds, t(1) makes the interval wide
    assert sf.shown(found["pgd"]["ci_low"], found["pgd"]["ci_high"]) == "no difference shown"
    text = "\n".join(sf.tuned_markdown(preset, rows, {}, None))
    assert "## Tuned against tuned" in text and "**no interval (one seed)**" in text
    assert sf.shown(0.2, 1.0) == "better" and sf.shown(-1.0, -0.2) == "worse"
    assert sf.shown(-0.2, 1.0) == "no difference shown"


def test_the_verdict_paragraph_waits_for_three_seeds_and_then_counts_the_verdicts():
    two = [_row("base", 0, 90.0), _row("base", 1, 95.0), _row("got", 0, 90.1), _row("got", 1, 95.3)]
    text = sf.verdict_paragraph(sf.judge(sf.claims(PRESET), two), NAMES)
    assert text.startswith("**No verdict yet on the paper's 2 claims:** each is judged on at least 3 seeds, and the "
                           "most recorded is 2.")
    assert "GOT − Base under PGD-40: +0.20 points [" in text and "on 2 seeds against the claimed +2.00" in text
    assert "GOT − Base under AutoAttack: not measured yet (claimed +5.00)" in text
    three = [*two, _row("base", 2, 85.0), _row("got", 2, 84.9)]  # +0.1, +0.3, -0.1: far below the claimed +2
    three += [_row(r, s, 80.0 + s + (10.0 if r == "got" else 0.0), "autoattack", "autoattack")
              for r in ("base", "got") for s in (0, 1, 2)]  # +10 on every seed: an interval of no width
    judged = sf.judge(sf.claims(PRESET), three)
    assert [v.verdict for v in judged] == [sf.REFUTED, sf.NOT_RESOLVED]
    text = sf.verdict_paragraph(judged, NAMES)
    assert text.startswith("**The paper's 2 claims: 1 refuted, none reproduced, 1 not resolved.** GOT − Base under "
                           "PGD-40: +0.10 points [")
    assert "on 3 seeds against the claimed +2.00, *refuted*" in text and "(no spread) on 3 seeds" in text
    assert sf.verdict_paragraph([], NAMES) == ""


def test_the_claims_section_opens_with_the_verdict():
    rows = [_row(r, s, 90.0 + s) for r in ("base", "got") for s in (0, 1, 2)]
    section = sf.claims_markdown(PRESET, rows, NAMES, None)
    assert section[0] == "## The paper's claims" and section[2].startswith("**The paper's 2 claims: ")


def test_the_seed_table_gives_both_accuracies_and_their_difference_on_each_seed_a_claim_has():
    rows = [_row("base", s, a) for s, a in ((0, 90.0), (1, 95.0), (3, 85.0))]
    rows += [_row("got", s, a) for s, a in ((0, 90.5), (1, 94.0), (2, 99.0), (3, 85.25))]  # seed 2: no baseline
    rows += [_row("base", 0, 80.0, "autoattack", "autoattack"), _row("got", 0, 81.2, "autoattack", "autoattack")]
    table = sf.seed_table(sf.judge(sf.claims(PRESET), rows), NAMES).splitlines()
    assert table[0] == "| run − baseline | measurement | seed 0 | seed 1 | seed 3 |"
    assert table[2] == "| GOT − Base | PGD-40 | 90.50 − 90.00 = +0.50 | 94.00 − 95.00 = -1.00 | 85.25 − 85.00 = +0.25 |"
    assert table[3] == "| GOT − Base | AutoAttack | 81.20 − 80.00 = +1.20 | – | – |"
    assert "Seed by seed" in "\n".join(sf.claims_markdown(PRESET, rows, NAMES, None))
    assert sf.seed_table(sf.judge(sf.claims(PRESET), []), NAMES) == ""


def test_a_claim_judged_again_after_adding_seeds_is_judged_at_the_error_rate_split_over_its_looks():
    rows = [_row("base", s, 90.0) for s in (0, 1, 2)] + [_row("got", s, 90.0 + d) for s, d in ((0, 0.25), (1, 0.7),
                                                                                              (2, 1.15))]
    once = sf.judge(sf.claims(PRESET), rows)[0]
    runs = tuple(dataclasses.replace(r, looks=2) if r.name == "got" else r for r in PRESET.runs)
    twice = sf.judge(sf.claims(dataclasses.replace(PRESET, runs=runs)), rows)[0]
    assert (once.claim.level, twice.claim.level) == (0.95, 0.975)
    assert once.mean == twice.mean == pytest.approx(0.7)
    # 95 %: [-0.42, +1.82] lies below the claimed +2.00; at 97.5 % it reaches +2.31 and the claim stands open
    assert once.ci_high == pytest.approx(1.818, abs=1e-3) and once.verdict == sf.REFUTED
    assert twice.ci_high == pytest.approx(2.312, abs=1e-3) and twice.verdict == sf.NOT_RESOLVED
    assert "at 97.5 % (2 looks)" in sf.verdict_paragraph([twice], NAMES)
    assert "looks" not in sf.verdict_paragraph([once], NAMES)
