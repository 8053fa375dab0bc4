# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Installing verl-rhythm changes nothing in a process that neither selects the CPU platform nor runs rhythm.

Each test is a fresh Python process (``VERL_PLATFORM`` unset, so verl's own platform detection runs), importing the
verl modules a GPU run imports. Both entry points of the distribution load (verl imports every ``verl.plugins``
entry point); what they change is read back from verl's own objects.
"""

import json
import os
import subprocess
import sys

PROBE = """
import json, sys
import verl
from verl.plugin.platform import PlatformRegistry
import verl.utils.config as config_utils
import verl.utils.distributed as distributed
import verl.single_controller.ray.base as ray_base
import verl.workers.rollout.base as rollout_base
from verl.workers.rollout.replica import RolloutReplicaRegistry
from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp import transformer_impl
import verl.trainer.ppo.core_algos as core_algos
import verl.trainer.ppo.v1.trainer_base as trainer_base
import transformers.modeling_utils as modeling_utils
import verl.models.transformers.monkey_patch as monkey_patch
from verl_rhythm.wrapping import is_wrapped
from verl_rhythm.measure import hook

print(json.dumps({
    "plugins": sorted(m for m in sys.modules if m in ("verl_rhythm.glue.plugin", "verl_rhythm.backends.cpu.plugin")),
    "cpu_platform": PlatformRegistry.get("cpu") is not None,
    "cpu_platform_module": "verl_rhythm.backends.cpu.platform" in sys.modules,
    "validate_config": is_wrapped(config_utils.validate_config),
    "process_group": is_wrapped(distributed.initialize_global_process_group_ray),
    "resource_check": is_wrapped(ray_base.ResourcePoolManager._check_resource_available),
    "hf_adapter": ("hf", "async") in rollout_base._ROLLOUT_REGISTRY,
    "hf_replica": "hf" in RolloutReplicaRegistry._registry,
    "cpu_engine": any("cpu" in str(k) for k in EngineRegistry._engines["language_model"]["fsdp2"]),
    "flash_attn_module": "flash_attn" in sys.modules,
    "ulysses_wrapped": is_wrapped(monkey_patch._flash_attention_forward),
    "attention_hook": hook.is_installed(),
    "rhythm_estimator": "rhythm" in core_algos.ADV_ESTIMATOR_REGISTRY,
    "trainer_wrapped": is_wrapped(trainer_base.PPOTrainer.init),
    "engine_wrapped": is_wrapped(transformer_impl.FSDPEngineWithLMHead.forward_step),
}))
"""


def probe(env: dict[str, str]) -> dict:
    base = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_without_verl_platform_cpu_the_plugin_registers_the_estimator_and_its_seams_only():
    """The CPU backend does nothing; verl's validate_config, process group, resource check, rollout and engine
    registries, platform registry and transformers' attention are verl's and transformers' own. What a rhythm run
    needs is in place: the estimator, and the trainer and engine methods wrapped (each calls the stock method
    unless the run asks for rhythm; see docs/verl-integration.md)."""
    seen = probe({})
    assert seen["plugins"] == ["verl_rhythm.backends.cpu.plugin", "verl_rhythm.glue.plugin"]  # both entry points ran
    assert seen["cpu_platform"] is False and not seen["cpu_platform_module"]
    for untouched in ("validate_config", "process_group", "resource_check", "hf_adapter", "hf_replica", "cpu_engine"):
        assert seen[untouched] is False, untouched
    assert not seen["flash_attn_module"] and not seen["ulysses_wrapped"] and not seen["attention_hook"]
    assert seen["rhythm_estimator"] and seen["trainer_wrapped"] and seen["engine_wrapped"]


def test_with_verl_platform_cpu_the_backend_registers_its_pieces():
    seen = probe({"VERL_PLATFORM": "cpu"})
    assert seen["cpu_platform"] is True
    for registered in ("validate_config", "process_group", "resource_check", "hf_adapter", "hf_replica", "cpu_engine"):
        assert seen[registered] is True, registered
    assert not seen["ulysses_wrapped"] and not seen["attention_hook"]  # installed by the first capture only
