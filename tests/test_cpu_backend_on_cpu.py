# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The CPU backend's parts, each against real code: verl's platform registry, transformers' ``generate`` on a tiny
random Llama (checked against a plain forward pass), the rollout server's batching and weight updates (called
directly, without Ray), and the start-up checks on verl's own composed config."""

import asyncio
import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from verl_rhythm.backends.cpu import patches, sampling
from verl_rhythm.backends.cpu.platform import PLATFORM_NAME, PlatformCPU
from verl_rhythm.backends.cpu.rollout import HFRolloutServer
from verl_rhythm.quickstart import main_ppo_command
from verl_rhythm.testing.tiny import save_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", num_layers=2)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


EOS = 2  # <|im_end|> in the tiny tokenizer


def _sequence_log_probs(model, prompt, tokens, temperature=1.0):
    """log p(token_t | prompt, tokens_<t) from one forward pass over the unpadded sequence."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(tokens)[:, None])[:, 0]


# ---------------------------------------------------------------- platform


def test_the_cpu_platform_is_registered_but_never_auto_detected():
    from verl.plugin.platform import PlatformRegistry

    assert PlatformRegistry.get(PLATFORM_NAME) is PlatformCPU
    assert PlatformCPU().is_platform_available(use_smi_check=True) is False
    assert PlatformCPU().ray_resource_name() == "CPU" and PlatformCPU().ray_resource_options(1) == {}


@pytest.mark.parametrize("env, expected", [({"VERL_PLATFORM": "cpu"}, "cpu"), ({}, "cuda")])
def test_verl_picks_the_cpu_platform_only_when_asked(env, expected):
    """A fresh process: with VERL_PLATFORM=cpu verl's get_platform() is ours; without it verl falls back to CUDA."""
    code = "from verl.plugin.platform import get_platform; p = get_platform(); print(p.device_name, type(p).__name__)"
    base = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    device, cls = out.stdout.split()[-2:]
    assert device == expected and (cls == "PlatformCPU") == (expected == "cpu")


@pytest.mark.parametrize("platform", ["cpu", None])
def test_flash_attention_2_is_served_on_the_cpu_platform_only(platform):
    """A fresh process: with VERL_PLATFORM=cpu, importing transformers' model code routes flash_attention_2 to the
    CPU flash-attn (a tiny model's FA2 forward runs it); without it nothing changes (flash_attention_2 is refused as
    transformers refuses it without the package)."""
    code = """
import torch, verl, sys
sys.path.insert(0, "tests")
from models import tiny_model
model = tiny_model("llama_gqa", num_layers=2, attn_implementation="eager")
ids = torch.randint(0, 128, (1, 12))
with torch.no_grad():
    eager = model(ids).logits
try:
    model.set_attn_implementation("flash_attention_2")
except ImportError as err:
    print("refused", type(err).__name__)
    raise SystemExit(0)
with torch.no_grad():
    flash = model(ids).logits
print("served", sys.modules["flash_attn"].__name__, float((flash - eager).abs().max()) < 1e-5)
"""
    base = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    env = {**base, "VERL_PLATFORM": platform} if platform else base
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.split("\n")[-2]
    if platform:
        assert last == "served verl_rhythm.backends.cpu.flash_attn True", out.stdout
    else:
        assert last == "refused ImportError", out.stdout


# ---------------------------------------------------------------- sampling


def test_greedy_generation_matches_a_plain_argmax_loop_and_its_log_probs(tiny):
    prompts = [[1, 40, 41, 42, 43], [1, 50, 51], [1, 60, 61, 62, 63, 64, 65, 66]]
    params = sampling.SamplingParams(max_tokens=7, temperature=0)
    out = sampling.generate_batch(tiny, prompts, params, eos_token_ids=[EOS], pad_token_id=EOS)
    for prompt, completion in zip(prompts, out, strict=True):
        ids = list(prompt)
        expected = []
        for _ in range(7):
            with torch.no_grad():
                nxt = int(tiny(torch.tensor([ids])).logits[0, -1].argmax())
            expected.append(nxt)
            ids.append(nxt)
            if nxt == EOS:
                break
        assert completion.token_ids == expected  # left padding changes nothing
        assert completion.finished == (expected[-1] == EOS)
        ref = _sequence_log_probs(tiny, prompt, completion.token_ids)
        assert torch.allclose(torch.tensor(completion.log_probs), ref, atol=1e-4)


def test_sampled_tokens_carry_their_temperature_scaled_log_probs(tiny):
    prompts = [[1, 30, 31], [1, 32, 33, 34]] * 3
    params = sampling.SamplingParams(max_tokens=6, temperature=0.7, top_p=1.0)
    out = sampling.generate_batch(tiny, prompts, params, eos_token_ids=[EOS], pad_token_id=EOS, generator_seed=3)
    assert len({tuple(c.token_ids) for c in out}) > 1  # sampling, not greedy
    for prompt, completion in zip(prompts, out, strict=True):
        ref = _sequence_log_probs(tiny, prompt, completion.token_ids, temperature=0.7)
        assert torch.allclose(torch.tensor(completion.log_probs), ref, atol=1e-4)
    again = sampling.generate_batch(tiny, prompts, params, eos_token_ids=[EOS], pad_token_id=EOS, generator_seed=3)
    assert [c.token_ids for c in again] == [c.token_ids for c in out]


def test_a_response_stops_at_eos_and_keeps_it(tiny):
    # make EOS the most likely next token everywhere: greedy stops at once
    with torch.no_grad():
        bias = tiny.lm_head.weight.new_zeros(tiny.config.vocab_size)
        bias[EOS] = 1e4
        tiny.lm_head.bias = torch.nn.Parameter(bias)
    try:
        out = sampling.generate_batch(
            tiny, [[1, 5, 6]], sampling.SamplingParams(max_tokens=5, temperature=0), eos_token_ids=[EOS], pad_token_id=0
        )
        assert out[0].token_ids == [EOS] and out[0].finished
        ignored = sampling.generate_batch(
            tiny,
            [[1, 5, 6]],
            sampling.SamplingParams(max_tokens=5, temperature=0, ignore_eos=True),
            eos_token_ids=[EOS],
            pad_token_id=0,
        )
        assert ignored[0].token_ids == [EOS] * 5 and not ignored[0].finished
    finally:
        tiny.lm_head.bias = None


def _next_token_logits(model, prompt, tokens):
    """``(len(tokens), V)``: the raw logits each token was drawn from, from one unpadded forward pass."""
    with torch.no_grad():
        return model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].float()


SAMPLED_PROMPTS = [[1, 30, 31], [1, 32, 33, 34], [1, 35], [1, 36, 37, 38, 39]] * 2


def _sample(tiny, params, seed):
    return sampling.generate_batch(
        tiny, SAMPLED_PROMPTS, params, eos_token_ids=[EOS], pad_token_id=EOS, generator_seed=seed
    )


def test_top_k_samples_only_among_the_k_most_likely_tokens(tiny):
    params = sampling.SamplingParams(max_tokens=8, temperature=1.5, top_k=3, ignore_eos=True)
    out = _sample(tiny, params, seed=5)
    drawn, not_argmax = 0, 0
    for prompt, completion in zip(SAMPLED_PROMPTS, out, strict=True):
        logits = _next_token_logits(tiny, prompt, completion.token_ids)
        ranks = (logits > logits.gather(-1, torch.tensor(completion.token_ids)[:, None])).sum(-1)  # 0 = argmax
        assert torch.all(ranks < 3), f"a token outside the top 3 of prompt {prompt}: ranks {ranks.tolist()}"
        drawn += len(ranks)
        not_argmax += int((ranks > 0).sum())
    assert drawn == 64 and not_argmax > 0  # sampled, not greedy
    assert [c.token_ids for c in _sample(tiny, params, seed=5)] == [c.token_ids for c in out]  # seeded
    assert [c.token_ids for c in _sample(tiny, params, seed=6)] != [c.token_ids for c in out]


def test_top_p_samples_only_from_the_nucleus(tiny):
    """The nucleus of each step: the most likely tokens (under the temperature) until their mass reaches top_p."""
    top_p, temperature = 0.3, 1.0
    params = sampling.SamplingParams(max_tokens=8, temperature=temperature, top_p=top_p, ignore_eos=True)
    out = _sample(tiny, params, seed=7)
    sizes = []
    for prompt, completion in zip(SAMPLED_PROMPTS, out, strict=True):
        probs = torch.softmax(_next_token_logits(tiny, prompt, completion.token_ids) / temperature, -1)
        token_p = probs.gather(-1, torch.tensor(completion.token_ids)[:, None])
        mass_above = (probs * (probs > token_p)).sum(-1)  # mass of the strictly more likely tokens
        assert torch.all(mass_above < top_p + 1e-5), f"a token outside the {top_p} nucleus of prompt {prompt}"
        sorted_probs = probs.sort(-1, descending=True).values
        sizes += ((sorted_probs.cumsum(-1) - sorted_probs) < top_p).sum(-1).tolist()
    assert max(sizes) > 1 and max(sizes) < 128  # a nucleus of several tokens, not the whole vocabulary
    assert len({tuple(c.token_ids) for c in out}) > 1
    assert [c.token_ids for c in _sample(tiny, params, seed=7)] == [c.token_ids for c in out]


def test_repetition_penalty_divides_the_logits_of_tokens_already_seen(tiny):
    """Greedy under repetition penalty θ equals an argmax loop over logits where every token already in the prompt
    or the response is penalised (positive logits divided by θ, negative ones multiplied: transformers'
    ``RepetitionPenaltyLogitsProcessor``, vLLM's rule), for prompts of unequal lengths sampled in one batch."""
    theta = 3.0
    params = sampling.SamplingParams(max_tokens=8, temperature=0, repetition_penalty=theta, ignore_eos=True)
    out = sampling.generate_batch(tiny, SAMPLED_PROMPTS[:4], params, eos_token_ids=[EOS], pad_token_id=EOS)
    plain = sampling.generate_batch(
        tiny,
        SAMPLED_PROMPTS[:4],
        sampling.SamplingParams(max_tokens=8, temperature=0, ignore_eos=True),
        eos_token_ids=[EOS],
        pad_token_id=EOS,
    )
    assert [c.token_ids for c in out] != [c.token_ids for c in plain]  # the penalty changed something
    for prompt, completion in zip(SAMPLED_PROMPTS[:4], out, strict=True):
        ids = list(prompt)
        for _ in range(8):
            with torch.no_grad():
                logits = tiny(torch.tensor([ids])).logits[0, -1].float()
            seen = torch.tensor(sorted(set(ids)))
            logits[seen] = torch.where(logits[seen] > 0, logits[seen] / theta, logits[seen] * theta)
            ids.append(int(logits.argmax()))
        assert completion.token_ids == ids[len(prompt) :], f"prompt {prompt}"


@pytest.mark.parametrize(
    "params, key",
    [
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"beam_width": 4}, "beam_width"),
    ],
)
def test_bad_sampling_parameters_are_refused_by_name(params, key):
    with pytest.raises(ValueError, match=key):
        sampling.SamplingParams.from_request(params, max_tokens=4)


# ---------------------------------------------------------------- server


def _server(path, **kw):
    kw = {"prompt_length": 16, "response_length": 8, "max_model_len": None, "max_batch_size": 64, **kw}
    return HFRolloutServer(str(path), **kw)


def test_concurrent_requests_are_batched_and_answer_like_single_ones(tiny_dir, monkeypatch):
    server = _server(tiny_dir)
    calls = []
    real = sampling.generate_batch

    def counting(model, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr("verl_rhythm.backends.cpu.rollout.generate_batch", counting)
    greedy = {"temperature": 0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
    prompts = [[1, 10 + i, 20 + i] for i in range(6)]

    async def run():
        return await asyncio.gather(
            *[
                server.generate(request_id=str(i), prompt_ids=p, sampling_params=dict(greedy))
                for i, p in enumerate(prompts)
            ]
        )

    outs = asyncio.run(run())
    assert calls == [6]  # one generate call for the whole burst
    for p, out in zip(prompts, outs, strict=True):
        single = real(
            server.model,
            [p],
            sampling.SamplingParams(max_tokens=8, temperature=0),
            eos_token_ids=[EOS],
            pad_token_id=EOS,
        )[0]
        assert out.token_ids == single.token_ids and out.stop_reason == "completed"
        assert out.log_probs is not None and len(out.log_probs) == len(out.token_ids)


def test_a_request_longer_than_the_context_is_refused(tiny_dir):
    server = _server(tiny_dir, max_model_len=12)

    async def run():
        return await server.generate(request_id="x", prompt_ids=list(range(1, 11)), sampling_params={"temperature": 0})

    with pytest.raises(ValueError, match="exceeds the model's context of 12 tokens"):
        asyncio.run(run())


def test_weight_updates_reach_the_generator_and_unknown_names_are_refused(tiny_dir):
    server = _server(tiny_dir)
    trained = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    state = dict(trained.named_parameters())
    asyncio.run(server.update_weights({k: v.detach().clone() for k, v in state.items()}, global_steps=7))
    for name, p in server.model.named_parameters():
        assert torch.equal(p, state[name])
    assert server.global_steps == 7
    with pytest.raises(KeyError, match="unknown parameters"):
        asyncio.run(server.update_weights({"model.nope.weight": torch.zeros(1)}))
    partial = {k: v.detach().clone() for k, v in list(state.items())[:2]}
    with pytest.raises(KeyError, match="left parameters unchanged"):
        asyncio.run(server.update_weights(partial))


# ---------------------------------------------------------------- start-up checks


@pytest.fixture(scope="module")
def cpu_recipe():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl_rhythm.recipes", version_base=None):
        return compose(config_name="rhythm_cpu", overrides=["actor_rollout_ref.model.path=/m"])


@pytest.mark.parametrize(
    "override, on_cpu, match",
    [
        ("actor_rollout_ref.rollout.name=vllm", True, "actor_rollout_ref.rollout.name=vllm needs a GPU"),
        (None, False, "runs only on the CPU platform: set VERL_PLATFORM=cpu"),
        ("trainer.v1.trainer_mode=separate_async", True, "trainer.v1.trainer_mode=separate_async is not supported"),
        ("actor_rollout_ref.actor.strategy=fsdp", True, "actor_rollout_ref.actor.strategy=fsdp is not supported"),
        ("actor_rollout_ref.rollout.tensor_model_parallel_size=2", True, "tensor_model_parallel_size=2 must be 1"),
        ("trainer.device=cuda", True, "trainer.device=cuda"),
    ],
)
def test_unsupported_settings_are_refused_naming_the_key(cpu_recipe, monkeypatch, override, on_cpu, match):
    config = cpu_recipe.copy()
    if override:
        key, value = override.split("=")
        OmegaConf.update(config, key, int(value) if value.isdigit() else value, force_add=True)
    monkeypatch.setattr(patches, "is_selected", lambda: on_cpu)
    with pytest.raises(patches.CPUBackendConfigError, match=match):
        patches.check_config(config)


def test_a_rollout_outside_the_training_workers_is_refused_naming_the_key(cpu_recipe, monkeypatch):
    """``actor_rollout_ref.hybrid_engine=false`` would ask the hf replica for the colocated or standalone start-up it
    does not implement: refused at start-up by key; the replica's own error, should it be reached some other way
    (a reward or teacher model's rollout), names the key and the modes that run."""
    from verl_rhythm.backends.cpu.rollout import HFReplica

    config = cpu_recipe.copy()
    OmegaConf.update(config, "actor_rollout_ref.hybrid_engine", False)
    monkeypatch.setattr(patches, "is_selected", lambda: True)
    with pytest.raises(patches.CPUBackendConfigError, match="actor_rollout_ref.hybrid_engine=false is not supported"):
        patches.check_config(config)
    replica = object.__new__(HFReplica)  # the start-up methods read nothing of the replica
    for start in (lambda: replica.init_colocated(None), replica.init_standalone):
        with pytest.raises(NotImplementedError) as err:
            asyncio.run(start())
        message = str(err.value)
        assert "actor_rollout_ref.hybrid_engine=true" in message and "colocated and standalone" in message
        assert "trainer.v1.trainer_mode=sync or colocate_async" in message


@pytest.mark.parametrize("override", [None, "trainer.v1.trainer_mode=colocate_async", "trainer.use_v1=false"])
def test_the_recipe_passes_the_checks_in_every_trainer_that_runs_here(cpu_recipe, monkeypatch, override):
    config = cpu_recipe.copy()
    if override:
        key, value = override.split("=")
        OmegaConf.update(config, key, {"false": False}.get(value, value), force_add=True)
    monkeypatch.setattr(patches, "is_selected", lambda: True)
    patches.check_config(config)


def megatron_recipe(*overrides: str):
    """The CPU recipe composed as ``python -m verl_rhythm.quickstart actor_rollout_ref.actor.strategy=megatron``
    composes it (:func:`verl_rhythm.quickstart.fitted_defaults`), then ``overrides``."""
    from hydra import compose, initialize_config_module

    from verl_rhythm.quickstart import fitted_defaults

    asked = ["actor_rollout_ref.actor.strategy=megatron", *overrides]
    with initialize_config_module(config_module="verl_rhythm.recipes", version_base=None):
        return compose(
            config_name="rhythm_cpu", overrides=["actor_rollout_ref.model.path=/m", *fitted_defaults(asked), *asked]
        )


MEGATRON_INSTALLED = all(importlib.util.find_spec(m) is not None for m in ("megatron", "mbridge"))


def test_megatron_is_accepted_with_verls_megatron_configs(monkeypatch):
    """strategy=megatron with the quickstart's overrides: verl's Megatron configs, vanilla mbridge; refused only for
    want of megatron-core/mbridge (the main environment), naming the extra."""
    config = megatron_recipe()
    assert (
        config.actor_rollout_ref.actor.megatron.vanilla_mbridge and "fsdp_config" not in config.actor_rollout_ref.actor
    )
    monkeypatch.setattr(patches, "is_selected", lambda: True)
    if MEGATRON_INSTALLED:
        patches.check_config(config)
    else:
        with pytest.raises(patches.CPUBackendConfigError, match=r"pip install 'verl-rhythm\[megatron\]'"):
            patches.check_config(config)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model_engine=dp"], "is an FSDP config .* add the override model_engine=megatron"),
        (["trainer.n_gpus_per_node=2"], "with data parallelism .* set trainer.n_gpus_per_node to the model-parallel"),
        (["actor_rollout_ref.actor.megatron.use_distributed_optimizer=false"], "use_distributed_optimizer=true"),
        (["actor_rollout_ref.actor.megatron.vanilla_mbridge=false"], "megatron.vanilla_mbridge=true"),
    ],
)
def test_megatron_settings_the_cpu_backend_cannot_run_are_refused_by_key(monkeypatch, overrides, match):
    if overrides == ["model_engine=dp"]:  # the recipe's FSDP sections kept: strategy=megatron on an FSDP config
        from hydra import compose, initialize_config_module

        with initialize_config_module(config_module="verl_rhythm.recipes", version_base=None):
            config = compose(
                config_name="rhythm_cpu",
                overrides=["actor_rollout_ref.model.path=/m", "actor_rollout_ref.actor.strategy=megatron"],
            )
    else:
        config = megatron_recipe(*overrides)
    monkeypatch.setattr(patches, "is_selected", lambda: True)
    with pytest.raises(patches.CPUBackendConfigError, match=match):
        patches.check_config(config)


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, match",
    [
        ("actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.name=vllm needs a GPU"),
        ("actor_rollout_ref.hybrid_engine=false", "actor_rollout_ref.hybrid_engine=false is not supported"),
    ],
)
def test_main_ppo_refuses_before_any_worker_starts(tmp_path, override, match):
    """verl's own launcher: the check runs inside verl's validate_config, before ray.init."""
    cmd = main_ppo_command("/nonexistent", tmp_path, tmp_path, [override])
    env = {**os.environ, "VERL_PLATFORM": "cpu"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode != 0
    assert match in out.stderr + out.stdout
    assert "ray init kwargs" not in out.stdout  # stopped before Ray started


def test_registrations_wait_for_the_verl_modules_they_belong_to():
    """On the CPU platform, ``import verl`` loads the backend's entry point but none of the rollout or engine modules;
    each registration lands when verl imports its module."""
    code = """
import sys
import verl
heavy = ["verl.workers.rollout.replica", "verl.workers.rollout.base", "verl.workers.engine.fsdp.transformer_impl",
         "verl_rhythm.backends.cpu.rollout", "verl_rhythm.backends.cpu.sampling"]
print("early", [m for m in heavy if m in sys.modules])
from verl.workers.rollout.replica import RolloutReplicaRegistry, get_rollout_replica_class
from verl.workers.rollout.base import get_rollout_class
from verl.workers.engine.base import EngineRegistry
import verl.workers.engine.fsdp.transformer_impl
print("replica", get_rollout_replica_class("hf").__name__)
print("adapter", get_rollout_class("hf", "async").__name__)
print("engine", EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__)
"""
    env = {**os.environ, "VERL_PLATFORM": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["early"] == "[]"
    assert lines["replica"] == "HFReplica" and lines["adapter"] == "HFServerAdapter"
    assert lines["engine"] == "FSDPEngineWithLMHead"
