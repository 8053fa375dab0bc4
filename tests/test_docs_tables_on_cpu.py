# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The docs' tables of strategies and knobs are the registry and ``RhythmConfig``: names, order, needs, defaults."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from verl_rhythm.config import BOTTOM_SCORES, RhythmConfig
from verl_rhythm.credit import strategies

ROOT = Path(__file__).resolve().parents[1]
RHYTHM = (ROOT / "docs" / "rhythm.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
STRATEGY_ROW = re.compile(r"^\| `(\w+)` \| (\w+) \| ([^|]+) \| ([^|]+) \|$", re.MULTILINE)
README_ROW = re.compile(r"^\| `(\w+)` \| `([^`]*)` \| ([^|]+) \| ([^|]+) \|$", re.MULTILINE)


def test_the_strategy_table_is_the_registry():
    rows = STRATEGY_ROW.findall(RHYTHM.split("### Strategies", 1)[1].split("\n## ", 1)[0])
    known = strategies()
    assert [name for name, *_ in rows] == list(known), "strategies missing, extra or out of registration order"
    for name, kind, needs, summary in rows:
        spec = known[name]
        assert kind == spec.kind, name
        assert summary.strip() == spec.summary, name
        if callable(spec.needs):  # needs that depend on a knob: every statistic it can pick is named
            stats = {s for b in BOTTOM_SCORES for s in spec.needs_for(RhythmConfig(bottom_score=b))}
            assert set(re.findall(r"`(\w+)`", needs)) >= stats, name
        else:
            assert needs.strip() == (", ".join(f"`{s}`" for s in spec.needs) or "—"), name


def test_every_strategy_row_of_the_config_tables_names_every_registered_strategy():
    for text, row in ((RHYTHM, r"^\| `algorithm\.rhythm\.strategy` \|(.+)$"), (README, r"^\| `strategy` \|(.+)$")):
        line = re.search(row, text, re.MULTILINE).group(1)
        assert set(re.findall(r"`(\w+)`", line)) >= set(strategies()), line


def test_the_readme_config_table_is_rhythm_config():
    section = README.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = README_ROW.findall(section)
    assert [key for key, *_ in rows] == [f.name for f in RhythmConfig.fields()]
    defaults = RhythmConfig()
    for key, default, meaning, paper in rows:
        assert yaml.safe_load(default) == getattr(defaults, key), f"README: {key} default {default}"
        assert meaning.strip() and paper.strip(), key
