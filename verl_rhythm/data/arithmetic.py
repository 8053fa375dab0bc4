# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Short arithmetic: the CPU recipe's task, easy enough for a 135M model's GRPO groups to disagree.

A GRPO group teaches only when its rewards differ. On Countdown the embedded SmolLM2-135M-Instruct almost never
solves a puzzle, so nearly every group has zero reward variance and the advantage (and γ with it) is zero. Sums and
differences of small numbers sit at the edge of what it can do: some samples of a group are right, some are not
(the CPU training run prints the share of groups with non-zero variance at every step).

Reward (:func:`compute_score`): 1.0 when the last integer of the response is the answer, 0.1 when the response
contains an integer but the wrong one (the format reward), 0.0 otherwise.

Usage (offline, deterministic)::

    python -m verl_rhythm.data.arithmetic --out ~/data/arithmetic
"""

from __future__ import annotations

import argparse
import random
import re
from typing import Any

from verl_rhythm.data.parquet import write_train_test

DATA_SOURCE = "arithmetic"
INSTRUCTION = "Answer with the number only."
_INT = re.compile(r"-?\d+")


def make_problems(count: int, seed: int, max_operand: int = 20) -> list[tuple[int, str, int]]:
    """``count`` problems ``(a, op, b)`` with ``op`` in ``+ -`` and operands in ``[0, max_operand]``; deterministic."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1, got {max_operand}")
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        out.append((a, op, b))
    return out


def answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def question(a: int, op: str, b: int) -> str:
    return f"What is {a} {op} {b}? {INSTRUCTION}"


def to_row(problem: tuple[int, str, int], split: str, index: int) -> dict[str, Any]:
    """One row of verl's RL parquet format (``verl/utils/dataset/rl_dataset.py:RLHFDataset``)."""
    a, op, b = problem
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": question(a, op, b)}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(answer(a, op, b))},
        "extra_info": {"split": split, "index": index},
    }


def compute_score(solution_str: str, ground_truth: Any) -> float:
    """1.0 if the last integer in ``solution_str`` equals ``ground_truth``, 0.1 if it holds another integer, else 0.

    Linear in the length of the response; any string gets a score.
    """
    numbers = _INT.findall(solution_str or "")
    if not numbers:
        return 0.0
    try:
        return 1.0 if int(numbers[-1]) == int(str(ground_truth).strip()) else 0.1
    except ValueError:
        return 0.1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m verl_rhythm.data.arithmetic",
        description="Write the short-arithmetic train/test parquet files (offline, deterministic).",
    )
    parser.add_argument("--out", default="~/data/arithmetic", help="output folder (train.parquet, test.parquet)")
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--test-size", type=int, default=64)
    parser.add_argument("--max-operand", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_train_test(
        parser,
        args,
        lambda count, seed: make_problems(count, seed, args.max_operand),
        to_row,
        knob="--max-operand",
        noun="problems",
    )


if __name__ == "__main__":
    main()
