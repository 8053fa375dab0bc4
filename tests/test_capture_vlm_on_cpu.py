# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Vision-language models: the capture reads the text decoder only and equals the dense reference.

Tiny random Qwen2.5-VL and Qwen3-VL (:mod:`verl_rhythm.testing.vlm`: six decoder layers, a two-block vision tower)
with one image per prompt (``pixel_values`` + ``image_grid_thw``; 4 or 8 placeholder tokens inside the prompt), fed
as verl feeds them: one packed row with ``(4, 1, T)`` position ids (row 0 the text positions restarting at 0 per
sequence, rows 1-3 mRoPE), or a right-padded batch with ``(4, B, T)`` position ids and an attention mask. Ground
truth: the dense reference on the text decoder's eager ``output_attentions`` maps (float64 arithmetic). Paths: eager
(the batched statistics), SDPA (fused where the call has no mask) and FlashAttention-2 on verl-rhythm's CPU
flash-attn. The vision tower calls the same attention functions; those calls are counted and run untouched.
"""

from __future__ import annotations

import pytest
import torch
from test_capture_on_cpu import ATOL, assert_matches_dense

from verl_rhythm.config import RhythmConfig
from verl_rhythm.glue.checks import text_layer_types, text_num_layers
from verl_rhythm.measure.capture import RhythmCapture, layouts_from_attention_mask, layouts_from_position_ids
from verl_rhythm.measure.hook import capture_active, install_attention_hook
from verl_rhythm.testing.vlm import IMAGE_TOKEN_ID, VLM_ARCHS, image_sequences, packed_inputs, padded_inputs, vlm_model

CFG = RhythmConfig(layers=(1, 3, 4), waad_window=4, fai_horizon_lo=3, fai_horizon_hi=12, chunk_size=7)
SPECS = [(6, 9), (3, 12, (1, 4, 8)), (10, 5)]
"""(prompt text tokens, response tokens[, image grid]) per sequence; the image sits at prompt position 2."""
VISION_ATTENTION = {"qwen2_5_vl": "Qwen2_5_VLVisionAttention", "qwen3_vl": "Qwen3VLVisionAttention"}


def forward(model, capture=None, **inputs):
    install_attention_hook()
    eager = model.config._attn_implementation == "eager"
    with torch.no_grad():
        if capture is None:
            return model(**inputs, use_cache=False, output_attentions=eager)
        with capture_active(capture):
            return model(**inputs, use_cache=False, output_attentions=eager)


def response_masks(sequences) -> list[torch.Tensor]:
    return [torch.arange(len(s["input_ids"])) >= len(s["input_ids"]) - s["response_len"] for s in sequences]


def layouts_and_columns(sequences, inputs, packed: bool):
    """The capture's layouts (from the text row of the position ids, or from the mask) and each sequence's columns."""
    masks = response_masks(sequences)
    if packed:
        layouts = layouts_from_position_ids(inputs["position_ids"][0], masks)
        bounds = [0, *torch.tensor([len(s["input_ids"]) for s in sequences]).cumsum(0).tolist()]
        return layouts, [torch.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    mask = inputs["attention_mask"]
    return layouts_from_attention_mask(mask, masks), [torch.nonzero(row).flatten() for row in mask]


@pytest.fixture(params=["eager", "sdpa", "flash_attention_2"])
def implementation(request):
    if request.param == "flash_attention_2":
        request.getfixturevalue("cpu_flash_attn")
    return request.param


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("arch", VLM_ARCHS)
def test_vlm_capture_matches_the_text_decoders_dense_reference(arch, packed, implementation):
    eager = vlm_model(arch)
    sequences = image_sequences(eager, SPECS)
    inputs = packed_inputs(sequences) if packed else padded_inputs(sequences)
    assert int((inputs["input_ids"] == IMAGE_TOKEN_ID).sum()) == 4 + 8 + 4  # the images' placeholders, in the prompts
    layouts, columns = layouts_and_columns(sequences, inputs, packed)
    model = eager if implementation == "eager" else vlm_model(arch, attn_implementation=implementation)
    config = model.config
    capture = RhythmCapture(CFG, text_num_layers(config), layouts, layer_types=text_layer_types(config))
    assert capture.layers == [1, 3, 4]
    logits = forward(model, capture, **inputs).logits
    stock = forward(eager, **inputs)
    valid = inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones(logits.shape[:2], dtype=bool)
    torch.testing.assert_close(logits[valid], stock.logits[valid], atol=1e-5, rtol=1e-5)
    # every vision block's attention ran through the wrapped functions (FA2: one varlen call per block for all
    # images; eager / SDPA: one call per image, or per window, and block) and was passed through, counted
    vision = VISION_ATTENTION[arch]
    assert set(capture.passed_through) == {vision}
    calls = capture.passed_through[vision]
    depth = config.vision_config.depth
    assert calls == depth if implementation == "flash_attention_2" else calls >= len(sequences) * depth
    maps = stock.attentions
    assert len(maps) == config.text_config.num_hidden_layers  # the text decoder's maps only
    for layer in capture.layers:  # the reference is per sequence only if eager's mask keeps each sequence apart
        for row, cols in enumerate(columns):
            a = maps[layer][0 if packed else row][:, cols][..., cols]
            torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:2]))
    assert_matches_dense(capture, maps, CFG, columns, atol=ATOL)


@pytest.mark.parametrize("arch", VLM_ARCHS)
def test_vision_blocks_that_carry_decoder_layer_indices_still_pass_through(arch):
    """The vision calls are told apart by their module (``is_causal = False``), not by lacking a layer index: a
    vision tower whose attention modules carry the very indices of the selected decoder layers changes nothing."""
    model = vlm_model(arch)
    vision = [m for m in model.modules() if type(m).__name__ == VISION_ATTENTION[arch]]
    assert vision and all(getattr(m, "layer_idx", None) is None for m in vision)
    for m in vision:
        m.layer_idx = CFG.layers[0]
    sequences = image_sequences(model, SPECS)
    inputs = packed_inputs(sequences)
    layouts, columns = layouts_and_columns(sequences, inputs, packed=True)
    capture = RhythmCapture(CFG, text_num_layers(model.config), layouts)
    out = forward(model, capture, **inputs)
    assert capture.passed_through == {VISION_ATTENTION[arch]: capture.passed_through[VISION_ATTENTION[arch]]}
    assert_matches_dense(capture, out.attentions, CFG, columns, atol=ATOL)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_vision_tower_runs_untouched_under_a_capture(implementation):
    """The vision tower's output inside a capture is bit-for-bit its output outside, and nothing is recorded."""
    model = vlm_model("qwen2_5_vl", attn_implementation=implementation)
    seq = image_sequences(model, SPECS[:1])[0]
    install_attention_hook()
    capture = RhythmCapture(CFG, text_num_layers(model.config), response_masks([seq]) and None)
    with torch.no_grad():
        stock = model.model.visual(seq["pixel_values"], grid_thw=seq["image_grid_thw"])
        with capture_active(capture):
            captured = model.model.visual(seq["pixel_values"], grid_thw=seq["image_grid_thw"])
    assert torch.equal(captured.pooler_output, stock.pooler_output)
    assert capture.paths == {} and capture.passed_through["Qwen2_5_VLVisionAttention"] >= 2
