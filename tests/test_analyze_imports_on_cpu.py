# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``verl-rhythm analyze`` never imports verl: a full run in a fresh interpreter leaves no ``verl`` module loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from test_analyze_e2e_on_cpu import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import json, sys
    from verl_rhythm.cli import main
    code = main(sys.argv[1:])
    verl = sorted(m for m in sys.modules if m == "verl" or m.startswith("verl."))
    print(json.dumps({"code": code, "verl": verl, "rhythm": "verl_rhythm.credit.rhythm" in sys.modules}))
    """
)


def test_analyze_runs_end_to_end_without_importing_verl(tmp_path):
    model_dir = tiny_checkpoint(tmp_path / "model")
    argv = ["analyze", "--model", str(model_dir), "--out", str(tmp_path / "out"), "--quiet", "--threads", "1"]
    argv += ["--max-new-tokens", "8", "--prompt", "What is 2 + 3?", "--device", "cpu", "--strategy", "random"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and result["rhythm"]  # it did compute credit with the estimator's function
    assert result["verl"] == [], f"analyze imported verl: {result['verl'][:10]}"
    assert (tmp_path / "out" / "summary.json").is_file()
