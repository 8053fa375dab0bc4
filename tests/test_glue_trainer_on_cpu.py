# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl 0.9.1's real v1 trainer steps, a real TransferQueue on a local Ray, the real worker and engine code.

Per test, a batch is put into TransferQueue the way ``AgentLoopWorkerTQ._agent_loop_postprocess`` puts rollouts; then
``PPOTrainer._compute_old_log_prob`` and ``_compute_advantage`` (verl's methods, with this plugin's wrappers) run on a
``PPOTrainerSync`` built from the composed ``ppo_trainer`` config. Their ``actor_rollout_wg.compute_log_prob`` is
verl's own ``ActorRolloutRefWorker.compute_log_prob`` (``tqbridge``: TransferQueue → TensorDict with ``extra_info``
as non-tensor data → ``TrainingWorker.infer_batch`` → engine → every tensor output back to TransferQueue), called
in this process on a worker object whose actor is the real FSDP engine (``test_glue_engine_on_cpu.py``). Bypassed: Ray's
worker-group dispatch (one data-parallel rank, so no split/concat) and the workers' ``__init__``.
"""

import os

import numpy as np
import pytest
import ray
import torch
from models import tiny_model
from omegaconf import OmegaConf, open_dict
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from verl_rhythm.config import RhythmConfig
from verl_rhythm.credit import apply_gamma, compute_gamma
from verl_rhythm.glue import trainer_base as glue_trainer
from verl_rhythm.glue.tq_fields import CAPTURE_KEY, FAI, WAAD
from verl_rhythm.testing.engine import build_engine, dense_rhythm
from verl_rhythm.testing.process_group import cpu_process_group
from verl_rhythm.wrapping import stock as unwrapped

pytestmark = pytest.mark.slow

N = 3  # responses per prompt (actor_rollout_ref.rollout.n)
PROMPTS = 2
RHYTHM = {"fai_horizon_hi": 30, "chunk_size": 16}


@pytest.fixture(scope="module")
def tq_cluster():
    """A local Ray (more logical CPUs than cores) with one TransferQueue storage unit."""
    import transfer_queue as tq

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    try:
        yield tq
    finally:
        tq.close()
        ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    m = tiny_model("qwen2", attn_implementation="eager")
    path = tmp_path_factory.mktemp("qwen2")
    m.save_pretrained(path)
    return str(path), m


@pytest.fixture(scope="module")
def engine(model):
    with cpu_process_group():
        yield build_engine(model[0], attn_implementation="sdpa", use_remove_padding=True)


def compose(**overrides):
    """verl's own ``ppo_trainer`` config, composed by Hydra as ``main_ppo`` does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from verl.trainer import main_ppo

    config_dir = os.path.join(os.path.dirname(main_ppo.__file__), "config")
    args = [f"{k}={v}" for k, v in overrides.items()]
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=args)


class WorkerGroup:
    """Stands in for the RayWorkerGroup: calls verl's ``ActorRolloutRefWorker.compute_log_prob`` in-process."""

    world_size = 1

    def __init__(self, engine, model_config):
        trainer = object.__new__(TrainingWorker)
        trainer.engine, trainer.model_config, trainer.engine_config = engine, model_config, engine.engine_config
        trainer.loss_fn, trainer.flops_counter, trainer.device_name = None, None, "cpu"
        worker = object.__new__(ActorRolloutRefWorker)
        worker._Worker__dispatch_dp_rank, worker._Worker__collect_dp_rank = {}, {}
        worker._register_dispatch_collect_info("actor", dp_rank=0, is_collect=True)
        worker.actor, worker.enable_routing_replay = trainer, False
        self.worker = worker
        self.extra_info_seen = []

    def compute_log_prob(self, batch):
        self.extra_info_seen.append(dict(batch.extra_info))
        return ActorRolloutRefWorker.compute_log_prob(self.worker, batch)

    def compute_ref_log_prob(self, batch):  # the reference pass: must never see the capture key
        self.extra_info_seen.append(dict(batch.extra_info))
        return batch


def make_trainer(engine, adv_estimator="rhythm", **rhythm):
    overrides = {
        "algorithm.adv_estimator": adv_estimator,
        "actor_rollout_ref.rollout.n": N,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 2,
        "actor_rollout_ref.rollout.calculate_log_probs": False,  # the rollouts here carry no rollout_log_probs
        "actor_rollout_ref.model.path": engine.model_config.path,
    }
    config = compose(**overrides)
    with open_dict(config):
        config.algorithm.rhythm = {**RHYTHM, **rhythm}
    trainer = PPOTrainerSync.__new__(PPOTrainerSync)
    trainer.config = config
    trainer.actor_rollout_wg = WorkerGroup(engine, engine.model_config)
    trainer.parameter_sync_step, trainer.local_trigger_step = 1, 0  # PPOTrainer.__init__ and PPOTrainer.step
    trainer.global_steps = 1  # PPOTrainer._load_checkpoint sets 0, fit counts from 1
    trainer.ref_policy_wg, trainer.ref_in_actor = trainer.actor_rollout_wg, False
    # TrainingWorker.infer_batch reads these engine defaults (ActorRolloutRefWorker.init_model sets them from config)
    engine.engine_config.infer_micro_batch_size_per_gpu = 2
    engine.engine_config.use_dynamic_bsz = False
    return trainer


def put_rollouts(tq, partition="train", seed=0):
    """Rollouts as ``_agent_loop_postprocess`` writes them: nested per-sample fields, keys ``{uid}_{session}_0``."""
    g = torch.Generator().manual_seed(seed)
    keys, rows = [], []
    for p in range(PROMPTS):
        for s in range(N):
            plen, rlen = int(torch.randint(8, 20, (1,), generator=g)), int(torch.randint(20, 45, (1,), generator=g))
            prompt, response = torch.randint(0, 128, (plen,), generator=g), torch.randint(0, 128, (rlen,), generator=g)
            mask = torch.ones(rlen, dtype=torch.long)
            score = torch.zeros(rlen)
            score[-1] = float((s + p) % 2)  # outcome reward on the last token, varying within each group
            keys.append(f"u{seed}p{p}_{s}_0")
            rows.append(dict(uid=f"u{seed}p{p}", prompt=prompt, response=response, mask=mask, score=score))

    def nested(xs):
        return torch.nested.as_nested_tensor(list(xs), layout=torch.jagged)

    ids = [torch.cat([r["prompt"], r["response"]]) for r in rows]
    fields = tu.get_tensordict(
        {
            "input_ids": nested(ids),
            "position_ids": nested(torch.arange(x.numel()) for x in ids),
            "attention_mask": nested(torch.ones_like(x) for x in ids),
            "prompts": nested(r["prompt"] for r in rows),
            "responses": nested(r["response"] for r in rows),
            "response_mask": nested(r["mask"] for r in rows),
            "loss_mask": nested(r["mask"] for r in rows),
            "rm_scores": nested(r["score"] for r in rows),
            "uid": np.array([r["uid"] for r in rows], dtype=object),
        }
    )
    return tq.kv_batch_put(keys=keys, partition_id=partition, fields=fields, tags=[{} for _ in keys]), rows


def fetch_padded(tq, batch, fields):
    return tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields).to_padded_tensor()


def dense_response_statistics(model, rows, cfg):
    """The dense reference's WAAD/FAI sliced to each response at its own positions, padded ``(bs, max_r)``."""
    seq = dense_rhythm(model, [(r["prompt"], r["response"], r["mask"]) for r in rows], cfg)
    width = max(len(r["response"]) for r in rows)
    waad, fai = torch.zeros(len(rows), width), torch.zeros(len(rows), width)
    for i, (r, s) in enumerate(zip(rows, seq, strict=True)):
        p, n = len(r["prompt"]), len(r["response"])
        waad[i, :n], fai[i, :n] = s.waad[p : p + n], s.fai[p : p + n]
    return waad, fai


@pytest.mark.parametrize("strategy", ["coupled", "global"])
def test_rhythm_advantages_are_grpo_times_the_credit_gamma_of_the_dense_statistics(
    tq_cluster, engine, model, strategy, monkeypatch
):
    tq = tq_cluster
    trainer = make_trainer(engine, strategy=strategy)
    batch, rows = put_rollouts(tq, seed=1 if strategy == "coupled" else 2)
    metrics = {}
    fetched = []
    kv_batch_get = tq.kv_batch_get

    def spy(*args, **kwargs):  # every fetch into this process (the trainer's and verl's)
        fetched.append(kwargs.get("select_fields"))
        return kv_batch_get(*args, **kwargs)

    monkeypatch.setattr(tq, "kv_batch_get", spy)
    batch = trainer._compute_old_log_prob(batch, metrics=metrics)
    assert fetched and not any(WAAD in (f or [WAAD]) or FAI in (f or [FAI]) for f in fetched), fetched
    monkeypatch.setattr(tq, "kv_batch_get", kv_batch_get)
    trainer._compute_ref_log_prob(batch, metrics=metrics)  # verl's reference step right after
    batch = trainer._compute_advantage(batch, metrics=metrics)
    assert batch.fields is not None and not any(f.startswith("rhythm") for f in batch.fields), "update gets none"

    seen = trainer.actor_rollout_wg.extra_info_seen
    assert CAPTURE_KEY in seen[0] and CAPTURE_KEY not in seen[1], "capture only in the old-log-prob pass"
    got = fetch_padded(tq, batch, ["advantages", "response_mask", "rm_scores", WAAD, FAI])
    mask = got["response_mask"]
    cfg = RhythmConfig.from_dict(trainer.config.algorithm.rhythm)
    waad, fai = dense_response_statistics(model[1], rows, cfg)
    torch.testing.assert_close(got[WAAD] * mask, waad * mask, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[FAI] * mask, fai * mask, atol=2e-6, rtol=1e-5)

    index = np.array([r["uid"] for r in rows], dtype=object)
    grpo, _ = core_algos.compute_grpo_outcome_advantage(got["rm_scores"], mask, index)
    gamma = compute_gamma(strategy, mask, waad=waad, fai=fai, top_q=cfg.top_q, gamma_amp=cfg.gamma_amp).gamma
    expected = apply_gamma(grpo, gamma, cfg.sign)
    torch.testing.assert_close(got["advantages"], expected, atol=1e-6, rtol=1e-6)
    assert bool(((gamma > 1) & (grpo != 0)).any()), "the check needs amplified non-zero advantages"

    for key in ("amplified_share", "gamma_mean", "waad_mean", "fai_mean", "span_local_mean", "span_global_mean"):
        assert f"rhythm/{key}" in metrics, key
    assert metrics["rhythm/capture_s"] > 0 and 0 < metrics["rhythm/capture_share"] < 1
    assert metrics["rhythm/span_local_mean"] <= metrics["rhythm/span_global_mean"]
    if strategy == "coupled":
        assert "rhythm/dominated_per_response" in metrics and "rhythm/intro_per_response" in metrics


def test_entropy_control_uses_verl_entropy_and_needs_no_capture(tq_cluster, engine):
    tq = tq_cluster
    trainer = make_trainer(engine, strategy="entropy")
    batch, rows = put_rollouts(tq, seed=3)
    metrics = {}
    batch = trainer._compute_old_log_prob(batch, metrics=metrics)
    batch = trainer._compute_advantage(batch, metrics=metrics)
    assert CAPTURE_KEY not in trainer.actor_rollout_wg.extra_info_seen[0]
    got = fetch_padded(tq, batch, ["advantages", "response_mask", "rm_scores", "entropy"])
    mask = got["response_mask"]
    index = np.array([r["uid"] for r in rows], dtype=object)
    grpo, _ = core_algos.compute_grpo_outcome_advantage(got["rm_scores"], mask, index)
    gamma = compute_gamma("entropy", mask, entropy=got["entropy"]).gamma
    torch.testing.assert_close(got["advantages"], grpo * gamma, atol=1e-6, rtol=1e-6)
    assert "rhythm/gamma_mean" in metrics and "rhythm/capture_s" not in metrics


@pytest.mark.parametrize("sync_steps, sub_step, draw", [(1, 0, 6), (2, 0, 12), (2, 1, 13)])
def test_random_control_draws_from_seed_plus_the_step_and_sub_step(tq_cluster, engine, sync_steps, sub_step, draw):
    """The trainer hands ``global_steps`` (restored from the checkpoint on resume) and the sub-step of
    ``parameter_sync_step`` to the estimator: γ at step 6, sub-step s of S is the draw of ``seed + 6 · S + s``,
    whatever ran in this process before; the sub-steps of one step draw differently."""
    tq = tq_cluster
    trainer = make_trainer(engine, strategy="random", seed=40)
    trainer.global_steps, trainer.parameter_sync_step, trainer.local_trigger_step = 6, sync_steps, sub_step
    batch, rows = put_rollouts(tq, seed=7)
    metrics = {}
    batch = trainer._compute_old_log_prob(batch, metrics=metrics)
    batch = trainer._compute_advantage(batch, metrics=metrics)
    got = fetch_padded(tq, batch, ["advantages", "response_mask", "rm_scores"])
    mask = got["response_mask"]
    index = np.array([r["uid"] for r in rows], dtype=object)
    grpo, _ = core_algos.compute_grpo_outcome_advantage(got["rm_scores"], mask, index)
    gamma = compute_gamma("random", mask, generator=torch.Generator().manual_seed(40 + draw)).gamma
    torch.testing.assert_close(got["advantages"], grpo * gamma, atol=1e-6, rtol=1e-6)
    assert bool(((gamma > 1) & (grpo != 0)).any())
    assert metrics["rhythm/amplified_share"] > 0  # the metrics came back through the hand-off


def test_a_grpo_run_through_the_wrapped_trainer_is_unchanged(tq_cluster, engine):
    """Same rollouts, stock vs wrapped methods: identical TransferQueue contents and metrics, no capture."""
    tq = tq_cluster
    results = []
    for wrapped in (False, True):
        trainer = make_trainer(engine, adv_estimator="grpo")
        batch, _ = put_rollouts(tq, partition=f"grpo{int(wrapped)}", seed=4)
        metrics = {}
        for step in ("_compute_old_log_prob", "_compute_advantage"):
            method = getattr(PPOTrainer, step) if wrapped else glue_trainer.stock(PPOTrainer, step)
            batch = method(trainer, batch, metrics)
        assert all(CAPTURE_KEY not in seen for seen in trainer.actor_rollout_wg.extra_info_seen)
        fields = sorted(batch.fields)
        data = fetch_padded(tq, batch, ["advantages", "returns", "old_log_probs", "entropy", WAAD, FAI])
        results.append((data, metrics, fields))
    (stock, stock_metrics, stock_fields), (wrapped, wrapped_metrics, wrapped_fields) = results
    assert stock_fields == wrapped_fields and not any(f.startswith("rhythm") for f in wrapped_fields)
    assert set(wrapped.keys()) == set(stock.keys()) == {"advantages", "returns", "old_log_probs", "entropy"}
    for key in stock.keys():
        assert torch.equal(stock[key], wrapped[key]), key
    assert stock_metrics == wrapped_metrics


def test_missing_capture_in_the_workers_stops_the_run(tq_cluster, engine, monkeypatch):
    """A worker without the plugin runs verl's stock forward step: the step stops instead of training plain GRPO."""
    tq = tq_cluster
    trainer = make_trainer(engine, strategy="coupled")
    batch, _ = put_rollouts(tq, seed=5)
    monkeypatch.setattr(FSDPEngineWithLMHead, "forward_step", unwrapped(FSDPEngineWithLMHead.forward_step))
    with pytest.raises(glue_trainer.RhythmCaptureMissing, match="verl.plugins"):
        trainer._compute_old_log_prob(batch, metrics={})
    assert CAPTURE_KEY not in batch.extra_info


def test_plugin_entry_point_loads_and_patches_inside_a_ray_actor(tq_cluster):
    @ray.remote(num_cpus=0)
    def probe():
        import importlib.metadata

        import verl  # noqa: F401  (loads the verl.plugins entry points)

        from verl_rhythm.glue import plugin

        before = plugin.is_patched()
        import verl.trainer.ppo.v1.trainer_base  # noqa: F401
        import verl.workers.engine  # noqa: F401

        names = [ep.name for ep in importlib.metadata.entry_points(group="verl.plugins")]
        return names, plugin.is_loaded(), before, plugin.is_patched()

    names, loaded, before, after = ray.get(probe.remote(), timeout=300)
    assert "rhythm" in names and loaded
    assert before == {}, "nothing of the trainer or engine is imported by the plugin itself"
    assert after == dict.fromkeys(
        [
            "verl.trainer.ppo.core_algos",  # imported by is_loaded() above
            "verl.trainer.ppo.v1.trainer_base",
            "verl.trainer.ppo.ray_trainer",
            "verl.trainer.ppo.metric_utils",  # imported by the trainers; the legacy trainer's step metrics
            "verl.workers.engine.fsdp.transformer_impl",
        ],
        True,
    )


def test_rejection_sampling_keeps_the_captured_gamma_on_the_surviving_tokens(tq_cluster, engine, model):
    """``algorithm.rollout_correction.rollout_rs=token_k1``: verl's stock ``_compute_advantage`` zeroes the rejected
    tokens of ``response_mask`` before the estimator runs; γ stays the one of the captured response."""
    from tensordict import TensorDict
    from verl.workers.utils.padding import response_to_nested

    tq = tq_cluster
    trainer = make_trainer(engine, strategy="coupled")
    with open_dict(trainer.config):
        trainer.config.algorithm.rollout_correction.rollout_rs = "token_k1"
        trainer.config.algorithm.rollout_correction.rollout_rs_threshold = "0.5_2.0"
    batch, rows = put_rollouts(tq, seed=4)
    metrics = {}
    batch = trainer._compute_old_log_prob(batch, metrics=metrics)
    before = fetch_padded(tq, batch, ["old_log_probs", "response_mask"])
    captured = before["response_mask"]
    rollout = before["old_log_probs"].clone()
    rollout[:, 2::5] -= 3.0  # every fifth token from the third on: ratio e^3, outside [0.5, 2]
    nested_mask = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])
    fields = TensorDict(
        {"rollout_log_probs": response_to_nested(rollout, nested_mask["response_mask"])}, batch_size=len(batch.keys)
    )
    tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=fields)
    batch = trainer._compute_advantage(batch, metrics=metrics)

    got = fetch_padded(tq, batch, ["advantages", "response_mask", "rm_scores", WAAD, FAI])
    kept = got["response_mask"]
    assert bool((kept <= captured).all()) and bool((kept < captured).any()), "rejection sampling dropped tokens"
    index = np.array([r["uid"] for r in rows], dtype=object)
    grpo, _ = core_algos.compute_grpo_outcome_advantage(got["rm_scores"], kept, index)
    cfg = RhythmConfig.from_dict(trainer.config.algorithm.rhythm)
    gamma = compute_gamma(
        "coupled", captured, waad=got[WAAD], fai=got[FAI], top_q=cfg.top_q, gamma_amp=cfg.gamma_amp
    ).gamma
    torch.testing.assert_close(got["advantages"], apply_gamma(grpo, gamma, cfg.sign), atol=1e-6, rtol=1e-6)
    assert bool((got["advantages"][kept == 0] == 0).all())
    assert any(k.startswith("rollout_corr/") for k in metrics), "verl's rollout correction ran"
