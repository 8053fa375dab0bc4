# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The verl internals the glue and the CPU backend rely on, pinned to verl 0.9.1 by a hash of their source.

Both wrap (never copy) verl methods, but they rely on what those do: which fields the trainer fetches, that
``extra_info`` reaches the worker as non-tensor data, that every ``model_output`` key survives to TransferQueue, the
one-position shift of ``response_from_nested``, how ``EngineRegistry`` falls back to a device-only engine, where verl
hard-codes an accelerator. Each entry below names one function and why it matters.

Version policy (``setup.py`` allows ``verl>=0.9.1,<0.10``): the hashes are a review signal, not a gate. On the
releases of :data:`VERL_VERSIONS` ``tests/test_glue_plugin_on_cpu.py`` asserts every hash (a mismatch there is an
error in this table); on any other 0.9.x release the same test reports the functions whose source changed and is
skipped, and the behavioural tests (verl's trainer, engine and ``main_ppo`` run for real) decide. A user's run never
checks the hashes; what it checks is the call shape of each function the glue wraps, when it is wrapped (present, the
parameters its wrapper reads, no new required one; :mod:`verl_rhythm.glue.seams`): a function that moved disables
rhythm alone, loudly. Those checks compare against verl 0.9.1's parameter lists (``tests/test_drift_on_cpu.py``
asserts them on the pinned release).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect

from verl_rhythm.wrapping import stock

VERL_VERSIONS = ("0.9.1",)
"""verl releases these hashes were taken from (``setup.py`` allows ``>=0.9.1,<0.10``)."""

PINNED: dict[str, tuple[str, str]] = {
    # trainer side (verl_rhythm/glue/trainer_base.py)
    "verl.trainer.ppo.v1.trainer_base:PPOTrainer.init": (
        "84c3e4db3568d1f7",
        "wrapped: start-up checks run before _setup() builds workers",
    ),
    "verl.trainer.ppo.v1.trainer_base:PPOTrainer._compute_old_log_prob": (
        "b2630e6178ed99f7",
        "wrapped: batch.extra_info goes to actor_rollout_wg.compute_log_prob; bypass_mode skips the pass",
    ),
    "verl.trainer.ppo.v1.trainer_base:PPOTrainer._compute_advantage": (
        "2a4a2aa4a475b228",
        "wrapped: fetches response_mask, pads with to_padded_tensor, calls the estimator inside this call",
    ),
    "verl.trainer.ppo.v1.utils:compute_advantage_for_multi_trajectories": (
        "d973cc8aec79bc3d",
        "a non-GRPO estimator gets the whole batch in batch.keys order (no per-session row selection)",
    ),
    "verl.trainer.ppo.ray_trainer:compute_advantage": (
        "314695381c755264",
        "calls a registered estimator with token_level_rewards, response_mask, config, index",
    ),
    "verl.trainer.ppo.ray_trainer:RayPPOTrainer.__init__": (
        "882573177494e91b",
        "wrapped: start-up checks of the legacy trainer; config is the first argument",
    ),
    # legacy trainer (verl_rhythm/glue/ray_trainer.py, metric_utils.py)
    "verl.trainer.ppo.ray_trainer:RayPPOTrainer._compute_old_log_prob": (
        "70d1750e0c3ec43a",
        "wrapped: batch.meta_info goes to actor_rollout_wg.compute_log_prob, whose DataProto comes back",
    ),
    "verl.single_controller.base.decorator:collect_lazy_compute_data_proto": (
        "4ce1289d66f31f22",
        "the collect function registered on ActorRolloutRefWorker.compute_log_prob: the legacy trainer keeps its "
        "result during a capture (ray_trainer.keep_collected_outputs)",
    ),
    "verl.single_controller.base.worker_group:WorkerGroup._bind_worker_method": (
        "cde2edf6deea1380",
        "binds the registered dispatch mode's collect_fn per worker group when the group is built (after "
        "RayPPOTrainer.__init__)",
    ),
    "verl.workers.engine.fsdp.transformer_impl:FSDPEngineWithLMHead.is_mp_src_rank_with_outputs": (
        "5f1f93e1ad62cb59",
        "only sequence-parallel rank 0 returns outputs: the capture seconds are per data-parallel rank",
    ),
    "verl.trainer.ppo.metric_utils:compute_data_metrics": (
        "081d0a19a8270ad7",
        "wrapped: every legacy/recipe fit calls it with the step's final batch",
    ),
    "verl.protocol:DataProto.to_tensordict": (
        "51591977825e06f3",
        "meta_info entries become non-tensor data of the worker's TensorDict (where the engine reads the capture key)",
    ),
    # worker side (verl_rhythm/glue/transformer_impl.py)
    "verl.utils.transferqueue_utils:_async_meta_to_realdata": (
        "8fe49350dfdb1351",
        "extra_info entries become non-tensor data of the worker's TensorDict",
    ),
    "verl.utils.transferqueue_utils:_async_update_meta_with_output": (
        "39709a9978f3fd43",
        "every tensor key of a worker's output is written to TransferQueue",
    ),
    "verl.workers.engine.fsdp.transformer_impl:FSDPEngine.forward_backward_batch": (
        "be92c8d155f0c179",
        "the log-prob pass runs forward_step per micro-batch under no_grad with forward_only=True",
    ),
    "verl.workers.engine.fsdp.transformer_impl:FSDPEngineWithLMHead.forward_step": (
        "ec2681395b00c654",
        "wrapped on the class (every FSDP-family engine inherits it): returns (loss, {'model_output': dict, ...})",
    ),
    "verl.workers.engine.fsdp.transformer_impl:FSDPEngineWithLMHead.prepare_model_inputs": (
        "e7a30a3b61b58c8b",
        "packed row = input_ids.values() with position_ids restarting; padded = right-padded to max length",
    ),
    "verl.workers.engine.utils:postprocess_batch_func": (
        "83c8d9c984b3c02a",
        "concatenates every model_output key over micro-batches and restores the dynamic-batch order",
    ),
    "verl.workers.engine.base:EngineRegistry.get_engine_cls": (
        "b1290dce7fd3c855",
        "the CPU backend's device-only 'cpu' registration is found when no (device, vendor) entry exists",
    ),
    "verl.models.transformers.monkey_patch:_ulysses_flash_attention_forward": (
        "5e68365bd576584d",
        "Ulysses: all-to-all to whole rows for H/sp heads (kv repeated up to sp), then the module global "
        "_flash_attention_forward (wrapped: the capture records there), position_ids all-gathered",
    ),
    "verl.models.transformers.qwen2_vl:qwen2_vl_attn_forward": (
        "f7121547e48116a2",
        "Qwen2-VL/2.5-VL text attention under remove-padding or Ulysses: post-mRoPE q/k, kv repeated, text positions "
        "position_ids[0]; its class forward is wrapped only to tell the kernels their caller (glue/qwen2_vl.py)",
    ),
    "verl.models.transformers.qwen2_vl:_custom_flash_attention_forward": (
        "05fcd1557a2698a6",
        "all-to-all, then the module globals flash_attn_varlen_func (packed) or _flash_attention_forward (one "
        "sequence per row), both wrapped: the capture records there",
    ),
    "verl.models.transformers.qwen2_vl:prepare_fa2_from_position_ids": (
        "ead5c2b920fd06db",
        "varlen segments start where the gathered text positions are 0 (the capture checks cu_seqlens_q)",
    ),
    "verl.utils.ulysses:ulysses_pad": (
        "8452d68388098f3f",
        "the sp pad at the end of the packed row restarts position_ids at 0: a segment of its own, never a layout",
    ),
    "verl.workers.utils.padding:response_from_nested": (
        "41a4bf54aa981c09",
        "the one-position shift that rhythm statistics must NOT get (glue/padding.py mirrors it unshifted)",
    ),
    # CPU backend (verl_rhythm/backends/cpu/)
    "verl.plugin.platform.platform_manager:_detect_platform_name": (
        "8dffc2174390e96d",
        "VERL_PLATFORM is read first; the probe must never pick the cpu platform (it answers not available)",
    ),
    "verl.single_controller.ray.base:RayResourcePool.get_placement_groups": (
        "0e5cc2df0de44516",
        "bundles hold {'CPU': n, ray_resource_name(): 1}: the cpu platform's pools ask for CPUs only",
    ),
    "verl.single_controller.ray.base:ResourcePoolManager._check_resource_available": (
        "b0b46038e25a8f25",
        "wrapped: counts only GPU/NPU resources; on the cpu platform the wrapper counts CPUs",
    ),
    "verl.utils.distributed:initialize_global_process_group_ray": (
        "761a94d1a2e058d3",
        "wrapped: its backend string 'cpu:gloo,{device}:{backend}' duplicates cpu; the wrapper asks for gloo",
    ),
    "verl.utils.config:validate_config": (
        "ab4096deecfec745",
        "wrapped: runs in the launcher before Ray starts, where the CPU backend's start-up checks go",
    ),
    "verl.workers.rollout.base:get_rollout_class": (
        "d0be5827f1214f04",
        "reads the plain dict _ROLLOUT_REGISTRY[(name, mode)] = fqn, where the hf adapter is added",
    ),
    "verl.workers.rollout.replica:RolloutReplicaRegistry.register": (
        "283ce5dd7be73264",
        "registers the hf replica under a loader called on first use",
    ),
    "verl.workers.engine_workers:ActorRolloutRefWorker.update_weights": (
        "ea8f2ec1eb8a4481",
        "naive sync: rollout.update_weights(per_tensor_param, peft_config=, base_sync_done=, global_steps=)",
    ),
    "verl.workers.rollout.llm_server:LLMServerClient.generate": (
        "45f4cf4029f0be37",
        "calls server.generate.remote(request_id=, prompt_ids=, sampling_params=, image_data=, video_data=)",
    ),
}


PINNED_MEGATRON: dict[str, tuple[str, str]] = {
    # verl's Megatron engine (verl_rhythm/glue/megatron_impl.py, verl_rhythm/backends/cpu/megatron.py); importable
    # only where megatron-core is installed, so checked by tests/test_megatron_engine_on_cpu.py, not with PINNED
    "verl.workers.engine.megatron.transformer_impl:MegatronEngineWithLMHead.forward_step": (
        "06c4b5945bcbc00d",
        "wrapped: takes one micro-batch from batch_iter, runs the model forward inside the call and returns "
        "(output, partial(postprocess_micro_batch_func, data=batch))",
    ),
    "verl.workers.engine.megatron.transformer_impl:MegatronEngineWithLMHead.postprocess_micro_batch_func": (
        "2cec778ba14ea1c3",
        "returns a tuple whose last element holds model_output; the capture's outputs join it",
    ),
    "verl.models.mcore.util:preprocess_thd_engine": (
        "5e817ba602b52417",
        "THD packing: sequence i at row cu_seqlens_q_padded[i], its real tokens first (the capture's layouts)",
    ),
    "verl.workers.engine.megatron.utils:set_random_seed": (
        "06f396e65ee537dd",
        "calls tensor_parallel.model_parallel_cuda_manual_seed when a device is counted (the CPU backend's shim 4)",
    ),
}
"""Like :data:`PINNED`, for verl's Megatron engine."""


MISSING = "missing"
"""What :func:`source_hash` returns for a function that is no longer there (a seam that moved)."""


def source_hash(qualified: str) -> str:
    """sha256 (first 16 hex digits) of the source of ``module:attr.path`` (wrappers unwrapped to verl's code), or
    :data:`MISSING`."""
    module_name, _, attr_path = qualified.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return MISSING
        obj = stock(obj)
    obj = inspect.unwrap(obj) if not isinstance(obj, type) else obj
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def changed(prefix: str = "", table: dict[str, tuple[str, str]] | None = None) -> dict[str, str]:
    """Pinned entries under ``prefix`` (of ``table``, default :data:`PINNED`) whose source differs from the pin:
    ``{name: 'pinned -> now'}``."""
    out = {}
    for name, (pinned, _why) in (PINNED if table is None else table).items():
        if not name.startswith(prefix):
            continue
        now = source_hash(name)
        if now != pinned:
            out[name] = f"{pinned} -> {now}"
    return out
