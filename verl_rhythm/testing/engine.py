# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl's real FSDP engine outside a Ray worker: build it, feed it v1-format batches, read the rhythm outputs.

For the CPU tests (with :func:`verl_rhythm.testing.process_group.cpu_process_group`) and the GPU check script
(``benchmarks/gpu_engine_check.py``). Nothing here is used by a training run. What a Ray worker adds on top is
exactly what :class:`verl.workers.engine_workers.TrainingWorker.infer_batch` adds: the engine defaults as non-tensor
data (:func:`log_prob_batch` sets them) and ``eval_mode`` around ``infer_batch`` (:func:`run_log_prob_pass`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue.tq_fields import CAPTURE_KEY, capture_request


def build_engine(
    model_path: str,
    *,
    attn_implementation: str = "sdpa",
    use_remove_padding: bool = True,
    param_dtype: str = "fp32",
    strategy: str = "fsdp2",
    enable_gradient_checkpointing: bool = True,
    ulysses_sequence_parallel_size: int = 1,
    engine_class: type | None = None,
):
    """An initialised verl ``FSDPEngineWithLMHead`` for the actor, its ``forward_step`` wrapped by the rhythm glue
    (:mod:`verl_rhythm.glue.transformer_impl`).

    Needs a ``torch.distributed`` process group (one process is enough; Ulysses needs its sp ranks).

    Args:
        model_path: a local HF model folder.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2`` (verl's
            ``actor_rollout_ref.model.override_config.attn_implementation``).
        use_remove_padding: pack each micro-batch into one row (verl's default) or pad it.
        param_dtype: FSDP mixed-precision parameter dtype (``fp32``, ``bf16``); sets the forward's autocast.
        strategy: ``fsdp`` or ``fsdp2``.
        engine_class: the engine class to build (default verl's ``FSDPEngineWithLMHead``; a subclass that keeps its
            ``forward_step`` and module building, e.g. to stand for ``fsdp_turbo``'s engine).
        enable_gradient_checkpointing: as verl's actor default (on).
        ulysses_sequence_parallel_size: verl's Ulysses sequence parallelism (packed rows, FlashAttention-2).
    """
    from verl.trainer.config import CheckpointConfig
    from verl.workers.config import FSDPEngineConfig, FSDPOptimizerConfig, HFModelConfig
    from verl.workers.engine.fsdp import transformer_impl

    from verl_rhythm.glue import transformer_impl as glue

    glue.install(transformer_impl)  # idempotent: the plugin did it when verl imported the engine

    model_config = HFModelConfig(
        path=model_path,
        load_tokenizer=False,
        use_remove_padding=use_remove_padding,
        enable_gradient_checkpointing=enable_gradient_checkpointing,
        override_config={"attn_implementation": attn_implementation},
    )
    precision = {"param_dtype": param_dtype, "reduce_dtype": "fp32", "buffer_dtype": "fp32"}
    engine_config = FSDPEngineConfig(
        strategy=strategy,
        forward_only=False,  # the actor trains; forward_only would put the FSDP params on CPU offload
        model_dtype="fp32",
        use_torch_compile=False,
        mixed_precision=precision,
        ulysses_sequence_parallel_size=ulysses_sequence_parallel_size,
    )
    engine = (engine_class or transformer_impl.FSDPEngineWithLMHead)(
        model_config=model_config,
        engine_config=engine_config,
        optimizer_config=FSDPOptimizerConfig(lr=1e-6),
        checkpoint_config=CheckpointConfig(),
    )
    engine.initialize()
    return engine


def random_sequences(
    lengths: Sequence[tuple[int, int]], *, hole: int, seed: int = 0, vocab: int = 128
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Random ``(prompt, response, response_mask)`` per sequence, with a hole in each response mask.

    Args:
        lengths: ``(prompt length, response length)`` per sequence.
        hole: tokens masked out from the middle of each response (``response_mask`` 0 from ``r // 2``), like a tool
            output in a multi-turn response.
        seed: the generator's seed.
        vocab: token ids are drawn from ``[0, vocab)``.

    Returns:
        per sequence: prompt ``(p,)``, response ``(r,)`` and response mask ``(r,)``, all long.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for p, r in lengths:
        mask = torch.ones(r, dtype=torch.long)
        mask[r // 2 : r // 2 + hole] = 0
        out.append((torch.randint(0, vocab, (p,), generator=g), torch.randint(0, vocab, (r,), generator=g), mask))
    return out


def log_prob_batch(
    sequences: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    capture: RhythmConfig | None,
    use_remove_padding: bool = True,
    micro_batch_size: int = 2,
    use_dynamic_bsz: bool = False,
    max_token_len: int = 4096,
    temperature: float = 1.0,
) -> TensorDict:
    """A batch as the actor's ``compute_log_prob`` receives it from TransferQueue in verl 0.9.1's v1 trainer.

    Tensor fields follow ``verl/trainer/ppo/v1/agent_loop_tq.py:_agent_loop_postprocess`` (nested per sequence);
    non-tensor fields are ``_compute_old_log_prob``'s ``extra_info`` plus ``TrainingWorker.infer_batch``'s defaults.

    Args:
        sequences: ``(prompt_ids (P,), response_ids (R,), response_mask (R,))`` per sequence.
        capture: the rhythm config to capture with (sets :data:`CAPTURE_KEY`), or ``None`` for a stock pass.
        use_remove_padding, micro_batch_size, use_dynamic_bsz, max_token_len, temperature: engine settings.
    """

    def nested(rows):
        return torch.nested.as_nested_tensor(list(rows), layout=torch.jagged)

    input_ids = [torch.cat([p, r]).long() for p, r, _ in sequences]
    td = TensorDict(
        {
            "input_ids": nested(input_ids),
            "position_ids": nested(torch.arange(x.numel()) for x in input_ids),
            "attention_mask": nested(torch.ones_like(x) for x in input_ids),
            "prompts": nested(p.long() for p, _, _ in sequences),
            "responses": nested(r.long() for _, r, _ in sequences),
            "response_mask": nested(m.long() for _, _, m in sequences),
            "loss_mask": nested(m.long() for _, _, m in sequences),
        },
        batch_size=len(sequences),
    )
    extra = {
        "calculate_entropy": True,
        "compute_loss": False,
        "temperature": temperature,
        "use_remove_padding": use_remove_padding,
        "use_dynamic_bsz": use_dynamic_bsz,
        "max_token_len_per_gpu": max_token_len,
        "micro_batch_size_per_gpu": micro_batch_size,
        "use_fused_kernels": False,
    }
    if capture is not None:
        extra[CAPTURE_KEY] = capture_request(capture)
    tu.assign_non_tensor(td, **extra)
    return td


def run_log_prob_pass(engine, batch: TensorDict) -> dict[str, torch.Tensor]:
    """``engine.infer_batch`` under ``eval_mode``, as ``TrainingWorker.infer_batch`` runs it; the model outputs
    (empty on a Megatron pipeline stage other than the last, which returns none)."""
    with engine.eval_mode():
        output = engine.infer_batch(batch, loss_function=None)
    return {k: v.cpu() if v.device.type != "cpu" else v for k, v in output.get("model_output", {}).items()}


def dense_rhythm(model, sequences, cfg: RhythmConfig) -> list:
    """The dense reference for :func:`log_prob_batch`'s sequences: each run alone through ``model`` (eager attention,
    ``output_attentions=True``), then :mod:`verl_rhythm.testing.dense` alone: its own layer choice (from the model
    config's layer count and ``layer_types``), spans, groups, WAAD and FAI. No capture, grouping or layer-selection
    code of the product is used.

    Args:
        model: a transformers causal LM with eager attention, on the device the sequences go to.
        sequences: as for :func:`log_prob_batch`.
        cfg: the rhythm config (layers, W, H_lo, H_hi, head_quantile, head_group_scope), read as plain attributes.

    Returns:
        one :class:`~verl_rhythm.testing.dense.DenseRhythm` per sequence (CPU tensors), over its prompt + response
        positions (the ``micro_batch`` scope groups over all ``sequences`` together).
    """
    from verl_rhythm.testing import dense

    device = next(model.parameters()).device
    layers = dense.model_layers(model.config, cfg.layers)
    maps, masks, heads = [], [], None
    for prompt, response, mask in sequences:
        ids = torch.cat([prompt, response])[None].to(device)
        with torch.no_grad():
            attentions = model(ids, output_attentions=True).attentions
        m, heads = dense.attention_maps_for_sequence(attentions, layers, 0, torch.arange(ids.shape[1], device=device))
        maps.append(m)
        masks.append(torch.cat([torch.zeros(len(prompt), dtype=torch.bool), mask.cpu().bool()]).to(device))
        del attentions
    out = dense.rhythm_for_sequences(maps, masks, heads or [], cfg)
    for r in out:  # results on the host, whatever device the maps were on
        r.waad, r.fai, r.span = r.waad.cpu(), r.fai.cpu(), r.span.cpu()
        r.local_heads, r.global_heads = r.local_heads.cpu(), r.global_heads.cpu()
    return out
