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

import functools
import os

import pytest
import torch

pytest.importorskip("megatron.core", reason="megatron-core is installed only in tests/matrix.sh's megatron env")
pytest.importorskip("mbridge", reason="mbridge is installed only in tests/matrix.sh's megatron env")

from verl_rhythm.config import RhythmConfig  # noqa: E402
from verl_rhythm.glue import megatron_impl  # noqa: E402
from verl_rhythm.glue.tq_fields import FAI, WAAD  # noqa: E402
from verl_rhythm.testing.engine import dense_rhythm, log_prob_batch, random_sequences, run_log_prob_pass  # noqa: E402
from verl_rhythm.testing.megatron import (  # noqa: E402
    assert_equals_dense,
    assert_log_probs_match_hf,
    build_megatron_engine,
    core_attention_classes,
    cpu_backend_registered,
)
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
    environ = dict(os.environ)
    with cpu_process_group():
        engine = build_megatron_engine(str(model_path))
        assert core_attention_classes(engine) == ["CPUCoreAttention"]
        yield engine
    # megatron-core's LanguageModule sets NVTE_*_ATTN in os.environ for its attention backend; a later test that
    # starts main_ppo would hand them to its workers, whose megatron-core then refuses them
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)


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
    assert_log_probs_match_hf(stock, hf_model, make_sequences())


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
         auto_bridge.AutoBridge.from_config, engine.MegatronEngine._build_optimizer]
assert not any(is_wrapped(f) for f in shims), [f for f in shims if is_wrapped(f)]
from verl.workers.engine.base import EngineRegistry
assert "cpu" not in EngineRegistry._engines["language_model"]["megatron"]
assert schedules.torch is torch
assert megatron_impl.is_installed(engine)
assert is_wrapped(engine.get_forward_backward_func)  # the glue's: completes pipeline-deferred statistics
print("stock")
"""
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("stock"), result.stderr[-2000:]


def test_the_gpu_engine_check_runs_the_megatron_path_on_cpu(tmp_path):
    """``bash benchmarks/gpu_engine_check.sh --engine megatron`` (the GPU machine's command) on the CPU platform: verl's
    Megatron engine with the capture against the dense reference; the fp32 run passes its check, and the report
    names the core attention the capture's hook met (on CPU the local spec's; on a GPU, TransformerEngine's)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "megatron.json"
    cmd = ["bash", "benchmarks/gpu_engine_check.sh", "--engine", "megatron", "--device", "cpu", "--model", "tiny"]
    cmd += ["--lengths", "9:14", "6:11", "--repeats", "1", "--out", str(out)]
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["engine"] == "megatron" and report["versions"]["megatron.core"] is not None
    runs = {r["dtype"]: r for r in report["runs"]}
    assert sorted(runs) == ["bf16", "fp32"]
    assert runs["fp32"]["check"] and runs["fp32"]["ok"], runs["fp32"]
    assert runs["fp32"]["max_abs_err_fai"] <= 1e-4 and runs["fp32"]["max_abs_err_waad"] <= 1e-3
    assert all(r["core_attention"] == ["CPUCoreAttention"] for r in runs.values())


LR = 1e-2
CLIP = 1.0
WEIGHT_DECAY = 0.01
GROUP_ADVANTAGES = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -1.5])
"""One GRPO-like advantage per sequence of :data:`LENGTHS`."""


@pytest.fixture(scope="module")
def trainer(engine, model_path):
    """A second ``MegatronEngineWithLMHead`` on the same gloo group, built to train (``forward_only=False``: the CPU
    backend's optimizer and verl's LR scheduler), fp32 parameters."""
    optimizer = {"lr": LR, "clip_grad": CLIP, "weight_decay": WEIGHT_DECAY, "lr_decay_steps": 10}
    return build_megatron_engine(str(model_path), forward_only=False, optimizer=optimizer)


def policy_gradient_loss(num_response_tokens: int, model_output, data, dp_group=None):
    """The on-policy policy-gradient loss (verl's vanilla PPO loss at ratio 1, without clipping): minus the sum over
    response tokens of advantage × log-prob, over the number of response tokens. ``data["token_advantages"]`` is
    nested ``(bsz, L_i)`` in the layout of verl's ``log_probs`` (position t holds the advantage of token t + 1)."""
    log_probs, advantages = model_output["log_probs"], data["token_advantages"]
    total = sum((lp * adv).sum() for lp, adv in zip(log_probs.unbind(), advantages.unbind(), strict=True))
    return -total / num_response_tokens, {}


def reference_update(model_path, sequences, advantages: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
    """The same update on the HF model of the same weights: the loss of :func:`policy_gradient_loss`, the global
    gradient norm clipped at :data:`CLIP`, one ``torch.optim.AdamW`` step with megatron-core's groups (no weight
    decay on 1-D parameters and biases). Returns the updated parameters by HF name and the norm before clipping."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="eager").float()
    named = list(model.named_parameters())
    decay = [p for n, p in named if not (p.dim() == 1 or n.endswith(".bias"))]
    no_decay = [p for n, p in named if p.dim() == 1 or n.endswith(".bias")]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR)
    total = 0.0
    for (prompt, response, _), adv in zip(sequences, advantages, strict=True):
        ids = torch.cat([prompt, response])[None]
        logits = model(ids, use_cache=False).logits[0, :-1].float()
        log_probs = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
        total = total + (log_probs[-response.numel() :] * adv[: response.numel()]).sum()
    (-total / sum(int(m.sum()) for _, _, m in sequences)).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    optimizer.step()
    return {n: p.detach().clone() for n, p in named}, float(norm)


def test_one_megatron_update_trains_on_grpo_times_the_captured_gamma(trainer, model_path):
    """verl's Megatron engine trains (``forward_only=False``): γ from its own capture (the old-log-prob pass with the
    capture key) scales each sequence's advantage per token; the engine's forward-backward (megatron-core's schedule),
    the CPU backend's optimizer and verl's scheduler step once; the weights it exports (mbridge, HF names) equal the
    same update on the HF model, and differ from the update with γ ignored."""
    from verl_rhythm.credit.gamma import compute_gamma

    sequences = make_sequences()
    captured = run_log_prob_pass(trainer, log_prob_batch(sequences, capture=CFG, micro_batch_size=2))
    width = max(r for _, r in LENGTHS)

    def padded(rows):
        return torch.stack([torch.nn.functional.pad(x.float(), (0, width - x.numel())) for x in rows])

    mask = padded([m for _, _, m in sequences]).bool()
    gamma = compute_gamma("coupled", mask, waad=padded(captured[WAAD].unbind()), fai=padded(captured[FAI].unbind()))
    amplified = mask & (gamma.gamma > 1)
    assert amplified.any(), "no token with γ > 1: the check below could not tell γ from none"
    advantages = GROUP_ADVANTAGES[:, None] * gamma.gamma * mask

    batch = log_prob_batch(sequences, capture=None, micro_batch_size=len(sequences))
    batch["token_advantages"] = torch.nested.as_nested_tensor(
        [torch.cat([torch.zeros(p.numel() - 1), adv[: r.numel()], torch.zeros(1)]) for (p, r, _), adv in
         zip(sequences, advantages, strict=True)],
        layout=torch.jagged,
    )  # fmt: skip
    with trainer.train_mode():
        trainer.optimizer_zero_grad()
        loss = functools.partial(policy_gradient_loss, int(mask.sum()))
        trainer.forward_backward_batch(batch, loss_function=loss, forward_only=False)
        grad_norm = trainer.optimizer_step()
        assert trainer.lr_scheduler_step() < LR  # verl's scheduler (megatron-core's, cosine) stepped
    trained = {name: weight.detach().float().clone() for name, weight in trainer.get_per_tensor_param()[0]}

    want, want_norm = reference_update(model_path, sequences, advantages)
    plain, _ = reference_update(model_path, sequences, GROUP_ADVANTAGES[:, None] * mask)
    assert grad_norm == pytest.approx(want_norm, rel=1e-4)
    assert sorted(trained) == sorted(want)
    # Adam's first step moves every weight by about LR; a wrong sign or a dropped γ moves some by about 2 LR
    for name, weight in trained.items():
        torch.testing.assert_close(weight, want[name], atol=0.05 * LR, rtol=0, msg=name)
    assert max(float((trained[n] - plain[n]).abs().max()) for n in trained) > 0.5 * LR
