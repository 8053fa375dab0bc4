# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The Countdown reward on hostile responses: any string gets a score of the allowed set, quickly, without raising.

A policy can emit anything, and the reward runs inside the training step: a ``RecursionError`` or a quadratic scan
there stops or stalls the run. The answer parser is also checked against Python's own grammar (:mod:`ast`) on
short expressions, where that grammar is the reference for what an answer means.
"""

from __future__ import annotations

import ast
import time
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verl_rhythm.data.countdown import InvalidExpression, compute_score, evaluate, extract_answer

SCORES = {0.0, 0.1, 1.0}
TRUTH = {"target": 24, "numbers": [3, 3, 8, 8]}
SECONDS_PER_INPUT = 1.0
"""Per-input bound for responses of up to ~12k characters; the parser takes well under a millisecond for those."""

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

OPERATORS = "+-*/"
NON_ASCII_DIGITS = "٠١٢٣٤٥٦٧٨٩۳߃३৩๓೩᠓０１２３𝟑𝟛"  # Arabic-Indic, Devanagari, Thai, fullwidth, math digits...
ALPHABET = "0123456789 +-*/()\n\t" + NON_ASCII_DIGITS + "x.=_<>/answer"


def score_in_time(response: str) -> float:
    t0 = time.perf_counter()
    value = compute_score(response, TRUTH)
    elapsed = time.perf_counter() - t0
    assert value in SCORES, f"score {value!r} for {response[:80]!r}"
    assert elapsed < SECONDS_PER_INPUT, f"{elapsed:.2f}s for {len(response)} characters: {response[:80]!r}"
    return value


def wrap(body: str) -> str:
    return f"Let me think.</think>\n<answer>{body}</answer>"


# ------------------------------------------------------------------------------------------- hostile responses


@FUZZ
@given(st.text(max_size=12_000))
def test_any_unicode_string_gets_a_score(text):
    score_in_time(text)
    score_in_time(wrap(text))


@FUZZ
@given(st.text(alphabet=ALPHABET, max_size=2_000))
def test_strings_of_expression_characters_get_a_score(text):
    score_in_time(wrap(text))


@FUZZ
@given(st.text(alphabet=OPERATORS + " ", min_size=1, max_size=10_000), st.sampled_from(["1", "8", "(3)", ""]))
def test_operator_runs_get_a_score(run, tail):
    score_in_time(wrap(run + tail))
    score_in_time(wrap(tail + run))


@FUZZ
@given(st.integers(1, 6_000), st.sampled_from(["8 / (3 - 8 / 3)", "1", "", "+", "(3)*(3)"]), st.booleans())
def test_deep_nesting_gets_a_score(depth, inner, balanced):
    body = "(" * depth + inner + (")" * depth if balanced else ")" * (depth // 2))
    score_in_time(wrap(body))
    score_in_time(wrap("-(" * depth + inner + ")" * depth))


@FUZZ
@given(st.integers(1, 20_000), st.sampled_from(["*", "/", "+", "-"]))
def test_huge_numbers_get_a_score(digits, op):
    big = "9" * digits
    score_in_time(wrap(big))
    score_in_time(wrap(f"{big} {op} {big} {op} 8 / (3 - 8 / 3)"))
    score_in_time(wrap(f"{op}".join(["99999999999"] * (digits // 12 + 1))))


@FUZZ
@given(st.lists(st.sampled_from(["<answer>", "</answer>", "<answer", "answer>", "8 / (3 - 8 / 3)", " ", "x"]),
                max_size=3_000))  # fmt: skip
def test_tag_soups_get_a_score(parts):
    score_in_time("".join(parts))


def test_the_documented_hostile_responses():
    assert score_in_time(wrap("+" * 995 + "1")) == 0.1  # parses as +...+1 = 1: uses a number not given
    assert score_in_time("<answer>" * 5_000) == 0.0  # never closed: no answer
    assert score_in_time(wrap("(" * 999 + "8 / (3 - 8 / 3)" + ")" * 999)) == 0.1  # longer than the answer limit
    assert score_in_time(wrap("(" * 400 + "8 / (3 - 8 / 3)" + ")" * 400)) == 1.0  # deep but within the limit
    assert score_in_time(wrap("8 / (３ - 8 / 3)")) == 0.1  # a fullwidth digit is not a number
    assert score_in_time(wrap("8 / (٣ - 8 / ٣)")) == 0.1  # nor an Arabic-Indic one
    assert score_in_time(wrap("-" * 20_000)) == 0.1


# ------------------------------------------------------------------------------- the grammar is Python's


def python_reading(expression: str):
    """``(value, numbers)`` as Python's parser reads ``expression`` with only ints, ``+ - * /`` and unary signs;
    ``None`` when Python rejects it or it holds anything else (or divides by zero)."""
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError):
        return None
    used = []
    stack = [(tree.body, False)]
    out = []
    while stack:  # post-order walk, so this reference needs no recursion either
        node, visited = stack.pop()
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            out.append(Fraction(node.value))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            if visited:
                out.append(-out.pop() if isinstance(node.op, ast.USub) else out.pop())
            else:
                stack += [(node, True), (node.operand, False)]
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            if visited:
                right, left = out.pop(), out.pop()
                if isinstance(node.op, ast.Div) and right == 0:
                    return None
                ops = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__}
                out.append(left / right if isinstance(node.op, ast.Div) else ops[type(node.op)](left, right))
            else:
                stack += [(node, True), (node.right, False), (node.left, False)]
        else:
            return None
    return out[0], used


@settings(max_examples=2_000, deadline=None)
@given(st.text(alphabet="0123456789+-*/() ", min_size=1, max_size=16))
def test_the_parser_reads_answers_as_python_does(expression):
    expected = python_reading(expression.strip())
    try:
        got = evaluate(expression.strip())
    except InvalidExpression:
        got = None
    assert got == expected


def test_the_answer_is_the_last_tag_pair_as_tinyzero_reads_it():
    assert extract_answer("<answer> a <answer> b </answer>") == "a <answer> b"  # the first open tag pairs
    assert extract_answer("<answer>1</answer> <answer>2</answer> <answer>3") == "2"
    assert extract_answer("</answer><answer>") is None
    assert extract_answer(None) is None
