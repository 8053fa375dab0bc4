# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The capture equals the dense reference on eager ``output_attentions`` maps of real transformers models.

Ground truth: :mod:`verl_rhythm.testing.dense` (written from the spec alone: its own layer choice, spans, head groups,
|T(s)|, WAAD and FAI) on the maps transformers' eager attention returns. Every capture path is checked on padded
(left, right) and packed batches of unequal lengths:

- ``chunked``: the hook sees the eager forward's post-RoPE q/k and runs the per-sequence path
  (:mod:`verl_rhythm.testing.chunked`, a second implementation, not a reference); maps and capture come from the very
  same forward.
- ``batched``: the same forward, the whole micro-batch in one computation per layer (:mod:`.batched`).
- ``sdpa``: an SDPA twin of the model (same weights). Where the layer's call has no mask (rows that start at column
  0, no padding) the hook replaces it by the kernel that also returns log-sum-exp and expected position
  (:mod:`verl_rhythm.measure.fused`); with a mask the batched path runs. Its logits must equal the stock SDPA
  forward's.
- ``flash``: a FlashAttention-2 twin (transformers' own FA2 code: the varlen call for packed rows and padded
  batches) on verl-rhythm's CPU flash-attn, fp32; the batched path; logits equal eager's.
"""

from __future__ import annotations

import pytest
import torch
from models import ARCHS, tiny_model

from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure.capture import RhythmCapture, layouts_from_attention_mask, layouts_from_position_ids
from verl_rhythm.measure.hook import capture_active, install_attention_hook
from verl_rhythm.testing import dense
from verl_rhythm.testing.chunked import ChunkedCapture
from verl_rhythm.testing.dense import attention_maps_for_sequence, head_stats_dense, rhythm_dense

ATOL = 1e-5
CFG = RhythmConfig(layers=(1, 3, 4), waad_window=4, fai_horizon_lo=3, fai_horizon_hi=12, chunk_size=7)


def response_mask(n: int, prompt: int) -> torch.Tensor:
    return torch.arange(n) >= prompt


def forward(model, capture=None, **inputs):
    install_attention_hook()
    with torch.no_grad():
        if capture is None:
            return model(**inputs, use_cache=False, output_attentions=model.config._attn_implementation == "eager")
        with capture_active(capture):
            return model(**inputs, use_cache=False, output_attentions=model.config._attn_implementation == "eager")


def capture_and_maps(arch, path, cfg, layouts, **inputs):
    """Run the capture on ``path`` and return it with the eager maps of the same inputs."""
    eager = tiny_model(arch)
    if path == "flash":
        from verl_rhythm.backends.cpu.flash_attn import install

        assert install.is_installed()  # the cpu_flash_attn fixture
        flash = tiny_model(arch, attn_implementation="flash_attention_2")
        capture = RhythmCapture(cfg, flash.config.num_hidden_layers, layouts)
        logits = forward(flash, capture, **inputs).logits
        assert capture.paths == dict.fromkeys(capture.layers, "batched")
        out = forward(eager, **inputs)
        valid = inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones(logits.shape[:2]) > 0
        torch.testing.assert_close(logits[valid], out.logits[valid], atol=1e-5, rtol=1e-5)
        return capture, out.attentions
    if path in ("chunked", "batched"):
        kind = ChunkedCapture if path == "chunked" else RhythmCapture
        capture = kind(cfg, eager.config.num_hidden_layers, layouts, fused=False)
        maps = forward(eager, capture, **inputs).attentions
        assert capture.paths == dict.fromkeys(capture.layers, path)
        return capture, maps
    sdpa = tiny_model(arch, attn_implementation="sdpa")
    capture = RhythmCapture(cfg, sdpa.config.num_hidden_layers, layouts)
    logits = forward(sdpa, capture, **inputs).logits
    # fp32 SDPA on CPU: causal rows, and padded or packed batches (transformers' bool mask, which stock SDPA
    # converts to an additive one itself) all take the fused path
    assert capture.paths == dict.fromkeys(capture.layers, "fused")
    stock = forward(sdpa, **inputs).logits
    # the replaced attention call returns the stock output (same kernel, zero-padded head dim): logits agree
    valid = inputs["attention_mask"].bool() if "attention_mask" in inputs else torch.ones(logits.shape[:2], dtype=bool)
    torch.testing.assert_close(logits[valid], stock[valid], atol=1e-6, rtol=1e-6)
    return capture, forward(eager, **inputs).attentions


def assert_matches_dense(capture, attentions, cfg, columns, atol=ATOL, layer_types=None):
    """The capture's layers are the reference's choice, and every layout's HeadStats and SequenceRhythm equal the
    dense reference's (fp32, ``atol``): per-head vectors, |T(s)|, spans, head groups, WAAD and FAI.

    ``attentions`` holds one entry per decoder layer; ``layer_types`` is the model's ``config.layer_types``."""
    layers = dense.select_layers(len(attentions), cfg.layers, layer_types)
    assert capture.layers == layers
    bands = (cfg.waad_window, cfg.fai_horizon_lo, cfg.fai_horizon_hi)
    for lay, st, rh, cols in zip(capture.layouts, capture.head_stats(), capture.finalize(), columns, strict=True):
        maps, heads = attention_maps_for_sequence(attentions, layers, lay.row, cols)
        ref = head_stats_dense(maps, lay.response_mask, heads, *bands)
        assert st.heads == ref.heads
        torch.testing.assert_close(st.waad, ref.waad, atol=atol, rtol=0)
        torch.testing.assert_close(st.fai_num, ref.fai_num, atol=atol, rtol=0)
        torch.testing.assert_close(st.dist, ref.dist, atol=atol, rtol=1e-5)
        assert torch.equal(st.fai_count, ref.fai_count)
        ref_rh = rhythm_dense(maps, lay.response_mask, heads, *bands, cfg.head_quantile)
        assert torch.equal(rh.local_heads, ref_rh.local_heads) and torch.equal(rh.global_heads, ref_rh.global_heads)
        torch.testing.assert_close(rh.span, ref_rh.span, atol=atol, rtol=1e-5)
        torch.testing.assert_close(rh.waad, ref_rh.waad, atol=atol, rtol=0)
        torch.testing.assert_close(rh.fai, ref_rh.fai, atol=atol, rtol=0)


@pytest.fixture(params=["chunked", "batched", "sdpa", "flash"])
def path(request):
    """Each capture path; ``flash`` with transformers' flash_attention_2 on the CPU flash-attn."""
    if request.param == "flash":
        request.getfixturevalue("cpu_flash_attn")
    return request.param


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_matches_dense(arch, side, path):
    torch.manual_seed(1)
    lengths, prompts = [40, 23, 31], [9, 5, 30]
    s = max(lengths)
    ids = torch.randint(0, 128, (3, s))
    mask = torch.zeros(3, s, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    if side == "left":
        mask = mask.flip(1)
    layouts = layouts_from_attention_mask(mask, [response_mask(n, p) for n, p in zip(lengths, prompts, strict=True)])
    capture, maps = capture_and_maps(arch, path, CFG, layouts, input_ids=ids, attention_mask=mask)
    assert_matches_dense(capture, maps, CFG, [torch.nonzero(row).flatten() for row in mask])


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_unequal_lengths_match_dense(arch, path):
    torch.manual_seed(2)
    lengths, prompts = [17, 45, 8, 30], [5, 20, 2, 29]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    ids = torch.randint(0, 128, pos.shape)
    layouts = layouts_from_position_ids(pos, [response_mask(n, p) for n, p in zip(lengths, prompts, strict=True)])
    capture, maps = capture_and_maps(arch, path, CFG, layouts, input_ids=ids, position_ids=pos)
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    cols = [torch.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for layer in capture.layers:  # the reference is per sequence only if eager's mask is block-causal
        for c in cols:
            torch.testing.assert_close(maps[layer][0][:, c][..., c].sum(-1), torch.ones(maps[layer].shape[1], len(c)))
    assert_matches_dense(capture, maps, CFG, cols)


def test_default_spec_settings_on_longer_sequences(cpu_flash_attn):
    """W=10, H_lo=10, H_hi=100 and the default layer choice, chunk boundaries inside both bands."""
    cfg = RhythmConfig(chunk_size=64)
    torch.manual_seed(3)
    lengths, prompts = [150, 230], [40, 100]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    ids = torch.randint(0, 128, pos.shape)
    layouts = layouts_from_position_ids(pos, [response_mask(n, p) for n, p in zip(lengths, prompts, strict=True)])
    for path in ("chunked", "batched", "sdpa", "flash"):
        capture, maps = capture_and_maps("llama_gqa", path, cfg, layouts, input_ids=ids, position_ids=pos)
        assert capture.layers == dense.select_layers(6) == [2, 3, 4]
        assert_matches_dense(capture, maps, cfg, [torch.arange(150), torch.arange(150, 380)])


@pytest.mark.parametrize("arch", ARCHS)
def test_unpadded_batch_takes_the_fused_path_and_matches_dense(arch):
    """Rows of equal length, no mask: the selected layers' SDPA calls are replaced by the fused kernel."""
    torch.manual_seed(4)
    ids = torch.randint(0, 128, (3, 37))
    mask = torch.ones(3, 37, dtype=torch.long)
    layouts = layouts_from_attention_mask(mask, [response_mask(37, p) for p in (5, 20, 36)])
    capture, maps = capture_and_maps(arch, "sdpa", CFG, layouts, input_ids=ids)
    assert_matches_dense(capture, maps, CFG, [torch.arange(37)] * 3)


@pytest.mark.parametrize("types", ["none", "hybrid", "sliding"])
def test_default_layers_are_the_reference_choice(types):
    """The capture's default layer choice equals the reference's for every depth up to 64 (and hybrid models)."""
    for num_layers in range(1, 65):
        layer_types = None
        if types == "hybrid":
            layer_types = [("full_attention" if i % 4 == 3 else "linear_attention") for i in range(num_layers)]
            if "full_attention" not in layer_types:
                continue
        elif types == "sliding":
            layer_types = [("sliding_attention" if i % 2 else "full_attention") for i in range(num_layers)]
        capture = RhythmCapture(RhythmConfig(), num_layers, layer_types=layer_types)
        assert capture.layers == dense.select_layers(num_layers, None, layer_types), (num_layers, types)
