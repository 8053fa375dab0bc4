# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Checks of ``verl-rhythm analyze``'s inputs that run before the model is loaded or a token generated.

Each raises :class:`verl_rhythm.inputs.InputError` with one line naming the flag (and the file), so a wrong
``--model``, ``--device`` or ``--out`` costs a second, not a model load plus a generation.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from verl_rhythm.inputs import InputError, check_out_dir

ARTEFACT = re.compile(r"(report\.html|summary\.json|trace_\d+\.png|head_spans\.png|heatmap\.png)")
"""Names of the files a report folder holds; a folder holding anything else is never replaced."""

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def check_output(out: str | Path) -> Path:
    """``--out`` must be new, empty, or a previous report (only :data:`ARTEFACT` files), in a writable place.

    The run replaces the whole folder at the end (see :mod:`verl_rhythm.analyze.output`), so a folder with other
    files (``--out .``, say) is refused rather than emptied.
    """
    out = check_out_dir(out, "--out")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not (p.is_file() and ARTEFACT.fullmatch(p.name)))
        if foreign:
            shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise InputError(
                f"--out {out}: the folder holds files that are not part of a verl-rhythm report ({shown}); "
                "the report replaces the whole folder, so give a new or empty folder"
            )
    return out


def check_device(device: str) -> str:
    """``--device`` names a device this machine has (``auto`` = cuda when available, else cpu)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, mps...)") from None
    if dev.type == "cpu":
        return device
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {device}: this machine has no CUDA device available; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
        return device
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise InputError(f"--device {device}: no {dev.type} device is available on this machine")
    return device


def resolve_model(model: str) -> str:
    """The local folder of ``--model``: an existing folder with a ``config.json``, or a hub name already in the
    local Hugging Face cache. Nothing is downloaded (and no hub request retried) when it is neither."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"--model {model}: is a file; give the folder of a Hugging Face model")
        if not (path / "config.json").is_file():
            raise InputError(f"--model {model}: no config.json in the folder; not a Hugging Face model folder")
        return str(path)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
    except Exception:  # an invalid repo id (a path that does not exist, say) raises a validation error
        cached = None
    if not isinstance(cached, str):
        raise InputError(f"--model {model}: no such folder, and no model of that name in the local Hugging Face cache")
    return str(Path(cached).parent)


def load_config(path: str, name: str):
    """The model's transformers config, refusing encoder-decoder models before any weight is read."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as err:  # transformers raises ValueError, OSError or KeyError for unknown/corrupt configs
        raise InputError(f"--model {name}: cannot read its config.json ({err})") from None
    if getattr(config, "is_encoder_decoder", False):
        raise InputError(
            f"--model {name}: an encoder-decoder model ({config.model_type}); the analysis needs a causal "
            "(decoder-only) language model"
        )
    return config


def load_tokenizer(path: str, name: str):
    """The model folder's tokenizer; InputError when the folder has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # missing files surface as OSError, ValueError or TypeError depending on the class
        raise InputError(
            f"--model {name}: no usable tokenizer in the folder (tokenizer.json / tokenizer_config.json): {err}"
        ) from None


def context_length(config) -> int | None:
    """The model's context length from its config, or ``None`` when the config names none."""
    for cfg in (config, getattr(config, "text_config", None)):
        for key in CONTEXT_KEYS:
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def check_context(context: int | None, prompt_lengths: list[tuple[str, int]], max_new_tokens: int, name: str) -> None:
    """Refuse a prompt (``(id, token count)`` pairs) that, with ``--max-new-tokens`` more tokens, would not fit in the
    model's context."""
    if context is None:
        return
    for i, n in prompt_lengths:
        if n + max_new_tokens > context:
            fix = (
                f"lower --max-new-tokens to {context - n} or less"
                if n < context
                else "shorten the prompt (it alone fills the context)"
            )
            raise InputError(
                f"prompt {i!r}: {n} prompt tokens + --max-new-tokens {max_new_tokens} exceed the {context}-token "
                f"context of {name}; {fix}"
            )


@torch.no_grad()
def check_causal(model, name: str, length: int = 16) -> None:
    """Refuse a model that is not causal: an attention module that declares ``is_causal = False`` (transformers'
    encoders such as BERT do), or outputs at the first half of a sequence that change when the second half
    changes. Its attention rows are not the causal ones the method measures."""
    bidirectional = sorted({type(m).__name__ for m in model.modules() if getattr(m, "is_causal", None) is False})
    if not bidirectional:
        device = next(model.parameters()).device
        vocab = int(model.get_input_embeddings().weight.shape[0])
        ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))
        changed = ids.clone()
        changed[0, length // 2 :] = (ids[0, length // 2 :] + 1) % vocab
        a = model(input_ids=ids.to(device)).logits[0, : length // 2].float()
        b = model(input_ids=changed.to(device)).logits[0, : length // 2].float()
        if float((a - b).abs().max()) > 1e-4 * (1.0 + float(a.abs().max())):
            bidirectional = ["its outputs"]
    if bidirectional:
        raise InputError(
            f"--model {name}: earlier positions see later tokens ({', '.join(bidirectional)}: bidirectional "
            "attention, an encoder such as BERT); the analysis measures causal attention and needs a decoder-only "
            "language model"
        )
