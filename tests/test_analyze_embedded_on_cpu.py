# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The README's demo command, ``verl-rhythm analyze`` with no option, on the embedded SmolLM2-135M-Instruct.

Slow (about two minutes on 2 CPU cores; CI runs it): it goes through ``python -m verl_rhythm`` in a subprocess,
exactly as a user would, and checks the artefacts and the summary's shape on the real model.
"""

import json
import os
import subprocess
import sys

import pytest

from verl_rhythm.analyze.prompts import bundled_problems


@pytest.mark.slow
def test_default_command_on_the_embedded_model(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    res = subprocess.run(
        [sys.executable, "-m", "verl_rhythm", "analyze"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "rhythm_report"
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    for name in summary["artefacts"]:
        assert (out / name).stat().st_size > 1000, name
    # progress lines for both phases went to stderr
    assert "generate prompts" in res.stderr and "capture sequences" in res.stderr
    assert "report:" in res.stdout

    problems = bundled_problems()
    assert [s["id"] for s in summary["sequences"]] == [p.id for p in problems]
    assert summary["model"]["num_layers"] == 30 and summary["model"]["num_heads"] == 9
    assert summary["layers"] == [10, 12, 15, 18, 20]
    assert summary["config"]["strategy"] == "coupled" and summary["generation"]["do_sample"] is False
    heads = summary["heads"]
    assert len(heads["labels"]) == 5 * 9
    for s in summary["sequences"]:
        n = s["response_tokens"]
        assert 2 <= n <= 192
        assert s["response"].strip(), s["id"]  # the model wrote something
        assert len(s["local_heads"]) == len(s["global_heads"]) == int(0.3 * 45)
        assert all(0.0 <= w <= summary["config"]["waad_window"] for w in s["waad"])
        # coupled γ > 1 exactly on the anchors and the introductory tokens (alpha = 0.5 gives both a share)
        for g, anchor, intro in zip(s["gamma"]["coupled"], s["anchor"], s["intro"], strict=True):
            assert g >= 1.0 and (g > 1.0) == (anchor or intro > 0)
        assert s["counts"]["anchor"] == -(-4 * n // 10)  # ceil(0.4 n) anchors, the paper's q
    # the local group's heads attend nearer than the global group's, in every response
    for i in range(len(summary["sequences"])):
        spans, loc, glob = heads["span"][i], heads["local"][i], heads["global"][i]
        assert max(x for x, m in zip(spans, loc, strict=True) if m) < min(
            x for x, m in zip(spans, glob, strict=True) if m
        )
    c = summary["coupling"]
    assert c["waad_peaks"] > 0 and c["fai_peaks"] > 0 and c["entropy_ratio"] is not None
