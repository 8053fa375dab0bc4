# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``algorithm.rhythm.*`` validation: defaults from the spec, errors that name the key and the allowed range."""

import pytest
from omegaconf import OmegaConf

from verl_rhythm.config import RhythmConfig, RhythmConfigError, select_layers


def test_defaults_are_the_papers():
    c = RhythmConfig()
    assert (c.strategy, c.sign, c.top_q, c.gamma_amp, c.alpha, c.intro_window) == ("coupled", "both", 0.4, 1.5, 0.5, 3)
    assert (c.waad_window, c.fai_horizon_lo, c.fai_horizon_hi, c.head_quantile) == (10, 10, 100, 0.3)
    assert c.layers is None and c.head_group_scope == "sequence"
    assert RhythmConfig.from_dict(None) == c == RhythmConfig.from_dict({})


def test_reads_verl_algorithm_dictconfig():
    algo = OmegaConf.create({"adv_estimator": "rhythm", "rhythm": {"strategy": "local", "layers": [3, 1, 3]}})
    c = RhythmConfig.from_algorithm_config(algo)
    assert c.strategy == "local" and c.layers == (1, 3)
    assert RhythmConfig.from_algorithm_config(OmegaConf.create({"adv_estimator": "rhythm"})) == RhythmConfig()
    assert c.to_dict()["layers"] == [1, 3]


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("strategy", "loca", "algorithm.rhythm.strategy='loca': allowed values are coupled, local"),
        ("sign", "pos", "algorithm.rhythm.sign"),
        ("top_q", 0.0, r"algorithm.rhythm.top_q=0.0: allowed range is \(0, 1\]"),
        ("top_q", 1.5, "algorithm.rhythm.top_q"),
        ("gamma_amp", 0.9, r"algorithm.rhythm.gamma_amp=0.9: allowed range is \[1, 100\]"),
        ("gamma_amp", 1e39, "algorithm.rhythm.gamma_amp=1e\\+39: allowed range"),
        ("alpha", -0.1, r"algorithm.rhythm.alpha=-0.1: allowed range is \[0, 1\]"),
        ("intro_window", 0, "algorithm.rhythm.intro_window"),
        ("intro_window", 2.5, "algorithm.rhythm.intro_window=2.5: expected integer"),
        ("waad_window", True, "algorithm.rhythm.waad_window"),
        ("fai_horizon_lo", 0, "algorithm.rhythm.fai_horizon_lo"),
        ("fai_horizon_hi", 5, "fai_horizon_hi=5 must be >= algorithm.rhythm.fai_horizon_lo=10"),
        ("head_quantile", 0.6, r"algorithm.rhythm.head_quantile=0.6: allowed range is \(0, 0.5\]"),
        ("head_group_scope", "batch", "algorithm.rhythm.head_group_scope"),
        ("bottom_score", "coupled", "algorithm.rhythm.bottom_score"),
        ("layers", [], "algorithm.rhythm.layers"),
        ("layers", [-1], "algorithm.rhythm.layers"),
        ("layers", "3", "algorithm.rhythm.layers"),
        ("layers", [1.5], "algorithm.rhythm.layers"),
        ("chunk_size", 0, "algorithm.rhythm.chunk_size"),
        ("gamma_amp", float("nan"), "algorithm.rhythm.gamma_amp"),
    ],
)
def test_out_of_range_values_name_the_key(key, value, message):
    with pytest.raises(RhythmConfigError, match=message):
        RhythmConfig.from_dict({key: value})


def test_unknown_key_lists_the_known_keys():
    with pytest.raises(RhythmConfigError, match="unknown key algorithm.rhythm.topq; known keys: .*top_q"):
        RhythmConfig.from_dict({"topq": 0.3})


def test_default_layers_are_five_in_the_middle_third():
    assert select_layers(30) == [10, 12, 15, 18, 20]  # SmolLM2
    assert select_layers(36) == [12, 15, 18, 21, 24]  # Qwen3-4B
    assert select_layers(3) == [1, 2]  # de-duplicated
    assert select_layers(30, (4, 2)) == [2, 4]
    with pytest.raises(RhythmConfigError, match=r"indices \[30\] are outside the model's decoder layers \[0, 29\]"):
        select_layers(30, [1, 30])
