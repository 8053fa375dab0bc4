# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The rhythm capture inside verl 0.9.1's real FSDP engine, against the dense reference.

The engine is verl's own ``FSDPEngineWithLMHead`` (the glue wraps its ``forward_step`` on the class), initialised for
real: FSDP2 wrapping on a one-process gloo group, with verl's platform set to a CPU platform
(``verl_rhythm.backends.cpu.platform``; verl would otherwise fall back to CUDA). ``infer_batch`` runs verl's
micro-batching (fixed and dynamic), packing (``use_remove_padding``), forward step, output post-processing and
re-ordering. Nothing of the engine is mocked; only the Ray worker around it is absent.
"""

import pytest
import torch
from models import tiny_model
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue import transformer_impl
from verl_rhythm.glue.tq_fields import CAPTURE_KEY, FAI, SEQ_STATS, WAAD
from verl_rhythm.measure import capture as capture_mod
from verl_rhythm.testing.engine import build_engine, dense_rhythm, log_prob_batch, random_sequences, run_log_prob_pass
from verl_rhythm.testing.process_group import cpu_process_group
from verl_rhythm.wrapping import is_wrapped

CFG = RhythmConfig(fai_horizon_hi=30, chunk_size=16)
LENGTHS = [(20, 40), (15, 60), (30, 25), (10, 70), (25, 35), (12, 48)]


def response(values, i):
    """The response positions of sequence i's full-sequence reference statistic (its last r tokens)."""
    return values[values.numel() - LENGTHS[i][1] :]


def make_sequences(seed=0):
    return random_sequences(LENGTHS, hole=3, seed=seed)


@pytest.fixture(scope="module")
def process_group():
    with cpu_process_group():
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny models saved as HF folders (Qwen2 with biases; Llama with GQA), and their eager references."""
    out = {}
    for arch in ("qwen2", "llama_gqa"):
        model = tiny_model(arch, attn_implementation="eager")
        path = tmp_path_factory.mktemp(arch)
        model.save_pretrained(path)
        out[arch] = (str(path), model)
    return out


@pytest.fixture(scope="module")
def engines(process_group, models):
    cache = {}

    def get(arch, attn, rmpad, param_dtype="fp32"):
        key = (arch, attn, rmpad, param_dtype)
        if key not in cache:
            cache[key] = build_engine(
                models[arch][0], attn_implementation=attn, use_remove_padding=rmpad, param_dtype=param_dtype
            )
        return cache[key]

    return get


@pytest.fixture
def attention(request):
    """Install the CPU flash-attn for a flash_attention_2 case (removed after the test)."""

    def use(attn):
        if attn == "flash_attention_2":
            request.getfixturevalue("cpu_flash_attn")
        return attn

    return use


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, attn, rmpad, dynamic",
    [
        ("qwen2", "sdpa", True, False),  # verl's default: packed micro-batches
        ("qwen2", "sdpa", True, True),  # dynamic batch size: verl re-orders sequences across micro-batches
        ("llama_gqa", "sdpa", False, False),  # padded micro-batches, GQA
        ("llama_gqa", "eager", True, False),  # eager attention function, packed
        ("qwen2", "flash_attention_2", True, False),  # verl's GPU default: FA2 varlen on packed rows
        ("llama_gqa", "flash_attention_2", True, True),  # FA2, GQA, dynamic batch size
        ("llama_gqa", "flash_attention_2", False, False),  # FA2 with a 2-D padding mask (unpad + varlen)
    ],
)
def test_engine_log_prob_pass_returns_the_dense_reference_statistics(
    engines, models, attention, arch, attn, rmpad, dynamic
):
    engine = engines(arch, attention(attn), rmpad)
    sequences = make_sequences()
    batch = log_prob_batch(
        sequences, capture=CFG, use_remove_padding=rmpad, micro_batch_size=2, use_dynamic_bsz=dynamic, max_token_len=160
    )
    out = run_log_prob_pass(engine, batch)
    ref = dense_rhythm(models[arch][1], sequences, CFG)

    lengths = [r for _, r in LENGTHS]  # the engine returns the response positions only
    for key in (WAAD, FAI):
        assert out[key].is_nested and out[key].offsets().diff().tolist() == lengths, key
    for i, r in enumerate(ref):
        torch.testing.assert_close(out[WAAD][i], response(r.waad, i), atol=2e-5, rtol=1e-5, msg=f"WAAD of sequence {i}")
        torch.testing.assert_close(out[FAI][i], response(r.fai, i), atol=2e-6, rtol=1e-5, msg=f"FAI of sequence {i}")
        span = r.span
        stats = out[SEQ_STATS][i]
        torch.testing.assert_close(stats[0], span[r.local_heads].mean(), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(stats[1], span[r.global_heads].mean(), atol=1e-4, rtol=1e-5)
    capture_seconds = torch.stack([s[2] for s in out[SEQ_STATS].unbind()])
    assert bool((capture_seconds > 0).all())

    # the capture does not change what verl computes: same log-probs and entropy as a stock pass
    stock = run_log_prob_pass(
        engine,
        log_prob_batch(
            sequences,
            capture=None,
            use_remove_padding=rmpad,
            micro_batch_size=2,
            use_dynamic_bsz=dynamic,
            max_token_len=160,
        ),
    )
    assert set(stock) == {"log_probs", "entropy"}
    for key in ("log_probs", "entropy"):
        torch.testing.assert_close(out[key].values(), stock[key].values(), atol=1e-5, rtol=1e-5)


class TurboWithoutItsPackage:
    """verl's ``FSDPTurboEngineWithLMHead`` (``actor.strategy=fsdp_turbo``) with the methods that import the
    ``fsdp_turbo`` package (GPU-only, not installable here) replaced by the stock FSDP engine's; everything the
    old-log-prob pass runs (``forward_step`` included) is verl's turbo class as it resolves through its MRO."""

    @staticmethod
    def make():
        from verl.workers.engine.fsdp.fsdp_turbo_impl import FSDPTurboEngineWithLMHead

        stock = FSDPEngineWithLMHead
        replaced = ("_init_parallel_state", "_build_module", "_build_fsdp_module", "optimizer_step")
        body = {name: getattr(stock, name) for name in replaced if hasattr(stock, name)}
        body["_init_parallel_state"] = lambda self: None
        return type("TurboEngineForTest", (FSDPTurboEngineWithLMHead,), body)


@pytest.mark.slow
def test_the_fsdp_turbo_engine_captures_through_the_inherited_forward_step(process_group, models):
    """verl's FSDP-Turbo engine class (no vendor slot, no subclass of ours) returns the dense reference statistics."""
    engine = build_engine(models["qwen2"][0], attn_implementation="sdpa", engine_class=TurboWithoutItsPackage.make())
    assert type(engine).__mro__[1].__name__ == "FSDPTurboEngineWithLMHead"
    sequences = make_sequences(seed=3)
    out = run_log_prob_pass(engine, log_prob_batch(sequences, capture=CFG, micro_batch_size=3))
    for i, r in enumerate(dense_rhythm(models["qwen2"][1], sequences, CFG)):
        torch.testing.assert_close(out[WAAD][i], response(r.waad, i), atol=2e-5, rtol=1e-5, msg=f"WAAD of sequence {i}")
        torch.testing.assert_close(out[FAI][i], response(r.fai, i), atol=2e-6, rtol=1e-5, msg=f"FAI of sequence {i}")


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_pad_to_length_adds_a_pad_segment_the_capture_ignores(engines, models, attention, attn):
    """verl's ``pad_to_length`` appends a packed pad segment (position ids restarting at 0) to every micro-batch."""
    engine = engines("qwen2", attention(attn), True)
    engine.pad_to_length, engine.pad_to_length_bucket = True, 64
    try:
        assert engine._get_packed_pad_size(100) == 28
        sequences = make_sequences(seed=2)
        out = run_log_prob_pass(engine, log_prob_batch(sequences, capture=CFG, micro_batch_size=3))
    finally:
        engine.pad_to_length = False
    for i, r in enumerate(dense_rhythm(models["qwen2"][1], sequences, CFG)):
        torch.testing.assert_close(out[WAAD][i], response(r.waad, i), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(out[FAI][i], response(r.fai, i), atol=2e-6, rtol=1e-5)


@pytest.mark.slow
def test_flash_attention_2_in_bf16_strict_mode(engines, models, cpu_flash_attn):
    """verl's GPU configuration: bf16 parameters (bf16 autocast), FlashAttention-2 on packed rows, with the CPU
    flash-attn refusing what the CUDA kernels refuse (fp32 inputs). The capture reads the bf16 forward's q/k in fp32:
    close to the fp32 dense reference up to the bf16 forward's own rounding, and the same statistics as the SDPA
    forward in bf16 to that rounding."""
    cpu_flash_attn.set_strict(True)
    sequences = make_sequences(seed=4)
    ref = dense_rhythm(models["llama_gqa"][1], sequences, CFG)
    outs = {}
    for attn in ("flash_attention_2", "sdpa"):
        engine = engines("llama_gqa", attn, True, param_dtype="bf16")
        outs[attn] = run_log_prob_pass(engine, log_prob_batch(sequences, capture=CFG, micro_batch_size=3))
    with pytest.raises(RuntimeError, match="only support fp16 and bf16"):  # strict: an fp32 actor is refused
        run_log_prob_pass(engines("llama_gqa", "flash_attention_2", True), log_prob_batch(sequences, capture=CFG))
    for i, r in enumerate(ref):
        for attn, out in outs.items():
            waad, fai = out[WAAD][i], out[FAI][i]
            assert bool(torch.isfinite(waad).all() and torch.isfinite(fai).all())
            # docs/verl-integration.md quotes 0.006 (WAAD, in [0, W]) and 9e-5 (FAI) off the fp32 reference:
            # asserted within twice that
            torch.testing.assert_close(waad, response(r.waad, i), atol=0.012, rtol=0, msg=f"{attn} WAAD {i}")
            torch.testing.assert_close(fai, response(r.fai, i), atol=1.8e-4, rtol=0, msg=f"{attn} FAI {i}")
        flash, sdpa = outs["flash_attention_2"], outs["sdpa"]
        torch.testing.assert_close(flash[WAAD][i], sdpa[WAAD][i], atol=0.012, rtol=0)
    worst = max(float((o[WAAD][i] - response(r.waad, i)).abs().max()) for o in outs.values() for i, r in enumerate(ref))
    assert worst > 0  # bf16 really ran


@pytest.mark.slow
def test_no_capture_without_the_key_nor_in_training_forward_backward(engines, monkeypatch):
    """Stock passes, and the actor update (forward + backward with gradient checkpointing) never record."""
    engine = engines("qwen2", "sdpa", True)
    assert engine.model_config.enable_gradient_checkpointing
    calls = []
    monkeypatch.setattr(capture_mod.RhythmCapture, "record", lambda self, *a, **k: calls.append(a[0]))
    from verl_rhythm.measure.hook import install_attention_hook

    install_attention_hook()
    sequences = make_sequences(seed=1)
    run_log_prob_pass(engine, log_prob_batch(sequences, capture=None))

    def loss_fn(model_output, data, dp_group=None):
        return model_output["log_probs"].values().mean(), {}

    batch = log_prob_batch(sequences, capture=None)
    with engine.train_mode():
        engine.optimizer_zero_grad()
        engine.forward_backward_batch(batch, loss_function=loss_fn, forward_only=False)
        engine.optimizer_zero_grad()
    assert calls == []

    # a capture key that leaks into a training micro-batch is an error, never a capture with gradients
    leaked = log_prob_batch(sequences, capture=CFG)
    with engine.train_mode(), pytest.raises(RuntimeError, match=CAPTURE_KEY):
        engine.forward_backward_batch(leaked, loss_function=loss_fn, forward_only=False)
    assert calls == []


@pytest.mark.slow
def test_layers_outside_the_model_fail_in_the_engine_by_key(engines):
    engine = engines("qwen2", "sdpa", True)
    bad = RhythmConfig(layers=(2, 40))
    with pytest.raises(ValueError, match=r"algorithm\.rhythm\.layers"):
        run_log_prob_pass(engine, log_prob_batch(make_sequences(), capture=bad))


def test_verl_registry_keeps_its_engines_and_every_fsdp_engine_gets_the_capture(monkeypatch):
    """verl's own EngineRegistry lookup (as TrainingWorker builds the actor) returns verl's classes on every vendor;
    the capture is in the class method they all share (fsdp_turbo's engine inherits it)."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp import transformer_impl as verl_impl
    from verl.workers.engine.fsdp.fsdp_turbo_impl import FSDPTurboEngineWithLMHead

    transformer_impl.install(verl_impl)
    assert transformer_impl.is_installed(verl_impl)
    monkeypatch.setenv("VERL_ENGINE_DEVICE", "cuda")
    for vendor in ("nvidia", "amd", "metax"):
        monkeypatch.setenv("VERL_ENGINE_VENDOR", vendor)
        for backend in ("fsdp", "fsdp2"):
            assert EngineRegistry.get_engine_cls("language_model", backend) is FSDPEngineWithLMHead
        assert EngineRegistry.get_engine_cls("language_model", "fsdp_turbo") is FSDPTurboEngineWithLMHead
    assert FSDPTurboEngineWithLMHead.forward_step is FSDPEngineWithLMHead.forward_step
    assert is_wrapped(FSDPEngineWithLMHead.forward_step)
