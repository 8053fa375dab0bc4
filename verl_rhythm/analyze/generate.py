# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Rollouts for the analysis: batched ``model.generate`` (greedy by default) with progress lines.

Each response ends at its first end-of-sequence token, which stays part of the response (as in a verl rollout's
``response_mask``). :func:`token_pieces` cuts the decoded text into one piece per token for the report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from verl_rhythm.analyze.progress import Progress
from verl_rhythm.config import SEED_MAX
from verl_rhythm.inputs import SettingError
from verl_rhythm.tokens import left_pad


@dataclass(frozen=True)
class Sampling:
    """Decoding settings: greedy unless ``do_sample``.

    Attributes:
        max_new_tokens: the response length limit.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature (``do_sample`` only).
        top_p: nucleus sampling share (``do_sample`` only).
        seed: torch seed set before each batch's sampling (``do_sample`` only).
    """

    max_new_tokens: int = 192
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise SettingError("max_new_tokens", self.max_new_tokens, "must be >= 1")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise SettingError("temperature", self.temperature, "must be a finite number > 0")
        if not 0 < self.top_p <= 1:  # also False for NaN
            raise SettingError("top_p", self.top_p, "must be in (0, 1]")
        if not 0 <= self.seed <= SEED_MAX:
            raise SettingError("seed", self.seed, "must be in [0, 2**63 - 1]")


class _StepReporter(StoppingCriteria):
    """Never stops generation; reports every ``every`` decoding steps."""

    def __init__(self, progress: Progress, label: str, prompt_len: int, limit: int, every: int = 32):
        self.progress, self.label, self.prompt_len, self.limit, self.every = progress, label, prompt_len, limit, every

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_len
        if step % self.every == 0:
            self.progress(f"{self.label}: {step}/{self.limit} tokens")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def eos_ids(model, tokenizer) -> list[int]:
    """End-of-sequence ids: the tokenizer's ``eos_token_id`` plus the model's generation config ones."""
    ids = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id and the model's generation config names none")
    return sorted(ids)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[list[int]],
    sampling: Sampling,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[list[int]]:
    """Generate one response per prompt, in left-padded batches.

    Args:
        model: a transformers causal LM in eval mode.
        tokenizer: its tokenizer (for the eos and pad ids).
        prompts: token ids of each prompt.
        sampling: decoding settings.
        batch_size: prompts per ``generate`` call.
        progress: progress reporter; default silent.

    Returns:
        each prompt's response token ids, up to and including the first end-of-sequence token.
    """
    progress = progress or Progress(quiet=True)
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    device = next(model.parameters()).device
    config = GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=sampling.do_sample,
        temperature=sampling.temperature if sampling.do_sample else None,
        top_p=sampling.top_p if sampling.do_sample else None,
        top_k=None,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    responses: list[list[int]] = []
    for b0 in range(0, len(prompts), batch_size):
        batch = prompts[b0 : b0 + batch_size]
        ids, mask = left_pad(batch, pad)
        width = ids.shape[1]
        label = f"generate prompts {b0 + 1}-{b0 + len(batch)}/{len(prompts)}"
        reporter = _StepReporter(progress, label, width, sampling.max_new_tokens)
        if sampling.do_sample:
            torch.manual_seed(sampling.seed + b0)
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([reporter]),
        )
        new = out[:, width:].tolist()
        for row in new:
            cut = next((j + 1 for j, tok in enumerate(row) if tok in eos), len(row))
            responses.append(row[:cut])
        lengths = [len(r) for r in responses[b0:]]
        progress(f"{label}: done in {time.perf_counter() - t0:.1f}s, response lengths {lengths}")
    return responses


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text of each token, for display: ``"".join(pieces)`` is the decoded text of ``ids``, special tokens kept.

    Decodes growing prefixes and keeps each new suffix, so byte-level BPE spaces come out right. Where a prefix
    decode does not extend the previous one (a multi-byte character split across tokens decodes to U+FFFD until
    complete), that token falls back to decoding alone and the join may differ from the full decode there.
    """
    pieces, prev = [], ""
    for j in range(len(ids)):
        text = tokenizer.decode(ids[: j + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.startswith(prev):
            pieces.append(text[len(prev) :])
        else:
            pieces.append(
                tokenizer.decode(ids[j : j + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            )
        prev = text
    return pieces
