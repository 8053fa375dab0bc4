"""The capture on the embedded SmolLM2-135M (Llama, 30 layers, 9 heads / 3 kv heads) equals the dense reference.

Real text through the real tokenizer; default spec settings (W=10, H_lo=10, H_hi=100, the five middle-third layers).
The chunked path matches eager's maps to 1e-5. The fused path takes each row's log-sum-exp from the SDPA kernel,
whose fp32 logits round differently from eager's matmul by about eps32 · |z| (logits of tens): its bound is
FUSED_ATOL = 5e-5 on WAAD/FAI (measured: 2.4e-5), the size of the reference's own fp32 rounding at these logits.
"""

from __future__ import annotations

import pytest
import torch
from test_capture import assert_matches_dense, forward

from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure.capture import RhythmCapture, layouts_from_attention_mask, layouts_from_position_ids

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
        prompt = tokenizer(text)["input_ids"]
        response = tokenizer(answer)["input_ids"]
        ids = torch.tensor(list(prompt) + list(response))
        seqs.append((ids, torch.arange(len(ids)) >= len(prompt)))
    return seqs


@pytest.fixture(scope="module")
def sdpa_twin(smollm2):
    """The same model object switched to SDPA for the fused path, switched back afterwards."""
    model, _ = smollm2
    model.set_attn_implementation("sdpa")
    try:
        yield model
    finally:
        model.set_attn_implementation("eager")


def _check_chunked(model, cfg, layouts, columns, inputs):
    capture = RhythmCapture(cfg, model.config.num_hidden_layers, layouts, fused=False)
    maps = forward(model, capture, **inputs).attentions
    assert set(capture.paths.values()) == {"chunked"}
    assert_matches_dense(capture, maps, cfg, columns)


def test_smollm2_packed_and_left_padded(smollm2):
    model, tokenizer = smollm2
    cfg = RhythmConfig(chunk_size=64)
    seqs = _sequences(tokenizer)
    lengths = [len(ids) for ids, _ in seqs]
    assert min(lengths) > 30 and max(lengths) > 80  # bands and chunk boundaries are exercised

    packed_ids = torch.cat([ids for ids, _ in seqs])[None]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    layouts = layouts_from_position_ids(pos, [r for _, r in seqs])
    bounds = [0, lengths[0], sum(lengths)]
    cols = [torch.arange(bounds[i], bounds[i + 1]) for i in range(2)]
    _check_chunked(model, cfg, layouts, cols, {"input_ids": packed_ids, "position_ids": pos})

    s = max(lengths)
    ids = torch.full((2, s), tokenizer.pad_token_id)
    mask = torch.zeros(2, s, dtype=torch.long)
    for b, (seq, _) in enumerate(seqs):
        ids[b, s - len(seq) :] = seq
        mask[b, s - len(seq) :] = 1
    layouts = layouts_from_attention_mask(mask, [r for _, r in seqs])
    inputs = {"input_ids": ids, "attention_mask": mask}
    _check_chunked(model, cfg, layouts, [torch.nonzero(m).flatten() for m in mask], inputs)


def test_smollm2_fused_path(smollm2, sdpa_twin):
    _, tokenizer = smollm2
    cfg = RhythmConfig(chunk_size=64)
    seqs = _sequences(tokenizer)
    lengths = [len(ids) for ids, _ in seqs]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    ids = torch.cat([ids for ids, _ in seqs])[None]
    layouts = layouts_from_position_ids(pos, [r for _, r in seqs])
    capture = RhythmCapture(cfg, sdpa_twin.config.num_hidden_layers, layouts)
    stock = forward(sdpa_twin, input_ids=ids, position_ids=pos).logits
    logits = forward(sdpa_twin, capture, input_ids=ids, position_ids=pos).logits
    assert capture.paths == dict.fromkeys(capture.layers, "fused") and capture.layers == [10, 12, 15, 18, 20]
    torch.testing.assert_close(logits, stock, atol=1e-5, rtol=1e-5)
    sdpa_twin.set_attn_implementation("eager")
    try:
        maps = forward(sdpa_twin, input_ids=ids, position_ids=pos).attentions
    finally:
        sdpa_twin.set_attn_implementation("sdpa")
    cols = [torch.arange(lengths[0]), torch.arange(lengths[0], sum(lengths))]
    assert_matches_dense(capture, maps, cfg, cols, atol=FUSED_ATOL)
