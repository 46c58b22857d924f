"""The defense table: every objective and maximizer it names is built by name, and the options
each reads are shown only for the defenses that use them."""

from __future__ import annotations

import pytest
import torch

from advtui.core.config import build_config, values_in_force
from advtui.core.defenses import (
    DEFENSE_OPTIONS, DEFENSE_SPECS, DEFENSES, MAXIMIZER_OPTIONS, OBJECTIVE_OPTIONS, defense_options, uses_option,
)
from advtui.engine.defenses import MAXIMIZERS, OBJECTIVES, build_maximizer, build_objective, defense_maximizer


def test_the_engine_builds_every_objective_and_maximizer_the_table_names():
    assert set(OBJECTIVES) == set(OBJECTIVE_OPTIONS) and set(MAXIMIZERS) == set(MAXIMIZER_OPTIONS)
    for defense in DEFENSES:
        spec = DEFENSE_SPECS[defense]
        config = build_config(defense, l2lda_width=4)
        assert build_objective(config).name == spec.objective
        maximizer = defense_maximizer(config, torch.device("cpu"))
        assert (maximizer.name if maximizer is not None else None) == spec.maximizer


def test_an_unknown_maximizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown maximizer 'adam'; known: pgd, pgd-bls, rnn, l2lda"):
        build_maximizer("adam", build_config("advtrain"), torch.device("cpu"))


def test_each_defense_uses_its_objectives_and_maximizers_options():
    assert defense_options("rnn-trades") == {"beta"} | set(MAXIMIZER_OPTIONS["rnn"])
    assert defense_options("advtrain-bls") == set(MAXIMIZER_OPTIONS["pgd-bls"])
    assert defense_options("plain") == defense_options("advtrain") == frozenset()
    assert defense_options("no-such-defense") == defense_options(["odd"]) == frozenset()
    assert "rnn_hidden" in DEFENSE_OPTIONS and "eps" not in DEFENSE_OPTIONS
    assert uses_option("trades", "beta") and not uses_option("rnn-adv", "beta")
    assert uses_option("plain", "eps") and uses_option(None, "step_size")  # options every run has


def test_the_config_shown_holds_the_defenses_options_only():
    from advtui.tui.screens.detail import CONFIG_KEYS, config_keys

    rnn_keys = [k for k in CONFIG_KEYS if k.startswith("rnn_")]
    assert rnn_keys and "beta" in CONFIG_KEYS
    assert config_keys({"defense": "rnn-trades"}) == list(CONFIG_KEYS)
    assert config_keys({"defense": "rnn-adv"}) == [k for k in CONFIG_KEYS if k != "beta"]
    assert config_keys({"defense": "trades"}) == [k for k in CONFIG_KEYS if k not in rnn_keys]
    for record in ({"defense": "advtrain"}, {"defense": "l2lda"}, {}, {"defense": "gone"}):
        assert config_keys(record) == [k for k in CONFIG_KEYS if k not in rnn_keys and k != "beta"]
    assert "beta" not in values_in_force({"defense": ["odd"], "beta": 3.0})
