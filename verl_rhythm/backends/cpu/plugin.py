# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``verl.plugins`` entry point of the CPU backend: registrations only, each deferred to the verl module it belongs to.

``import verl`` imports this module in every process. Unless the process selects the CPU platform
(``VERL_PLATFORM=cpu``, which Ray workers inherit from the launcher) it does nothing at all: no platform, no rollout,
no patch, so a GPU user's verl is verl. On the CPU platform it registers the ``cpu`` platform at once (verl's
platform module is already imported by then) and arranges the rest for the moment verl imports the module concerned
(:func:`verl_rhythm.post_import.when_imported`), so a process that never trains or never builds a rollout pays
nothing:

=================================================  ==================================================================
verl module                                        registration
=================================================  ==================================================================
``verl.workers.rollout.replica``                   ``RolloutReplicaRegistry.register("hf", loader)``
``verl.workers.rollout.base``                      ``_ROLLOUT_REGISTRY[("hf", "async")]`` (a plain dict, no public
                                                   API; pinned)
``verl.workers.engine.fsdp.transformer_impl``      the stock FSDP engines under ``EngineRegistry`` device ``cpu``
``verl.workers.engine.megatron.transformer_impl``  the stock Megatron engines under ``EngineRegistry`` device ``cpu``
``verl.single_controller.ray.base``                the resource check counts CPUs on the CPU platform (patches.py)
``verl.utils.distributed``                         a ``gloo`` process group on the CPU platform (patches.py)
``verl.utils.config``                              start-up checks of the CPU backend's settings (patches.py)
``transformers.modeling_utils``                    on the CPU platform, transformers' ``flash_attention_2`` runs the
                                                   CPU implementation of flash-attn's API (:mod:`.flash_attn`)
``verl.models.transformers.qwen2_vl``              its flash-attn globals bound to that CPU implementation; its
                                                   packed attention keeps fp32 q/k/v fp32 (patches.py)
``megatron.core``, ``mbridge.core``, verl's        the shims that run verl's Megatron engine on CPU (:mod:`.megatron`)
Megatron engine (seven modules)
=================================================  ==================================================================

The wrappers of :mod:`.patches` act on the CPU platform only, and pass everything else through to verl unchanged.
"""

from __future__ import annotations

import logging

from verl_rhythm.backends.cpu import PLATFORM_NAME, requested
from verl_rhythm.post_import import when_imported

ROLLOUT_NAME = "hf"
ADAPTER_FQN = "verl_rhythm.backends.cpu.rollout.HFServerAdapter"


def _load_replica():
    from verl_rhythm.backends.cpu.rollout import HFReplica

    return HFReplica


def _register_replica(module) -> None:
    module.RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)


def _register_adapter(module) -> None:
    module._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = ADAPTER_FQN


def _register_engine(module) -> None:
    from verl.workers.engine.base import EngineRegistry

    for backend in ("fsdp", "fsdp2"):
        try:
            EngineRegistry.register(model_type="language_model", backend=backend, device=PLATFORM_NAME)(
                module.FSDPEngineWithLMHead
            )
        except AssertionError:  # verl's answer to a key registered before (by another plugin): keep theirs
            logging.getLogger(__name__).info("EngineRegistry already holds a %s engine for device cpu", backend)


def _register_megatron_engine(module) -> None:
    """verl's own ``MegatronEngineWithLMHead`` (the actor, the reference) and ``MegatronEngineWithValueHead`` (the
    critic) under device ``cpu``: verl registers them for its accelerators only (``EngineRegistry.register(...,
    backend="megatron")`` with the default devices)."""
    from verl.workers.engine.base import EngineRegistry

    for model_type, engine in (
        ("language_model", module.MegatronEngineWithLMHead),
        ("value_model", module.MegatronEngineWithValueHead),
    ):
        try:
            EngineRegistry.register(model_type=model_type, backend="megatron", device=PLATFORM_NAME)(engine)
        except AssertionError:  # registered before (by another plugin): keep theirs
            logging.getLogger(__name__).info("EngineRegistry already holds a megatron %s for device cpu", model_type)


def _serve_flash_attention(module) -> None:
    """On the CPU platform, FlashAttention-2 (verl's default attention) is the CPU flash-attn, fp32 allowed (the
    CPU recipe trains in fp32). A real flash_attn package is never shadowed: its CUDA kernels then refuse CPU
    tensors themselves."""
    import importlib.util

    from verl_rhythm.backends.cpu.flash_attn import install

    if not install.is_installed() and importlib.util.find_spec("flash_attn") is None:
        install.install(strict=False)
        logging.getLogger(__name__).info("flash_attention_2 runs verl-rhythm's CPU implementation of flash-attn's API")


def _serve_flash_attention_to_qwen2_vl(module) -> None:
    """verl's Qwen2-VL attention forward (``verl/models/transformers/qwen2_vl.py``) binds flash-attn's functions and
    flags as module globals at import, only where ``transformers.utils.is_flash_attn_2_available()`` (which asks for
    CUDA) says so; on the CPU platform, with the CPU flash-attn in place, they are bound to it as verl would bind
    them. A module that bound them itself is left as it is."""
    import inspect
    import sys

    from verl_rhythm.backends.cpu.flash_attn import install

    if not install.is_installed() or hasattr(module, "flash_attn_varlen_func"):
        return
    flash_attn = sys.modules["flash_attn"]
    parameters = inspect.signature(flash_attn.flash_attn_func).parameters
    module.flash_attn_func = flash_attn.flash_attn_func
    module.flash_attn_varlen_func = flash_attn.flash_attn_varlen_func
    module._flash_supports_window_size = "window_size" in parameters
    module._flash_supports_deterministic = "deterministic" in parameters
    module._flash_use_top_left_mask = False  # flash-attn >= 2.1's bottom-right causal mask, as the CPU kernel's


def _megatron(module_name: str):
    def install(module) -> None:
        from verl_rhythm.backends.cpu import megatron

        megatron.INSTALLERS[module_name](module)

    return install


MEGATRON_MODULES = (
    "megatron.core",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.tensor_parallel",
    "mbridge.core.llm_bridge",
    "mbridge.core.bridge",
    "mbridge.core.auto_bridge",
    "verl.workers.engine.megatron.transformer_impl",
)
"""The modules :mod:`.megatron` shims (its ``INSTALLERS``), each when it is imported."""


def _patch(name: str):
    def install(module) -> None:
        from verl_rhythm.backends.cpu import patches

        getattr(patches, name)(module)

    return install


_registered = False


def register() -> None:
    """On the CPU platform, register it and arrange every other registration (at once for verl modules already
    imported); elsewhere nothing. Idempotent."""
    global _registered
    if _registered or not requested():
        return
    _registered = True
    from verl_rhythm.backends.cpu import platform  # noqa: F401  (registers PlatformRegistry "cpu")

    when_imported("verl.workers.rollout.replica", _register_replica)
    when_imported("verl.workers.rollout.base", _register_adapter)
    when_imported("verl.workers.engine.fsdp.transformer_impl", _register_engine)
    when_imported("verl.workers.engine.megatron.transformer_impl", _register_megatron_engine)
    when_imported("verl.single_controller.ray.base", _patch("patch_resource_check"))
    when_imported("verl.utils.distributed", _patch("patch_process_group"))
    when_imported("verl.utils.config", _patch("patch_validate_config"))
    when_imported("transformers.modeling_utils", _serve_flash_attention)
    when_imported("verl.models.transformers.qwen2_vl", _serve_flash_attention_to_qwen2_vl)
    when_imported("verl.models.transformers.qwen2_vl", _patch("patch_qwen2_vl_dtype"))
    for name in MEGATRON_MODULES:
        when_imported(name, _megatron(name))


register()
