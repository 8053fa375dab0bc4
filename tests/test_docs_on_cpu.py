# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""docs/rhythm.md stays true to the code: the configuration table is RhythmConfig (keys and defaults), every recipe,
launch script and ``python -m`` module it names exists, and the README's table of contents links it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from verl_rhythm.config import RhythmConfig

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "rhythm.md"
TEXT = PAGE.read_text(encoding="utf-8")
TABLE_ROW = re.compile(r"^\| `algorithm\.rhythm\.(\w+)` \| `([^`]*)` \| (.+) \|$", re.MULTILINE)


def test_config_table_lists_exactly_the_rhythm_config_fields_with_their_defaults():
    rows = TABLE_ROW.findall(TEXT)
    documented = [key for key, _, _ in rows]
    fields = [f.name for f in RhythmConfig.fields()]
    assert len(documented) == len(set(documented)), "a key is documented twice"
    assert set(documented) - set(fields) == set(), "documented keys that RhythmConfig does not have"
    assert set(fields) - set(documented) == set(), "RhythmConfig fields missing from docs/rhythm.md"
    defaults = RhythmConfig()
    for key, default, meaning in rows:
        assert yaml.safe_load(default) == getattr(defaults, key), f"algorithm.rhythm.{key}: default {default}"
        assert meaning.strip(), key


def test_page_has_the_shape_of_verls_algorithm_pages():
    lines = TEXT.splitlines()
    assert lines[0].startswith("# ")
    assert re.fullmatch(r"Last updated: \d{2}/\d{2}/\d{4}\.", lines[2])
    assert "https://arxiv.org/abs/2510.13554" in TEXT
    headings = re.findall(r"^## (.+)$", TEXT, re.MULTILINE)
    for section in ("Key Components", "Configuration", "Recipes", "Reproducing the Paper's Table", "Overhead"):
        assert section in headings
    assert "Supported and Unsupported" in headings and "Upstreaming Note" in headings


def test_every_recipe_and_launch_script_is_documented_and_every_documented_one_exists():
    recipes = {p.stem for p in (ROOT / "recipes").glob("*.yaml")}
    scripts = {p.name for p in (ROOT / "recipes").glob("run_*.sh")}
    named_recipes = set(re.findall(r"`(rhythm_[a-z0-9_]+)`", TEXT)) | set(re.findall(r"--config-name (\w+)", TEXT))
    named_scripts = set(re.findall(r"(run_rhythm_\w+\.sh)", TEXT))
    assert named_recipes == recipes
    assert named_scripts == scripts


def test_every_python_module_the_page_runs_exists():
    modules = set(re.findall(r"python -m ([\w.]+)", TEXT))
    assert {"verl.trainer.main_ppo", "verl_rhythm.data.countdown", "verl_rhythm.data.prepare_math"} <= modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_readme_table_of_contents_links_the_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/rhythm.md)" in readme


def test_every_doc_page_carries_last_updated_in_one_format():
    for page in sorted((ROOT / "docs").glob("*.md")):
        stamps = re.findall(r"^Last updated: (.+)$", page.read_text(encoding="utf-8"), re.MULTILINE)
        assert len(stamps) == 1, f"{page.name}: expected one 'Last updated' line, found {len(stamps)}"
        assert re.fullmatch(r"\d{2}/\d{2}/\d{4}\.", stamps[0]), (
            f"{page.name}: 'Last updated: {stamps[0]}' (MM/DD/YYYY.)"
        )


def test_every_source_file_carries_the_license_header():
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "*.py", "*.sh", ".ci/run"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert files
    missing = [f for f in files if "SPDX-License-Identifier: Apache-2.0" not in (ROOT / f).read_text()[:300]]
    assert not missing, f"no Apache-2.0 header: {missing}"
    assert "Apache License" in (ROOT / "LICENSE").read_text()
