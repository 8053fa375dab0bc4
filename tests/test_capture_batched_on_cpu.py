# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The batched path at training scale: exact, constant work per layer in the number of sequences, no host sync.

- Exactness: :func:`verl_rhythm.measure.batched.layer_stats` on packed and padded layouts of random q/k equals the
  dense reference (:mod:`verl_rhythm.testing.dense`, written from the spec alone) on float64 maps of the same q/k,
  also with a sliding window, soft-capping and sinks (dense maps built with the variant, the sink column dropped as
  eager does); so do the layout's |T(s)| and, after :meth:`RhythmCapture.finalize`, the head groups, WAAD and FAI.
  The per-sequence path (:mod:`verl_rhythm.testing.chunked`, a second implementation) agrees with it too.
- Work: a ``TorchDispatchMode`` counts the aten ops of a real forward of a tiny transformers model with and without
  the capture, for packed micro-batches of 1, 16 and 64 sequences: the ops the capture adds per selected layer are
  the same for all three, and none of them reads device memory on the host (``_local_scalar_dense`` behind
  ``.item()``, ``nonzero``, copies to another device).
- The in-forward part (:meth:`RhythmCapture.record`) runs on ``meta`` tensors, which have no data: any
  data-dependent shape or host read would raise.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from models import tiny_model

from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure import batched
from verl_rhythm.measure.capture import RhythmCapture, SequenceLayout, layouts_from_position_ids
from verl_rhythm.measure.heads import rhythm_from_head_stats
from verl_rhythm.measure.hook import capture_active, install_attention_hook
from verl_rhythm.measure.kernels import kernels_for
from verl_rhythm.measure.layout import BatchLayout
from verl_rhythm.testing import dense
from verl_rhythm.testing.chunked import ChunkedCapture, layer_head_stats
from verl_rhythm.testing.ops import OpCounter

EPS32 = torch.finfo(torch.float32).eps
CPU = kernels_for("cpu")
TILED = dataclasses.replace(CPU, tiled_bands=True)
"""CUDA's band schedule, run on CPU."""


def per_sequence(stats: batched.LayerStats, lay: BatchLayout, j: int) -> dict[str, torch.Tensor]:
    """Sorted sequence j's ``(H, N)`` vectors out of the batch's token order."""
    tok = slice(lay.offsets[j], lay.offsets[j] + lay.lengths[j])
    return {"dist": stats.dist[:, tok], "waad": stats.waad[:, tok], "fai_num": stats.fai_num[:, tok]}


def dense_reference(query, key, scaling, layout, w, lo, hi, *, window=None, softcap=None, sinks=None):
    """float64 maps of one layout from q/k with the variant applied, then the dense statistics, and max |logit|."""
    maps, zmax = dense_maps(query, key, scaling, layout, window=window, softcap=softcap, sinks=sinks)
    heads = [(0, h) for h in range(query.shape[1])]
    return dense.head_stats_dense(maps, layout.response_mask, heads, w, lo, hi), zmax


def dense_maps(query, key, scaling, layout, *, window=None, softcap=None, sinks=None):
    """``(H, N, N)`` float64 maps of one layout from q/k with the variant applied, and max |logit|."""
    cols = slice(layout.start, layout.start + layout.length)
    q = query[layout.row, :, cols].double()
    k = key[layout.row, :, cols].double().repeat_interleave(query.shape[1] // key.shape[1], 0)
    z = q @ k.transpose(1, 2) * scaling
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    n = layout.length
    t = torch.arange(n)
    allowed = t[:, None] >= t[None, :]
    if window:
        allowed &= t[:, None] - t[None, :] < window
    z = z.masked_fill(~allowed, float("-inf"))
    if sinks is not None:  # as gpt-oss eager: the sink is one more logit per row, dropped after the softmax
        sink = sinks.double()[:, None, None].expand(-1, n, 1)
        maps = torch.softmax(torch.cat([z, sink], -1), -1)[..., :-1]
    else:
        maps = torch.softmax(z, -1)
    zmax = float(z.masked_fill(~allowed, 0).abs().max()) if n else 0.0
    return maps, zmax


def assert_rhythm_matches_dense(got, maps, layout, heads, cfg, tol):
    """A :class:`SequenceRhythm` of the capture equals the dense reference's spans, groups, WAAD and FAI."""
    ref = dense.rhythm_dense(
        maps, layout.response_mask, heads, cfg.waad_window, cfg.fai_horizon_lo, cfg.fai_horizon_hi, cfg.head_quantile
    )
    assert got.heads == ref.heads
    torch.testing.assert_close(got.span, ref.span, atol=tol, rtol=1e-5)
    assert got.local_heads.tolist() == ref.local_heads.tolist(), "local heads"
    assert got.global_heads.tolist() == ref.global_heads.tolist(), "global heads"
    torch.testing.assert_close(got.waad, ref.waad, atol=tol, rtol=0, msg="WAAD")
    torch.testing.assert_close(got.fai, ref.fai, atol=tol, rtol=0, msg="FAI")


SPEC = dict(waad_window=10, fai_horizon_lo=10, fai_horizon_hi=100)


def random_qk(b, h, hkv, s, d, seed, scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, h, s, d, generator=g) * scale).to(dtype)
    k = (torch.randn(b, hkv, s, d, generator=g) * scale).to(dtype)
    return q, k


def packed_layouts(lengths, prompts):
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()[:-1]]
    return [SequenceLayout(0, a, n, torch.arange(n) >= p) for a, n, p in zip(starts, lengths, prompts, strict=True)]


def padded_layouts(lengths, prompts, s, left):
    return [
        SequenceLayout(b, s - n if left else 0, n, torch.arange(n) >= p)
        for b, (n, p) in enumerate(zip(lengths, prompts, strict=True))
    ]


VARIANTS = {
    "plain": {},
    "window": {"window": 7},
    "softcap": {"softcap": 5.0},
    "sinks": {"sinks": torch.tensor([0.5, 3.0, -1.0, 8.0])},
    "gemma2": {"window": 5, "softcap": 3.0},
    "gpt_oss": {"window": 9, "sinks": torch.tensor([2.0, -2.0, 0.0, 6.0])},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", ["packed", "padded_left", "padded_right"])
@pytest.mark.parametrize("chunk", [1, 6, 64])
@pytest.mark.parametrize("tiled", [False, True], ids=["band_blocks", "band_tiles"])
def test_batched_matches_dense_and_reference(kind, variant, chunk, tiled):
    lengths, prompts = [17, 45, 1, 30, 8], [5, 20, 0, 29, 8]
    w, lo, hi = 4, 3, 12
    if kind == "packed":
        layouts = packed_layouts(lengths, prompts)
        q, k = random_qk(1, 4, 2, sum(lengths) + 3, 8, seed=chunk)  # 3 trailing pad columns
    else:
        layouts = padded_layouts(lengths, prompts, 48, kind == "padded_left")
        q, k = random_qk(len(lengths), 4, 2, 48, 8, seed=chunk)
    opts = VARIANTS[variant]
    lay = BatchLayout(layouts, lo, hi, min(chunk, 64))
    settings = dict(waad_window=w, fai_horizon_lo=lo, fai_horizon_hi=hi, chunk_size=chunk)
    stats = batched.layer_stats(q, k, 0.35, lay, TILED if tiled else CPU, **settings, **opts)
    for j, i in enumerate(lay.order):
        layout, got = layouts[i], per_sequence(stats, lay, j)
        ref, zmax = dense_reference(q, k, 0.35, layout, w, lo, hi, **opts)
        tol = 1e-5 + 10 * EPS32 * zmax
        torch.testing.assert_close(got["waad"], ref.waad, atol=tol, rtol=0)
        torch.testing.assert_close(got["fai_num"], ref.fai_num, atol=tol, rtol=0)
        torch.testing.assert_close(got["dist"], ref.dist, atol=tol, rtol=1e-5)
        maps, _ = dense_maps(q, k, 0.35, layout, **opts)
        span = dense.head_spans(maps, layout.response_mask).float()
        torch.testing.assert_close(stats.span[j], span, atol=tol, rtol=1e-5)
        tok = slice(lay.offsets[j], lay.offsets[j] + lay.lengths[j])
        assert torch.equal(lay.counts[tok], dense.fai_count(layout.response_mask, lo, hi)), "|T(s)|"
        if not opts:  # the per-sequence path (a second implementation): same numbers, to fp32 rounding
            own = layer_head_stats(q, k, 0.35, layout, 0, **settings)
            for name, x in got.items():
                torch.testing.assert_close(x, getattr(own, name), atol=tol, rtol=1e-5)


def test_bf16_inputs_against_float64():
    """bf16 q/k (as FlashAttention-2 gets them): fp32 logits of exact bf16 products, within fp32 rounding of fp64."""
    layouts = packed_layouts([300, 120, 64], [100, 30, 10])
    q, k = random_qk(1, 8, 2, 484, 64, seed=7, scale=1.5, dtype=torch.bfloat16)
    lay = BatchLayout(layouts, 10, 100, 64)
    worst = dict.fromkeys(("waad", "fai_num", "dist"), 0.0)
    # CPU's fp32 grid, and CUDA's bf16 grid with tiled bands (each bf16 logit from an upcast product on CPU)
    for kernels in (CPU, dataclasses.replace(TILED, low_precision_grid=True)):
        stats = batched.layer_stats(q, k, 64**-0.5, lay, kernels, **SPEC, chunk_size=128)
        for j, i in enumerate(lay.order):
            got = per_sequence(stats, lay, j)
            ref, zmax = dense_reference(q, k, 64**-0.5, layouts[i], 10, 10, 100)
            tol = 1e-5 + 10 * EPS32 * zmax
            for name in worst:
                err = float((got[name] - getattr(ref, name)).abs().max())
                worst[name] = max(worst[name], err)
                bound = tol if name != "dist" else tol * 10 + 1e-5 * float(ref.dist.abs().max())
                assert err <= bound, (name, err, bound)
    print("bf16 q/k vs float64, max abs error:", {k: f"{v:.1e}" for k, v in worst.items()})  # docs/capture.md
    assert min(worst.values()) > 0  # a real comparison, not two copies of one computation


def _count(model, ids, pos, capture):
    counter = OpCounter()
    with torch.no_grad(), counter:
        if capture is None:
            model(input_ids=ids, position_ids=pos, use_cache=False)
        else:
            with capture_active(capture):
                model(input_ids=ids, position_ids=pos, use_cache=False)
    return counter


@pytest.mark.parametrize(
    ("impl", "layout", "fused"),
    [("sdpa", "packed", False), ("eager", "packed", False), ("sdpa", "rows", True), ("sdpa", "packed", True)],
)
def test_ops_per_layer_do_not_grow_with_sequences_and_no_host_sync(impl, layout, fused):
    """Packed rows (verl's remove-padding) take the batched path, or in fp32 SDPA on CPU the fused one (with
    transformers' bool mask); unmasked rows of equal length the fused one."""
    with OpCounter() as control:  # the counter sees what would wait for a device
        x = torch.arange(6.0)
        x.sum().item(), torch.nonzero(x), x.to("meta")
    assert control.syncs == ["_local_scalar_dense", "nonzero", "_to_copy ['cpu', 'meta']"]
    install_attention_hook()
    model = tiny_model("llama_gqa", attn_implementation=impl)
    cfg = RhythmConfig(layers=(1, 3, 4), chunk_size=16, fai_horizon_hi=20)
    added = {}
    for n_seq in (1, 16, 64):
        length = 40
        resp = [torch.arange(length) >= 10 + (i % 7) for i in range(n_seq)]
        if layout == "packed":  # with the pad segment verl appends to a packed row (so one sequence gets a mask too)
            pos = torch.cat([torch.arange(length).repeat(n_seq), torch.arange(8)])[None]
            layouts = layouts_from_position_ids(pos, resp)
        else:
            pos = torch.arange(length).repeat(n_seq, 1)
            layouts = [SequenceLayout(b, 0, length, r) for b, r in enumerate(resp)]
        ids = torch.randint(0, 128, pos.shape, generator=torch.Generator().manual_seed(n_seq))
        capture = RhythmCapture(cfg, model.config.num_hidden_layers, layouts, fused=fused)
        capture.to(ids.device)  # before the forward, as the engine does
        stock = _count(model, ids, pos, None)
        hooked = _count(model, ids, pos, capture)
        assert capture.paths == dict.fromkeys(capture.layers, "fused" if fused else "batched")
        assert hooked.syncs == stock.syncs, f"{n_seq} sequences: the capture added {hooked.syncs} over {stock.syncs}"
        added[n_seq] = (hooked.ops - stock.ops) / len(capture.layers)
        assert len(capture.finalize()) == n_seq
    assert added[1] > 0
    assert added[1] == added[16] == added[64], added


def test_tiled_band_ops_do_not_grow_with_length():
    """The tiled band schedule (CUDA's) adds the same ops for 100 and 1,000 rows; the block loop (CPU's) grows with
    the number of 64-row blocks. Same sums either way (to fp32 rounding)."""
    ops = {}
    for length in (100, 1000):
        layouts = packed_layouts([length, length // 2], [length // 4, 0])
        q, k = random_qk(1, 4, 2, length + length // 2, 16, seed=length)
        lay = BatchLayout(layouts, 10, 100, 64)
        (grid,) = lay.grids
        grid_q, grid_k = batched.padded_qk(q, k, grid)
        lse, _ = batched.row_stats(grid_q, grid_k, grid, 0.25, 256, CPU)
        out = {}
        for tiled in (False, True):
            with OpCounter() as counter:
                out[tiled] = batched.band_stats(grid_q, grid_k, grid, 0.25, lse, 10, 10, 100, TILED if tiled else CPU)
            ops[length, tiled] = counter.ops
        for j, n in enumerate(grid.lengths):
            for a, b in zip(out[False], out[True], strict=True):
                torch.testing.assert_close(a[j, :, :n], b[j, :, :n], atol=1e-5, rtol=1e-6)
    assert ops[100, True] == ops[1000, True], ops
    assert ops[1000, False] > 4 * ops[100, False], ops


@pytest.mark.parametrize(
    "mask_kind", ["4d_bool", "2d_padding", "flash_position_ids"], ids=["sdpa_mask", "fa2_padded", "fa2_packed"]
)
@pytest.mark.parametrize("kernels", ["cpu", "cuda"])
def test_record_runs_on_meta_tensors(mask_kind, kernels):
    """No data: any .item(), .tolist(), nonzero, copy to the host or data-dependent shape in record() would raise.
    With the masks each attention implementation gets: SDPA/eager a 4-D mask, FlashAttention-2 a 2-D padding mask
    (padded batches) or none and the position ids (packed rows); on the CPU's kernel choices and on CUDA's (bf16
    grid, fp32-output gemm, tiled bands)."""
    cfg = RhythmConfig(layers=(0,), chunk_size=8, fai_horizon_hi=20)
    choice = CPU if kernels == "cpu" else dataclasses.replace(
        kernels_for("meta"), low_precision_grid=True, fp32_output_gemm=True, tiled_bands=True
    )  # fmt: skip
    lengths, prompts = [30, 12, 25], [10, 2, 24]
    if mask_kind == "2d_padding":
        layouts, b, s = padded_layouts(lengths, prompts, 30, left=True), 3, 30
        segments = {"attention_mask": torch.empty(b, s, device="meta", dtype=torch.bool)}
    else:
        layouts, b, s = packed_layouts(lengths, prompts), 1, 70
        if mask_kind == "4d_bool":
            segments = {"attention_mask": torch.empty(1, 1, s, s, device="meta", dtype=torch.bool)}
        else:
            segments = {"attention_mask": None, "position_ids": torch.empty(1, s, device="meta", dtype=torch.long)}
    for variant in VARIANTS.values():
        capture = RhythmCapture(cfg, 1, layouts, kernels=choice)
        capture.to("meta")
        q = torch.empty(b, 4, s, 16, device="meta", dtype=torch.bfloat16)
        k = torch.empty(b, 2, s, 16, device="meta", dtype=torch.bfloat16)
        kwargs = {"sliding_window": variant.get("window"), "softcap": variant.get("softcap")}
        if "sinks" in variant:
            kwargs["s_aux"] = variant["sinks"].to("meta")
        capture.record(0, q, k, 0.25, **segments, **kwargs)
        dist, waad, fai_num, span = capture._stats[0]
        assert dist.device.type == "meta" and dist.shape == (4, 67) and fai_num.dtype == torch.float32
        assert span.shape == (3, 4) and len(capture._checks) == 1  # the layout check was queued, not read


def test_finalize_equals_the_per_sequence_grouping_and_the_dense_reference():
    """The batched grouping (one host copy) gives the per-sequence aggregation's groups and token statistics, and the
    dense reference's (12 heads: groups of floor(3.6) = 3)."""
    layouts = packed_layouts([50, 33, 20, 41], [10, 30, 19, 0])
    q, k = random_qk(1, 6, 3, 150, 8, seed=11)
    for scope in ("sequence", "micro_batch"):
        cfg = RhythmConfig(layers=(0, 2), chunk_size=16, head_group_scope=scope)
        capture = RhythmCapture(cfg, 3, layouts)
        reference = ChunkedCapture(cfg, 3, layouts)
        for layer in (0, 2):
            for c in (capture, reference):
                c.record(layer, q * (1 + layer), k, 0.4)
        finals = capture.finalize()
        for got, want in zip(finals, reference.finalize(), strict=True):
            assert torch.equal(got.local_heads, want.local_heads) and torch.equal(got.global_heads, want.global_heads)
            for name in ("waad", "fai", "span"):  # the batched full rows come from the attention kernel: fp32 rounding
                torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-5, rtol=1e-5)
        # each sequence's own head statistics, grouped alone: the per-sequence path's, and under the sequence scope
        # exactly what finalize returned for it
        rows = zip(capture.head_stats(), reference.head_stats(), layouts, finals, strict=True)
        for i, (st, ref_st, lay, final) in enumerate(rows):
            own = rhythm_from_head_stats(st, cfg.head_quantile)
            want = rhythm_from_head_stats(ref_st, cfg.head_quantile)
            assert own.waad.shape == (lay.length,)
            assert torch.equal(own.local_heads, want.local_heads) and torch.equal(own.global_heads, want.global_heads)
            for name in ("waad", "fai", "span"):
                torch.testing.assert_close(getattr(own, name), getattr(want, name), atol=1e-5, rtol=1e-5)
            if scope == "sequence":
                assert torch.equal(own.local_heads, final.local_heads), f"sequence {i}"
                assert torch.equal(own.global_heads, final.global_heads), f"sequence {i}"
                for name in ("waad", "fai", "span"):
                    torch.testing.assert_close(getattr(own, name), getattr(final, name), atol=1e-5, rtol=1e-5)
        maps = [
            torch.cat([dense_maps(q * (1 + layer), k, 0.4, lay)[0] for layer in (0, 2)]) for lay in layouts
        ]  # fmt: skip
        heads = [(layer, h) for layer in (0, 2) for h in range(6)]
        if scope == "sequence":
            for got, m, lay in zip(finals, maps, layouts, strict=True):
                assert len(got.local_heads) == 3
                assert_rhythm_matches_dense(got, m, lay, heads, cfg, 1e-5)
        else:
            refs = dense.rhythm_for_sequences(maps, [lay.response_mask for lay in layouts], heads, cfg)
            for got, ref in zip(finals, refs, strict=True):
                assert got.local_heads.tolist() == ref.local_heads.tolist()
                assert got.global_heads.tolist() == ref.global_heads.tolist()
                torch.testing.assert_close(got.waad, ref.waad, atol=1e-5, rtol=0)
                torch.testing.assert_close(got.fai, ref.fai, atol=1e-5, rtol=0)
