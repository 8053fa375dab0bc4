# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl's real Megatron engine outside a Ray worker, for the CPU tests and the GPU engine check.

:func:`build_megatron_engine` builds verl 0.9.1's ``MegatronEngineWithLMHead`` (vanilla mbridge) for a local HF model
folder inside an existing ``torch.distributed`` group; :func:`cpu_megatron_backend` registers the CPU backend (its
Megatron shims, :mod:`verl_rhythm.backends.cpu.megatron`) as a ``VERL_PLATFORM=cpu`` process would. Feed the engine
with :func:`verl_rhythm.testing.engine.log_prob_batch` and :func:`~verl_rhythm.testing.engine.run_log_prob_pass`, as
the FSDP engine.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def cpu_megatron_backend() -> Iterator[None]:
    """The CPU backend registered as in a ``VERL_PLATFORM=cpu`` process, the variable restored on exit.

    The shims stay registered (they act only while verl's platform is the CPU platform:
    :func:`verl_rhythm.testing.process_group.cpu_process_group` sets it).
    """
    from verl_rhythm.backends.cpu import plugin

    saved = os.environ.get("VERL_PLATFORM")
    os.environ["VERL_PLATFORM"] = "cpu"
    try:
        plugin.register()
    finally:
        if saved is None:
            os.environ.pop("VERL_PLATFORM")
        else:
            os.environ["VERL_PLATFORM"] = saved
    yield


def build_megatron_engine(model_path: str, *, dtype: str = "float32", forward_only: bool = True):
    """An initialised verl ``MegatronEngineWithLMHead`` (vanilla mbridge, packed THD rows), its ``forward_step``
    wrapped by the rhythm glue (:mod:`verl_rhythm.glue.megatron_impl`).

    Needs a ``torch.distributed`` group (one process: TP = PP = CP = 1). The layer spec is mbridge's: megatron-core's
    TransformerEngine spec on a GPU with TransformerEngine, the local spec with the CPU backend's core attention on
    the CPU platform.

    Args:
        model_path: a local HF model folder of an architecture mbridge knows (Llama, Qwen2, ...).
        dtype: ``float32``, ``bfloat16`` or ``float16``. verl's ``McoreEngineConfig.__post_init__`` accepts only the
            latter two (``verl/workers/config/engine.py``); ``float32`` is set on the built config, so the comparison
            with an fp32 dense reference is tight.
        forward_only: verl's ``McoreEngineConfig.forward_only`` (the old-log-prob pass needs no optimizer).
    """
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import HFModelConfig, McoreEngineConfig, McoreOptimizerConfig
    from verl.workers.engine.megatron import transformer_impl

    from verl_rhythm.glue import megatron_impl

    megatron_impl.install(transformer_impl)  # idempotent: the plugin did it when verl imported the engine
    engine_config = McoreEngineConfig(
        forward_only=forward_only, use_mbridge=True, vanilla_mbridge=True, use_remove_padding=True, dtype="bfloat16"
    )
    object.__setattr__(engine_config, "dtype", dtype)
    engine = transformer_impl.MegatronEngineWithLMHead(
        model_config=HFModelConfig(path=str(model_path), use_remove_padding=True),
        engine_config=engine_config,
        optimizer_config=McoreOptimizerConfig(lr_decay_steps=10),
        checkpoint_config=CheckpointConfig(),
    )
    engine.initialize()
    return engine


def core_attention_classes(engine) -> list[str]:
    """The class names of the decoder layers' core attention modules (``TEDotProductAttention`` with
    TransformerEngine, ``DotProductAttention`` or the CPU backend's ``CPUCoreAttention`` with the local spec)."""
    from verl.utils.megatron_utils import unwrap_model

    names = set()
    for chunk in engine.module:
        for layer in unwrap_model(chunk).decoder.layers:
            names.add(type(layer.self_attention.core_attention).__name__)
    return sorted(names)
