"""Tiny random-config causal LMs built in-process (no hub), shared by the tests and benchmarks.

Each model is small enough for the CPU yet keeps the features the capture must handle: Qwen2 (q/k/v biases),
Qwen3 (q/k RMS norms before RoPE), Llama with GQA (kv head = h // (H / H_kv)).
"""

from __future__ import annotations

import torch

ARCHS = ("qwen2", "qwen3", "llama_gqa")


def tiny_config(arch: str, num_layers: int = 6, attn_implementation: str = "eager"):
    """A transformers config for a tiny random model of ``arch`` (one of :data:`ARCHS`)."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    if arch == "qwen2":
        cfg = Qwen2Config(num_attention_heads=4, num_key_value_heads=4, **common)
    elif arch == "qwen3":
        cfg = Qwen3Config(num_attention_heads=4, num_key_value_heads=2, head_dim=16, **common)
    elif arch == "llama_gqa":
        cfg = LlamaConfig(num_attention_heads=8, num_key_value_heads=2, **common)
    else:
        raise ValueError(f"unknown arch {arch!r}; choose from {ARCHS}")
    cfg._attn_implementation = attn_implementation
    return cfg


def tiny_model(arch: str, num_layers: int = 6, attn_implementation: str = "eager", seed: int = 0):
    """A tiny random causal LM in eval mode, fp32, deterministic from ``seed``.

    The weights are scaled up a little so attention is far from uniform (sharper rows make the statistics
    sensitive to any indexing mistake).
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, num_layers, attn_implementation))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    return model.eval()
