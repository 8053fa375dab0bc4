# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The rhythm capture inside verl 0.9.1's real Megatron engine on CPU with tensor and pipeline parallelism.

Two gloo processes (:func:`verl_rhythm.testing.process_group.spawn_cpu_group`) run verl's own
``MegatronEngineWithLMHead`` (vanilla mbridge, megatron-core's local layer spec, the CPU backend's shims) with
TP = 2 (each rank holds 4 of the 8 query heads and 1 of the 2 KV heads of a tiny GQA Llama) or PP = 2 (each stage 2
of the 4 layers). ``infer_batch`` runs verl's micro-batching, THD packing, megatron-core's schedule (with its
point-to-point transfers under PP) and the forward step the glue wraps (``verl_rhythm/glue/megatron_impl.py``). The
statistics of every rank that returns outputs (both TP ranks; the last PP stage) must equal the dense reference of
the same weights (transformers' eager attention maps, ``verl_rhythm/testing/dense.py``), and each other bit for bit.

megatron-core and mbridge are not in the main environment: this file runs in the ``megatron`` environment of
``tests/matrix.sh`` (``tests/constraints-megatron.txt``) and is skipped elsewhere. Each configuration starts two
processes once (module fixtures; about half a minute each on two cores).
"""

import pytest
import torch

pytest.importorskip("megatron.core", reason="megatron-core is installed only in tests/matrix.sh's megatron env")
pytest.importorskip("mbridge", reason="mbridge is installed only in tests/matrix.sh's megatron env")

from verl_rhythm.config import RhythmConfig  # noqa: E402
from verl_rhythm.glue.tq_fields import FAI, SEQ_STATS, WAAD  # noqa: E402
from verl_rhythm.testing.engine import dense_rhythm, log_prob_batch, random_sequences, run_log_prob_pass  # noqa: E402
from verl_rhythm.testing.megatron import assert_equals_dense, assert_log_probs_match_hf  # noqa: E402
from verl_rhythm.testing.process_group import spawn_cpu_group  # noqa: E402
from verl_rhythm.testing.tiny import save_tiny_model  # noqa: E402

NUM_LAYERS = 4
LENGTHS = [(5, 8), (9, 4), (3, 12), (6, 5), (7, 14), (4, 9)]
"""(prompt, response) per sequence: every sequence of odd length (TP pads each to an even slot)."""
CONFIGS = {
    "all-layers": (RhythmConfig(layers=(0, 1, 2, 3), waad_window=4, fai_horizon_lo=2, fai_horizon_hi=8), False),
    # layer 1 only: under PP = 2 the last stage (layers 2, 3) holds no selected layer
    "layer-1-dynamic-bsz": (RhythmConfig(layers=(1,), waad_window=3, fai_horizon_lo=1, fai_horizon_hi=6), True),
}
"""name → (rhythm config, verl's dynamic batching)."""


def make_sequences():
    return random_sequences(LENGTHS, hole=2, seed=0)


def settings(dynamic: bool) -> dict:
    return {"micro_batch_size": 2, "use_dynamic_bsz": dynamic, "max_token_len": 30}


def run_rank(rank: int, model_path: str, tp: int, pp: int) -> dict:
    """One rank: build verl's engine with TP = ``tp``, PP = ``pp``; per config of :data:`CONFIGS` a stock pass and a
    capturing pass with the same micro-batches. Returns the model outputs (empty off the last stage) and the rank's
    place in megatron-core's groups."""
    from megatron.core import parallel_state as mpu

    from verl_rhythm.testing.megatron import build_megatron_engine, cpu_backend_registered

    with cpu_backend_registered():
        engine = build_megatron_engine(model_path, tensor_parallel=tp, pipeline_parallel=pp)
    out = {"tp_rank": mpu.get_tensor_model_parallel_rank(), "pp_rank": mpu.get_pipeline_model_parallel_rank()}
    for name, (cfg, dynamic) in CONFIGS.items():
        sequences = make_sequences()
        out[name] = run_log_prob_pass(engine, log_prob_batch(sequences, capture=cfg, **settings(dynamic)))
        out[f"{name}/stock"] = run_log_prob_pass(engine, log_prob_batch(sequences, capture=None, **settings(dynamic)))
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_gqa"), num_layers=NUM_LAYERS)


@pytest.fixture(scope="module")
def hf_model(model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def tensor_parallel(model_path):
    """Both ranks' outputs with TP = 2."""
    return spawn_cpu_group(2, run_rank, str(model_path), 2, 1)


@pytest.fixture(scope="module")
def pipeline_parallel(model_path):
    """Both stages' outputs with PP = 2."""
    return spawn_cpu_group(2, run_rank, str(model_path), 1, 2)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tensor_parallel_capture_equals_the_dense_reference_on_every_rank(tensor_parallel, hf_model, name):
    """TP = 2: each rank's WAAD, FAI and head spans equal the dense reference over all 8 heads (the head split by
    span is over every head, as at TP = 1), both ranks return the same statistics bit for bit, and the log-probs of
    the capturing pass are those of the stock pass."""
    cfg, _ = CONFIGS[name]
    reference = dense_rhythm(hf_model, make_sequences(), cfg)
    assert [r["tp_rank"] for r in tensor_parallel] == [0, 1]
    for rank in tensor_parallel:
        assert_equals_dense(rank[name], rank[f"{name}/stock"], reference, [r for _, r in LENGTHS])
    first, second = (rank[name] for rank in tensor_parallel)
    for key in (WAAD, FAI, SEQ_STATS):
        for a, b in zip(first[key].unbind(), second[key].unbind(), strict=True):
            assert torch.equal(a, b) if key != SEQ_STATS else torch.equal(a[:2], b[:2])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pipeline_parallel_capture_reaches_the_last_stage_equal_to_the_dense_reference(
    pipeline_parallel, hf_model, name
):
    """PP = 2: the first stage returns no outputs (verl's engine returns them from the last stage only); the last
    stage's WAAD, FAI and head spans cover the selected layers of both stages and equal the dense reference (also when
    the last stage holds no selected layer), and its log-probs are those of the stock pass."""
    cfg, _ = CONFIGS[name]
    first, last = pipeline_parallel
    assert (first["pp_rank"], last["pp_rank"]) == (0, 1)
    assert first[name] == {} and first[f"{name}/stock"] == {}
    reference = dense_rhythm(hf_model, make_sequences(), cfg)
    assert_equals_dense(last[name], last[f"{name}/stock"], reference, [r for _, r in LENGTHS])


def test_the_parallel_stock_passes_match_transformers(tensor_parallel, pipeline_parallel, hf_model):
    """Without the capture key the TP and PP engines compute the HF model's log-probs (the weights were split right)."""
    for outputs in (tensor_parallel[0], tensor_parallel[1], pipeline_parallel[1]):
        assert_log_probs_match_hf(outputs["all-layers/stock"], hf_model, make_sequences())
