# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Math data for the recipes: DAPO-Math-17K and the five eval sets from local files (no hub in tests), scored by
verl 0.9.1's own scorers through the recipes' reward function."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from verl_rhythm.data import prepare_math, reward
from verl_rhythm.data.prepare_math import DAPO_TEMPLATE


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_rows_put_problems_in_dapos_template_and_verl_scores_them(tmp_path):
    rows = prepare_math.eval_rows(
        [
            {"id": 0, "problem": "Find x if 2x = 408.", "answer": "204"},
            {"problem": "Compute 1/2 + 1/4.", "answer": 0.75},
        ],
        "aime24",
    )
    assert rows[0]["data_source"] == "aime24"
    assert rows[0]["prompt"] == [{"role": "user", "content": DAPO_TEMPLATE.format(problem="Find x if 2x = 408.")}]
    assert rows[0]["reward_model"] == {"style": "rule", "ground_truth": "204"}
    assert rows[1]["reward_model"]["ground_truth"] == "0.75"
    truth = rows[0]["reward_model"]["ground_truth"]
    # verl's math_dapo scorer: the "Answer:" line (+1 / -1), with a \boxed{} fallback
    assert reward.compute_score("aime24", "2x = 408, so x = 204.\nAnswer: 204", truth)["score"] == 1.0
    assert reward.compute_score("aime24", "so x = 240.\nAnswer: 240", truth)["score"] == -1.0
    assert reward.compute_score("aime24", "so x is \\boxed{204}", truth)["acc"] is True


def test_answers_are_cleaned_from_lists_dollars_and_boxed_solutions():
    olympiad = prepare_math.eval_rows([{"question": "Q?", "final_answer": ["$\\frac{1}{2}$"]}], "olympiadbench")
    assert olympiad[0]["reward_model"]["ground_truth"] == "\\frac{1}{2}"
    assert reward.compute_score("olympiadbench", "Answer: \\frac{1}{2}", "\\frac{1}{2}")["acc"] is True
    math = prepare_math.eval_rows([{"problem": "Q?", "solution": "so it is $\\boxed{\\frac{14}{3}}$."}], "math500")
    assert math[0]["reward_model"]["ground_truth"] == "\\frac{14}{3}"
    multi = prepare_math.eval_rows([{"question": "Q?", "answer": ["2", "$3$"]}], "amc23")
    assert multi[0]["reward_model"]["ground_truth"] == "2, 3"
    amc = prepare_math.eval_rows([{"question": "Q?", "answer": 27.0}, {"question": "Q?", "answer": 0.5}], "amc23")
    assert [r["reward_model"]["ground_truth"] for r in amc] == ["27", "0.5"]  # a float column: 27.0 means 27
    assert reward.compute_score("amc23", "Answer: 27", "27")["acc"] is True


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"no question column .* the rows have \['answer', 'text'\]"):
        prepare_math.eval_rows([{"text": "Q?", "answer": "1"}], "amc23")
    with pytest.raises(ValueError, match="no answer column"):
        prepare_math.eval_rows([{"problem": "Q?"}], "amc23")


def test_dapo_train_rows_drop_duplicate_prompts_and_keep_verl_format():
    def row(problem, answer, index):
        return {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": DAPO_TEMPLATE.format(problem=problem)}],
            "ability": "MATH",
            "reward_model": {"style": "rule-lighteval/MATH_v2", "ground_truth": answer},
            "extra_info": {"index": index},
        }

    records = [row("A", "1", "a"), row("B", "2", "b"), row("A", "1", "c"), row("C", "3", "d"), row("B", "2", "e")]
    rows, dropped = prepare_math.train_rows(records)
    assert dropped == 2
    assert [r["extra_info"]["index"] for r in rows] == ["a", "b", "d"]
    assert rows[0] == records[0]
    raw, dropped = prepare_math.train_rows([{"prompt": "What is 1+1?", "solution": "2"}] * 3)
    assert dropped == 2 and raw[0]["data_source"] == "math_dapo"
    assert raw[0]["prompt"][0]["content"] == DAPO_TEMPLATE.format(problem="What is 1+1?")
    assert raw[0]["extra_info"]["split"] == "train"


def test_cli_writes_every_set_from_local_files(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    train = [
        {
            "data_source": "math_dapo",
            "prompt": [{"role": "user", "content": DAPO_TEMPLATE.format(problem=p)}],
            "ability": "MATH",
            "reward_model": {"style": "rule", "ground_truth": a},
            "extra_info": {"index": str(i)},
        }
        for i, (p, a) in enumerate([("P1", "1"), ("P2", "2"), ("P1", "1")])
    ]
    pq.write_table(pa.Table.from_pylist(train), src / "dapo.parquet")
    (src / "aime25.json").write_text(json.dumps([{"problem": "Q1", "answer": "7"}]), encoding="utf-8")
    sources = {
        "aime24": write_jsonl(
            src / "aime24.jsonl", [{"problem": "Q1", "answer": "204"}, {"problem": "Q2", "answer": "5"}]
        ),
        "aime25": src / "aime25.json",
        "amc23": write_jsonl(src / "amc23.jsonl", [{"question": "Q1", "answer": 27.0}]),
        "math500": write_jsonl(src / "math500.jsonl", [{"problem": "Q1", "answer": "\\frac{14}{3}", "level": 3}]),
        "olympiadbench": write_jsonl(src / "ob.jsonl", [{"question": "Q1", "final_answer": ["$3$"]}]),
    }
    out = tmp_path / "out"
    argv = ["--out", str(out), "--train", str(src / "dapo.parquet")]
    argv += [arg for name, path in sources.items() for arg in ("--eval", f"{name}={path}")]
    prepare_math.main(argv)
    assert "1 duplicate rows dropped" in capsys.readouterr().out
    written = {p.name: pq.read_table(p).to_pylist() for p in out.iterdir()}
    assert sorted(written) == sorted([prepare_math.TRAIN_FILE] + [f"{name}.parquet" for name in sources])
    assert len(written[prepare_math.TRAIN_FILE]) == 2
    assert [r["reward_model"]["ground_truth"] for r in written["aime24.parquet"]] == ["204", "5"]
    assert written["olympiadbench.parquet"][0]["reward_model"]["ground_truth"] == "3"
    assert written["amc23.parquet"][0]["reward_model"]["ground_truth"] == "27"
    for name in sources:
        assert {r["data_source"] for r in written[f"{name}.parquet"]} == {name}


def test_cli_reports_bad_arguments_and_missing_files(tmp_path):
    with pytest.raises(SystemExit):
        prepare_math.main(["--out", str(tmp_path), "--sets", "aime24,gpqa"])
    with pytest.raises(SystemExit):
        prepare_math.main(["--out", str(tmp_path), "--eval", "gpqa=/x.jsonl"])
    with pytest.raises(SystemExit) as err:
        prepare_math.main(["--out", str(tmp_path), "--sets", "aime24", "--eval", f"aime24={tmp_path}/absent.jsonl"])
    assert err.value.code == 2


def test_reward_routes_countdown_math_sets_and_hands_the_rest_to_verl():
    countdown_truth = {"target": 24, "numbers": [3, 3, 8, 8]}
    assert reward.compute_score("countdown", "<answer>8 / (3 - 8 / 3)</answer>", countdown_truth) == {
        "score": 1.0,
        "acc": True,
    }
    # every eval set name goes to verl's math_dapo scorer, which returns score/acc/pred
    for name in reward.MATH_EVAL_SOURCES:
        assert reward.compute_score(name, "Answer: 42", "42") == {"score": 1.0, "acc": True, "pred": "42"}
    # other sources: verl's default_compute_score (GSM8K's "####" format; DAPO-Math-17K's math_dapo)
    assert reward.compute_score("openai/gsm8k", "so 6 * 7 = 42.\n#### 42", "42") == 1.0
    assert reward.compute_score("openai/gsm8k", "#### 41", "42") == 0.0
    assert reward.compute_score("math_dapo", "Answer: 12", "12")["score"] == 1.0
    with pytest.raises(NotImplementedError, match="not_a_source"):
        reward.compute_score("not_a_source", "Answer: 1", "1")


def test_a_hub_id_without_hub_access_fails_with_advice_and_downloads_nothing(tmp_path):
    """Hub ids are the only non-local sources; in offline mode (as on a machine without the hub) the error says what
    to do instead. A subprocess, because ``datasets`` reads the offline switch at import."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    argv = ["--out", str(tmp_path / "out"), "--sets", "aime25"]
    code = f"from verl_rhythm.data.prepare_math import main; main({argv!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "could not load 'math-ai/aime25'" in proc.stderr and "pass the local file" in proc.stderr
    assert not (tmp_path / "out").exists()
