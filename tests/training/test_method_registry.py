"""The method registry is the one list of methods: the CLI, the objectives and the presets agree with it."""

import pytest

from otrobust.errors import OtrobustError
from otrobust.experiments.presets import GOT_METHODS, METHOD_LABELS
from otrobust.training.config import TrainConfig
from otrobust.training.method_registry import METHOD_SPECS, base_method, method_spec, ot_variant
from otrobust.training.methods import METHODS


def test_every_registered_method_has_an_objective_and_a_label():
    assert set(METHODS) == set(METHOD_SPECS)
    assert set(METHOD_LABELS) == set(METHOD_SPECS)
    import dataclasses
    choices = next(f for f in dataclasses.fields(TrainConfig) if f.name == "method").metadata["choices"]
    assert tuple(choices) == tuple(METHOD_SPECS)


def test_got_methods_extend_a_base_method_with_the_ot_term():
    for name in GOT_METHODS:
        spec = method_spec(name)
        assert spec.is_got and spec.ot_weight > 0 and not method_spec(spec.base).is_got
        assert name == f"got-{'pgd' if spec.base == 'pgd-at' else spec.base}-{spec.ot_variant}"
    assert ot_variant("trades") is None and base_method("mart") == "mart"


def test_an_unknown_method_names_the_known_ones():
    with pytest.raises(OtrobustError, match="got-trades-lm"):
        method_spec("got-mart-lm")
