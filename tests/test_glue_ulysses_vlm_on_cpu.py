# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The rhythm capture of vision-language models under verl's Ulysses sequence parallelism (sp = 2, two gloo ranks).

verl's engine packs the micro-batch into one ``(4, 1, T)`` row, pads it to a multiple of 2 (``ulysses_pad``: the pad
segment's positions restart at 0) without slicing it; the model embeds the images, then verl's
``patch_vlm_for_ulysses_input_slicing`` gives each rank half the embedded row. The decoder's all-to-all differs:

- Qwen2.5-VL: verl's own attention forward (``verl/models/transformers/qwen2_vl.py:_custom_flash_attention_forward``)
  gathers q/k/v and the text positions, then calls flash-attn's varlen kernel, where the capture records
  (:mod:`verl_rhythm.glue.qwen2_vl`);
- Qwen3-VL: transformers' attention and verl's ``_ulysses_flash_attention_forward``, where the capture records
  (:mod:`verl_rhythm.glue.monkey_patch`); the vision tower's calls (no position ids) are not gathered and pass
  through.

Every rank must return the statistics of the dense reference (text decoder's eager maps) and the same log-probs as
sequence-parallel size 1. FlashAttention-2 is verl-rhythm's CPU flash-attn, fp32.
"""

from __future__ import annotations

import pytest
import torch

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue.tq_fields import FAI, SEQ_STATS, WAAD
from verl_rhythm.testing.engine import build_engine, run_log_prob_pass
from verl_rhythm.testing.process_group import cpu_process_group, spawn_cpu_group
from verl_rhythm.testing.vlm import VLM_ARCHS, image_sequences, vlm_dense_rhythm, vlm_log_prob_batch, vlm_model

pytestmark = pytest.mark.slow

CFG = RhythmConfig(layers=(1, 3, 4), waad_window=4, fai_horizon_lo=3, fai_horizon_hi=12, chunk_size=7)
SPECS = [(6, 15), (3, 12, (1, 4, 8)), (9, 9), (4, 16)]
"""Micro-batches of two sequences with odd token counts (44 + 33 = 77, 33 + 38 = 71): verl pads each row for sp = 2."""
KEYS = (WAAD, FAI, SEQ_STATS)


def log_prob_pass(model_path: str, sp: int, sequences) -> dict[str, list[torch.Tensor]]:
    """verl's engine with FlashAttention-2 (CPU flash-attn) and Ulysses size ``sp``: the log-prob pass outputs.

    verl's Qwen2-VL forward casts fp32 q/k/v to bf16 for CUDA flash-attn (``fa_peft_integration_check``); the CPU
    flash-attn runs fp32, so that one call keeps the dtype here, for an exact comparison."""
    import verl.models.transformers.qwen2_vl as verl_qwen2_vl

    from verl_rhythm.backends.cpu.flash_attn import install
    from verl_rhythm.backends.cpu.plugin import _serve_flash_attention_to_qwen2_vl

    install.install()
    _serve_flash_attention_to_qwen2_vl(verl_qwen2_vl)
    verl_qwen2_vl.fa_peft_integration_check = lambda q, k, v, target_dtype=None: (q, k, v)
    try:
        engine = build_engine(model_path, attn_implementation="flash_attention_2", ulysses_sequence_parallel_size=sp)
        batch, _ = vlm_log_prob_batch(sequences, capture=CFG, micro_batch_size=2)
        out = run_log_prob_pass(engine, batch)
    finally:
        install.uninstall()
    return {key: [t.clone() for t in value.unbind()] for key, value in out.items()}


def rank_pass(rank: int, model_path: str, sequences) -> dict[str, list[torch.Tensor]]:
    return log_prob_pass(model_path, 2, sequences)


@pytest.mark.parametrize("arch", VLM_ARCHS)
def test_vlm_sequence_parallel_2_equals_the_dense_reference_and_size_1(tmp_path, arch):
    model = vlm_model(arch)
    model.save_pretrained(tmp_path)
    sequences = image_sequences(model, SPECS)
    _, triples = vlm_log_prob_batch(sequences, capture=None)
    reference = vlm_dense_rhythm(model, sequences, triples, CFG)  # before verl patches the classes in this process
    ranks = spawn_cpu_group(2, rank_pass, str(tmp_path), sequences)
    with cpu_process_group():
        single = log_prob_pass(str(tmp_path), 1, sequences)
    for key in KEYS:  # every rank ends with the statistics of the whole micro-batch, identical across ranks
        for a, b in zip(ranks[0][key], ranks[1][key], strict=True):
            if key == SEQ_STATS:  # the third column is each rank's own capture time
                a, b = a[:2], b[:2]
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    for i, ref in enumerate(reference):
        n = sequences[i]["response_len"]
        for got in (ranks[0], single):
            torch.testing.assert_close(got[WAAD][i], ref.waad[-n:], atol=2e-5, rtol=1e-5, msg=f"WAAD {i}")
            torch.testing.assert_close(got[FAI][i], ref.fai[-n:], atol=2e-6, rtol=1e-5, msg=f"FAI {i}")
        stats = ranks[0][SEQ_STATS][i]
        torch.testing.assert_close(stats[0], ref.span[ref.local_heads].mean(), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(stats[1], ref.span[ref.global_heads].mean(), atol=1e-4, rtol=1e-5)
    for a, b in zip(ranks[0]["log_probs"], single["log_probs"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
