# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Edge cases of the capture (and of the per-sequence path) against the dense reference on maps of the same q/k.

Reference maps here are softmax(q kᵀ · scaling + causal mask) computed in float64 from the (upcast) q/k, then
:mod:`verl_rhythm.testing.dense` (written from the spec alone); a hypothesis sweep covers shapes, GQA, chunk sizes
and band settings for both the capture (:class:`RhythmCapture`, per-head statistics, |T(s)|, head groups, WAAD and
FAI) and the per-sequence path (:mod:`verl_rhythm.testing.chunked`, a second implementation); the named tests cover
the behaviour the spec leaves to us.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure.capture import (
    RhythmCapture,
    SequenceLayout,
    layouts_from_attention_mask,
    layouts_from_position_ids,
)
from verl_rhythm.measure.heads import rhythm_from_head_stats
from verl_rhythm.testing import dense
from verl_rhythm.testing.chunked import layer_head_stats
from verl_rhythm.testing.dense import head_stats_dense

ATOL = 1e-5
EPS32 = torch.finfo(torch.float32).eps


def dense_maps(query, key, scaling, layout):
    """``(H, N, N)`` float64 maps of one layout from q/k (GQA by repeating kv heads), and max |logit|."""
    cols = slice(layout.start, layout.start + layout.length)
    q = query[layout.row, :, cols].double()
    k = key[layout.row, :, cols].double().repeat_interleave(query.shape[1] // key.shape[1], 0)
    z = q @ k.transpose(1, 2) * scaling
    n = layout.length
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    zmax = float(z.masked_fill(~causal, 0).abs().max()) if n else 0.0
    return torch.softmax(z.masked_fill(~causal, float("-inf")), -1), zmax


def tolerance(zmax: float) -> float:
    """1e-5 plus the rounding of fp32 logits of magnitude ``zmax`` (any fp32 attention has it, eager's included)."""
    return ATOL + 10 * EPS32 * zmax


def check(query, key, scaling, layout, w, lo, hi, chunk):
    got = layer_head_stats(
        query, key, scaling, layout, 7, waad_window=w, fai_horizon_lo=lo, fai_horizon_hi=hi, chunk_size=chunk
    )
    maps, zmax = dense_maps(query, key, scaling, layout)
    ref = head_stats_dense(maps, layout.response_mask, got.heads, w, lo, hi)
    tol = tolerance(zmax)
    torch.testing.assert_close(got.waad, ref.waad, atol=tol, rtol=0)
    torch.testing.assert_close(got.fai_num, ref.fai_num, atol=tol, rtol=0)
    torch.testing.assert_close(got.dist, ref.dist, atol=tol, rtol=1e-5)
    assert torch.equal(got.fai_count, ref.fai_count)
    check_capture(query, key, scaling, layout, w, lo, hi, chunk, maps, ref, tol)
    return got


def check_capture(query, key, scaling, layout, w, lo, hi, chunk, maps, ref, tol):
    """The capture (layer 7 of 8) on the same q/k: per-head statistics and the sequence's rhythm equal the dense
    reference's."""
    cfg = RhythmConfig(layers=(7,), waad_window=w, fai_horizon_lo=lo, fai_horizon_hi=hi, chunk_size=chunk)
    capture = RhythmCapture(cfg, 8, [layout])
    capture.record(7, query, key, scaling)
    (stats,), (rhythm,) = capture.head_stats(), capture.finalize()
    for name in ("waad", "fai_num"):
        torch.testing.assert_close(getattr(stats, name), getattr(ref, name), atol=tol, rtol=0, msg=name)
    torch.testing.assert_close(stats.dist, ref.dist, atol=tol, rtol=1e-5)
    assert torch.equal(stats.fai_count, ref.fai_count)
    heads = [(7, h) for h in range(query.shape[1])]
    want = dense.rhythm_dense(maps, layout.response_mask, heads, w, lo, hi, cfg.head_quantile)
    assert rhythm.local_heads.tolist() == want.local_heads.tolist()
    assert rhythm.global_heads.tolist() == want.global_heads.tolist()
    torch.testing.assert_close(rhythm.span, want.span, atol=tol, rtol=1e-5)
    torch.testing.assert_close(rhythm.waad, want.waad, atol=tol, rtol=0)
    torch.testing.assert_close(rhythm.fai, want.fai, atol=tol, rtol=0)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 70),
    kv=st.integers(1, 3),
    group=st.integers(1, 3),
    w=st.integers(1, 12),
    lo=st.integers(1, 20),
    extra=st.integers(0, 30),
    chunk=st.integers(1, 80),
    prompt=st.integers(0, 70),
    offset=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_gqa_chunks_and_bands(n, kv, group, w, lo, extra, chunk, prompt, offset, seed):
    g = torch.Generator().manual_seed(seed)
    d = 8
    query = torch.randn(2, kv * group, n + offset, d, generator=g) * 2
    key = torch.randn(2, kv, n + offset, d, generator=g) * 2
    layout = SequenceLayout(1, offset, n, torch.arange(n) >= min(prompt, n))
    check(query, key, d**-0.5, layout, w, lo, lo + extra, chunk)


def _qk(n, h=4, kv=2, d=16, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(1, h, n, d, generator=g) * scale).to(dtype)
    k = (torch.randn(1, kv, n, d, generator=g) * scale).to(dtype)
    return q, k


def test_response_shorter_than_h_lo_has_zero_fai():
    q, k = _qk(40)
    layout = SequenceLayout(0, 0, 40, torch.arange(40) >= 35)  # 5 response rows < H_lo = 10
    got = check(q, k, 0.25, layout, 10, 10, 100, 16)
    # every column s has T(s) ∩ R = ∅ only where s + 10 > 39; columns reached by a response row keep a numerator
    assert torch.equal(got.fai_count > 0, torch.arange(40) <= 29)
    rhythm = rhythm_from_head_stats(got, 0.3)
    assert torch.all(rhythm.fai[30:] == 0)


def test_one_token_response():
    q, k = _qk(30)
    resp = torch.zeros(30, dtype=torch.bool)
    resp[-1] = True
    got = check(q, k, 0.25, SequenceLayout(0, 0, 30, resp), 10, 10, 100, 8)
    rhythm = rhythm_from_head_stats(got, 0.3)
    torch.testing.assert_close(rhythm.span, got.dist[:, -1])  # the span is that one row's expected distance
    assert torch.equal(got.fai_count, ((torch.arange(30) + 10 <= 29) & (torch.arange(30) + 100 >= 29)).float())


def test_no_response_gives_zero_span_and_fai():
    q, k = _qk(25)
    got = check(q, k, 0.25, SequenceLayout(0, 0, 25, torch.zeros(25, dtype=torch.bool)), 10, 10, 100, 8)
    rhythm = rhythm_from_head_stats(got, 0.3)
    assert torch.all(rhythm.span == 0) and torch.all(rhythm.fai == 0) and torch.all(got.fai_num == 0)
    assert torch.all((rhythm.waad >= 0) & (rhythm.waad <= 10))


@pytest.mark.parametrize("scale", [3.0, 12.0])
def test_bf16_inputs_with_large_logits(scale):
    """bf16 q/k, logits up to ~50 (scale 3) and ~1e3 (scale 12): fp32 arithmetic, no overflow, fp64-accurate.

    fp32 logits carry a rounding error of about eps32 · |z| (any fp32 attention, eager's included): the bound is
    :func:`tolerance`, 7e-5 at scale 3, about 1e-3 at scale 12.
    """
    q, k = _qk(90, scale=scale, dtype=torch.bfloat16)
    layout = SequenceLayout(0, 0, 90, torch.arange(90) >= 20)
    got = layer_head_stats(q, k, 0.25, layout, 0, chunk_size=32)
    for t in (got.dist, got.waad, got.fai_num):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    maps, zmax = dense_maps(q, k, 0.25, layout)
    assert zmax > (500 if scale > 10 else 40)
    ref = head_stats_dense(maps, layout.response_mask, got.heads)
    tol = tolerance(zmax)
    torch.testing.assert_close(got.waad, ref.waad, atol=tol, rtol=0)
    torch.testing.assert_close(got.fai_num, ref.fai_num, atol=tol, rtol=0)
    torch.testing.assert_close(got.dist, ref.dist, atol=tol * 10, rtol=1e-5)


def test_fully_masked_row_is_an_empty_sequence():
    """A batch row with no unmasked position yields an empty layout and an empty SequenceRhythm."""
    cfg = RhythmConfig(layers=(0,))
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1]])
    resp = [torch.tensor([0, 0, 1, 1, 1]).bool(), torch.zeros(0, dtype=torch.bool), torch.ones(5, dtype=torch.bool)]
    layouts = layouts_from_attention_mask(mask, resp)
    assert [(x.row, x.start, x.length) for x in layouts] == [(0, 0, 5), (1, 0, 0), (2, 1, 5)]
    q, k = _qk(6, h=4, kv=2)
    q, k = q.expand(3, -1, -1, -1), k.expand(3, -1, -1, -1)
    capture = RhythmCapture(cfg, 1, layouts)
    capture.record(0, q, k, 0.25)
    finals = capture.finalize()
    empty = finals[1]
    assert empty.waad.shape == (0,) and empty.fai.shape == (0,) and torch.all(empty.span == 0)
    # the rows around it: the capture's statistics and rhythm equal the dense reference of each row's own columns
    for i in (0, 2):
        st = capture.head_stats()[i]
        maps, zmax = dense_maps(q, k, 0.25, layouts[i])
        ref = head_stats_dense(
            maps, layouts[i].response_mask, st.heads, cfg.waad_window, cfg.fai_horizon_lo, cfg.fai_horizon_hi
        )
        tol = tolerance(zmax)
        torch.testing.assert_close(st.waad, ref.waad, atol=tol, rtol=0, msg=f"WAAD terms of row {i}")
        torch.testing.assert_close(st.fai_num, ref.fai_num, atol=tol, rtol=0, msg=f"FAI numerators of row {i}")
        assert torch.equal(st.fai_count, ref.fai_count)
        want = rhythm_from_head_stats(ref, cfg.head_quantile)
        assert torch.equal(finals[i].local_heads, want.local_heads)
        assert torch.equal(finals[i].global_heads, want.global_heads)
        torch.testing.assert_close(finals[i].waad, want.waad.float(), atol=tol, rtol=0, msg=f"WAAD of row {i}")
        torch.testing.assert_close(finals[i].fai, want.fai.float(), atol=tol, rtol=0, msg=f"FAI of row {i}")


def test_chunk_size_does_not_change_results():
    q, k = _qk(100, seed=3)
    layout = SequenceLayout(0, 0, 100, torch.arange(100) >= 30)
    runs = [layer_head_stats(q, k, 0.25, layout, 0, chunk_size=c) for c in (1, 13, 100, 1000)]
    for other in runs[1:]:
        for name in ("dist", "waad", "fai_num"):
            torch.testing.assert_close(getattr(other, name), getattr(runs[0], name), atol=1e-6, rtol=1e-6)


def test_layouts_from_position_ids_ignores_trailing_pad_and_checks_lengths():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 0]])  # two sequences, then verl's pad
    masks = [torch.tensor([0, 1, 1]).bool(), torch.tensor([0, 1]).bool()]
    layouts = layouts_from_position_ids(pos, masks)
    assert [(x.row, x.start, x.length) for x in layouts] == [(0, 0, 3), (0, 3, 2)]
    with pytest.raises(ValueError, match=r"response_masks\[1\].*length 2"):
        layouts_from_position_ids(pos, [masks[0], torch.ones(3, dtype=torch.bool)])
    with pytest.raises(ValueError, match="position_ids of a packed batch must be"):
        layouts_from_position_ids(pos.expand(2, -1), masks)


def test_bad_inputs_name_the_tensor():
    with pytest.raises(ValueError, match="not one contiguous run"):
        layouts_from_attention_mask(torch.tensor([[1, 0, 1]]), [torch.ones(2, dtype=torch.bool)])
    with pytest.raises(ValueError, match="response_mask must be a \\(4,\\) tensor"):
        SequenceLayout(0, 0, 4, torch.ones(3, dtype=torch.bool))
    q, k = _qk(10)
    with pytest.raises(ValueError, match="lies outside the query"):
        layer_head_stats(q, k, 0.25, SequenceLayout(0, 5, 6, torch.ones(6, dtype=torch.bool)), 0)
    with pytest.raises(ValueError, match="key .* does not match query"):
        layer_head_stats(q, k[..., :8], 0.25, SequenceLayout(0, 0, 10, torch.ones(10, dtype=torch.bool)), 0)


def test_capture_lifecycle_errors():
    cfg = RhythmConfig(layers=(1, 2))
    capture = RhythmCapture(cfg, 4)
    q, k = _qk(8)
    capture.record(0, q, k, 0.25)  # not selected: ignored even without layouts
    with pytest.raises(RuntimeError, match="before set_layouts"):
        capture.record(1, q, k, 0.25)
    capture.set_layouts([SequenceLayout(0, 0, 8, torch.ones(8, dtype=torch.bool))])
    capture.record(1, q, k, None)
    with pytest.raises(RuntimeError, match=r"selected layers \[2\] were never recorded"):
        capture.finalize()
    capture.record(2, q, k, None)
    assert len(capture.finalize()) == 1 and capture.seconds > 0
    capture.reset()
    assert capture.seconds == 0 and capture.layouts is not None
    with pytest.raises(RuntimeError, match=r"\[1, 2\] were never recorded"):
        capture.finalize()


def test_bf16_autocast_around_the_forward_does_not_lower_the_capture_precision():
    """verl runs the log-prob forward under bf16 autocast; the capture's own matmuls must stay fp32."""
    q, k = _qk(120, seed=5, scale=2.0)
    layout = SequenceLayout(0, 0, 120, torch.arange(120) >= 30)
    plain = layer_head_stats(q, k, 0.25, layout, 0, chunk_size=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.matmul(q[:, :2], k.transpose(-1, -2)).dtype == torch.bfloat16  # autocast is really on
        under = layer_head_stats(q, k, 0.25, layout, 0, chunk_size=32)
    for name in ("dist", "waad", "fai_num"):
        assert torch.equal(getattr(under, name), getattr(plain, name))
