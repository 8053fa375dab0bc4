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
from verl_rhythm.glue.tq_fields import FAI, SEQ_STATS, WAAD
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


def test_the_engines_response_statistics_are_right_padded_into_the_batch():
    batch = _batch()
    rows = [torch.arange(r, dtype=torch.float32) + 100 * i + 1 for i, r in enumerate((5, 2, 3, 4))]
    output = TensorDict(
        {
            WAAD: torch.nested.as_nested_tensor(rows, layout=torch.jagged),
            FAI: torch.nested.as_nested_tensor([-x for x in rows], layout=torch.jagged),
            SEQ_STATS: torch.nested.as_nested_tensor([torch.tensor([1.0, 2.0, 0.5])] * 4, layout=torch.jagged),
        },
        batch_size=4,
    )
    fields = glue.padded_statistics(output, batch, RhythmConfig(), stage_seconds=4.0)
    for i, r in enumerate((5, 2, 3, 4)):
        want = torch.zeros(RESPONSE)
        want[:r] = rows[i]
        assert torch.equal(fields[WAAD][i], want) and torch.equal(fields[FAI][i], -want)
    capture = fields[glue.CAPTURE_ROW]
    assert capture.shape == (4, 4) and torch.allclose(capture[:, 2], torch.full((4,), 0.5))
    assert float(capture[:, 3].sum()) == pytest.approx(4.0)
    with pytest.raises(RhythmCaptureMissing, match="algorithm.rhythm.strategy='coupled'"):
        glue.padded_statistics(output.exclude(FAI), batch, RhythmConfig(), stage_seconds=1.0)


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
        torch.nested.as_nested_tensor([torch.tensor([1.0, 3.0, 0.1])] * 4, layout=torch.jagged), stage_seconds=2.0
    )
    batch.batch[glue.CAPTURE_ROW] = rows
    batch.batch[glue.STEP] = torch.full((4,), 3, dtype=torch.long)
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
    assert not set(glue.BATCH_FIELDS) & set(out.batch.keys()), "the capture's fields stop at the advantage step"
    assert {"advantages", "returns", "response_mask", "token_level_rewards"} <= set(out.batch.keys())


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


def test_the_random_control_draws_from_the_step_the_batch_carries():
    """γ of the ``random`` control is the draw of ``seed + step``, the step stamped by the old-log-prob pass
    (``global_steps``): two batches of different steps differ, a batch without its step stops."""
    from verl_rhythm.credit import compute_gamma

    algorithm = OmegaConf.create({"adv_estimator": "rhythm", "rhythm": {"strategy": "random", "seed": 40}})
    grpo = {}
    for step in (6, 7):
        batch = _advantage_batch()
        batch.batch[glue.STEP][:] = step
        mask = batch.batch["response_mask"].clone()
        out = ray_trainer.compute_advantage(batch, adv_estimator="rhythm", config=algorithm)
        base, _ = compute_grpo_outcome_advantage(
            batch.batch["token_level_rewards"], mask, batch.non_tensor_batch["uid"]
        )
        gamma = compute_gamma("random", mask, generator=torch.Generator().manual_seed(40 + step)).gamma
        torch.testing.assert_close(out.batch["advantages"], base * gamma)
        grpo[step] = out.batch["advantages"]
    assert not torch.equal(grpo[6], grpo[7])
    batch = _advantage_batch()
    batch.pop(batch_keys=[glue.STEP])
    with pytest.raises(RhythmCaptureMissing, match="rhythm_step"):
        ray_trainer.compute_advantage(batch, adv_estimator="rhythm", config=algorithm)


def test_the_old_log_prob_pass_keeps_the_workers_output_through_verls_collect_function():
    """The worker group is built by verl's own ``func_generator`` (``verl/single_controller/ray/base.py``) with the
    collect function registered on ``ActorRolloutRefWorker.compute_log_prob``, as ``_bind_worker_method`` binds it;
    only the execution on the workers is replaced. The glue never replaces the worker group's method."""
    from verl.single_controller.base.decorator import MAGIC_ATTR
    from verl.single_controller.base.worker_group import WorkerGroup
    from verl.single_controller.ray.base import func_generator
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine_workers import ActorRolloutRefWorker

    glue.keep_collected_outputs()
    glue.keep_collected_outputs()  # idempotent
    mode = getattr(ActorRolloutRefWorker.compute_log_prob, MAGIC_ATTR)["dispatch_mode"]
    assert is_wrapped(mode["collect_fn"]) and not is_wrapped(stock(mode["collect_fn"]))
    # Ray pickles the dispatch dict with every colocated worker class (create_colocated_worker_cls): it must pickle
    from ray import cloudpickle

    assert is_wrapped(cloudpickle.loads(cloudpickle.dumps(mode))["collect_fn"])

    batch = _batch()
    bs = len(batch)
    batch.batch["input_ids"] = torch.randint(3, 100, (bs, PROMPT + RESPONSE))
    batch.batch["position_ids"] = torch.arange(PROMPT + RESPONSE).expand(bs, -1).clone()
    lens = batch.batch["attention_mask"].sum(-1).tolist()
    response_lens = batch.batch["attention_mask"][:, PROMPT:].sum(-1).tolist()
    rows = [torch.arange(r, dtype=torch.float32) + 1 for r in response_lens]
    wg = WorkerGroup.__new__(WorkerGroup)  # two ranks, one Ulysses group: verl collects sequence-parallel rank 0 only
    wg._workers, wg._dispatch_info, wg._collect_info = [None, None], {"actor": [0, 0]}, {"actor": [True, False]}
    seen = []

    def execute(method_name, data):  # what ActorRolloutRefWorker.compute_log_prob returns on each rank
        seen.append((method_name, wg.compute_log_prob is functor, tu.get_non_tensor_data(data, "rhythm_capture", None)))
        out = tu.get_tensordict(
            {
                "log_probs": torch.nested.as_nested_tensor([torch.zeros(n) for n in lens], layout=torch.jagged),
                "entropy": torch.nested.as_nested_tensor([torch.ones(n) for n in lens], layout=torch.jagged),
                WAAD: torch.nested.as_nested_tensor(rows, layout=torch.jagged),
                FAI: torch.nested.as_nested_tensor([-r for r in rows], layout=torch.jagged),
                SEQ_STATS: torch.nested.as_nested_tensor([torch.tensor([1.0, 2.0, 0.25])] * bs, layout=torch.jagged),
            }
        )
        tu.assign_non_tensor(out, metrics={"mfu": 0.0})
        return [out, "rank 1 (sequence-parallel rank 1: not collected)"]

    functor = func_generator(
        wg, "compute_log_prob", dispatch_fn=lambda _, *a, **k: (a, k), collect_fn=mode["collect_fn"],
        execute_fn=execute, blocking=False,
    )  # fmt: skip
    wg.compute_log_prob = functor
    trainer = ray_trainer.RayPPOTrainer.__new__(ray_trainer.RayPPOTrainer)
    trainer.config = OmegaConf.create(
        {"algorithm": {"adv_estimator": "rhythm", "rhythm": {}}, "actor_rollout_ref": {"actor": {}}}
    )
    trainer.actor_rollout_wg, trainer.global_steps = wg, 9
    old_log_prob, _ = trainer._compute_old_log_prob(batch)
    assert seen == [("compute_log_prob", True, RhythmConfig().capture.to_json())]
    assert "rhythm_capture" not in batch.meta_info
    for i, r in enumerate(response_lens):
        assert torch.equal(old_log_prob.batch[WAAD][i, :r], rows[i]) and not old_log_prob.batch[WAAD][i, r:].any()
    assert old_log_prob.batch[glue.STEP].tolist() == [9] * bs
    assert torch.allclose(old_log_prob.batch[glue.CAPTURE_ROW][:, 2], torch.full((bs,), 0.25))
