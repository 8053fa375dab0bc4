# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The rhythm capture inside verl 0.9.1's real Megatron engine on CPU, against the dense reference.

The engine is verl's own ``MegatronEngineWithLMHead`` (vanilla mbridge, megatron-core's local layer spec), initialised
for real on a one-process gloo group with TP = PP = CP = 1 and verl's platform set to the CPU platform, whose shims
(``verl_rhythm/backends/cpu/megatron.py``) stand in for CUDA and TransformerEngine. ``infer_batch`` runs verl's
micro-batching, THD packing (``preprocess_thd_engine``), Megatron's forward schedule, the forward step the glue wraps
(``verl_rhythm/glue/megatron_impl.py``) and the output post-processing. The weights come from a tiny random GQA
Llama built in-process; the dense reference runs the same weights through transformers' eager attention.

megatron-core and mbridge are not in the main environment: this file runs in the ``megatron`` environment of
``tests/matrix.sh`` (``tests/constraints-megatron.txt``) and is skipped elsewhere.
"""

import os

import pytest
import torch

pytest.importorskip("megatron.core", reason="megatron-core is installed only in tests/matrix.sh's megatron env")
pytest.importorskip("mbridge", reason="mbridge is installed only in tests/matrix.sh's megatron env")

from verl_rhythm.config import RhythmConfig  # noqa: E402
from verl_rhythm.glue import megatron_impl  # noqa: E402
from verl_rhythm.testing.engine import dense_rhythm, log_prob_batch, random_sequences, run_log_prob_pass  # noqa: E402
from verl_rhythm.testing.megatron import assert_equals_dense, build_megatron_engine, cpu_backend_registered  # noqa: E402
from verl_rhythm.testing.process_group import cpu_process_group  # noqa: E402
from verl_rhythm.testing.tiny import save_tiny_model  # noqa: E402

NUM_LAYERS = 3
LENGTHS = [(5, 8), (9, 4), (3, 12), (6, 5), (7, 14), (4, 9)]
"""(prompt, response) per sequence: every sequence of odd length."""
CFG = RhythmConfig(layers=(0, 1, 2), waad_window=4, fai_horizon_lo=2, fai_horizon_hi=8, chunk_size=16)


def make_sequences(seed=0):
    return random_sequences(LENGTHS, hole=2, seed=seed)


@pytest.fixture(scope="module")
def cpu_backend():
    """The CPU backend registered as in a ``VERL_PLATFORM=cpu`` process (its Megatron shims included)."""
    with cpu_backend_registered():
        yield


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_gqa"), num_layers=NUM_LAYERS)


@pytest.fixture(scope="module")
def engine(cpu_backend, model_path):
    """verl's ``MegatronEngineWithLMHead`` on a one-process gloo group, fp32 parameters."""
    from verl.workers.engine.megatron import transformer_impl

    assert megatron_impl.is_installed(transformer_impl)  # the plugin's post-import hook wrapped forward_step
    with cpu_process_group():
        yield build_megatron_engine(str(model_path))


@pytest.fixture(scope="module")
def hf_model(model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def stock(engine):
    """The stock old-log-prob pass (no capture key) over :data:`LENGTHS`."""
    return run_log_prob_pass(engine, log_prob_batch(make_sequences(), capture=None, micro_batch_size=2))


def test_the_stock_pass_is_verls_and_matches_transformers(stock, hf_model):
    """Without the capture key the engine's outputs are verl's own, and its log-probs those of the HF model."""
    assert sorted(stock) == ["entropy", "log_probs"]
    for i, (prompt, response, _) in enumerate(make_sequences()):
        ids = torch.cat([prompt, response])[None]
        with torch.no_grad():
            logits = hf_model(ids, use_cache=False).logits[0, :-1].float()
        reference = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
        torch.testing.assert_close(stock["log_probs"][i][:-1], reference, atol=2e-6, rtol=0)


@pytest.mark.parametrize(
    "cfg, dynamic",
    [(CFG, False), (RhythmConfig(layers=(1,), waad_window=3, fai_horizon_lo=1, fai_horizon_hi=6), True)],
    ids=["all-layers", "layer-1-dynamic-bsz"],
)
def test_the_capture_equals_the_dense_reference(engine, stock, hf_model, cfg, dynamic):
    """WAAD, FAI and the head spans of every sequence equal the dense reference of the same weights (eager HF
    attention maps), over fixed micro-batches and over verl's dynamic batching (which reorders the sequences); the
    log-probs of the capturing pass are bit-identical to the stock pass's."""
    sequences = make_sequences()
    settings = {"micro_batch_size": 2, "use_dynamic_bsz": dynamic, "max_token_len": 30}
    out = run_log_prob_pass(engine, log_prob_batch(sequences, capture=cfg, **settings))
    # a stock pass with the same micro-batches (the last position of a sequence depends on its packing neighbours)
    stock = stock if not dynamic else run_log_prob_pass(engine, log_prob_batch(sequences, capture=None, **settings))
    assert_equals_dense(out, stock, dense_rhythm(hf_model, sequences, cfg), [r for _, r in LENGTHS])


def test_the_megatron_internals_the_glue_relies_on_are_unchanged():
    """verl 0.9.1's Megatron functions the glue and the CPU shims rely on (glue/contract.py: PINNED_MEGATRON)."""
    import verl

    from verl_rhythm.glue import contract

    if verl.__version__ not in contract.VERL_VERSIONS:
        pytest.skip(f"verl {verl.__version__}: pins from {', '.join(contract.VERL_VERSIONS)}")
    assert contract.changed(table=contract.PINNED_MEGATRON) == {}


def test_the_layouts_follow_the_padded_rows():
    """With per-sequence padding (what TP x CP alignment gives: verl's ``preprocess_thd_engine`` puts sequence i at
    ``cu_seqlens_q_padded[i]``), each sequence starts at its padded row and keeps its real length."""
    from megatron.core.packed_seq_params import PackedSeqParams

    real = torch.tensor([0, 5, 8, 21], dtype=torch.int32)  # lengths 5, 3, 13
    padded = torch.tensor([0, 6, 10, 24], dtype=torch.int32)  # each aligned to 2
    params = PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=real, cu_seqlens_kv=real, cu_seqlens_q_padded=padded,
        cu_seqlens_kv_padded=padded, max_seqlen_q=14, max_seqlen_kv=14,
    )  # fmt: skip
    masks = [torch.arange(n) >= 2 for n in (5, 3, 13)]
    layouts = megatron_impl.thd_layouts(params, masks)
    assert [(x.row, x.start, x.length) for x in layouts] == [(0, 0, 5), (0, 6, 3), (0, 10, 13)]
    with pytest.raises(ValueError, match="sequence 1: 5 tokens but a packed slot of 4 rows"):
        megatron_impl.thd_layouts(params, [masks[0], torch.ones(5, dtype=torch.bool), masks[2]])
    with pytest.raises(ValueError, match="3 packed sequences but the micro-batch has 2"):
        megatron_impl.thd_layouts(params, masks[:2])


def test_the_cpu_core_attention_reads_the_padded_rows():
    """The CPU backend's THD core attention (shim 5) attends within each sequence's real rows from its padded start
    (``cu_seqlens_q`` lengths, ``cu_seqlens_q_padded`` starts): the output rows of each sequence alone; padding rows
    are zero."""
    from megatron.core.packed_seq_params import PackedSeqParams

    from verl_rhythm.backends.cpu.megatron import cpu_core_attention_class

    cls = cpu_core_attention_class()
    attention = cls.__new__(cls)  # megatron-core's constructor needs model-parallel state; forward reads only this
    torch.nn.Module.__init__(attention)
    attention.softmax_scale = 0.3
    real = torch.tensor([0, 5, 8], dtype=torch.int32)
    padded = torch.tensor([0, 6, 10], dtype=torch.int32)
    params = PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=real, cu_seqlens_kv=real, cu_seqlens_q_padded=padded,
        cu_seqlens_kv_padded=padded, max_seqlen_q=5, max_seqlen_kv=5,
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(10, 4, 8, generator=g), torch.randn(10, 2, 8, generator=g), torch.randn(10, 2, 8, generator=g)
    out = attention(q, k, v, None, packed_seq_params=params).view(10, 4, 8)
    for start, n in ((0, 5), (6, 3)):
        qs, ks, vs = (x[start : start + n].transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(2, 0), vs.repeat_interleave(2, 0)
        ref = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=0.3)
        torch.testing.assert_close(out[start : start + n], ref.transpose(0, 1))
    assert out[5].abs().max() == 0 and out[9].abs().max() == 0


def test_the_megatron_shims_are_not_installed_off_the_cpu_platform():
    """A process without ``VERL_PLATFORM=cpu`` that imports verl's Megatron engine gets torch, megatron-core and
    mbridge as they are (a fresh interpreter: this one registered the CPU backend); the glue's seam is wrapped."""
    import subprocess
    import sys

    probe = """
import torch
import verl.workers.engine.megatron.transformer_impl as engine
import megatron.core.pipeline_parallel.schedules as schedules
from megatron.core import tensor_parallel
from mbridge.core import auto_bridge, bridge, llm_bridge
from verl_rhythm.glue import megatron_impl
from verl_rhythm.wrapping import is_wrapped
shims = [torch.cuda.current_device, torch.nn.Module.cuda, torch.cuda.synchronize,
         tensor_parallel.model_parallel_cuda_manual_seed,
         llm_bridge.LLMBridge._get_transformer_layer_spec, bridge.Bridge._weight_name_mapping_mcore_to_hf,
         auto_bridge.AutoBridge.from_config]
assert not any(is_wrapped(f) for f in shims), [f for f in shims if is_wrapped(f)]
assert schedules.torch is torch
assert megatron_impl.is_installed(engine)
assert is_wrapped(engine.get_forward_backward_func)  # the glue's: completes pipeline-deferred statistics
print("stock")
"""
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("stock"), result.stderr[-2000:]
