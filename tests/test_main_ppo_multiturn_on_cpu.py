# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl's ``main_ppo`` on the CPU backend with a multi-turn agent loop: responses carry tool-output holes.

The agent loop (``tests/agent_loops/rhythm_test_agent_loop.py``) generates three assistant turns with a fixed tool
output between them (response_mask 0, as verl's ``ToolAgentLoop`` marks tool responses). The run is real end to end
(Ray, TransferQueue, the v1 trainer, the ``hf`` rollout, the reward loop, the FSDP2 engine with the rhythm capture,
the estimator, the update); the batch every update received is read back and checked against verl's GRPO advantage
times a γ recomputed here by the per-segment reference of ``test_credit_multiturn_on_cpu.py``.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_credit_multiturn_on_cpu import reference
from test_main_ppo_on_cpu import SMALL, model_and_data, pad, response_statistic
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from verl_rhythm.credit import compute_gamma, segment_ids
from verl_rhythm.data import arithmetic
from verl_rhythm.testing.main_ppo import run_main_ppo
from verl_rhythm.testing.tiny import tiny_tokenizer

pytestmark = pytest.mark.slow

AGENT_LOOPS = Path(__file__).parent / "agent_loops"
QUESTION = re.compile(r"What is (\d+) ([+-]) (\d+)\?")


@pytest.fixture(scope="module")
def multiturn_run(tmp_path_factory):
    """One step of the coupled strategy (the default) on responses of three assistant turns and two tool outputs."""
    import sys

    sys.path.insert(0, str(AGENT_LOOPS))
    try:
        from rhythm_test_agent_loop import NAME, TOOL_TEXT
    finally:
        sys.path.remove(str(AGENT_LOOPS))
    root, model, data = model_and_data(tmp_path_factory.mktemp("main_ppo_multiturn"))
    config = root / "rhythm_test_agent_loops.yaml"
    config.write_text(f"- name: {NAME}\n  _target_: rhythm_test_agent_loop.ToolTurnsAgentLoop\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(AGENT_LOOPS), os.environ.get("PYTHONPATH")])))
        result = run_main_ppo(
            root / "coupled_multiturn",
            model,
            data,
            [
                *SMALL,
                "data.max_response_length=36",  # 5..7 + 6 + 6..4 = 17 generated tokens and two tool outputs of 8
                # eight groups, so a group with varied rewards is all but certain (samples vary run to run)
                "data.train_batch_size=8",
                "actor_rollout_ref.actor.ppo_mini_batch_size=8",
                "actor_rollout_ref.rollout.agent.agent_loop_config_path=" + str(config),
                f"actor_rollout_ref.rollout.agent.default_agent_loop={NAME}",
                "trainer.total_training_steps=1",
            ],
        )
    assert result.returncode == 0, result.log[-6000:]
    return result, tiny_tokenizer().encode(TOOL_TEXT, add_special_tokens=False)


def grpo_of_multiturn(dump: dict, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """verl's GRPO advantage of a dumped batch, each reward re-scored from the WHOLE decoded response (verl's reward
    loop decodes every response token, tool output included: ``AgentLoopWorker._compute_score``).

    Returns:
        ``(grpo (bs, T), advantages used by the update (bs, T), response_mask (bs, T))``.
    """
    mask = pad(dump["response_mask"]).bool()
    rewards = pad(dump["rm_scores"]).float()
    groups, index = {}, []
    for i, (prompt, response) in enumerate(zip(dump["prompts"], dump["responses"], strict=True)):
        a, op, b = QUESTION.search(tokenizer.decode(prompt.tolist(), skip_special_tokens=True)).groups()
        text = tokenizer.decode(response.tolist(), skip_special_tokens=True)
        expected = arithmetic.compute_score(text, arithmetic.answer(int(a), op, int(b)))
        assert rewards[i].sum().item() == pytest.approx(expected), "the reward the trainer used is not the task's"
        index.append(groups.setdefault(tuple(prompt.tolist()), len(groups)))
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask.float(), np.array(index), norm_adv_by_std_in_grpo=True)
    return grpo, pad(dump["advantages"]).float(), mask


def test_multiturn_responses_reach_the_update_with_their_tool_holes(multiturn_run):
    result, tool_ids = multiturn_run
    assert result.steps == [1] and len(result.dumps) == 1
    dump = result.dumps[0]
    assert len(dump["responses"]) == 32  # eight prompts, four samples each
    for response, mask in zip(dump["responses"], dump["response_mask"], strict=True):
        mask = mask[: len(response)].bool()
        holes = (~mask).nonzero().flatten()
        assert len(holes) == 2 * len(tool_ids), mask.tolist()
        assert response[holes].tolist() == tool_ids * 2
        assert int(segment_ids(mask[None]).max()) == 2  # three assistant turns


def test_the_update_is_grpo_times_the_per_segment_gamma(multiturn_run):
    """γ = 1 on tool tokens, Δ never spans a hole, and the update = GRPO × γ with γ from the per-segment reference,
    on every token; some amplified token carries a non-zero GRPO advantage, so a run that never applied γ fails."""
    result, _ = multiturn_run
    dump = result.dumps[0]
    grpo, used, mask = grpo_of_multiturn(dump, tiny_tokenizer())
    width = mask.shape[1]
    waad, fai = (response_statistic(dump, k, width) for k in ("rhythm_waad", "rhythm_fai"))
    credit = compute_gamma("coupled", mask, waad=waad, fai=fai)
    gamma = torch.ones_like(grpo)
    for i in range(mask.shape[0]):
        gamma[i] = torch.tensor(reference(mask[i].tolist(), waad[i].tolist(), fai[i].tolist(), "coupled")[0])
    assert torch.all(gamma[~mask] == 1) and torch.all(used[~mask] == 0)
    assert torch.allclose(used, grpo * gamma * mask, atol=1e-5)
    assert torch.allclose(gamma, credit.gamma, atol=1e-6)
    before_hole = mask.clone()
    before_hole[:, :-1] &= ~mask[:, 1:]  # the last token of each assistant turn
    assert int((before_hole & (segment_ids(mask) < 2)).sum()) == 2 * mask.shape[0]
    assert torch.all(credit.delta[before_hole] == 0) and not credit.preplan[before_hole].any()
    if not torch.any(grpo.abs() > 1e-6):
        # the CPU rollout's samples are not reproducible run to run (its agent-loop requests batch as they arrive); a
        # run whose groups all scored alike has every GRPO advantage 0 and cannot tell γ from none: skipped, saying so
        pytest.skip("the run sampled no GRPO group with varied rewards (every advantage 0): γ cannot be told apart")
    assert torch.any((gamma > 1) & (grpo.abs() > 1e-6)), "no amplified token with a GRPO advantage: γ went unchecked"
    # the same reference with the holes closed (each response's assistant tokens as one turn: Δ and the look-back
    # across tool output) gives another update on this batch, so the check above tells the two semantics apart
    spanning = torch.ones_like(grpo)
    for i in range(mask.shape[0]):
        valid = mask[i]
        joined = reference([True] * int(valid.sum()), waad[i][valid].tolist(), fai[i][valid].tolist(), "coupled")[0]
        spanning[i, valid] = torch.tensor(joined)
    assert not torch.allclose(grpo * spanning * mask, grpo * gamma * mask, atol=1e-5)
