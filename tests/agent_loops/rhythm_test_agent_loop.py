# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A deterministic multi-turn agent loop for the main_ppo tests: generate, append a fixed tool output, generate again.

This folder is put on ``PYTHONPATH`` of a test run, and ``rhythm_test_agent_loops.yaml`` (written by the test) names
:class:`ToolTurnsAgentLoop` in ``actor_rollout_ref.rollout.agent.agent_loop_config_path``: verl's ``AgentLoopWorker``
(``verl/experimental/agent_loop/agent_loop.py``) adds it to its registry and instantiates it with Hydra for every
sample. Like verl's ``ToolAgentLoop``, its ``AgentLoopOutput.response_mask`` is 1 on generated tokens and 0 on the
tool output, so each response carries tool-output holes between assistant turns.
"""

from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput

NAME = "rhythm_test_tool_turns"
TOOL_TEXT = "tool:ok;"
"""The tool's answer, appended after every assistant turn but the last (no digits: the reward reads the last integer
of the whole response, tool output included, as verl's reward loop decodes it)."""


def turn_budgets(session_id: int) -> tuple[int, ...]:
    """Tokens generated in each assistant turn; they vary with the session so that rows differ in layout."""
    s = int(session_id) % 3
    return (5 + s, 6, 6 - s)


class ToolTurnsAgentLoop(AgentLoopBase):
    """Three assistant turns separated by :data:`TOOL_TEXT` (response_mask 0); each turn samples exactly its budget
    (``ignore_eos``) so the layout is known."""

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        prompt_ids = await self.ct_build_initial_tokens(list(kwargs["raw_prompt"]))
        tool_ids = self.tokenizer.encode(TOOL_TEXT, add_special_tokens=False)
        budgets = turn_budgets(kwargs.get("session_id", 0))
        response_ids: list[int] = []
        response_mask: list[int] = []
        extra_fields: dict[str, Any] = {}
        for turn, budget in enumerate(budgets):
            if turn > 0:
                response_ids += tool_ids
                response_mask += [0] * len(tool_ids)
            output = await self.server_manager.generate(
                request_id=uuid4().hex,
                prompt_ids=prompt_ids + response_ids,
                sampling_params={**sampling_params, "max_tokens": budget, "ignore_eos": True},
            )
            if not extra_fields:
                extra_fields.update(output.extra_fields)
            response_ids += list(output.token_ids)
            response_mask += [1] * len(output.token_ids)
        length = self.rollout_config.response_length
        if len(response_ids) > length:
            raise ValueError(f"the test agent loop wrote {len(response_ids)} response tokens; response_length={length}")
        out = AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            response_mask=response_mask,
            num_turns=2 * len(budgets),
            metrics={},
            extra_fields=extra_fields,
        )
        out.extra_fields.update({"turn_scores": [], "tool_rewards": []})
        return out
