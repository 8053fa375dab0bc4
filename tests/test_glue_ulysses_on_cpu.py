# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The rhythm capture under verl's Ulysses sequence parallelism, in verl's real FSDP engine on two gloo processes.

Each rank runs verl 0.9.1's ``FSDPEngineWithLMHead`` with ``ulysses_sequence_parallel_size=2``: verl pads the packed
row to a multiple of 2, gives each rank half of it, and ``_ulysses_flash_attention_forward`` all-to-alls q/k/v into
whole sequences for half the heads (kv heads repeated where there are fewer kv heads than ranks) before
FlashAttention-2 (transformers' own FA2 code, on the CPU flash-attn). The capture records there and combines the
ranks' heads at ``finalize``; every rank must return the statistics of sequence-parallel size 1 and of the dense
reference. Nothing is mocked; the Ray workers around the engine are absent.
"""

from __future__ import annotations

import pytest
import torch
from models import tiny_model

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue.tq_fields import FAI, SEQ_STATS, WAAD
from verl_rhythm.testing.engine import build_engine, dense_rhythm, log_prob_batch, random_sequences, run_log_prob_pass
from verl_rhythm.testing.process_group import cpu_process_group, spawn_cpu_group

pytestmark = pytest.mark.slow

CFG = RhythmConfig(fai_horizon_hi=30, chunk_size=16)
LENGTHS = [(20, 41), (15, 60), (30, 25), (11, 70), (25, 35), (12, 48)]
"""Micro-batches of 3 sequences with odd token counts (191, 201): verl pads each packed row for sp = 2."""
KEYS = (WAAD, FAI, SEQ_STATS)


def response(values, i):
    """The response positions of sequence i's full-sequence reference statistic (its last r tokens)."""
    return values[values.numel() - LENGTHS[i][1] :]


def make_sequences(seed=0):
    return random_sequences(LENGTHS, hole=3, seed=seed)


def log_prob_pass(model_path: str, sp: int, capture=CFG) -> dict[str, list[torch.Tensor]]:
    """verl's engine with FlashAttention-2 (CPU flash-attn) and Ulysses size ``sp``: the log-prob pass outputs."""
    from verl_rhythm.backends.cpu.flash_attn import install

    install.install()
    try:
        engine = build_engine(model_path, attn_implementation="flash_attention_2", ulysses_sequence_parallel_size=sp)
        out = run_log_prob_pass(engine, log_prob_batch(make_sequences(), capture=capture, micro_batch_size=3))
    finally:
        install.uninstall()
    return {key: [t.clone() for t in value.unbind()] for key, value in out.items()}


def rank_pass(rank: int, model_path: str) -> dict[str, list[torch.Tensor]]:
    return log_prob_pass(model_path, sp=2)


@pytest.mark.parametrize("arch", ["qwen2", "llama_mqa"], ids=["4_heads_4_kv", "4_heads_1_kv"])
def test_sequence_parallel_2_equals_size_1_and_the_dense_reference(tmp_path, arch):
    model = tiny_model(arch, attn_implementation="eager")
    model.save_pretrained(tmp_path)
    ranks = spawn_cpu_group(2, rank_pass, str(tmp_path))
    with cpu_process_group():
        single = log_prob_pass(str(tmp_path), sp=1)
    reference = dense_rhythm(model, make_sequences(), CFG)
    for key in KEYS:  # every rank ends with the statistics of the whole micro-batch, identical across ranks
        for a, b in zip(ranks[0][key], ranks[1][key], strict=True):
            if key == SEQ_STATS:  # local/global mean spans; the third column is each rank's own capture time
                a, b = a[:2], b[:2]
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    for i, ref in enumerate(reference):
        for got in (ranks[0], single):
            torch.testing.assert_close(got[WAAD][i], response(ref.waad, i), atol=2e-5, rtol=1e-5, msg=f"WAAD {i}")
            torch.testing.assert_close(got[FAI][i], response(ref.fai, i), atol=2e-6, rtol=1e-5, msg=f"FAI {i}")
        span = ref.span
        stats = ranks[0][SEQ_STATS][i]  # mean span of the local and the global heads: same groups as the reference
        torch.testing.assert_close(stats[0], span[ref.local_heads].mean(), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(stats[1], span[ref.global_heads].mean(), atol=1e-4, rtol=1e-5)
    # the log-probs of the capturing pass are those of a stock pass (verl gathers them over the ranks)
    for a, b in zip(ranks[0]["log_probs"], single["log_probs"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
