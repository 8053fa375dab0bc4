# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Countdown (TinyZero protocol): a deterministic, always-solvable puzzle generator, its prompt and its reward.

A puzzle gives ``num_numbers`` integers and a target; an answer is an arithmetic expression (``+ - * /`` and
parentheses) that uses every given number exactly once and equals the target. The protocol is TinyZero's
(github.com/Jiayi-Pan/TinyZero: ``examples/data_preprocess/countdown.py`` for the base-model prompt,
``verl/utils/reward_score/countdown.py`` for the reward): the answer goes in ``<answer> </answer>`` tags; a correct
equation scores 1.0, any other answer in the tags 0.1, no answer 0. The paper's setting (spec Sec. 5) is
4 numbers, 20k train / 512 test puzzles.

Where this module differs from TinyZero, on purpose:

- Puzzles are generated here, offline: each one by combining its numbers in a random order with random operations
  (positive integer intermediates, exact divisions), so every puzzle has a known solution. TinyZero reads
  ``Jiayi-Pan/Countdown-Tasks-3to4`` from the hub. Ranges: numbers 1..100 as in TinyZero's own generator, targets
  10..100 (Stream-of-Search, which built that set, starts targets at 10).
- An answer is parsed by a small iterative parser (integers, ``+ - * /``, unary signs, parentheses; nothing else;
  linear time, no recursion) and evaluated exactly with fractions, where TinyZero calls ``eval`` and compares floats
  to 1e-5.
- The answer is looked for in the whole response: verl 0.9.1's reward managers pass the decoded response only
  (``verl/experimental/reward_loop/reward_manager/naive.py``), where TinyZero split prompt+response at
  ``"Assistant:"``.

Write the data set with ``python -m verl_rhythm.data.countdown --out ~/data/countdown`` (no network needed).
"""

from __future__ import annotations

import json
import math
import operator
import random
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from verl_rhythm.data.parquet import write_parquet
from verl_rhythm.inputs import ArgumentParser, InputError, check_out_dir, exit_with

DATA_SOURCE = "countdown"

PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer.\n"
    "User: Using the numbers {numbers}, create an equation that equals {target}. You can use basic arithmetic "
    "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. "
    "And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.\n"
    "Assistant: Let me solve this step by step.\n<think>"
)
"""TinyZero's base-model template (``template_type='base'``); ``numbers`` renders as a Python list."""

VERDICTS = ("correct", "wrong_result", "wrong_numbers", "invalid", "no_answer")
"""What :func:`judge` says about a response, best first."""

MAX_ANSWER_CHARS = 1000
PROGRESS_EVERY = 10_000
_ALLOWED_CHARS = re.compile(r"[0-9+\-*/()\s]+", re.ASCII)  # no '.', letters or '_': no floats, hex, names, calls
_BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


@dataclass(frozen=True)
class Puzzle:
    """One Countdown puzzle.

    Attributes:
        numbers: the given numbers, in the order the prompt shows them.
        target: the number to reach.
        solution: one expression over ``numbers`` that equals ``target`` (the generator's witness).
    """

    numbers: tuple[int, ...]
    target: int
    solution: str

    @property
    def key(self) -> tuple[tuple[int, ...], int]:
        """Identity for de-duplication: the multiset of numbers and the target."""
        return tuple(sorted(self.numbers)), self.target


# ----------------------------------------------------------------------------------------------------- generation


def generate(
    count: int,
    seed: int = 0,
    *,
    num_numbers: int = 4,
    min_number: int = 1,
    max_number: int = 100,
    min_target: int = 10,
    max_target: int = 100,
    exclude: Iterable[tuple[tuple[int, ...], int]] = (),
    progress: Callable[[int, int], None] | None = None,
) -> list[Puzzle]:
    """``count`` distinct solvable puzzles, the same list for the same arguments.

    Args:
        count: number of puzzles.
        seed: seed of the ``random.Random`` stream.
        num_numbers: numbers per puzzle (TinyZero protocol of the paper: 4).
        min_number: smallest given number.
        max_number: largest given number.
        min_target: smallest target.
        max_target: largest target.
        exclude: puzzle keys (:attr:`Puzzle.key`) not to produce, e.g. the other split's.
        progress: called as ``progress(made, count)`` every :data:`PROGRESS_EVERY` puzzles and at the end.

    Raises:
        ValueError: a range is empty or no target in ``[min_target, max_target]`` turns up.
    """
    _check_ranges(count, num_numbers, min_number, max_number, min_target, max_target)
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[Puzzle] = []
    misses = 0
    while len(out) < count:
        puzzle = _random_puzzle(rng, num_numbers, min_number, max_number)
        if min_target <= puzzle.target <= max_target and puzzle.key not in seen:
            seen.add(puzzle.key)
            out.append(puzzle)
            misses = 0
            if progress is not None and (len(out) % PROGRESS_EVERY == 0 or len(out) == count):
                progress(len(out), count)
            continue
        misses += 1
        if misses > 20_000:
            raise ValueError(
                f"no new puzzle with a target in [{min_target}, {max_target}] after 20000 tries "
                f"({len(out)} of {count} made): widen the target range or lower the count"
            )
    return out


def make_splits(
    train_size: int = 20_000,
    test_size: int = 512,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **ranges: int,
) -> dict[str, list[Puzzle]]:
    """The paper's split: disjoint ``test`` and ``train`` puzzle lists (test drawn first, so it does not depend on
    ``train_size``). ``ranges`` and ``progress`` go to :func:`generate`."""
    test = generate(test_size, seed, progress=progress, **ranges)
    train = generate(train_size, seed + 1, exclude=[p.key for p in test], progress=progress, **ranges)
    return {"train": train, "test": test}


def _check_ranges(count, num_numbers, min_number, max_number, min_target, max_target) -> None:
    if count < 0:
        raise ValueError(f"count={count}: must be >= 0")
    if num_numbers < 2:
        raise ValueError(f"num_numbers={num_numbers}: a puzzle needs at least 2 numbers")
    if not 1 <= min_number <= max_number:
        raise ValueError(f"numbers range [{min_number}, {max_number}]: need 1 <= min_number <= max_number")
    if not 1 <= min_target <= max_target:
        raise ValueError(f"target range [{min_target}, {max_target}]: need 1 <= min_target <= max_target")


def _random_puzzle(rng: random.Random, num_numbers: int, min_number: int, max_number: int) -> Puzzle:
    """Draw numbers, then merge random pairs with random valid operations until one value is left: the target."""
    numbers = tuple(rng.randint(min_number, max_number) for _ in range(num_numbers))
    items = [(n, str(n)) for n in numbers]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        merged = rng.choice(_merges(items[i], items[j]))
        items = [item for k, item in enumerate(items) if k not in (i, j)] + [merged]
    target, expr = items[0]
    if expr.startswith("(") and expr.endswith(")"):
        expr = expr[1:-1]  # every merge wraps its result, so the outermost pair always belongs together
    return Puzzle(numbers=numbers, target=target, solution=expr)


def _merges(x: tuple[int, str], y: tuple[int, str]) -> list[tuple[int, str]]:
    """Every way to combine two positive integers into a positive integer, with the expression that does it."""
    (a, ea), (b, eb) = x, y
    out = [(a + b, f"({ea} + {eb})"), (a * b, f"({ea} * {eb})")]
    if a > b:
        out.append((a - b, f"({ea} - {eb})"))
    if b > a:
        out.append((b - a, f"({eb} - {ea})"))
    if a % b == 0:
        out.append((a // b, f"({ea} / {eb})"))
    if b % a == 0 and a != b:
        out.append((b // a, f"({eb} / {ea})"))
    return out


# ----------------------------------------------------------------------------------------------------- reward


class InvalidExpression(ValueError):
    """An answer that is not an arithmetic expression over integers with ``+ - * /`` and parentheses."""


_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_NUMBER = re.compile(r"[0-9]+", re.ASCII)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "u+": 3, "u-": 3}


def extract_answer(response: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` in ``response``, stripped; ``None`` if there is none.

    The pairs are those of ``re.findall(r"<answer>(.*?)</answer>", response, re.DOTALL)`` (TinyZero's reading:
    each opening tag is closed by the first closing tag after it), found with forward ``str.find`` calls that never
    revisit a character: linear time on any string, where the lazy regex is quadratic on a run of unclosed tags.
    """
    if not isinstance(response, str):
        return None
    last, pos = None, 0
    while True:
        start = response.find(_ANSWER_OPEN, pos)
        if start < 0:
            break
        end = response.find(_ANSWER_CLOSE, start + len(_ANSWER_OPEN))
        if end < 0:
            break  # no closing tag after this opening one, hence none after any later one either
        last, pos = (start + len(_ANSWER_OPEN), end), end + len(_ANSWER_CLOSE)
    return None if last is None else response[last[0] : last[1]].strip()


def evaluate(expression: str) -> tuple[Fraction, list[int]]:
    """Exact value of ``expression`` and the integer literals it uses, in order.

    The grammar is Python's for these operators (unary ``+``/``-`` bind tighter than ``* /``, which bind tighter
    than binary ``+ -``; all left-associative; decimal literals without leading zeros), read by an iterative
    operator-precedence parser: linear time in the length and no recursion, so a run of operators or deeply nested
    parentheses is just an invalid (or valid) answer, never a ``RecursionError``. ASCII whitespace, newlines
    included, separates tokens.

    Raises:
        InvalidExpression: disallowed characters or syntax, too long, or a division by zero.
    """
    if len(expression) > MAX_ANSWER_CHARS:
        raise InvalidExpression(f"answer longer than {MAX_ANSWER_CHARS} characters")
    if not _ALLOWED_CHARS.fullmatch(expression):
        raise InvalidExpression("only digits, + - * /, parentheses and spaces are allowed")
    used: list[int] = []
    values: list[Fraction] = []
    ops: list[str] = []
    expect_operand = True
    i, n = 0, len(expression)
    while i < n:
        ch = expression[i]
        if ch.isspace():
            i += 1
            continue
        if "0" <= ch <= "9":
            digits = _NUMBER.match(expression, i).group()
            if not expect_operand:
                raise InvalidExpression("two numbers in a row")
            if len(digits) > 1 and digits[0] == "0" and digits.strip("0"):
                raise InvalidExpression(f"leading zeros in {digits!r}")
            used.append(int(digits))
            values.append(Fraction(used[-1]))
            expect_operand, i = False, i + len(digits)
            continue
        i += 1
        if ch == "(":
            if not expect_operand:
                raise InvalidExpression("'(' after an operand")
            ops.append(ch)
        elif ch == ")":
            if expect_operand:
                raise InvalidExpression("')' where an operand is expected")
            while ops and ops[-1] != "(":
                _apply(ops.pop(), values)
            if not ops:
                raise InvalidExpression("unbalanced ')'")
            ops.pop()
        elif expect_operand:
            if ch not in "+-":
                raise InvalidExpression(f"{ch!r} where an operand is expected")
            ops.append("u" + ch)  # prefix operator: binds to what follows, pops nothing
        else:
            while ops and ops[-1] != "(" and _PRECEDENCE[ops[-1]] >= _PRECEDENCE[ch]:
                _apply(ops.pop(), values)
            ops.append(ch)
            expect_operand = True
    if expect_operand:
        raise InvalidExpression("the expression ends where an operand is expected")
    while ops:
        op = ops.pop()
        if op == "(":
            raise InvalidExpression("unbalanced '('")
        _apply(op, values)
    return values[0], used


def _apply(op: str, values: list[Fraction]) -> None:
    """Pop the operand(s) of ``op`` from ``values`` and push the result."""
    if op == "u-":
        values[-1] = -values[-1]
    elif op == "u+":
        pass
    else:
        right = values.pop()
        left = values.pop()
        if op == "/" and right == 0:
            raise InvalidExpression("division by zero")
        values.append(_BINOPS[op](left, right))


def judge(response: str, numbers: Iterable[int], target: int) -> str:
    """One of :data:`VERDICTS` for a response to the puzzle ``(numbers, target)``.

    ``wrong_numbers``: the answer parses but does not use each given number exactly once (a number reused, one left
    out, or one not given). ``invalid``: the answer does not parse or divides by zero.
    """
    answer = extract_answer(response)
    if answer is None:
        return "no_answer"
    try:
        value, used = evaluate(answer)
    except InvalidExpression:
        return "invalid"
    if sorted(used) != sorted(int(n) for n in numbers):
        return "wrong_numbers"
    return "correct" if value == target else "wrong_result"


def compute_score(solution_str: str, ground_truth: Any, format_score: float = 0.1, score: float = 1.0) -> float:
    """TinyZero's Countdown reward: ``score`` if correct, ``format_score`` for any other answer, 0 without one.

    Args:
        solution_str: the decoded response.
        ground_truth: ``{"target": int, "numbers": [int, ...]}`` as stored in the parquet's
            ``reward_model.ground_truth`` (lists may arrive as numpy arrays), or that mapping as a JSON string.
        format_score: reward of a well-formed answer that is wrong.
        score: reward of a correct answer.
    """
    numbers, target = parse_ground_truth(ground_truth)
    verdict = judge(solution_str, numbers, target)
    if verdict == "correct":
        return float(score)
    return 0.0 if verdict == "no_answer" else float(format_score)


def parse_ground_truth(ground_truth: Any) -> tuple[list[int], int]:
    """``(numbers, target)`` from a Countdown ground truth; ValueError naming what is missing."""
    if isinstance(ground_truth, str):
        ground_truth = json.loads(ground_truth)
    if not isinstance(ground_truth, Mapping) or "target" not in ground_truth or "numbers" not in ground_truth:
        raise ValueError(
            f"countdown reward_model.ground_truth must be a mapping with 'target' and 'numbers', got {ground_truth!r}"
        )
    return [int(n) for n in ground_truth["numbers"]], int(ground_truth["target"])


# ----------------------------------------------------------------------------------------------------- verl rows


def to_row(puzzle: Puzzle, split: str, index: int) -> dict[str, Any]:
    """One row of verl's RL parquet format (the fields ``verl/utils/dataset/rl_dataset.py:RLHFDataset`` and the
    reward managers read)."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": PROMPT.format(numbers=list(puzzle.numbers), target=puzzle.target)}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": {"target": puzzle.target, "numbers": list(puzzle.numbers)}},
        "extra_info": {"split": split, "index": index, "solution": puzzle.solution},
    }


MAX_PUZZLES = 10_000_000
"""Largest ``--train-size + --test-size``: the rows are built in memory (about 1 KB each)."""
MAX_NUM_NUMBERS = 16
MAX_VALUE = 10**9
"""Largest number and target: the parquet stores them as int64, and the generator multiplies numbers."""


def check_sizes(
    train_size: int,
    test_size: int,
    num_numbers: int,
    min_number: int,
    max_number: int,
    min_target: int,
    max_target: int,
) -> None:
    """Refuse sizes that cannot give the requested puzzles, before any generation.

    Raises:
        InputError: a size <= 0 or above its cap, an empty range, or more puzzles than there are distinct
            (numbers, target) pairs in the ranges.
    """
    for flag, value in (("--train-size", train_size), ("--test-size", test_size)):
        if not 1 <= value <= MAX_PUZZLES:
            raise InputError(f"{flag}={value}: must be in [1, {MAX_PUZZLES}]")
    if train_size + test_size > MAX_PUZZLES:
        raise InputError(f"--train-size + --test-size = {train_size + test_size}: at most {MAX_PUZZLES}")
    if not 2 <= num_numbers <= MAX_NUM_NUMBERS:
        raise InputError(f"--num-numbers={num_numbers}: must be in [2, {MAX_NUM_NUMBERS}]")
    for lo_flag, lo, hi_flag, hi in (
        ("--min-number", min_number, "--max-number", max_number),
        ("--min-target", min_target, "--max-target", max_target),
    ):
        if not 1 <= lo <= hi <= MAX_VALUE:
            raise InputError(f"{lo_flag}={lo}, {hi_flag}={hi}: need 1 <= {lo_flag} <= {hi_flag} <= {MAX_VALUE}")
    multisets = math.comb(max_number - min_number + num_numbers, num_numbers)
    distinct = multisets * (max_target - min_target + 1)
    if train_size + test_size > distinct:
        raise InputError(
            f"--train-size + --test-size = {train_size + test_size}: the ranges allow at most {distinct} distinct "
            "puzzles; widen --min/--max-number or --min/--max-target"
        )


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m verl_rhythm.data.countdown",
        description="Write the Countdown train/test parquet files (TinyZero protocol; offline, deterministic).",
    )
    parser.add_argument("--out", default="~/data/countdown", help="output folder (train.parquet, test.parquet)")
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--test-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-numbers", type=int, default=4)
    parser.add_argument("--min-number", type=int, default=1)
    parser.add_argument("--max-number", type=int, default=100)
    parser.add_argument("--min-target", type=int, default=10)
    parser.add_argument("--max-target", type=int, default=100)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    ranges = dict(
        num_numbers=args.num_numbers,
        min_number=args.min_number,
        max_number=args.max_number,
        min_target=args.min_target,
        max_target=args.max_target,
    )
    out = Path(args.out).expanduser()
    try:
        check_sizes(args.train_size, args.test_size, **ranges)
        check_out_dir(out)
        report = None if args.quiet else _progress
        splits = make_splits(args.train_size, args.test_size, args.seed, progress=report, **ranges)
        for split, puzzles in splits.items():
            path = write_parquet([to_row(p, split, i) for i, p in enumerate(puzzles)], out / f"{split}.parquet")
            print(f"{split}: {len(puzzles)} puzzles -> {path}")
    except (InputError, ValueError) as err:
        exit_with(parser.prog, err)
    except OSError as err:
        exit_with(parser.prog, f"{err.filename or out}: {err.strerror or err}")


def _progress(made: int, count: int) -> None:
    print(f"[countdown] {made}/{count} puzzles", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
