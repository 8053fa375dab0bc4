# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The capture on the embedded SmolLM2-135M (Llama, 30 layers, 9 heads / 3 kv heads) equals the dense reference.

Real text through the real tokenizer; default spec settings (W=10, H_lo=10, H_hi=100, the five middle-third layers
[10, 12, 15, 18, 20]); a packed row of two unequal sequences, the same two left- and right-padded, and the longer one
alone (no mask). The per-sequence path and the batched path (on the eager forward that also returns the maps) match
eager's maps to 1e-5. On the SDPA forward every batch takes the fused path (the masked ones with transformers' bool
mask, which stock SDPA converts to an additive mask itself), which takes each row's log-sum-exp from the SDPA kernel,
whose fp32 logits round differently from eager's matmul by about eps32 · |z|: it is held to FUSED_ATOL = 5e-5 on
WAAD/FAI (measured 2.4e-5), the size of the reference's own fp32 rounding at these logits.
"""

from __future__ import annotations

import pytest
import torch
from test_capture_on_cpu import assert_matches_dense, forward

from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure.capture import (
    RhythmCapture,
    SequenceLayout,
    layouts_from_attention_mask,
    layouts_from_position_ids,
)
from verl_rhythm.testing.chunked import ChunkedCapture

pytestmark = pytest.mark.slow
FUSED_ATOL = 5e-5

PROMPTS = [
    ("What is 12 + 7? Think step by step.", "First take 12, then add 7: 12 + 7 = 19. So the answer is 19."),
    (
        "Name three primary colours and say why they are called primary.",
        "Red, yellow and blue are the traditional primary colours, because painters mix every other hue from them; "
        "in light the primaries are red, green and blue instead, since screens add light rather than absorb it.",
    ),
]


def _sequences(tokenizer):
    seqs = []
    for question, answer in PROMPTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        prompt, response = tokenizer(text)["input_ids"], tokenizer(answer)["input_ids"]
        seqs.append(
            (torch.tensor(list(prompt) + list(response)), torch.arange(len(prompt) + len(response)) >= len(prompt))
        )
    return seqs


def _batches(tokenizer):
    """``{name: (inputs, layouts, columns)}`` for the packed, left-padded and right-padded batch."""
    seqs = _sequences(tokenizer)
    lengths = [len(ids) for ids, _ in seqs]
    assert min(lengths) > 30 and max(lengths) > 80  # bands and chunk boundaries are exercised
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    out = {
        "packed": (
            {"input_ids": torch.cat([ids for ids, _ in seqs])[None], "position_ids": pos},
            layouts_from_position_ids(pos, [r for _, r in seqs]),
            [torch.arange(lengths[0]), torch.arange(lengths[0], sum(lengths))],
        )
    }
    s = max(lengths)
    for side in ("left", "right"):
        ids = torch.full((2, s), tokenizer.pad_token_id)
        mask = torch.zeros(2, s, dtype=torch.long)
        for b, (seq, _) in enumerate(seqs):
            cols = slice(s - len(seq), s) if side == "left" else slice(0, len(seq))
            ids[b, cols], mask[b, cols] = seq, 1
        out[side] = (
            {"input_ids": ids, "attention_mask": mask},
            layouts_from_attention_mask(mask, [r for _, r in seqs]),
            [torch.nonzero(m).flatten() for m in mask],
        )
    ids, resp = seqs[1]
    out["single"] = ({"input_ids": ids[None]}, [SequenceLayout(0, 0, len(ids), resp)], [torch.arange(len(ids))])
    return out


def test_smollm2_chunked_and_fused_match_dense(smollm2):
    model, tokenizer = smollm2
    cfg = RhythmConfig(chunk_size=64)
    for name, (inputs, layouts, columns) in _batches(tokenizer).items():
        for kind, path in ((ChunkedCapture, "chunked"), (RhythmCapture, "batched")):
            capture = kind(cfg, model.config.num_hidden_layers, layouts, fused=False)
            maps = forward(model, capture, **inputs).attentions
            assert capture.layers == [10, 12, 15, 18, 20] and set(capture.paths.values()) == {path}, name
            assert_matches_dense(capture, maps, cfg, columns)

        fused = RhythmCapture(cfg, model.config.num_hidden_layers, layouts)
        model.set_attn_implementation("sdpa")
        try:
            stock = forward(model, **inputs).logits
            logits = forward(model, fused, **inputs).logits
        finally:
            model.set_attn_implementation("eager")
        assert fused.paths == dict.fromkeys(fused.layers, "fused"), name
        valid = inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones(logits.shape[:2]) > 0
        torch.testing.assert_close(logits[valid], stock[valid], atol=1e-5, rtol=1e-5)
        assert_matches_dense(fused, maps, cfg, columns, atol=FUSED_ATOL)
