# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A tiny random Llama (GQA) with a character-level ChatML tokenizer, saved as an HF folder: a model every verl code
path can load (tokenizer, chat template, generation config) that trains in seconds on a CPU. Built in-process, no hub.
"""

from __future__ import annotations

import string
from pathlib import Path

EOS = "<|im_end|>"
SPECIALS = ["<unk>", "<|im_start|>", EOS]
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A 128-token character-level fast tokenizer: printable ASCII, the ChatML specials, unused fillers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab_list = SPECIALS + chars
    vocab_list += [f"<f{i}>" for i in range(128 - len(vocab_list))]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab_list)}, unk_token="<unk>"))
    backend.add_special_tokens(SPECIALS)
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token=EOS, pad_token=EOS)
    tok.chat_template = CHATML_TEMPLATE
    return tok


def save_tiny_model(path: str | Path, *, num_layers: int = 4, seed: int = 0) -> Path:
    """Save a tiny random Llama-GQA causal LM (vocab 128, hidden 64, 8 heads / 2 KV heads) and
    :func:`tiny_tokenizer` to ``path``; eos and pad are ``<|im_end|>``. Returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    path = Path(path)
    tokenizer = tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(EOS)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        eos_token_id=eos,
        pad_token_id=eos,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
