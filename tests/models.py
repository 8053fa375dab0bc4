# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Tiny random-config causal LMs built in-process (no hub), shared by the tests and benchmarks.

Each model is small enough for the CPU yet keeps the features the capture must handle: Qwen2 (q/k/v biases),
Qwen3 (q/k RMS norms before RoPE), Llama with GQA (kv head = h // (H / H_kv)).
"""

from __future__ import annotations

import torch

ARCHS = ("qwen2", "qwen3", "llama_gqa")


def _common(num_layers: int, **extra) -> dict:
    """The config fields every tiny model shares (vocab 128, hidden 64, MLP 128, 4,096 positions), plus ``extra``."""
    return dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        **extra,
    )


def tiny_config(arch: str, num_layers: int = 6, attn_implementation: str = "eager"):
    """A transformers config for a tiny random model of ``arch`` (one of :data:`ARCHS`)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = _common(num_layers, rope_theta=10000.0)
    if arch == "qwen2":
        cfg = Qwen2Config(num_attention_heads=4, num_key_value_heads=4, **common)
    elif arch == "qwen3":
        cfg = Qwen3Config(num_attention_heads=4, num_key_value_heads=2, head_dim=16, **common)
    elif arch == "llama_gqa":
        cfg = LlamaConfig(num_attention_heads=8, num_key_value_heads=2, **common)
    elif arch == "llama_mqa":  # one kv head: fewer kv heads than sequence-parallel ranks
        cfg = LlamaConfig(num_attention_heads=4, num_key_value_heads=1, **common)
    else:
        raise ValueError(f"unknown arch {arch!r}; choose from {ARCHS} or llama_mqa")
    cfg._attn_implementation = attn_implementation
    return cfg


def tiny_model(arch: str, num_layers: int = 6, attn_implementation: str = "eager", seed: int = 0):
    """A tiny random causal LM in eval mode, fp32, deterministic from ``seed``.

    The weights are scaled up a little so attention is far from uniform (sharper rows make the statistics
    sensitive to any indexing mistake).
    """
    return _sharpened(tiny_config(arch, num_layers, attn_implementation), seed)


def _sharpened(config, seed: int):
    """A random model of ``config``, eval mode, with q/k projections x4 and sinks (where the family has them) drawn
    around the logits' scale."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
            if name.endswith(".sinks"):
                p.copy_(torch.randn(p.shape) * 2.0)
    return model.eval()


VARIANT_ARCHS = ("mistral", "qwen2_sliding", "gemma2", "gemma3", "gpt_oss", "qwen3_next")
"""Families whose attention is not plain causal softmax: sliding windows (Mistral; Qwen2 ``use_sliding_window``;
Gemma 2/3 alternating), logit soft-capping (Gemma 2), sinks (gpt-oss), hybrid linear/softmax layers (Qwen3-Next)."""


def variant_config(arch: str, num_layers: int = 6, attn_implementation: str = "eager"):
    """A transformers config for a tiny random model of ``arch`` (one of :data:`VARIANT_ARCHS`); window 9."""
    import transformers as tf

    common = _common(num_layers, num_attention_heads=4, num_key_value_heads=2)
    if arch == "mistral":
        cfg = tf.MistralConfig(sliding_window=9, **common)
    elif arch == "qwen2_sliding":  # layers >= max_window_layers slide
        cfg = tf.Qwen2Config(use_sliding_window=True, sliding_window=9, max_window_layers=num_layers // 2, **common)
    elif arch == "gemma2":
        gemma = dict(head_dim=16, sliding_window=9, query_pre_attn_scalar=16)
        cfg = tf.Gemma2Config(attn_logit_softcapping=5.0, **gemma, **common)
    elif arch == "gemma3":
        gemma = dict(head_dim=16, sliding_window=9, query_pre_attn_scalar=16)
        cfg = tf.Gemma3TextConfig(sliding_window_pattern=2, **gemma, **common)
    elif arch == "gpt_oss":
        cfg = tf.GptOssConfig(head_dim=16, sliding_window=9, num_local_experts=4, num_experts_per_tok=2, **common)
    elif arch == "qwen3_next":
        cfg = tf.Qwen3NextConfig(
            head_dim=16, full_attention_interval=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=32, linear_num_value_heads=4, linear_num_key_heads=2,
            linear_key_head_dim=16, linear_value_head_dim=16, **common,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown arch {arch!r}; choose from {VARIANT_ARCHS}")
    cfg._attn_implementation = attn_implementation
    return cfg


def variant_model(arch: str, num_layers: int = 6, attn_implementation: str = "eager", seed: int = 0):
    """A tiny random causal LM of a :data:`VARIANT_ARCHS` family, eval mode, fp32, sharpened like :func:`tiny_model`.

    gpt-oss sinks are drawn around the logits' scale so that they take a visible share of each row.
    """
    return _sharpened(variant_config(arch, num_layers, attn_implementation), seed)
