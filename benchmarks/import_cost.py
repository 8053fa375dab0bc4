"""What the installed plugins cost a process that imports verl and never trains.

Runs ``import verl`` in fresh interpreters, alternating ``VERL_USE_EXTERNAL_PLUGINS=none`` (verl alone) and the
default (every installed ``verl.plugins`` entry point, verl-rhythm's included), and prints the median wall time of
each, their ratio, the module counts and the modules the plugins add.

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
    env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS=plugins)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run("none")  # warm the file cache
    samples = {"none": [], "auto": []}
    for _ in range(args.repeats):
        for mode in samples:
            samples[mode].append(run(mode))
    med = {m: statistics.median(s["seconds"] for s in runs) for m, runs in samples.items()}
    mods = {m: set(runs[-1]["modules"]) for m, runs in samples.items()}
    added = sorted(mods["auto"] - mods["none"])
    print(f"import verl, median of {args.repeats} fresh interpreters")
    print(f"  without plugins: {med['none']:.2f} s, {len(mods['none'])} modules")
    print(f"  with plugins:    {med['auto']:.2f} s, {len(mods['auto'])} modules")
    print(f"  ratio with/without: {med['auto'] / med['none']:.3f}  (+{len(added)} modules)")
    print("  modules the plugins add:", ", ".join(added))


if __name__ == "__main__":
    main()
