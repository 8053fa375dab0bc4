# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Attention variants on tiny random models of their families: the capture equals the dense eager maps, or the run is
refused at start-up by name.

- Sliding windows: Mistral (every layer), Qwen2 with ``use_sliding_window`` (upper layers), Gemma 2 and 3
  (alternating sliding/full layers); soft-capping: Gemma 2; sinks: gpt-oss (``s_aux``); hybrid layers: Qwen3-Next,
  whose default layer choice reads the middle third of its softmax-attention layers only.
- Ground truth: :mod:`verl_rhythm.testing.dense` (the spec-only reference) on the ``output_attentions`` maps of the
  same eager forward (the model family's own eager attention, which applies the window, the cap and the sinks).
- Refusals: an explicit linear-attention layer in ``algorithm.rhythm.layers`` and configs with attention the capture
  does not reproduce (chunked local attention, bidirectional attention) fail in the start-up check, naming the key.
"""

from __future__ import annotations

import pytest
import torch
from models import VARIANT_ARCHS, variant_config, variant_model
from test_capture_on_cpu import assert_matches_dense, forward

from verl_rhythm.config import RhythmConfig, RhythmConfigError, select_layers
from verl_rhythm.glue.checks import attention_variant_problems, text_layer_types
from verl_rhythm.measure.capture import RhythmCapture, layouts_from_attention_mask, layouts_from_position_ids

CFG = RhythmConfig(waad_window=4, fai_horizon_lo=3, fai_horizon_hi=12, chunk_size=7)
PACKING_IGNORED = {"gpt_oss"}
"""Families whose eager mask does not split a packed row by ``position_ids`` in this transformers version."""


def _all_softmax_layers(model) -> RhythmConfig:
    types = text_layer_types(model.config)
    layers = [i for i in range(model.config.num_hidden_layers) if types is None or types[i] != "linear_attention"]
    return RhythmConfig(**{**CFG.to_dict(), "layers": layers})


def _per_layer(model, attentions):
    """``output_attentions`` indexed by decoder layer (hybrid models return maps of their softmax layers only)."""
    if len(attentions) == model.config.num_hidden_layers:
        return attentions
    types = text_layer_types(model.config)
    softmax = [i for i, t in enumerate(types) if t != "linear_attention"]
    assert len(softmax) == len(attentions)
    by_layer = dict(zip(softmax, attentions, strict=True))
    return [by_layer.get(i) for i in range(model.config.num_hidden_layers)]


@pytest.mark.parametrize("arch", VARIANT_ARCHS)
def test_padded_batch_matches_dense_eager_maps(arch):
    model = variant_model(arch)
    cfg = _all_softmax_layers(model)  # sliding and full layers alike
    torch.manual_seed(5)
    lengths, prompts = [40, 23, 31], [9, 5, 30]
    mask = torch.zeros(3, 40, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, 40 - n :] = 1  # left padding, as rollouts come back
    ids = torch.randint(0, 128, (3, 40))
    resp = [torch.arange(n) >= p for n, p in zip(lengths, prompts, strict=True)]
    layouts = layouts_from_attention_mask(mask, resp)
    capture = RhythmCapture(cfg, model.config.num_hidden_layers, layouts, layer_types=text_layer_types(model.config))
    maps = _per_layer(model, forward(model, capture, input_ids=ids, attention_mask=mask).attentions)
    assert capture.paths == dict.fromkeys(capture.layers, "batched")
    assert_matches_dense(capture, maps, cfg, [torch.nonzero(row).flatten() for row in mask])


@pytest.mark.parametrize("arch", [a for a in VARIANT_ARCHS if a not in PACKING_IGNORED])
def test_packed_row_matches_dense_eager_maps(arch):
    model = variant_model(arch, seed=1)
    cfg = _all_softmax_layers(model)
    torch.manual_seed(6)
    lengths, prompts = [17, 30, 8], [5, 12, 2]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    ids = torch.randint(0, 128, pos.shape)
    layouts = layouts_from_position_ids(pos, [torch.arange(n) >= p for n, p in zip(lengths, prompts, strict=True)])
    capture = RhythmCapture(cfg, model.config.num_hidden_layers, layouts, layer_types=text_layer_types(model.config))
    maps = _per_layer(model, forward(model, capture, input_ids=ids, position_ids=pos).attentions)
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert_matches_dense(capture, maps, cfg, [torch.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


FA2_ARCHS = [a for a in VARIANT_ARCHS if a != "gpt_oss"]
"""gpt-oss is refused for flash_attention_2 by transformers (it needs a FlashAttention with sinks), so sinks never
reach FlashAttention-2 (``tests/test_cpu_flash_attn_on_cpu.py`` checks the refusal)."""


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("arch", FA2_ARCHS)
def test_flash_attention_2_matches_dense_eager_maps(arch, packed, cpu_flash_attn):
    """The same families through transformers' FlashAttention-2 code (window_size, softcap passed to the varlen
    call) on the CPU flash-attn, fp32: the capture of the FA2 forward equals the eager maps of the same weights."""
    eager = variant_model(arch, seed=2)
    flash = variant_model(arch, seed=2, attn_implementation="flash_attention_2")
    cfg = _all_softmax_layers(eager)
    torch.manual_seed(7)
    lengths, prompts = [40, 23, 31], [9, 5, 30]
    resp = [torch.arange(n) >= p for n, p in zip(lengths, prompts, strict=True)]
    if packed:
        pos = torch.cat([torch.arange(n) for n in lengths])[None]
        inputs = {"input_ids": torch.randint(0, 128, pos.shape), "position_ids": pos}
        layouts = layouts_from_position_ids(pos, resp)
        bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
        columns = [torch.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    else:
        mask = torch.zeros(3, 40, dtype=torch.long)
        for b, n in enumerate(lengths):
            mask[b, 40 - n :] = 1
        inputs = {"input_ids": torch.randint(0, 128, (3, 40)), "attention_mask": mask}
        layouts = layouts_from_attention_mask(mask, resp)
        columns = [torch.nonzero(row).flatten() for row in mask]
    capture = RhythmCapture(cfg, flash.config.num_hidden_layers, layouts, layer_types=text_layer_types(flash.config))
    logits = forward(flash, capture, **inputs).logits
    assert capture.paths == dict.fromkeys(capture.layers, "batched")
    out = forward(eager, **inputs)
    valid = inputs["attention_mask"].bool() if not packed else torch.ones(logits.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(logits[valid], out.logits[valid], atol=2e-5, rtol=1e-5)
    assert_matches_dense(capture, _per_layer(eager, out.attentions), cfg, columns)


def test_the_variants_really_change_the_maps():
    """The window, the cap and the sinks are live in these models (else the tests above would prove little)."""
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mistral = variant_model("mistral")(input_ids=ids, output_attentions=True, use_cache=False).attentions[2]
        assert mistral[0, :, 29, :21].abs().max() == 0 and mistral[0, :, 29, 21:].min() > 0  # window 9
        oss = variant_model("gpt_oss")(input_ids=ids, output_attentions=True, use_cache=False).attentions[1]
        assert float(oss[0].sum(-1).min()) < 0.9  # the sinks take part of every row
    gemma2 = variant_model("gemma2")
    assert gemma2.config.attn_logit_softcapping == 5.0 and gemma2.config.layer_types[0] == "sliding_attention"


def test_hybrid_default_layers_are_the_middle_third_of_softmax_layers():
    config = variant_config("qwen3_next", num_layers=48)
    types = text_layer_types(config)
    softmax = [i for i, t in enumerate(types) if t == "full_attention"]
    assert len(softmax) == 24 and types[0] == "linear_attention"
    chosen = select_layers(48, None, types)
    assert chosen == [softmax[i] for i in (8, 10, 12, 14, 16)]
    assert all(types[i] == "full_attention" for i in chosen)
    assert select_layers(48, None, None) == [16, 20, 24, 28, 32]  # without layer types: plain layer indices
    with pytest.raises(RhythmConfigError, match=r"algorithm.rhythm.layers=\[0, 3\]: layers \{0: 'linear_attention'\}"):
        select_layers(48, (0, 3), types)


def test_capture_never_records_linear_attention_layers():
    model = variant_model("qwen3_next")
    layouts = layouts_from_attention_mask(torch.ones(1, 20, dtype=torch.long), [torch.arange(20) >= 5])
    capture = RhythmCapture(RhythmConfig(), 6, layouts, layer_types=text_layer_types(model.config))
    assert capture.layers == [3, 5]
    forward(model, capture, input_ids=torch.randint(0, 128, (1, 20)))
    assert sorted(capture.paths) == [3, 5] and len(capture.finalize()) == 1


@pytest.mark.parametrize(
    ("key", "value"), [("attention_chunk_size", 8192), ("use_bidirectional_attention", True), ("alibi", True)]
)
def test_unsupported_attention_is_refused_by_key(key, value):
    config = variant_config("mistral")
    assert attention_variant_problems(config) == []
    setattr(config, key, value)
    (problem,) = attention_variant_problems(config)
    assert f"{key}={value!r}" in problem and "MistralConfig" in problem


@pytest.mark.parametrize("arch", VARIANT_ARCHS)
def test_the_report_heatmap_is_the_models_own_attention(arch):
    """The report's window maps (``verl-rhythm analyze``'s heatmap) under each family's attention rule (sliding window,
    soft-cap, sinks) equal the eager forward's own ``output_attentions`` rows of that window."""
    from verl_rhythm.analyze.measure import WindowCapture

    model = variant_model(arch, seed=2)
    cfg = _all_softmax_layers(model)
    torch.manual_seed(7)
    n, lo, hi = 40, 20, 36  # a window far enough in for a sliding window to cut rows short
    ids = torch.randint(0, 128, (1, n))
    layouts = layouts_from_attention_mask(torch.ones(1, n, dtype=torch.long), [torch.arange(n) >= 8])
    capture = WindowCapture(cfg, model.config.num_hidden_layers, layer_types=text_layer_types(model.config))
    capture.set_layouts(layouts)
    capture.set_window((0, 0, lo, hi))
    maps = _per_layer(model, forward(model, capture, input_ids=ids).attentions)
    heads = [(layer, h) for layer in capture.layers for h in range(model.config.num_attention_heads)]
    got = capture.window_maps(heads)
    want = torch.stack([maps[layer][0, h, lo:hi, lo:hi] for layer, h in heads]).float()
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
