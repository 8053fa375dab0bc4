# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Countdown: the reward on real responses, the generator (deterministic, every puzzle solvable), and the data
read back by verl 0.9.1's own dataset class and reward-function loader."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction

import numpy as np
import pytest

from verl_rhythm.data import countdown
from verl_rhythm.data.countdown import compute_score, judge

NUMS, TARGET = [44, 19, 35, 2], 120  # 2 * (44 + 35 - 19) = 120


def answer(expr: str) -> str:
    return f"Let me think. 44 + 35 = 79, 79 - 19 = 60, 60 * 2 = 120.</think>\n<answer> {expr} </answer>"


# ----------------------------------------------------------------------------------------------------- reward


@pytest.mark.parametrize(
    ("response", "verdict", "score"),
    [
        (answer("2 * (44 + 35 - 19)"), "correct", 1.0),
        (answer("(44 + 35 - 19) * 2"), "correct", 1.0),
        (answer("2 * (44 + 35 + 19)"), "wrong_result", 0.1),
        (answer("2 * (44 + 44 - 19)"), "wrong_numbers", 0.1),  # 44 reused, 35 left out
        (answer("2 * (44 + 35 - 19) * 1"), "wrong_numbers", 0.1),  # a number that was not given
        (answer("44 + 35 - 19"), "wrong_numbers", 0.1),  # 2 left out, even though the rest is valid
        (answer("2 * (44 + 35 - 19"), "invalid", 0.1),  # unbalanced parenthesis
        (answer("2 ** 6 + 44 + 35 - 19"), "invalid", 0.1),  # power is not an allowed operation
        (answer("abs(2) * (44 + 35 - 19)"), "invalid", 0.1),  # no calls
        (answer("2.0 * (44 + 35 - 19)"), "invalid", 0.1),  # no floats
        (answer("0x2 * (44 + 35 - 19)"), "invalid", 0.1),  # no hex literal smuggling a number
        (answer("2 * (44 + 35 - 19) = 120"), "invalid", 0.1),  # TinyZero: the equation's left side only
        (answer("2 / (44 - 44) + 35 + 19"), "invalid", 0.1),  # division by zero
        (answer(""), "invalid", 0.1),
        ("2 * (44 + 35 - 19)", "no_answer", 0.0),  # no tags
        ("<answer> 2 * (44 + 35 - 19)", "no_answer", 0.0),  # unclosed tag
    ],
)
def test_countdown_reward_on_real_responses(response, verdict, score):
    assert judge(response, NUMS, TARGET) == verdict
    assert compute_score(response, {"target": TARGET, "numbers": NUMS}) == score


def test_countdown_reward_is_exact_with_fractional_intermediates():
    # 8 / (3 - 8 / 3) = 24 needs the fraction 1/3 on the way; in floats it is 23.999999999999996
    assert judge("<answer>8 / (3 - 8 / 3)</answer>", [3, 3, 8, 8], 24) == "correct"
    assert judge("<answer>8 / (3 - 8 / 3)</answer>", [3, 3, 8, 8], 23) == "wrong_result"


def test_countdown_reward_reads_the_last_answer_and_multiline_answers():
    text = "<answer>1 + 2</answer> on second thought <answer>\n 2 * (44 + 35 - 19)\n</answer>"
    assert judge(text, NUMS, TARGET) == "correct"
    assert judge("<answer>2 * (44 + 35 - 19)</answer> no, <answer>44 + 35</answer>", NUMS, TARGET) == "wrong_numbers"


def test_countdown_reward_accepts_ground_truth_as_stored():
    response = answer("2 * (44 + 35 - 19)")
    # numpy arrays (a parquet list read through pandas), a JSON string, a dict with extra keys
    assert compute_score(response, {"target": np.int64(TARGET), "numbers": np.array(NUMS)}) == 1.0
    assert compute_score(response, json.dumps({"target": TARGET, "numbers": NUMS})) == 1.0
    assert compute_score(response, {"target": TARGET, "numbers": NUMS}, format_score=0.0, score=2.0) == 2.0
    with pytest.raises(ValueError, match="'target' and 'numbers'"):
        compute_score(response, {"numbers": NUMS})


# ----------------------------------------------------------------------------------------------------- generator


def solvable(numbers: list[int], target: int) -> bool:
    """Independent brute force: combine any two of the remaining values with + - * / (both orders), in exact
    fractions, until one value is left; every given number is used exactly once."""
    goal = Fraction(target)

    def search(values: tuple[Fraction, ...]) -> bool:
        if len(values) == 1:
            return values[0] == goal
        for i, j in itertools.combinations(range(len(values)), 2):
            a, b = values[i], values[j]
            rest = tuple(v for k, v in enumerate(values) if k not in (i, j))
            results = {a + b, a - b, b - a, a * b}
            if b != 0:
                results.add(a / b)
            if a != 0:
                results.add(b / a)
            if any(search((*rest, r)) for r in results):
                return True
        return False

    return search(tuple(Fraction(n) for n in numbers))


def test_independent_solver_tells_solvable_from_unsolvable():
    assert solvable([3, 3, 8, 8], 24)
    assert not solvable([1, 1, 1, 1], 5)  # at most (1+1)*(1+1) = 4
    assert not solvable([1, 1], 3)


def test_generator_is_deterministic_by_seed():
    first = countdown.generate(40, seed=7)
    assert countdown.generate(40, seed=7) == first
    assert countdown.generate(40, seed=8) != first
    assert countdown.generate(10, seed=7) == first[:10]  # a prefix does not depend on the count


@pytest.mark.parametrize(("num_numbers", "count"), [(4, 150), (3, 60)])
def test_every_generated_puzzle_is_solvable_and_in_range(num_numbers, count):
    puzzles = countdown.generate(count, seed=3, num_numbers=num_numbers)
    assert len({p.key for p in puzzles}) == count
    for p in puzzles:
        assert len(p.numbers) == num_numbers and all(1 <= n <= 100 for n in p.numbers)
        assert 10 <= p.target <= 100
        assert solvable(list(p.numbers), p.target), p
        assert judge(f"<answer>{p.solution}</answer>", p.numbers, p.target) == "correct", p


def test_splits_are_disjoint_and_the_test_split_does_not_depend_on_the_train_size():
    small = countdown.make_splits(train_size=30, test_size=20, seed=0)
    large = countdown.make_splits(train_size=300, test_size=20, seed=0)
    assert small["test"] == large["test"]
    assert large["train"][:30] != small["test"]
    assert not {p.key for p in large["train"]} & {p.key for p in large["test"]}


def test_generator_rejects_impossible_ranges():
    with pytest.raises(ValueError, match="num_numbers"):
        countdown.generate(1, num_numbers=1)
    with pytest.raises(ValueError, match="target range"):
        countdown.generate(1, min_target=50, max_target=10)
    with pytest.raises(ValueError, match="no new puzzle"):  # two numbers in 1..2 never reach 100
        countdown.generate(1, num_numbers=2, max_number=2, min_target=100, max_target=100)


# ----------------------------------------------------------------------------------------------------- verl


def test_written_data_loads_in_verl_and_scores_through_verls_reward_loader(tmp_path):
    """The parquet the CLI writes goes through verl's ``RLHFDataset`` (the trainer's dataset class) and the row's
    ground truth, as verl hands it over, scores the generator's solution 1.0 through the function verl's
    ``get_custom_reward_fn`` loads from the recipes' ``reward.custom_reward_function`` keys."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from verl_rhythm.embedded import embedded_model_dir

    countdown.main(["--out", str(tmp_path), "--train-size", "12", "--test-size", "5", "--seed", "1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.parquet", "train.parquet"]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    data_cfg = OmegaConf.create(
        {"max_prompt_length": 256, "filter_overlong_prompts": True, "cache_dir": str(tmp_path / "cache")}
    )
    dataset = RLHFDataset(str(tmp_path / "test.parquet"), tokenizer, data_cfg)
    assert len(dataset) == 5  # every prompt fits 256 tokens

    reward_cfg = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": "pkg://verl_rhythm.data.reward", "name": "compute_score"}}}
    )
    score_fn = get_custom_reward_fn(reward_cfg)
    expected = countdown.make_splits(train_size=12, test_size=5, seed=1)["test"]
    for i, puzzle in enumerate(expected):
        row = dataset[i]
        assert row["data_source"] == "countdown"
        question = f"Using the numbers {list(puzzle.numbers)}, create an equation that equals {puzzle.target}."
        assert question in row["raw_prompt"][0]["content"]
        truth = row["reward_model"]["ground_truth"]
        right = f"...</think> <answer>{row['extra_info']['solution']}</answer>"
        wrong = f"...</think> <answer>{' + '.join(map(str, puzzle.numbers))} + 1</answer>"
        kwargs = dict(data_source=row["data_source"], ground_truth=truth, extra_info=row["extra_info"])
        assert score_fn(solution_str=right, **kwargs) == {"score": 1.0, "acc": True}
        assert score_fn(solution_str=wrong, **kwargs) == {"score": 0.1, "acc": False}
