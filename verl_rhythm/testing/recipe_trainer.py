# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Test harness: a recipe trainer, shaped like verl's DAPO recipe trainer, with its own entry point.

Recipe trainers subclass verl's legacy ``RayPPOTrainer`` (``verl/trainer/ppo/ray_trainer.py``) and write their own
``fit``, calling the parent's steps (``_compute_old_log_prob``, ``_compute_ref_log_prob``, ``_update_actor``) and
the module functions they import from ``ray_trainer`` and ``metric_utils`` (``compute_advantage``,
``compute_data_metrics``); DAPO's adds group filtering around them. :class:`RecipeTrainer` does the same, with a step
of its own between the passes that a recipe might have (it reverses the row order after the old-log-prob pass, so
statistics that did not travel with their rows would land on the wrong responses). Nothing in it knows about rhythm.

Run it like ``main_ppo`` (same Hydra arguments): ``python -m verl_rhythm.testing.recipe_trainer --config-path ...``.
Never used by a training run.
"""

from __future__ import annotations

import uuid

import hydra
import numpy as np
import ray
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.main_ppo_v0 import BaseTaskRunner
from verl.trainer.ppo.metric_utils import compute_data_metrics, compute_timing_metrics
from verl.trainer.ppo.ray_trainer import RayPPOTrainer, compute_advantage, compute_response_mask
from verl.trainer.ppo.reward import extract_reward
from verl.utils.metric import reduce_metrics
from verl.utils.profiler import marked_timer

REVERSED_METRIC = "recipe/rows_reversed"


class RecipeTrainer(RayPPOTrainer):
    """A minimal recipe trainer: its own ``fit`` over the parent's steps (GRPO-style: no critic)."""

    def fit(self):
        from verl.utils.tracking import Tracking

        logger = Tracking(
            project_name=self.config.trainer.project_name,
            experiment_name=self.config.trainer.experiment_name,
            default_backend=self.config.trainer.logger,
            config=OmegaConf.to_container(self.config, resolve=True),
        )
        self.global_steps = 0
        self._load_checkpoint()
        self.checkpoint_manager.update_weights(self.global_steps)
        self.global_steps += 1
        algorithm = self.config.algorithm
        n = self.config.actor_rollout_ref.rollout.n
        for _epoch in range(self.config.trainer.total_epochs):
            for batch_dict in self.train_dataloader:
                metrics, timing_raw = {}, {}
                batch = DataProto.from_single_dict(batch_dict)
                batch.meta_info["temperature"] = self.config.actor_rollout_ref.rollout.temperature
                batch.non_tensor_batch["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(batch))], dtype=object)
                with marked_timer("step", timing_raw):
                    with marked_timer("gen", timing_raw):
                        gen = self.async_rollout_manager.generate_sequences(
                            self._get_gen_batch(batch).repeat(repeat_times=n, interleave=True)
                        )
                        self.checkpoint_manager.sleep_replicas()
                        timing_raw.update(gen.meta_info.pop("timing", {}))
                    batch = batch.repeat(repeat_times=n, interleave=True).union(gen)
                    batch.batch["response_mask"] = compute_response_mask(batch)
                    batch.meta_info["global_token_num"] = torch.sum(batch.batch["attention_mask"], dim=-1).tolist()
                    reward, _ = extract_reward(batch)
                    batch.batch["token_level_scores"] = reward
                    batch.batch["token_level_rewards"] = reward
                    with marked_timer("old_log_prob", timing_raw):
                        old_log_prob, _ = self._compute_old_log_prob(batch)
                        old_log_prob.batch.pop("entropys")
                        batch = batch.union(old_log_prob)
                    # a recipe's own step between the passes: here, a new row order
                    batch.reorder(torch.arange(len(batch) - 1, -1, -1))
                    metrics[REVERSED_METRIC] = 1.0
                    if self.use_reference_policy:
                        batch = batch.union(self._compute_ref_log_prob(batch))
                    batch = compute_advantage(
                        batch,
                        adv_estimator=algorithm.adv_estimator,
                        gamma=algorithm.gamma,
                        lam=algorithm.lam,
                        num_repeat=n,
                        norm_adv_by_std_in_grpo=algorithm.get("norm_adv_by_std_in_grpo", True),
                        config=algorithm,
                    )
                    with marked_timer("update_actor", timing_raw):
                        actor_output = self._update_actor(batch)
                    metrics.update(reduce_metrics(actor_output.meta_info["metrics"]))
                    save_freq = self.config.trainer.save_freq
                    is_last = self.global_steps >= self.total_training_steps
                    if save_freq > 0 and (is_last or self.global_steps % save_freq == 0):
                        self._save_checkpoint()
                    self.checkpoint_manager.update_weights(self.global_steps)
                metrics.update(compute_data_metrics(batch=batch, use_critic=self.use_critic))
                metrics.update(compute_timing_metrics(batch=batch, timing_raw=timing_raw))
                logger.log(data=metrics, step=self.global_steps)
                if is_last:
                    return
                self.global_steps += 1


@ray.remote
class RecipeTaskRunner(BaseTaskRunner):
    """Builds the workers, data and :class:`RecipeTrainer` as verl's legacy ``TaskRunner`` does, then trains."""

    def run(self, config):
        from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler
        from verl.utils.config import omega_conf_to_dataclass
        from verl.utils.dataset.rl_dataset import collate_fn
        from verl.workers.config import HFModelConfig

        OmegaConf.resolve(config)
        _, ray_worker_group_cls = self.add_actor_rollout_worker(config)
        model_config: HFModelConfig = omega_conf_to_dataclass(config.actor_rollout_ref.model)
        tokenizer, processor = model_config.tokenizer, model_config.processor
        datasets = [
            create_rl_dataset(files, config.data, tokenizer, processor, is_train=train)
            for files, train in ((config.data.train_files, True), (config.data.val_files, False))
        ]
        trainer = RecipeTrainer(
            config=config,
            tokenizer=tokenizer,
            processor=processor,
            role_worker_mapping=self.role_worker_mapping,
            resource_pool_manager=self.init_resource_pool_mgr(config),
            ray_worker_group_cls=ray_worker_group_cls,
            train_dataset=datasets[0],
            val_dataset=datasets[1],
            collate_fn=collate_fn,
            train_sampler=create_rl_sampler(config.data, datasets[0]),
        )
        trainer.init_workers()
        trainer.fit()


@hydra.main(config_path="pkg://verl.trainer.config", config_name="ppo_trainer", version_base=None)
def main(config):
    """The recipe's launcher: verl's ``run_ppo`` with :class:`RecipeTaskRunner`."""
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    run_ppo(config, task_runner_class=RecipeTaskRunner)


if __name__ == "__main__":
    main()
