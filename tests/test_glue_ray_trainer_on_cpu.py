# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The legacy-trainer glue (``verl/trainer/ppo/ray_trainer.py``, ``metric_utils.compute_data_metrics``) on verl's
real ``DataProto``, ``compute_advantage`` and padding helpers; the whole loop runs in ``test_main_ppo_trainers_on_cpu``.
"""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl import DataProto
from verl.trainer.ppo import metric_utils, ray_trainer
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue import ray_trainer as glue
from verl_rhythm.glue.metric_utils import METRICS_KEY, step_metrics
from verl_rhythm.glue.statistics import RhythmCaptureMissing, capture_rows
from verl_rhythm.glue.tq_fields import FAI, FAI_FULL, SEQ_STATS, WAAD, WAAD_FULL
from verl_rhythm.wrapping import is_wrapped, stock

PROMPT, RESPONSE = 4, 5


def _batch(prompt_lens=(2, 4, 3, 1), response_lens=(5, 2, 3, 4)) -> DataProto:
    """Left-padded prompts, right-padded responses, as verl's agent loop returns them."""
    bs = len(prompt_lens)
    attention = torch.zeros(bs, PROMPT + RESPONSE, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens, strict=True)):
        attention[i, PROMPT - p : PROMPT + r] = 1
    return DataProto.from_single_dict(
        {
            "prompts": torch.randint(3, 100, (bs, PROMPT)),
            "responses": torch.randint(3, 100, (bs, RESPONSE)),
            "attention_mask": attention,
            "response_mask": attention[:, PROMPT:].clone(),
        }
    )


def test_the_patches_are_installed():
    assert is_wrapped(ray_trainer.compute_advantage) and is_wrapped(metric_utils.compute_data_metrics)
    assert ray_trainer.compute_data_metrics is metric_utils.compute_data_metrics
    for name in glue.METHODS:
        assert is_wrapped(getattr(ray_trainer.RayPPOTrainer, name)), name


def test_the_engine_gets_a_nested_response_mask_of_each_rows_response():
    batch = _batch()
    batch.batch["response_mask"][0, 3] = 0  # a tool token inside the response stays masked
    td = glue.nested_response_mask(batch.to_tensordict())
    rows = td["response_mask"].unbind()
    assert [len(r) for r in rows] == [5, 2, 3, 4]
    assert rows[0].tolist() == [1, 1, 1, 0, 1]


def test_statistics_are_taken_at_each_tokens_own_position_and_right_padded():
    batch = _batch()
    lens = batch.batch["attention_mask"].sum(-1).tolist()  # each sequence's valid tokens, prompt + response
    full = [torch.arange(n, dtype=torch.float32) + 100 * i for i, n in enumerate(lens)]
    output = TensorDict(
        {
            WAAD_FULL: torch.nested.as_nested_tensor(full, layout=torch.jagged),
            FAI_FULL: torch.nested.as_nested_tensor([-x for x in full], layout=torch.jagged),
            SEQ_STATS: torch.nested.as_nested_tensor([torch.tensor([1.0, 2.0, 0.5])] * 4, layout=torch.jagged),
        },
        batch_size=4,
    )
    fields = glue.padded_statistics(output, batch, RhythmConfig(), world_size=2, stage_seconds=4.0)
    for i, r in enumerate((5, 2, 3, 4)):
        want = torch.zeros(RESPONSE)
        want[:r] = full[i][-r:]  # the last r tokens, no one-position shift
        assert torch.equal(fields[WAAD][i], want) and torch.equal(fields[FAI][i], -want)
    rows = fields[glue.CAPTURE_ROW]
    assert rows.shape == (4, 4) and torch.allclose(rows[:, 2], torch.full((4,), 0.25))  # 0.5 s over 2 ranks
    assert float(rows[:, 3].sum()) == pytest.approx(4.0)
    with pytest.raises(RhythmCaptureMissing, match="algorithm.rhythm.strategy='coupled'"):
        glue.padded_statistics(output.exclude(FAI_FULL), batch, RhythmConfig(), world_size=1, stage_seconds=1.0)


def _advantage_batch():
    batch = _batch()
    mask = batch.batch["response_mask"]
    batch.batch["token_level_rewards"] = torch.zeros(4, RESPONSE)
    batch.batch["token_level_rewards"][[0, 2], 0] = 1.0
    batch.batch["token_level_scores"] = batch.batch["token_level_rewards"].clone()
    batch.non_tensor_batch["uid"] = np.array(["a", "a", "b", "b"], dtype=object)
    batch.batch[WAAD] = torch.rand(4, RESPONSE) * mask
    batch.batch[FAI] = torch.rand(4, RESPONSE) * mask
    batch.batch[glue.CAPTURED_MASK] = mask.clone()
    rows = capture_rows(
        torch.nested.as_nested_tensor([torch.tensor([1.0, 3.0, 0.1])] * 4, layout=torch.jagged),
        world_size=1,
        stage_seconds=2.0,
    )
    batch.batch[glue.CAPTURE_ROW] = rows
    return batch


ALGORITHM = OmegaConf.create({"adv_estimator": "rhythm", "rhythm": {"strategy": "global"}})


def test_the_advantage_step_hands_the_captured_statistics_to_the_estimator():
    from verl_rhythm.glue import core_algos as rhythm_algos

    batch = _advantage_batch()
    captured = batch.batch[glue.CAPTURED_MASK].clone()
    batch.batch["response_mask"][0, 1] = 0  # rejection sampling dropped a token after the capture
    stats = {WAAD: batch.batch[WAAD].clone(), FAI: batch.batch[FAI].clone()}
    with rhythm_algos.estimator_inputs(captured, **stats):  # γ on the captured mask, as the estimator documents
        want, _ = rhythm_algos.compute_rhythm_outcome_advantage(
            batch.batch["token_level_rewards"], batch.batch["response_mask"], ALGORITHM, batch.non_tensor_batch["uid"]
        )
    out = ray_trainer.compute_advantage(batch, adv_estimator="rhythm", config=ALGORITHM)
    assert torch.equal(out.batch["advantages"], want)
    grpo, _ = compute_grpo_outcome_advantage(
        batch.batch["token_level_rewards"], batch.batch["response_mask"], batch.non_tensor_batch["uid"]
    )
    nonzero = grpo.abs() > 1e-6
    assert torch.any(out.batch["advantages"][nonzero] / grpo[nonzero] > 1 + 1e-6)  # γ reached the advantages
    metrics = step_metrics(out)
    assert metrics["rhythm/capture_s"] == pytest.approx(0.4) and metrics["rhythm/capture_share"] == pytest.approx(0.2)
    assert metrics["rhythm/span_global_mean"] == pytest.approx(3.0)
    assert {"rhythm/gamma_mean", "rhythm/waad_mean", "rhythm/varied_group_share"} <= set(metrics)
    assert torch.equal(batch.batch[glue.CAPTURED_MASK], captured)


def test_the_advantage_step_stops_without_statistics():
    batch = _advantage_batch()
    batch.pop(batch_keys=[FAI])
    with pytest.raises(RhythmCaptureMissing, match=r"no \['rhythm_fai'\]"):
        ray_trainer.compute_advantage(batch, adv_estimator="rhythm", config=ALGORITHM)


def test_a_grpo_run_gets_the_stock_advantage_and_metrics():
    batch = _advantage_batch()
    config = OmegaConf.create({"adv_estimator": "grpo"})
    ours = ray_trainer.compute_advantage(batch, adv_estimator="grpo", config=config)
    advantages = ours.batch["advantages"].clone()
    theirs = stock(ray_trainer.compute_advantage)(batch, adv_estimator="grpo", config=config)
    assert torch.equal(advantages, theirs.batch["advantages"]) and METRICS_KEY not in ours.meta_info
    batch.batch["old_log_probs"] = torch.zeros(4, RESPONSE)
    batch.batch["returns"] = batch.batch["advantages"]
    assert metric_utils.compute_data_metrics(batch, use_critic=False) == stock(metric_utils.compute_data_metrics)(
        batch, use_critic=False
    )


def test_the_step_metrics_carry_the_rhythm_metrics_of_the_batch():
    batch = _advantage_batch()
    batch = ray_trainer.compute_advantage(batch, adv_estimator="rhythm", config=ALGORITHM)
    batch.batch["old_log_probs"] = torch.zeros(4, RESPONSE)
    metrics = ray_trainer.compute_data_metrics(batch=batch, use_critic=False)
    assert metrics["rhythm/gamma_mean"] == step_metrics(batch)["rhythm/gamma_mean"]
    assert "critic/score/mean" in metrics
