# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl's real Megatron engine (``MegatronEngineWithLMHead``, vanilla mbridge) on the CPU platform, for the tests.

Needs megatron-core and mbridge (the ``megatron`` environment of ``tests/matrix.sh``) and a ``torch.distributed``
gloo group (:func:`verl_rhythm.testing.process_group.cpu_process_group`, or
:func:`~verl_rhythm.testing.process_group.spawn_cpu_group` for several ranks). Nothing here is used by a training run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def cpu_backend_registered() -> Iterator[None]:
    """The CPU backend registered as in a ``VERL_PLATFORM=cpu`` process (its Megatron shims included), then the
    variable restored on exit; the shims act only while verl's platform is the CPU platform."""
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


def build_megatron_engine(
    model_path: str, *, tensor_parallel: int = 1, pipeline_parallel: int = 1, sequence_parallel: bool = False
):
    """An initialised verl ``MegatronEngineWithLMHead`` (forward only, THD packed rows, fp32 parameters).

    Needs the CPU backend registered (:func:`cpu_backend_registered`) and a gloo group of
    ``tensor_parallel * pipeline_parallel`` ranks (or a multiple: data parallelism).

    Args:
        model_path: a local HF model folder (a tiny Llama: :func:`verl_rhythm.testing.tiny.save_tiny_model`).
        tensor_parallel, pipeline_parallel: verl's ``tensor_model_parallel_size`` / ``pipeline_model_parallel_size``.
        sequence_parallel: megatron-core's sequence parallelism under TP (``McoreEngineConfig.sequence_parallel``).
    """
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import HFModelConfig, McoreEngineConfig, McoreOptimizerConfig
    from verl.workers.engine.megatron import transformer_impl

    engine_config = McoreEngineConfig(
        forward_only=True,
        use_mbridge=True,
        vanilla_mbridge=True,
        use_remove_padding=True,
        dtype="bfloat16",
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        sequence_parallel=sequence_parallel,
        # vanilla mbridge turns sequence parallelism on with TP (mbridge/core/llm_bridge.py), which megatron-core's
        # local-spec norms refuse (megatron/core/transformer/torch_norm.py:WrappedTorchNorm)
        override_transformer_config={"sequence_parallel": sequence_parallel},
    )
    # McoreEngineConfig.__post_init__ accepts only bfloat16/float16; the tests compute in fp32 so that the
    # comparison with the fp32 dense reference is tight
    object.__setattr__(engine_config, "dtype", "float32")
    engine = transformer_impl.MegatronEngineWithLMHead(
        model_config=HFModelConfig(path=str(model_path), use_remove_padding=True),
        engine_config=engine_config,
        optimizer_config=McoreOptimizerConfig(lr_decay_steps=10),
        checkpoint_config=CheckpointConfig(),
    )
    engine.initialize()
    return engine
