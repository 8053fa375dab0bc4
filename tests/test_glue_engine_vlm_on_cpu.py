# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The rhythm capture inside verl 0.9.1's real FSDP engine with vision-language models and images.

Tiny random Qwen2.5-VL and Qwen3-VL (:mod:`verl_rhythm.testing.vlm`) saved as HF folders and built by verl's
``FSDPEngineWithLMHead`` (FSDP2 on a one-process gloo group, verl's own ``apply_monkey_patch``: for Qwen2.5-VL with
packed rows its own attention forward, ``verl/models/transformers/qwen2_vl.py:qwen2_vl_attn_forward``, which calls
flash-attn's varlen kernel directly, here verl-rhythm's CPU flash-attn). Each micro-batch carries nested ``(bsz, 4,
L_i)`` position ids and per-sample ``multi_modal_inputs`` (pixels, image grids), as verl's agent loop stores them;
the engine packs them into one ``(4, 1, T)`` row or pads them. The statistics must equal the dense reference of the
text decoder's eager maps, sequence by sequence, and the log-probs those of a stock pass.
"""

import pytest
import torch

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue import qwen2_vl
from verl_rhythm.glue.tq_fields import FAI, SEQ_STATS, WAAD
from verl_rhythm.testing.engine import build_engine, run_log_prob_pass
from verl_rhythm.testing.process_group import cpu_process_group
from verl_rhythm.testing.vlm import VLM_ARCHS, image_sequences, vlm_dense_rhythm, vlm_log_prob_batch, vlm_model

CFG = RhythmConfig(layers=(1, 3, 4), waad_window=4, fai_horizon_lo=3, fai_horizon_hi=12, chunk_size=7)
SPECS = [(6, 14), (3, 12, (1, 4, 8)), (10, 9), (4, 16)]


@pytest.fixture(scope="module")
def process_group():
    with cpu_process_group():
        yield


SEEDS = (0, 5)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Per arch: the saved model's folder, and per seed the sequences, their batch triples and the dense reference.

    The references are computed here, before any engine exists: verl's ``apply_monkey_patch`` replaces the forwards
    of the transformers classes themselves (process-wide), after which no eager map of the stock model is to be had.
    """
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLAttention

    assert "qwen2_5_vl" in Qwen2_5_VLAttention.forward.__module__, "verl patched the classes before the reference"
    out = {}
    for arch in VLM_ARCHS:
        model = vlm_model(arch)
        path = tmp_path_factory.mktemp(arch)
        model.save_pretrained(path)
        cases = {}
        for seed in SEEDS:
            sequences = image_sequences(model, SPECS, seed=seed)
            _, triples = vlm_log_prob_batch(sequences, capture=None)
            cases[seed] = (sequences, triples, vlm_dense_rhythm(model, sequences, triples, CFG))
        out[arch] = (str(path), cases)
    return out


@pytest.fixture
def flash_for_verl(cpu_flash_attn):
    """The CPU flash-attn, also bound where verl's Qwen2-VL attention forward looks for it (the CPU backend does
    this when verl imports that module on the CPU platform)."""
    import verl.models.transformers.qwen2_vl as verl_qwen2_vl

    from verl_rhythm.backends.cpu.plugin import _serve_flash_attention_to_qwen2_vl

    added = not hasattr(verl_qwen2_vl, "flash_attn_varlen_func")
    _serve_flash_attention_to_qwen2_vl(verl_qwen2_vl)
    yield
    if added:
        for name in ("flash_attn_func", "flash_attn_varlen_func", "_flash_supports_window_size",
                     "_flash_supports_deterministic", "_flash_use_top_left_mask"):  # fmt: skip
            delattr(verl_qwen2_vl, name)


@pytest.fixture
def fp32_qwen2_vl_attention(monkeypatch):
    """verl's Qwen2-VL attention forward casts fp32 q/k/v to bf16 before its kernel (``_custom_flash_attention_forward``
    calls ``fa_peft_integration_check(..., target_dtype=torch.bfloat16)``: CUDA flash-attn has no fp32 kernel). The
    CPU flash-attn has one, so for an exact fp32 comparison that one call keeps the dtype here; everything else of
    verl's path runs as is (the bf16 case below runs it untouched)."""
    import verl.models.transformers.qwen2_vl as verl_qwen2_vl

    monkeypatch.setattr(verl_qwen2_vl, "fa_peft_integration_check", lambda q, k, v, target_dtype=None: (q, k, v))


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, attn, rmpad",
    [
        # padded first: verl's patch of the attention class (packed rows) lasts for the rest of the process
        ("qwen2_5_vl", "sdpa", False),  # padded: (4, B, T) position ids, transformers' own attention
        ("qwen2_5_vl", "flash_attention_2", True),  # verl's qwen2_vl_attn_forward: FA2 varlen on the packed row
        ("qwen3_vl", "flash_attention_2", True),  # transformers' attention, FA2 segments from position_ids[0]
        ("qwen3_vl", "sdpa", True),  # packed, SDPA with the block-causal mask built from position_ids[0]
        ("qwen3_vl", "eager", False),
    ],
)
def test_vlm_engine_log_prob_pass_returns_the_dense_reference_statistics(
    process_group, models, request, arch, attn, rmpad
):
    if attn == "flash_attention_2":
        request.getfixturevalue("flash_for_verl")
    if arch == "qwen2_5_vl" and rmpad:
        request.getfixturevalue("fp32_qwen2_vl_attention")
    path, cases = models[arch]
    sequences, _, ref = cases[0]
    engine = build_engine(path, attn_implementation=attn, use_remove_padding=rmpad)
    batch, _ = vlm_log_prob_batch(sequences, capture=CFG, use_remove_padding=rmpad, micro_batch_size=2)
    out = run_log_prob_pass(engine, batch)
    # Qwen2.5-VL on packed rows ran verl's own attention forward, which the capture saw through its kernels
    if arch == "qwen2_5_vl" and rmpad:
        assert qwen2_vl.is_installed()
    lengths = [s["response_len"] for s in sequences]
    for key in (WAAD, FAI):
        assert out[key].is_nested and out[key].offsets().diff().tolist() == lengths, key
    for i, r in enumerate(ref):
        n = lengths[i]
        torch.testing.assert_close(out[WAAD][i], r.waad[-n:], atol=2e-5, rtol=1e-5, msg=f"WAAD of sequence {i}")
        torch.testing.assert_close(out[FAI][i], r.fai[-n:], atol=2e-6, rtol=1e-5, msg=f"FAI of sequence {i}")
        stats = out[SEQ_STATS][i]
        torch.testing.assert_close(stats[0], r.span[r.local_heads].mean(), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(stats[1], r.span[r.global_heads].mean(), atol=1e-4, rtol=1e-5)
    stock_batch, _ = vlm_log_prob_batch(sequences, capture=None, use_remove_padding=rmpad, micro_batch_size=2)
    stock = run_log_prob_pass(engine, stock_batch)
    for key in ("log_probs", "entropy"):
        torch.testing.assert_close(out[key].values(), stock[key].values(), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_qwen2_5_vl_in_bf16_through_verls_attention_forward_untouched(process_group, models, flash_for_verl):
    """verl's GPU configuration for Qwen2.5-VL: bf16 parameters, packed rows, verl's own attention forward casting
    q/k/v to bf16 for flash-attn. The capture reads that forward's q/k: the fp32 dense reference up to bf16
    rounding (WAAD: the bound of the text models' bf16 check in tests/test_glue_engine_on_cpu.py)."""
    path, cases = models["qwen2_5_vl"]
    sequences, _, ref = cases[5]
    engine = build_engine(path, attn_implementation="flash_attention_2", use_remove_padding=True, param_dtype="bf16")
    batch, _ = vlm_log_prob_batch(sequences, capture=CFG, micro_batch_size=2)
    out = run_log_prob_pass(engine, batch)
    worst = 0.0
    for i, r in enumerate(ref):
        n = sequences[i]["response_len"]
        torch.testing.assert_close(out[WAAD][i], r.waad[-n:], atol=0.012, rtol=0, msg=f"WAAD of sequence {i}")
        # FAI here reaches 0.1 (H_lo = 3, H_hi = 12 average few rows): bf16 rounding within 1 % of that
        torch.testing.assert_close(out[FAI][i], r.fai[-n:], atol=1e-3, rtol=0, msg=f"FAI of sequence {i}")
        worst = max(worst, float((out[WAAD][i] - r.waad[-n:]).abs().max()))
    assert worst > 0  # bf16 really ran
