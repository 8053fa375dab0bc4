# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Batched sampling with transformers' ``generate``: token ids and their log-probs for many prompts at once.

The rollout server (:mod:`verl_rhythm.backends.cpu.rollout`) gathers the requests verl's agent loop sends
concurrently and hands each compatible group to :func:`generate_batch`. Nothing here knows Ray or verl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from verl_rhythm.tokens import left_pad


@dataclass(frozen=True)
class SamplingParams:
    """The sampling knobs verl's agent loop sends (``verl/trainer/ppo/v1/agent_loop_tq.py``), normalised.

    ``temperature == 0`` means greedy decoding; ``top_k <= 0`` and ``top_p == 1`` switch those filters off.
    Requests with equal :class:`SamplingParams` are generated in one batch.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    ignore_eos: bool = False

    @classmethod
    def from_request(cls, params: dict, max_tokens: int) -> SamplingParams:
        """Read verl's ``sampling_params`` dict; reject what this backend cannot honour, naming the key.

        Raises:
            ValueError: a value is out of range, or a key this backend does not implement is set.
        """
        known = {
            "temperature",
            "top_p",
            "top_k",
            "repetition_penalty",
            "ignore_eos",
            "logprobs",
            "max_tokens",
            "max_new_tokens",
            "seed",
        }
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"hf rollout: unsupported sampling parameter(s) {unknown}; supported: {sorted(known)}")
        out = cls(
            max_tokens=int(max_tokens),
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=int(params.get("top_k", -1)),
            repetition_penalty=float(params.get("repetition_penalty", 1.0)),
            ignore_eos=bool(params.get("ignore_eos", False)),
        )
        for key, value, ok in (
            ("temperature", out.temperature, math.isfinite(out.temperature) and out.temperature >= 0),
            ("top_p", out.top_p, 0 < out.top_p <= 1),
            ("repetition_penalty", out.repetition_penalty, 0 < out.repetition_penalty < math.inf),
            ("max_tokens", out.max_tokens, out.max_tokens >= 1),
        ):
            if not ok:
                raise ValueError(f"hf rollout: sampling parameter {key}={value!r} is out of range")
        return out

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One sampled response: token ids (the stop token included, as vLLM returns it) and their log-probs."""

    token_ids: list[int]
    log_probs: list[float]
    finished: bool
    """``True`` when it ended on a stop token, ``False`` when it hit ``max_tokens``."""


@torch.no_grad()
def generate_batch(
    model,
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    eos_token_ids: list[int],
    pad_token_id: int,
    generator_seed: int | None = None,
    model_inputs: dict | None = None,
) -> list[Completion]:
    """Sample one response per prompt in a single left-padded ``model.generate`` call.

    Log-probs are those of the sampled tokens under ``log_softmax(logits / temperature)`` (raw logits when greedy),
    the quantity verl's actor computes in its log-prob pass, so ``rollout_log_probs`` compare directly with
    ``old_log_probs``.

    Args:
        model: a transformers causal LM in eval mode.
        prompts: token ids per prompt (each non-empty).
        params: shared sampling parameters.
        eos_token_ids: stop tokens (ignored when ``params.ignore_eos``).
        pad_token_id: the id used for left padding (never attended to).
        generator_seed: seeds torch's global generator for this call when given.
        model_inputs: further inputs of ``generate`` for the whole batch, e.g. a vision-language model's
            ``pixel_values`` (all patches of the batch's images, ``(N_patches, C·T·P²)``) and ``image_grid_thw``
            (``(N_images, 3)``), in the order of the image tokens of ``prompts``.

    Returns:
        one :class:`Completion` per prompt, in order.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("hf rollout: every prompt needs at least one token")
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompts, pad_token_id)
    width = input_ids.shape[1]
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    kwargs = dict(
        max_new_tokens=params.max_tokens,
        do_sample=not params.greedy,
        pad_token_id=pad_token_id,
        eos_token_id=None if params.ignore_eos else list(eos_token_ids),
        repetition_penalty=params.repetition_penalty,
        output_logits=True,
        return_dict_in_generate=True,
        use_cache=True,
    )
    if params.ignore_eos:
        kwargs["min_new_tokens"] = params.max_tokens
    if not params.greedy:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else 0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    extra = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in (model_inputs or {}).items()}
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **extra, **kwargs)
    new_tokens = out.sequences[:, width:].cpu()  # (B, T)
    logits = torch.stack(out.logits, dim=1).float().cpu()  # (B, T, V), raw model logits
    scale = params.temperature if not params.greedy else 1.0
    log_probs = torch.log_softmax(logits / scale, dim=-1).gather(-1, new_tokens[..., None])[..., 0]  # (B, T)
    stops = set() if params.ignore_eos else set(eos_token_ids)
    completions = []
    for row, lp in zip(new_tokens.tolist(), log_probs.tolist(), strict=True):
        end = next((t + 1 for t, tok in enumerate(row) if tok in stops), None)
        finished = end is not None
        end = end if finished else len(row)
        completions.append(Completion(token_ids=row[:end], log_probs=lp[:end], finished=finished))
    return completions
