# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``RhythmConfigError`` carries the key at fault, and the CLI's flags and help come from the dataclass fields."""

from __future__ import annotations

import pytest

from verl_rhythm.cli import _flag, build_parser, main
from verl_rhythm.config import KEYS, CaptureSettings, CreditSettings, RhythmConfig, RhythmConfigError, select_layers


@pytest.mark.parametrize(
    "values, key",
    [
        ({"strategy": "best"}, "strategy"),
        ({"sign": "up"}, "sign"),
        ({"top_q": 0.0}, "top_q"),
        ({"gamma_amp": "x"}, "gamma_amp"),
        ({"intro_window": 0}, "intro_window"),
        ({"fai_horizon_lo": 20, "fai_horizon_hi": 10}, "fai_horizon_hi"),
        ({"head_group_scope": "batch"}, "head_group_scope"),
        ({"seed": -1}, "seed"),
        ({"layers": "3"}, "layers"),
        ({"no_such_knob": 1}, "no_such_knob"),
    ],
)
def test_the_error_carries_the_key_it_names(values, key):
    with pytest.raises(RhythmConfigError) as err:
        RhythmConfig.from_dict(values)
    assert err.value.key == key
    assert f"algorithm.rhythm.{key}" in str(err.value)


def test_a_non_mapping_has_no_single_key_and_layer_range_errors_name_layers():
    with pytest.raises(RhythmConfigError) as err:
        RhythmConfig.from_dict(["top_q"])
    assert err.value.key is None
    with pytest.raises(RhythmConfigError) as err:
        select_layers(4, [9])
    assert err.value.key == "layers"


def test_every_field_has_its_help_in_the_metadata_the_docstring_and_the_cli():
    parser = build_parser()
    analyze = parser._subparsers._group_actions[0].choices["analyze"]
    actions = {a.dest: a for a in analyze._actions}
    for f in RhythmConfig.fields():
        text = f.metadata.get("help", "")
        assert text, f"RhythmConfig.{f.name} has no help metadata"
        owner = {"capture": CaptureSettings, "credit": CreditSettings}[KEYS[f.name]]
        assert f"{f.name}: {text}" in owner.__doc__
        action = actions[f"rhythm_{f.name}"]
        assert action.help.startswith(text.replace("%", "%%")) and _flag(f.name) in action.option_strings


def test_the_cli_names_the_flag_of_the_key_at_fault(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--rhythm-seed", "-3"])
    err = capsys.readouterr().err
    assert "error: --rhythm-seed: algorithm.rhythm.seed=-3" in err
