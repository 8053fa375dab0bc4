# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Prompt sources of ``verl-rhythm analyze``: bundled problems, prompt files, the chat template, token pieces."""

import json

import pytest
from test_analyze_e2e_on_cpu import EOS, tiny_tokenizer

from verl_rhythm.analyze.generate import token_pieces
from verl_rhythm.analyze.prompts import bundled_problems, chat_prompt, problems_from_file, problems_from_strings


def test_bundled_problems_ship_with_answers_and_the_gsm8k_instruction():
    problems = bundled_problems()
    assert len(problems) >= 5
    assert len({p.id for p in problems}) == len(problems)
    for p in problems:
        assert p.text.endswith('Let\'s think step by step and output the final answer after "####".')
        assert p.answer is not None and p.answer.strip().lstrip("-").replace(".", "").isdigit()


@pytest.mark.parametrize(
    "name,content",
    [
        ("p.json", json.dumps(["What is 2 + 2?", "Name a prime."])),
        ("p.json", json.dumps([{"question": "What is 2 + 2?", "answer": 4, "id": "add"}, {"prompt": "Name a prime."}])),
        ("p.json", json.dumps({"problems": [{"question": "What is 2 + 2?"}, "Name a prime."]})),
        ("p.jsonl", '{"question": "What is 2 + 2?", "answer": "4"}\n\n"Name a prime."\n'),
        ("p.txt", "What is 2 + 2?\n\n  Name a prime.  \n"),
    ],
)
def test_prompt_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    problems = problems_from_file(path)
    assert [p.text for p in problems] == ["What is 2 + 2?", "Name a prime."]
    if '"answer"' in content:
        assert problems[0].answer == "4"


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("p.json", json.dumps([{"text": "no question key"}]), "entry 0: has no non-empty 'question' or 'prompt'"),
        ("p.json", json.dumps({"items": []}), "expected a JSON list"),
        ("p.txt", "\n\n", "no prompt found"),
    ],
)
def test_bad_prompt_files_say_what_is_wrong(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        problems_from_file(path)


def test_chatml_is_used_when_the_tokenizer_has_no_template():
    tok = tiny_tokenizer()
    assert not getattr(tok, "chat_template", None)
    ids = chat_prompt(tok, "Hi there")
    assert tok.decode(ids) == f"<|im_start|>user\nHi there{EOS}\n<|im_start|>assistant\n"
    assert tok.decode(chat_prompt(tok, "Hi there", use_chat_template=False)) == "Hi there"
    assert problems_from_strings(["a", "b"])[1].id == "prompt-1"


def test_token_pieces_join_to_the_decoded_text():
    tok = tiny_tokenizer()
    ids = tok("Tom has 3 apples.\nSo 3 + 5 = 8")["input_ids"] + [tok.convert_tokens_to_ids(EOS)]
    pieces = token_pieces(tok, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=False)
    assert pieces[-1] == EOS
