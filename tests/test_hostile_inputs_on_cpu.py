# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Hostile inputs to the command-line tools, tried the way a new user would.

Every case asserts the exit status (2, as argparse), that the error is one line naming the culprit (flag, file and
line, prompt or row) without a traceback, and that no partial or stale output remains. ``verl-rhythm analyze`` runs
on the tiny random Llama and character tokenizer of ``test_analyze_e2e_on_cpu`` saved to a tmp folder, so each full run
takes seconds; the checks that must come before loading or generating replace the loader or the generator with one
that fails the test if it is reached.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_analyze_e2e_on_cpu import tiny_checkpoint, tiny_tokenizer

from verl_rhythm.analyze import pipeline
from verl_rhythm.analyze.output import finite_json
from verl_rhythm.analyze.prompts import problems_from_file
from verl_rhythm.cli import main as rhythm_main
from verl_rhythm.data import countdown, prepare_math

ANALYZE = ["analyze", "--quiet", "--threads", "1", "--max-new-tokens", "6"]


def one_line_error(capsys, run, argv, *culprits: str) -> str:
    """Run ``run(argv)``, expect exit status 2 and exactly one error line on stderr naming every culprit."""
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    for culprit in culprits:
        assert culprit in lines[0], lines[0]
    return lines[0]


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("hostile") / "model")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the weights are loaded or a token generated."""

    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded or run before the input check")

    monkeypatch.setattr(pipeline, "_weights", boom)
    monkeypatch.setattr(pipeline, "generate", boom)


def analyze(model_dir, out, *extra):
    return [*ANALYZE, "--model", str(model_dir), "--out", str(out), *extra]


# ------------------------------------------------------------------------------------------------ --model


def test_a_missing_model_path_fails_fast_without_the_network(capsys, tmp_path, monkeypatch, no_loading):
    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for model in (str(tmp_path / "absent"), "no-such-org/no-such-model"):
        one_line_error(capsys, rhythm_main, analyze(model, tmp_path / "out"), f"--model {model}", "no such folder")
    assert not (tmp_path / "out").exists()


def test_a_model_folder_without_tokenizer_or_config_is_named(capsys, tmp_path, model_dir, no_loading):
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((model_dir / name).read_bytes())
    one_line_error(capsys, rhythm_main, analyze(no_tokenizer, tmp_path / "out"), f"--model {no_tokenizer}", "tokenizer")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(capsys, rhythm_main, analyze(empty, tmp_path / "out"), f"--model {empty}", "config.json")
    assert not (tmp_path / "out").exists()


def test_an_encoder_or_encoder_decoder_model_is_refused(capsys, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, BertConfig, T5Config

    bert = tmp_path / "bert"
    cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(bert)  # BertLMHeadModel: bidirectional attention
    tiny_tokenizer().save_pretrained(bert)
    monkeypatch.setattr(pipeline, "generate", lambda *a, **k: pytest.fail("generated with an encoder"))
    one_line_error(capsys, rhythm_main, analyze(bert, tmp_path / "out", "--prompt", "hi"), f"--model {bert}", "BERT")
    assert not (tmp_path / "out").exists()
    t5 = tmp_path / "t5"
    T5Config(vocab_size=128, d_model=32, num_layers=1, num_heads=2, d_ff=64).save_pretrained(t5)
    one_line_error(capsys, rhythm_main, analyze(t5, tmp_path / "out"), f"--model {t5}", "encoder-decoder")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- --device, --out


def test_an_unavailable_device_is_refused_before_loading(capsys, tmp_path, model_dir, no_loading):
    bad = ["banana", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        one_line_error(capsys, rhythm_main, analyze(model_dir, tmp_path / "out", "--device", device), "--device")
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_or_not_writable_is_refused_before_generating(capsys, tmp_path, model_dir, no_loading):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me", encoding="utf-8")
    one_line_error(capsys, rhythm_main, analyze(model_dir, a_file), f"--out {a_file}", "is a file")
    one_line_error(capsys, rhythm_main, analyze(model_dir, a_file / "sub"), f"--out {a_file / 'sub'}", "not a folder")
    one_line_error(capsys, rhythm_main, analyze(model_dir, "/proc/verl_rhythm_test/out"), "--out /proc", "cannot")
    assert a_file.read_text(encoding="utf-8") == "keep me"


def test_an_out_folder_with_other_files_is_never_replaced(capsys, tmp_path, model_dir, no_loading):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work", encoding="utf-8")
    one_line_error(capsys, rhythm_main, analyze(model_dir, mine), f"--out {mine}", "thesis.tex")
    assert listing(mine) == {"thesis.tex": b"years of work"}


# ------------------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize(
    "name,content,culprit",
    [
        ("p.json", b'[{"question": "a"},\n {"question": "b",}]', "p.json:2:"),
        ("p.jsonl", b'{"question": "a"}\n\n{"question": }\n', "p.jsonl:3:"),  # the true line, blank lines count
        ("p.jsonl", b'{"question": "a"}\n{"question": "  "}\n', "p.jsonl:2"),
        ("p.json", b'["ok", ""]', "p.json: entry 1"),
        ("p.txt", "caf\u00e9\n".encode("latin-1"), "p.txt:1: not UTF-8"),
        ("p.json", b'{"problems": 3}', "p.json: expected a JSON list"),
        ("p.txt", b"\n  \n", "p.txt: no prompt found"),
    ],
)
def test_bad_prompt_files_name_the_file_and_line(capsys, tmp_path, model_dir, no_loading, name, content, culprit):
    path = tmp_path / name
    path.write_bytes(content)
    one_line_error(capsys, rhythm_main, analyze(model_dir, tmp_path / "out", "--prompts-file", str(path)), culprit)
    assert not (tmp_path / "out").exists()


def test_a_missing_prompts_file_is_named(capsys, tmp_path, model_dir, no_loading):
    path = tmp_path / "absent.jsonl"
    one_line_error(capsys, rhythm_main, analyze(model_dir, tmp_path / "out", "--prompts-file", str(path)), str(path))


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    for name, content in (("p.json", '["q1", {"question": "q2"}]'), ("p.jsonl", '"q1"\n{"question": "q2"}\n')):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
        assert [p.text for p in problems_from_file(path)] == ["q1", "q2"]


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_an_empty_prompt_is_refused(capsys, tmp_path, model_dir, no_loading, prompt):
    argv = analyze(model_dir, tmp_path / "out", "--prompt", "fine", "--prompt", prompt)
    one_line_error(capsys, rhythm_main, argv, "--prompt #2", "empty")


def test_a_prompt_longer_than_the_context_is_refused_before_generating(capsys, tmp_path, model_dir, no_loading):
    argv = analyze(model_dir, tmp_path / "out", "--prompt", "hi", "--max-new-tokens", "5000")
    line = one_line_error(capsys, rhythm_main, argv, "prompt 'prompt-0'", "--max-new-tokens 5000", "4096-token")
    assert "lower --max-new-tokens" in line
    argv = analyze(model_dir, tmp_path / "out", "--prompt", "x" * 4100)
    one_line_error(capsys, rhythm_main, argv, "prompt 'prompt-0'", "shorten the prompt")


# ------------------------------------------------------------------------------------------- values and flags


@pytest.mark.parametrize(
    "flags,culprit",
    [
        (["--sample", "--temperature", "nan"], "--temperature=nan"),
        (["--sample", "--temperature", "inf"], "--temperature=inf"),
        (["--temperature", "-1"], "--temperature=-1"),
        (["--top-p", "nan"], "--top-p=nan"),
        (["--seed", "-1"], "--seed=-1"),
        (["--seed", str(2**64)], "--seed="),
        (["--rhythm-seed", str(2**63)], "--rhythm-seed"),
        (["--gamma-amp", "1e39"], "--gamma-amp"),
        (["--gamma-amp", "nan"], "--gamma-amp"),
        (["--intro-window", str(10**6)], "--intro-window"),
        (["--limit", "0"], "--limit=0"),
        (["--threads", str(10**9)], "--threads="),
        (["--batch-size", "0"], "--batch-size=0"),
        (["--max-new-tokens", "0"], "--max-new-tokens=0"),
        (["--peak-top-q", "nan"], "--peak-top-q=nan"),
        (["--max-new-tokens", "many"], "--max-new-tokens"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_values_name_the_flag(capsys, tmp_path, model_dir, no_loading, flags, culprit):
    one_line_error(capsys, rhythm_main, analyze(model_dir, tmp_path / "out", *flags), culprit)
    assert not (tmp_path / "out").exists()


def test_an_unknown_attention_implementation_names_the_flag(capsys, tmp_path, model_dir, monkeypatch):
    monkeypatch.setattr(pipeline, "generate", lambda *a, **k: pytest.fail("generated"))
    argv = analyze(model_dir, tmp_path / "out", "--attn-implementation", "bogus")
    one_line_error(capsys, rhythm_main, argv, "--attn-implementation bogus")
    assert not (tmp_path / "out").exists()


def test_a_layer_outside_the_model_is_refused_before_loading(capsys, tmp_path, model_dir, no_loading):
    one_line_error(capsys, rhythm_main, analyze(model_dir, tmp_path / "out", "--layers", "2,99"), "--layers", "[99]")


# ---------------------------------------------------------------------------------------- output written whole


def test_a_rerun_leaves_no_stale_file_and_a_failed_run_leaves_the_previous_report(tmp_path, model_dir, monkeypatch):
    out = tmp_path / "report"
    assert rhythm_main(analyze(model_dir, out, "--prompt", "a", "--prompt", "b", "--prompt", "c")) == 0
    assert {"trace_00.png", "trace_01.png", "trace_02.png"} <= set(listing(out))
    assert rhythm_main(analyze(model_dir, out, "--prompt", "only one")) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert sorted(listing(out)) == sorted(summary["artefacts"])  # exactly this run's files: no trace_01, trace_02
    assert "trace_01.png" not in listing(out)
    before = listing(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the plots are drawn

    monkeypatch.setattr(pipeline.plots, "plot_heatmap", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rhythm_main(analyze(model_dir, out, "--prompt", "x", "--prompt", "y"))
    assert listing(out) == before  # the previous report, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging folder left behind


def test_summary_json_is_strict_json(tmp_path, model_dir):
    out = tmp_path / "report"
    assert rhythm_main(analyze(model_dir, out, "--prompt", "hi")) == 0

    def refuse(name):
        raise AssertionError(f"summary.json holds {name}")

    json.loads((out / "summary.json").read_text(encoding="utf-8"), parse_constant=refuse)
    nested = {"a": [1.0, float("nan"), {"b": (float("inf"), -float("inf"), 2)}], "c": "nan"}
    assert finite_json(nested) == {"a": [1.0, None, {"b": [None, None, 2]}], "c": "nan"}
    assert nested["a"][1] != nested["a"][1]  # the input is not modified


def spoil(monkeypatch, what: str):
    """Make the second response's ``what`` NaN on its first token (what an fp16 overflow produces)."""
    real_measure = pipeline.measure

    def overflowing(*args, **kwargs):
        measured, capture, seconds = real_measure(*args, **kwargs)
        m = measured[1]
        target = m.entropy if what == "entropy" else getattr(m.rhythm, what)[m.prompt_len :]
        target[0] = float("nan")
        return measured, capture, seconds

    monkeypatch.setattr(pipeline, "measure", overflowing)


@pytest.mark.parametrize("what,flags", [("waad", []), ("fai", []), ("entropy", ["--strategy", "entropy"])])
def test_a_non_finite_statistic_a_shown_gamma_reads_is_refused(capsys, tmp_path, model_dir, monkeypatch, what, flags):
    spoil(monkeypatch, what)
    argv = analyze(model_dir, tmp_path / "out", "--prompt", "a", "--prompt", "b", *flags)
    name = {"waad": "WAAD", "fai": "FAI", "entropy": "entropy"}[what]
    one_line_error(capsys, rhythm_main, argv, "prompt 'prompt-1'", name, "not finite", "--dtype float32")
    assert not (tmp_path / "out").exists()


def test_a_non_finite_statistic_no_shown_gamma_reads_does_not_raise(tmp_path, model_dir, monkeypatch):
    spoil(monkeypatch, "entropy")  # the default strategy (coupled) and the shown local/global never read entropy
    out = tmp_path / "out"
    assert rhythm_main(analyze(model_dir, out, "--prompt", "a", "--prompt", "b")) == 0
    text = (out / "summary.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["sequences"][1]["entropy"][0] is None


# ----------------------------------------------------------------------------------------------- countdown


@pytest.mark.parametrize(
    "flags,culprit",
    [
        (["--train-size", "0"], "--train-size=0"),
        (["--test-size", "-5"], "--test-size=-5"),
        (["--train-size", str(10**12)], "--train-size="),
        (["--num-numbers", "1000"], "--num-numbers=1000"),
        (["--num-numbers", "1"], "--num-numbers=1"),
        (["--min-number", "50", "--max-number", "10"], "--min-number=50"),
        (["--max-target", str(10**30)], "--max-target="),
        (["--num-numbers", "2", "--max-number", "3", "--min-target", "1", "--max-target", "2"], "at most 12 distinct"),
        (["--train-size", "many"], "--train-size"),
    ],
)
def test_countdown_sizes_are_checked_before_generating(capsys, tmp_path, monkeypatch, flags, culprit):
    monkeypatch.setattr(countdown, "make_splits", lambda *a, **k: pytest.fail("generated before the size check"))
    one_line_error(capsys, countdown.main, ["--out", str(tmp_path / "out"), *flags], culprit)
    assert not (tmp_path / "out").exists()


def test_countdown_out_that_is_a_file_is_refused(capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep", encoding="utf-8")
    one_line_error(capsys, countdown.main, ["--out", str(a_file), "--train-size", "3", "--test-size", "2"], "--out")
    assert a_file.read_text(encoding="utf-8") == "keep"


def test_countdown_shows_progress_on_long_generation(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(countdown, "PROGRESS_EVERY", 5)
    countdown.main(["--out", str(tmp_path), "--train-size", "12", "--test-size", "3"])
    err = capsys.readouterr().err
    assert "5/12 puzzles" in err and "10/12 puzzles" in err and "12/12 puzzles" in err and "3/3 puzzles" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.parquet", "train.parquet"]
    countdown.main(["--out", str(tmp_path), "--train-size", "12", "--test-size", "3", "--quiet"])
    assert "puzzles\n" not in capsys.readouterr().err.replace("-> ", "")


# ------------------------------------------------------------------------------------------------ prepare_math


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_prepare_math_validates_every_row_and_names_the_skipped_ones(capsys, tmp_path):
    rows = [
        {"problem": "Find x.", "answer": "4"},
        {"problem": None, "answer": "1"},
        {"problem": "", "answer": "1"},
        {"problem": ["a", "list"], "answer": "1"},
        {"problem": "Fine.", "answer": None},
        {"problem": "Fine too.", "answer": ""},
        {"problem": "Listed.", "answer": []},
        {"problem": "Listed with null.", "answer": ["1", None]},
        {"problem": "Two answers.", "answer": ["2", "$3$"]},
        {"problem": "Not a number.", "answer": float("nan")},
    ]
    src = tmp_path / "aime24.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    prepare_math.main(["--out", str(out), "--sets", "aime24", "--eval", f"aime24={src}"])
    err = capsys.readouterr().err
    assert "skipped 8 of 10 rows" in err
    for named in (
        "row 1 (problem is null, not a string)",
        "row 2 (problem is blank)",
        "row 3 (problem is a list, not a string)",
        "row 4 (answer is null)",
        "row 5 (answer is blank)",
    ):
        assert named in err
    assert "and 3 more" in err  # rows 6, 7 and 9
    written = pq.read_table(out / "aime24.parquet").to_pylist()
    assert [r["reward_model"]["ground_truth"] for r in written] == ["4", "2, 3"]
    assert [r["extra_info"]["index"] for r in written] == [0, 8]  # each row keeps its index in the source
    for row in written:
        assert row["reward_model"]["ground_truth"] not in ("None", "", "nan")


def test_prepare_math_refuses_a_set_with_no_usable_row_and_writes_nothing(capsys, tmp_path):
    train = [
        {
            "prompt": [{"role": "user", "content": "P"}],
            "reward_model": {"style": "rule", "ground_truth": "1"},
        }
    ]
    pq.write_table(pa.Table.from_pylist(train), tmp_path / "dapo.parquet")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "Q", "answer": None}, {"problem": None, "answer": "2"}])
    out = tmp_path / "out"
    argv = ["--out", str(out), "--train", str(tmp_path / "dapo.parquet"), "--sets", "train,amc23"]
    one_line_error(capsys, prepare_math.main, [*argv, "--eval", f"amc23={bad}"], str(bad), "none of the 2 rows")
    assert not out.exists()  # the good train set was not written either: every set is checked first


def test_prepare_math_checks_verl_format_rows_too(capsys, tmp_path):
    def row(content, truth):
        return {
            "prompt": [{"role": "user", "content": content}],
            "reward_model": {"style": "rule", "ground_truth": truth},
        }

    records = [row("A", "1"), row("B", None), row("", "3"), row("D", "  ")]
    kept, dropped = prepare_math.train_rows(records, "dapo")
    assert [r["prompt"][0]["content"] for r in kept] == ["A"] and dropped == 0
    err = capsys.readouterr().err
    assert "dapo: skipped 3 of 4 rows" in err and "row 1 (reward_model.ground_truth is null)" in err


@pytest.mark.parametrize(
    "name,content,culprit",
    [
        ("s.jsonl", b'{"problem": "Q", "answer": "1"}\n\n{"problem": "Q2", "answer": }\n', "s.jsonl:3:"),
        ("s.json", b'[{"problem": "Q", "answer": "1"},\n]', "s.json:2:"),
        ("s.jsonl", b'{"problem": "Q\xe9", "answer": "1"}\n', "s.jsonl:1: not UTF-8"),
        ("s.jsonl", b'{"problem": "Q", "answer": "1"}\n\n[1, 2]\n', "s.jsonl:3: 1 line(s) are not JSON objects"),
        (
            "s.json",
            b'[{"problem": "Q", "answer": "1"}, "text"]',
            "s.json: 1 row(s) are not JSON objects (first: row 1)",
        ),
        ("s.parquet", b"PAR1 not really", "s.parquet: not a readable parquet file"),
        ("s.csv", b"problem,answer\n", "unsupported file type '.csv'"),
    ],
)
def test_prepare_math_names_the_bad_file_and_line(capsys, tmp_path, name, content, culprit):
    src = tmp_path / name
    src.write_bytes(content)
    out = tmp_path / "out"
    one_line_error(
        capsys, prepare_math.main, ["--out", str(out), "--sets", "aime24", "--eval", f"aime24={src}"], culprit
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "flags,culprit",
    [
        (["--sets", ","], "--sets ','"),
        (["--sets", "aime24", "--eval", "aime24="], "['aime24=']"),
        (["--sets", "train", "--train", ""], "--train: empty source"),
        (["--sets", "gpqa"], "--sets: unknown ['gpqa']"),
        (["--bogus"], "--bogus"),
    ],
)
def test_prepare_math_refuses_a_run_that_would_write_nothing_or_read_the_wrong_thing(capsys, tmp_path, flags, culprit):
    one_line_error(capsys, prepare_math.main, ["--out", str(tmp_path / "out"), *flags], culprit)
    assert not (tmp_path / "out").exists()


def test_prepare_math_accepts_a_byte_order_mark(tmp_path):
    src = tmp_path / "s.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b'{"problem": "Q", "answer": "1"}\n')
    prepare_math.main(["--out", str(tmp_path / "out"), "--sets", "aime24", "--eval", f"aime24={src}"])
    assert pq.read_table(tmp_path / "out" / "aime24.parquet").to_pylist()[0]["reward_model"]["ground_truth"] == "1"


def test_prepare_math_out_that_is_a_file_is_refused_before_reading(capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep", encoding="utf-8")
    argv = ["--out", str(a_file), "--sets", "aime24", "--eval", f"aime24={tmp_path / 'absent.jsonl'}"]
    one_line_error(capsys, prepare_math.main, argv, f"--out {a_file}")
    assert a_file.read_text(encoding="utf-8") == "keep"
