# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The three places where verl 0.9.1 hard-codes an accelerator, each wrapped (never copied) for the CPU platform.

Each wrapper passes straight through unless the CPU platform is selected (``VERL_PLATFORM=cpu``); each wrapped
function is pinned in :mod:`verl_rhythm.glue.contract` with the reason.

- ``verl/single_controller/ray/base.py:ResourcePoolManager._check_resource_available`` counts only Ray's ``GPU`` /
  ``NPU`` resources; on the CPU platform the pools ask for CPUs, so the check counts CPUs.
- ``verl/utils/distributed.py:initialize_global_process_group_ray`` builds the backend string
  ``"cpu:gloo,{device}:{backend}"``, which is ``"cpu:gloo,cpu:gloo"`` (a duplicate torch refuses) on CPU; the wrapper
  asks for plain ``gloo``. ``verl/workers/engine_workers.py`` binds the function by name at import, so that module's
  global is replaced too.
- ``verl/utils/config.py:validate_config`` runs in the launcher before Ray starts: the wrapper adds
  :func:`check_config`, so a CPU run with settings the backend cannot honour stops there with one line naming the
  key and the fix.
"""

from __future__ import annotations

import functools
import logging

from omegaconf import OmegaConf

from verl_rhythm.backends.cpu.platform import PLATFORM_NAME, is_selected
from verl_rhythm.post_import import when_imported
from verl_rhythm.wrapping import is_wrapped, mark

logger = logging.getLogger(__name__)


class CPUBackendConfigError(ValueError):
    """A setting the CPU backend cannot run; the message names the key and the fix."""


def _wrap(owner, name: str, make):
    stock = getattr(owner, name)
    if is_wrapped(stock):
        return
    wrapper = make(stock)
    functools.update_wrapper(wrapper, stock)
    mark(wrapper, stock)
    setattr(owner, name, wrapper)


def patch_resource_check(module) -> None:
    def make(stock):
        def _check_resource_available(self):
            if not is_selected():
                return stock(self)
            import ray

            available = sum(node.get("CPU", 0) for node in ray._private.state.available_resources_per_node().values())
            required = sum(n for per_node in self.resource_pool_spec.values() for n in per_node)
            if available < required:
                raise ValueError(
                    f"CPU platform: Ray has {available:g} free CPUs, the resource pools need {required} "
                    "(one per trainer.n_gpus_per_node); raise ray_kwargs.ray_init.num_cpus"
                )

        return _check_resource_available

    _wrap(module.ResourcePoolManager, "_check_resource_available", make)


def patch_process_group(module) -> None:
    def make(stock):
        def initialize_global_process_group_ray(timeout_second=None, backend=None):
            if backend is None and is_selected():
                backend = "gloo"
            return stock(timeout_second=timeout_second, backend=backend)

        return initialize_global_process_group_ray

    _wrap(module, "initialize_global_process_group_ray", make)
    patched = module.initialize_global_process_group_ray

    def rebind(engine_workers) -> None:
        engine_workers.initialize_global_process_group_ray = patched

    when_imported("verl.workers.engine_workers", rebind)


def patch_validate_config(module) -> None:
    def make(stock):
        def validate_config(config, *args, **kwargs):
            check_config(config)
            return stock(config, *args, **kwargs)

        return validate_config

    _wrap(module, "validate_config", make)


def check_config(config) -> None:
    """Refuse, before any worker starts, a configuration that the CPU backend or the ``hf`` rollout cannot run.

    Raises:
        CPUBackendConfigError: naming the key and the fix.
    """
    rollout = config.actor_rollout_ref.rollout
    name = rollout.get("name")
    on_cpu = is_selected()
    if on_cpu and name != "hf":
        raise CPUBackendConfigError(
            f"actor_rollout_ref.rollout.name={name} needs a GPU, but VERL_PLATFORM={PLATFORM_NAME}: "
            "set actor_rollout_ref.rollout.name=hf (the CPU rollout)"
        )
    if name == "hf" and not on_cpu:
        raise CPUBackendConfigError(
            "actor_rollout_ref.rollout.name=hf runs only on the CPU platform: set VERL_PLATFORM=cpu, "
            "or use actor_rollout_ref.rollout.name=vllm on GPUs"
        )
    if not on_cpu:
        return
    mode = config.trainer.get("v1", {}).get("trainer_mode", "sync")
    if config.trainer.get("use_v1", True) and mode == "separate_async":
        raise CPUBackendConfigError(
            f"trainer.v1.trainer_mode={mode} is not supported on the CPU platform: it needs standalone rollout "
            "replicas (the hf rollout runs inside the training workers only) and a non-naive checkpoint engine "
            "(nccl, nixl or mooncake); set trainer.v1.trainer_mode=sync or colocate_async"
        )
    if not config.actor_rollout_ref.get("hybrid_engine", True):
        raise CPUBackendConfigError(
            "actor_rollout_ref.hybrid_engine=false is not supported on the CPU platform: the hf rollout runs only "
            "inside the training workers (verl's hybrid mode), never on replicas of its own; "
            "set actor_rollout_ref.hybrid_engine=true"
        )
    for key in ("tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size"):
        if int(rollout.get(key, 1) or 1) != 1:
            raise CPUBackendConfigError(
                f"actor_rollout_ref.rollout.{key}={rollout.get(key)} must be 1 with the hf rollout"
            )
    for role in ("actor", "ref"):
        strategy = config.actor_rollout_ref.get(role, {}).get("strategy")
        if strategy not in CPU_STRATEGIES:
            raise CPUBackendConfigError(
                f"actor_rollout_ref.{role}.strategy={strategy} is not supported on the CPU platform "
                f"(FSDP1 refuses CPU modules): set actor_rollout_ref.{role}.strategy=fsdp2 (or megatron)"
            )
        if strategy == "megatron":
            megatron_config_problem(config, f"actor_rollout_ref.{role}")
    if config.trainer.get("device", "cpu") != "cpu":
        raise CPUBackendConfigError(
            f"trainer.device={config.trainer.device} but VERL_PLATFORM={PLATFORM_NAME}: set trainer.device=cpu"
        )
    if config.get("critic", {}).get("enable") and config.critic.get("strategy") not in CPU_STRATEGIES:
        raise CPUBackendConfigError(f"critic.strategy={config.critic.strategy}: set critic.strategy=fsdp2 on CPU")
    if config.get("critic", {}).get("enable") and config.critic.get("strategy") == "megatron":
        megatron_config_problem(config, "critic")


CPU_STRATEGIES = (None, "fsdp2", "megatron")
"""The engine strategies the CPU backend runs: verl's FSDP2 engine and its Megatron engine (vanilla mbridge, the shims
of :mod:`verl_rhythm.backends.cpu.megatron`)."""


def megatron_config_problem(config, role: str) -> None:
    """A ``strategy=megatron`` role on the CPU platform: megatron-core and mbridge must be installed
    (``pip install 'verl-rhythm[megatron]'``), the role's config must be verl's Megatron config (``model_engine=
    megatron`` selects it; an FSDP-shaped config with ``strategy=megatron`` has no ``megatron`` section), and mbridge
    must be the vanilla one (the CPU shims build on ``LLMBridge``), with one model replica (no data parallelism) in
    megatron-core's distributed optimizer layout.

    Raises:
        CPUBackendConfigError: naming the key and the fix.
    """
    section = OmegaConf.select(config, role)
    if section is None or section.get("megatron") is None:
        raise CPUBackendConfigError(
            f"{role}.strategy=megatron but {role} is an FSDP config (no {role}.megatron section): add the override "
            "model_engine=megatron, which selects verl's Megatron configs for the actor, the reference and the critic"
        )
    megatron = section.megatron
    world = int(config.trainer.get("n_gpus_per_node", 1)) * int(config.trainer.get("nnodes", 1))
    model_parallel = 1
    for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
        model_parallel *= int(megatron.get(key, 1) or 1)
    if world // model_parallel > 1:
        raise CPUBackendConfigError(
            f"{role}.strategy=megatron with data parallelism ({world} workers, {model_parallel} per model replica) "
            "is not supported on the CPU platform: its optimizer steps on whole gradient buffers, which "
            "megatron-core's distributed optimizer layout (the one verl's weight export reads) reduce-scatters; set "
            f"trainer.n_gpus_per_node to the model-parallel size ({model_parallel})"
        )
    if not megatron.get("use_distributed_optimizer", True):
        raise CPUBackendConfigError(
            f"{role}.megatron.use_distributed_optimizer=false is not supported on the CPU platform: verl's weight "
            "export to the rollout (megatron_utils.load_megatron_model_to_gpu) reads the parameter buffers of the "
            f"distributed optimizer layout; set {role}.megatron.use_distributed_optimizer=true"
        )
    if not megatron.get("vanilla_mbridge", False):
        raise CPUBackendConfigError(
            f"{role}.megatron.vanilla_mbridge=false is not supported on the CPU platform (the CPU shims run "
            f"mbridge's own LLMBridge); set {role}.megatron.vanilla_mbridge=true"
        )
    import importlib.util

    missing = [m for m in ("megatron.core", "mbridge") if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        raise CPUBackendConfigError(
            f"{role}.strategy=megatron needs {' and '.join(missing)}, which are not installed: "
            "pip install 'verl-rhythm[megatron]'"
        )


def _keep_dtype(q, k, v, target_dtype=None):
    """``fa_peft_integration_check`` for the CPU flash-attn: q/k/v as they are (it computes in fp32 anyway)."""
    return q, k, v


def patch_qwen2_vl_dtype(module) -> None:
    """``verl/models/transformers/qwen2_vl.py:_custom_flash_attention_forward`` (the packed, ``use_remove_padding=
    true`` Qwen2-VL / Qwen2.5-VL text attention) casts fp32 q/k/v to bf16 (``fa_peft_integration_check(...,
    target_dtype=torch.bfloat16)``) and returns bf16, which the fp32 ``o_proj`` of the CPU recipe's fp32 model refuses
    (``expected m1 and m2 to have the same dtype``). On the CPU platform every flash-attn call is the CPU
    implementation (bound by the plugin), which computes in fp32: q/k/v keep their dtype (a bf16 model's are bf16
    already)."""
    if is_selected():
        module.fa_peft_integration_check = _keep_dtype
