# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl's real Megatron engine (``MegatronEngineWithLMHead``, vanilla mbridge) outside a Ray worker, for the CPU tests
and the GPU engine check (``benchmarks/gpu_engine_check.py --engine megatron``).

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
    model_path: str,
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    dtype: str = "float32",
    forward_only: bool = True,
    optimizer: dict | None = None,
):
    """An initialised verl ``MegatronEngineWithLMHead`` (vanilla mbridge, THD packed rows), its ``forward_step``
    wrapped by the rhythm glue (:mod:`verl_rhythm.glue.megatron_impl`).

    Needs a gloo (or NCCL) group of ``tensor_parallel * pipeline_parallel`` ranks (or a multiple: data parallelism)
    and, on CPU, the CPU backend registered (:func:`cpu_backend_registered`). The layer spec is mbridge's:
    megatron-core's TransformerEngine spec on a GPU with TransformerEngine, the local spec with the CPU backend's core
    attention on the CPU platform (:func:`core_attention_classes` says which).

    Args:
        model_path: a local HF model folder (a tiny Llama: :func:`verl_rhythm.testing.tiny.save_tiny_model`).
        tensor_parallel, pipeline_parallel: verl's ``tensor_model_parallel_size`` / ``pipeline_model_parallel_size``
            (megatron-core's sequence parallelism stays off on CPU: the CPU backend's shim 7).
        dtype: ``float32``, ``bfloat16`` or ``float16``. verl's ``McoreEngineConfig.__post_init__`` accepts only the
            latter two (``verl/workers/config/engine.py``); ``float32`` is set on the built config, so the comparison
            with an fp32 dense reference is tight.
        forward_only: verl's ``McoreEngineConfig.forward_only`` (``False`` builds the optimizer and scheduler).
        optimizer: keyword arguments of verl's ``McoreOptimizerConfig`` (default: ``lr_decay_steps=10``).
    """
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import HFModelConfig, McoreEngineConfig, McoreOptimizerConfig
    from verl.workers.engine.megatron import transformer_impl

    from verl_rhythm.glue import megatron_impl

    megatron_impl.install(transformer_impl)  # idempotent: the plugin did it when verl imported the engine
    engine_config = McoreEngineConfig(
        forward_only=forward_only,
        use_mbridge=True,
        vanilla_mbridge=True,
        use_remove_padding=True,
        dtype="bfloat16",
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
    )
    object.__setattr__(engine_config, "dtype", dtype)
    engine = transformer_impl.MegatronEngineWithLMHead(
        model_config=HFModelConfig(path=str(model_path), use_remove_padding=True),
        engine_config=engine_config,
        optimizer_config=McoreOptimizerConfig(**(optimizer or {"lr_decay_steps": 10})),
        checkpoint_config=CheckpointConfig(),
    )
    engine.initialize()
    return engine


def core_attention_classes(engine) -> list[str]:
    """The class names of the engine's decoder layers' core attention modules (``TEDotProductAttention`` with
    TransformerEngine; the CPU backend's ``CPUCoreAttention`` with the local spec on the CPU platform)."""
    from verl.utils.megatron_utils import unwrap_model

    return sorted(
        {
            type(layer.self_attention.core_attention).__name__
            for chunk in engine.module
            for layer in unwrap_model(chunk).decoder.layers
        }
    )


def assert_equals_dense(out: dict, stock: dict, reference: list, response_lengths: list[int]) -> None:
    """The rhythm outputs of a capturing Megatron pass against the dense reference, and its log-probs against the
    stock pass with the same micro-batches.

    Args:
        out: the capturing pass's model outputs (:func:`verl_rhythm.testing.engine.run_log_prob_pass`): nested
            ``rhythm_waad`` / ``rhythm_fai`` ``(bsz, R_i)``, ``rhythm_seq_stats`` ``(bsz, 3)``, ``log_probs``,
            ``entropy``.
        stock: the stock pass's outputs (no capture key).
        reference: :func:`verl_rhythm.testing.engine.dense_rhythm` of the same sequences and config.
        response_lengths: R_i per sequence.

    Raises:
        AssertionError: WAAD/FAI beyond 2e-6 (abs) + 1e-5 (rel), a head-group span mean beyond 1e-5, or log-probs /
            entropy not bit-identical to the stock pass's.
    """
    import torch

    from verl_rhythm.glue.tq_fields import FAI, SEQ_STATS, WAAD

    assert {WAAD, FAI, SEQ_STATS} <= set(out), sorted(out)
    for i, ref in enumerate(reference):
        r = response_lengths[i]
        assert out[WAAD][i].shape == (r,) and out[FAI][i].shape == (r,)
        torch.testing.assert_close(out[WAAD][i], ref.waad[-r:], atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(out[FAI][i], ref.fai[-r:], atol=2e-6, rtol=1e-5)
        span_local, span_global = out[SEQ_STATS][i][:2]
        torch.testing.assert_close(span_local, ref.span[ref.local_heads].mean(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(span_global, ref.span[ref.global_heads].mean(), atol=1e-5, rtol=1e-5)
        assert torch.equal(out["log_probs"][i], stock["log_probs"][i])
        assert torch.equal(out["entropy"][i], stock["entropy"][i])


def assert_log_probs_match_hf(stock: dict, hf_model, sequences) -> None:
    """A stock Megatron pass's log-probs against the HF model of the same weights (the weights were converted and,
    under TP/PP, split right): each sequence alone, every position but the last (whose log-prob depends on the packing
    neighbour that follows it), within 2e-6.

    Args:
        stock: the pass's model outputs: nested ``log_probs`` ``(bsz, L_i)``.
        hf_model: a transformers causal LM (eager attention, fp32).
        sequences: ``(prompt (P,), response (R,), response_mask (R,))`` per sequence, as fed to the pass.
    """
    import torch

    for i, (prompt, response, _) in enumerate(sequences):
        ids = torch.cat([prompt, response])[None]
        with torch.no_grad():
            logits = hf_model(ids, use_cache=False).logits[0, :-1].float()
        reference = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
        torch.testing.assert_close(stock["log_probs"][i][:-1], reference, atol=2e-6, rtol=0)
