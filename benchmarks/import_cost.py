# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""What the installed plugins cost a process that imports verl and never trains.

Runs ``import verl`` in fresh interpreters, alternating three settings of ``VERL_USE_EXTERNAL_PLUGINS``:
``none`` (verl skips plugin discovery), a name no plugin has (verl scans the ``verl.plugins`` entry points and loads
none: the baseline that isolates what loading the plugins costs) and the default (every installed plugin,
verl-rhythm's included). Prints the median wall time of each, the ratios, the module counts and the modules the
plugins add.

Usage: python benchmarks/import_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PROBE = (
    "import sys, time; t = time.perf_counter(); import verl; dt = time.perf_counter() - t; "
    "import json; print(json.dumps({'seconds': dt, 'modules': sorted(sys.modules)}))"
)


def run(plugins: str) -> dict:
    env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS="no-plugin-has-this-name" if plugins == "scan-only" else plugins)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (``tests/test_docs_commands_on_cpu.py`` parses the documented commands)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run("none")  # warm the file cache
    samples = {"none": [], "scan-only": [], "auto": []}
    for _ in range(args.repeats):
        for mode in samples:
            samples[mode].append(run(mode))
    med = {m: statistics.median(s["seconds"] for s in runs) for m, runs in samples.items()}
    mods = {m: set(runs[-1]["modules"]) for m, runs in samples.items()}
    added = sorted(mods["auto"] - mods["scan-only"])
    print(f"import verl, median of {args.repeats} fresh interpreters")
    print(f"  plugins off (no discovery):     {med['none']:.2f} s, {len(mods['none'])} modules")
    print(f"  entry points scanned, none run: {med['scan-only']:.2f} s, {len(mods['scan-only'])} modules")
    print(f"  with the plugins:               {med['auto']:.2f} s, {len(mods['auto'])} modules")
    print(f"  ratio plugins / scanned-only: {med['auto'] / med['scan-only']:.3f}  (+{len(added)} modules)")
    print(f"  ratio plugins / plugins off:  {med['auto'] / med['none']:.3f}")
    print("  modules the plugins add:", ", ".join(added))


if __name__ == "__main__":
    main()
