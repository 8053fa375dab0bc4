# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The batched path: one computation per selected layer and grid of similar-length sequences of the micro-batch.

The statistics of :mod:`verl_rhythm.measure.heads` for a whole micro-batch, on padded grids: the
sequences of a :class:`~verl_rhythm.measure.layout.BatchLayout` (sorted by length, longest first) are cut into
:class:`~verl_rhythm.measure.layout.Grid` s whose padding is at most their own tokens (or a few thousand positions),
and each grid's sequences are gathered once per layer from the ``(B, S)`` columns of the attention inputs into
``(n, H, L, D)`` queries and ``(n, H_kv, L, D)`` keys, L the grid's longest length. Position t of every sequence then
sits in grid column t, so the causal mask (and a sliding window) of query chunk [t0, t1) is one ``(c, w)`` mask
shared by all sequences: packed rows become block-diagonal causal for free, and padded batches need nothing else.
Sequences shorter than t0 are a suffix of the sorted grid and are left out of that chunk by slicing. The per-head
vectors go back to the batch's token order (``(H, T)``), so nothing outside a grid's own computation is padded.

Full rows (lse and the expected distance): on an fp32 grid with plain causal attention, one call of the device's
flash-style attention kernel (:func:`kernel_row_stats`: every sequence starts its grid row at column 0, so
``is_causal`` is exact without a mask); otherwise query chunks of explicit logits (:func:`row_stats`). Bands: blocks
of 64 rows (:func:`band_stats`). Python loops run over grids, query chunks and band blocks or tiles, never over
sequences or heads; no host sync: every shape and loop bound comes from host metadata built before the forward.
Which kernels run is :class:`~verl_rhythm.measure.kernels.Kernels`' choice (capability checks; nothing here catches
an error). Attention variants, per layer:

- sliding window w: keys with t - s >= w get probability 0 (transformers' ``sliding_window`` convention);
- soft-capping c: logits ``c · tanh(z / c)`` (Gemma 2);
- sinks (one logit per head, gpt-oss ``s_aux``): part of each row's normaliser, not a key, so a row of A sums to
  ``1 - exp(sink - lse)`` and WAAD's "every far key weighs W" term is ``W`` times that row sum.

Memory: a grid's q/k (at most twice its tokens, or :data:`~verl_rhythm.measure.layout.GRID_FLOOR` positions, times
heads times head dim) and one chunk's logits, ``n_j × H × c × w`` fp32 with w <= min(L, t1); a chunk whose logits
would exceed :data:`MAX_TILE_ELEMENTS` is split over groups of sequences.

Numerics: every logit is fp32 and is the fp32 sum of exact products (what FlashAttention-2 computes from bf16 q/k).
On CUDA, bf16/fp16 q/k stay in their dtype and go through cuBLAS with fp32 output (``torch.bmm(..., out_dtype=
torch.float32)``, tensor cores, fp32 accumulation, reduced-precision reductions off); elsewhere they are upcast to
fp32 first, which gives the same products (bf16 × bf16 is exact in fp32). fp32 q/k are multiplied in fp32 with TF32
and oneDNN bf16 modes off (:func:`~verl_rhythm.measure.logits.exact_fp32`).
"""

from __future__ import annotations

import torch

from verl_rhythm.measure.heads import LayerStats
from verl_rhythm.measure.kernels import Kernels
from verl_rhythm.measure.layout import BatchLayout, Grid
from verl_rhythm.measure.logits import exact_fp32, finish_logits_, visible

BAND_ROWS = 64
"""Query rows per block of :func:`band_stats`: small blocks waste little of the c × (c + B) logits outside the bands
(B = H_hi = 100 by default), large ones cost Python overhead; 64 is the fastest on CPU at N = 4096."""
MAX_TILE_ELEMENTS = 2**28
"""Most fp32 logits of one full-row chunk (1 GiB); larger chunks are split over groups of sequences."""
BAND_TILE_ELEMENTS = 2**25
"""Most fp32 band logits of one tile of the tiled band schedule (128 MiB; about three such tensors are alive)."""


def check_qk(query: torch.Tensor, key: torch.Tensor, batch: BatchLayout) -> None:
    """Raise unless ``query (B, H, S, D)`` and ``key (B, H_kv, S, D)`` (H_kv | H) hold every layout (host shapes)."""
    b, h, s, d = query.shape
    if key.dim() != 4 or key.shape[0] != b or key.shape[2] != s or key.shape[3] != d or h % key.shape[1]:
        raise ValueError(
            f"key {tuple(key.shape)} does not match query {tuple(query.shape)}: need (B, H_kv, S, D) with H_kv | H"
        )
    batch.check_shape(b, s)


def padded_qk(
    query: torch.Tensor, key: torch.Tensor, grid: Grid, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather one grid's queries and keys, contiguous.

    Args:
        query: ``(B, H, S, D)``; key: ``(B, H_kv, S, D)``, any float dtype (checked by :func:`check_qk`).
        grid: the grid, on ``query.device``.
        dtype: the grid's dtype (:meth:`Kernels.grid_dtype`).

    Returns:
        ``(q (n, H, L, D), k (n, H_kv, L, D))``; positions past N_i repeat the sequence's last column.
    """
    d = query.shape[-1]
    out = []
    for x in (query, key):
        g = x.transpose(1, 2)[grid.rows, grid.cols]  # (n, L, heads, D): one gather
        dense = torch.empty(g.shape[0], g.shape[2], g.shape[1], d, dtype=dtype, device=x.device)
        out.append(dense.copy_(g.transpose(1, 2)))
    return out[0], out[1]


def grid_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    seqs: slice,
    rows: slice,
    keys: slice,
    scaling: float,
    softcap: float | None,
    kernels: Kernels,
) -> torch.Tensor:
    """fp32 logits ``(m, H, c, w)`` of grid rows ``rows`` against grid keys ``keys`` for sequences ``seqs``.

    Query head h reads kv head h // (H / H_kv): the G = H / H_kv heads of a kv head are stacked as G · c rows of one
    batched matmul (:meth:`Kernels.matmul_fp32`). With ``softcap``, logits are ``softcap · tanh(z / softcap)``.
    """
    qc = q[seqs, :, rows]
    m, h, c, d = qc.shape
    kc = k[seqs, :, keys]
    hkv = kc.shape[1]
    z = kernels.matmul_fp32(qc.reshape(m, hkv, (h // hkv) * c, d), kc.transpose(-1, -2)).view(m, h, c, -1)
    return finish_logits_(z, scaling, softcap)


def _offsets(t0: int, t1: int, s0: int, device) -> torch.Tensor:
    """``(t1 - t0, t1 - s0)`` long, t - s for grid rows [t0, t1) and keys [s0, t1)."""
    return torch.arange(t0, t1, device=device)[:, None] - torch.arange(s0, t1, device=device)[None, :]


def _groups(m: int, per_seq: int) -> list[slice]:
    """Split sequences [0, m) into groups whose chunk has at most :data:`MAX_TILE_ELEMENTS` logits."""
    size = max(1, MAX_TILE_ELEMENTS // max(1, per_seq))
    return [slice(a, min(m, a + size)) for a in range(0, m, size)]


def row_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    grid: Grid,
    scaling: float,
    chunk_size: int,
    kernels: Kernels,
    *,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp and expected backward distance of every grid row, in query chunks.

    Args:
        q: ``(n, H, L, D)``; k: ``(n, H_kv, L, D)`` (from :func:`padded_qk`; fp32, or bf16/fp16 on CUDA).
        grid: the grid (lengths, host ints).
        scaling: logit scale; chunk_size: query rows per chunk; kernels: the device's :class:`Kernels`.
        window: sliding window (keys with t - s >= window are masked), or ``None``.
        softcap: logit soft-cap, or ``None``.
        sinks: ``(H,)`` per-head sink logits, or ``None``.

    Returns:
        ``(lse, dist)``, each ``(n, H, L)`` fp32: lse_t = log(sum_{s<=t} exp z[t, s] (+ exp sink)) and
        dist_t = sum_s A[t, s] (t - s). Entries past N_i are finite and meaningless.
    """
    n, h, big, _ = q.shape
    lse = q.new_zeros(n, h, big, dtype=torch.float32)
    dist = q.new_zeros(n, h, big, dtype=torch.float32)
    sink = None if sinks is None else sinks.float()[None, :, None]  # (1, H, 1)
    for t0 in range(0, big, chunk_size):
        t1 = min(big, t0 + chunk_size)
        s0 = max(0, t0 - window + 1) if window else 0
        m = grid.count_from(t0)
        delta = _offsets(t0, t1, s0, q.device)
        masked = ~visible(delta, window)
        weight = delta.clamp_min(0).float()
        for seqs in _groups(m, h * (t1 - t0) * (t1 - s0)):
            z = grid_logits(q, k, seqs, slice(t0, t1), slice(s0, t1), scaling, softcap, kernels)
            if window:
                z.masked_fill_(masked, float("-inf"))
            else:  # only the diagonal block has future keys
                z[..., t0 - s0 :].masked_fill_(masked[:, t0 - s0 :], float("-inf"))
            row_max = z.amax(-1)  # finite: the diagonal key is always there
            if sink is not None:
                row_max = torch.maximum(row_max, sink)
            p = z.sub_(row_max[..., None]).exp_()
            total = p.sum(-1)
            if sink is not None:
                total = total + (sink - row_max).exp()
            lse[seqs, :, t0:t1] = row_max + total.log()
            dist[seqs, :, t0:t1] = p.mul_(weight).sum(-1).div_(total)
    return lse, dist


def kernel_row_stats(
    q: torch.Tensor, k: torch.Tensor, scaling: float, kernels: Kernels
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Row log-sum-exp and expected distance of every grid row from the device's flash-style attention kernel.

    On the grid every sequence starts its row at column 0, so plain causal attention is exact without a mask. The
    value carries each key's grid column in its first channel: the kernel returns lse and E_t[s], and
    dist_t = t - E_t[s]. One fused kernel call (tiled, multi-threaded, no logits in memory) instead of the chunked
    matmul + softmax passes of :func:`row_stats`. fp32 grids only (a bf16 output would round E_t[s] to 3 digits),
    plain causal softmax only (no window, cap or sinks).

    Args:
        q: ``(n, H, L, D)`` fp32; k: ``(n, H_kv, L, D)`` fp32.
        scaling: logit scale; kernels: the device's :class:`Kernels`.

    Returns:
        ``(lse, dist)``, each ``(n, H, L)`` fp32, or ``None`` where the kernel does not take these inputs
        (:meth:`Kernels.attention_lse`).
    """
    if q.dtype != torch.float32 or not kernels.lse_attention:
        return None
    n, hkv, big, d = k.shape
    v = k.new_zeros(n, hkv, big, d)
    v[..., 0] = torch.arange(big, device=k.device, dtype=k.dtype)
    result = kernels.attention_lse(q, k, v, None, True, scaling)
    if result is None:
        return None
    out, lse = result
    dist = torch.arange(big, device=q.device, dtype=torch.float32) - out[..., 0].float()
    return lse.float(), dist


def _band_weights(
    c: int, back: int, n_blocks: int, waad_window: int, lo: int, hi: int, window: int | None, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """WAAD and FAI weights of a block's ``(c, back + c)`` logits, the same in every block but the first few.

    Needs back >= W - 1, so the WAAD strip lies inside the window.

    Row i of block j is grid row t = j·c + i; window key w is grid key s = j·c - back + w, so t - s = i + back - w.

    Returns:
        ``near`` ``(n_blocks, c, W)``: t - s - W for the W keys t - W < s <= t of each row (the diagonal strip
        :func:`band_stats` reads); ``far`` ``(n_blocks, c, back + c)``: 1 on the FAI band H_lo <= t - s <= H_hi.
        Both are zero outside a sliding window and on keys before the grid's first column (s < 0, the padding).
    """
    delta = torch.arange(c, device=device)[:, None] + back - torch.arange(back + c, device=device)[None, :]
    allowed = visible(delta, window)
    far = (allowed & (delta >= lo) & (delta <= hi)).float()
    first_key = torch.arange(n_blocks, device=device)[:, None] * c - back
    exists = (first_key + torch.arange(back + c, device=device)[None, :] >= 0).float()[:, None, :]  # (nb, 1, w)
    # the WAAD strip: row i's keys at offsets W - 1 .. 0, i.e. window keys i + back - W + 1 + u for u < W
    u = torch.arange(waad_window, device=device)
    strip_delta = waad_window - 1 - u  # (W,)
    strip_ok = strip_delta < window if window else torch.ones_like(strip_delta, dtype=torch.bool)
    strip_keys = torch.arange(c, device=device)[:, None] + back - waad_window + 1 + u[None, :]  # (c, W) window key
    strip_exists = (first_key[:, :, None] + strip_keys[None] >= 0).float()  # (nb, c, W)
    near = (strip_delta - waad_window).float() * strip_ok * strip_exists
    return near, far * exists


def band_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    grid: Grid,
    scaling: float,
    lse: torch.Tensor,
    waad_window: int,
    fai_horizon_lo: int,
    fai_horizon_hi: int,
    kernels: Kernels,
    *,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WAAD of every grid row and the FAI numerator of every grid column from the two diagonal bands of A.

    Two schedules of the same sums over blocks of ``grid.rows_per_block`` rows: on CPU a loop over the blocks
    (each block's logits stay in cache, ``ceil(L / 64)`` iterations); on CUDA, where every op is a kernel launch,
    tiles of many blocks in one batched matmul each (:func:`_band_stats_tiled`: ops grow with tokens · heads over
    :data:`BAND_TILE_ELEMENTS`, not with the sequence length). docs/capture.md gives the op counts per layer of
    each schedule and the command that counts them; on CPU the tiles took about twice the block loop's time, so CPU
    keeps the loop.

    Args:
        q, k, grid, scaling, window, softcap, sinks: as in :func:`row_stats`.
        lse: ``(n, H, L)`` fp32 row log-sum-exp.
        waad_window, fai_horizon_lo, fai_horizon_hi: W, H_lo, H_hi.
        kernels: the device's :class:`Kernels` (the schedule is ``kernels.tiled_bands``).

    Returns:
        ``(waad, fai_num)``, each ``(n, H, L)`` fp32: waad_t = sum_s A[t, s] min(t - s, W) and
        fai_num_s = sum over t in R with H_lo <= t - s <= H_hi of A[t, s]. Entries past N_i are meaningless.
    """
    fn = _band_stats_tiled if kernels.tiled_bands else _band_stats_blocks
    return fn(q, k, grid, scaling, lse, waad_window, fai_horizon_lo, fai_horizon_hi, kernels, window, softcap, sinks)


def _band_stats_blocks(
    q, k, grid, scaling, lse, waad_window, fai_horizon_lo, fai_horizon_hi, kernels, window, softcap, sinks
):
    """The CPU schedule of :func:`band_stats` (same arguments and results): a loop over the blocks.

    Block [t0, t1) of ``grid.rows_per_block`` rows meets keys [t0 - B, t1), B = max(W - 1, H_hi) (W - 1 when no
    sequence has a response row in the block): ``n_j × H × c × (c + B)`` logits at a time.
    """
    n, h, big, _ = q.shape
    w_len = waad_window
    reach = max(w_len - 1, fai_horizon_hi)
    waad = q.new_zeros(n, h, big, dtype=torch.float32)
    fai_num = q.new_zeros(n, h, big, dtype=torch.float32)
    resp = grid.resp
    rows_per_block = grid.rows_per_block
    for block, t0 in enumerate(range(0, big, rows_per_block)):
        t1 = min(big, t0 + rows_per_block)
        has_resp = grid.block_has_response[block]
        s0 = max(0, t0 - (reach if has_resp else w_len - 1))
        m = grid.count_from(t0)
        delta = _offsets(t0, t1, s0, q.device)
        allowed = visible(delta, window)
        near_weight = torch.where(allowed & (delta < w_len), (delta - w_len).float(), 0.0)
        far = (allowed & (delta >= fai_horizon_lo) & (delta <= fai_horizon_hi)).float()
        for seqs in _groups(m, h * (t1 - t0) * (t1 - s0)):
            z = grid_logits(q, k, seqs, slice(t0, t1), slice(s0, t1), scaling, softcap, kernels)  # (m, H, c, w)
            row_lse = lse[seqs, :, t0:t1]
            # outside the bands (e.g. future keys) exp may overflow: clamp, then the band weights zero those entries
            p = z.sub_(row_lse[..., None]).clamp_max_(0.0).exp_()
            far_w = (p * near_weight).sum(-1)
            if sinks is None:
                waad[seqs, :, t0:t1] = far_w.add_(w_len)
            else:  # rows sum to 1 - exp(sink - lse): the far keys weigh W times that
                row_sum = 1.0 - (sinks.float()[None, :, None] - row_lse).exp()
                waad[seqs, :, t0:t1] = far_w.add_(row_sum * w_len)
            if has_resp:
                weight = far * resp[seqs, t0:t1, None].float()[:, None]  # (m, 1, c, w)
                fai_num[seqs, :, s0:t1] += p.mul_(weight).sum(-2)
    return waad, fai_num


def _band_stats_tiled(
    q, k, grid, scaling, lse, waad_window, fai_horizon_lo, fai_horizon_hi, kernels, window, softcap, sinks
):
    """The CUDA schedule of :func:`band_stats` (same arguments and results): tiles of many blocks.

    The grid's rows are cut into blocks of c = ``grid.rows_per_block``; block j meets the ``back + c`` keys
    [j·c - back, (j + 1)·c), back = c · ceil(max(W - 1, H_hi) / c), a whole number of blocks, so every block has the
    same offsets t - s and the same band weights. All blocks of a tile go through one batched matmul on a strided
    window view of the keys; a tile holds at most :data:`BAND_TILE_ELEMENTS` logits, so the ops grow with
    tokens · heads / that cap, not with the number or length of the sequences. A block's FAI contributions land on
    its ``back / c + 1`` key blocks: that many shifted adds.
    """
    n, h, big, d = q.shape
    hkv = k.shape[1]
    g = h // hkv
    c = grid.rows_per_block
    back = c * -(-max(waad_window - 1, fai_horizon_hi) // c)
    span, segments = back + c, back // c + 1
    nb = -(-big // c)
    pad = nb * c - big
    near, far = _band_weights(c, back, nb, waad_window, fai_horizon_lo, fai_horizon_hi, window, q.device)
    # heads as (kv head, G): query head h = kv · G + g reads kv head h // G
    qb = torch.nn.functional.pad(q, (0, 0, 0, pad)).view(n, hkv, g, nb, c, d)
    qb = qb.permute(0, 1, 3, 2, 4, 5).reshape(n, hkv, nb, g * c, d)  # (n, H_kv, nb, G·c, D)
    kw = torch.nn.functional.pad(k, (0, 0, back, pad)).unfold(2, span, c)  # (n, H_kv, nb, D, span): a view
    lse_b = torch.nn.functional.pad(lse, (0, pad)).view(n, hkv, g, nb, c).permute(0, 1, 3, 2, 4)  # (n, H_kv, nb, G, c)
    resp = torch.nn.functional.pad(grid.resp.float(), (0, pad)).view(n, nb, c)
    sink = None if sinks is None else sinks.float().view(hkv, g)[None, :, None, :, None]
    waad = q.new_zeros(n, hkv, nb, g, c, dtype=torch.float32)
    fai_ext = q.new_zeros(n, hkv, nb + segments - 1, g, c, dtype=torch.float32)  # key blocks -(segments-1) .. nb-1
    per_block = h * c * span
    size = max(1, BAND_TILE_ELEMENTS // (per_block * max(1, n)))
    for j0 in range(0, nb, size):
        j1 = min(nb, j0 + size)
        m = grid.count_from(j0 * c)  # sequences still running at the tile's first row
        z = kernels.matmul_fp32(qb[:m, :, j0:j1], kw[:m, :, j0:j1]).view(m, hkv, j1 - j0, g, c, span)
        if softcap:
            z.mul_(scaling / softcap).tanh_().mul_(softcap)
        else:
            z.mul_(scaling)
        row_lse = lse_b[:m, :, j0:j1]
        # outside the bands (e.g. future keys) exp may overflow: clamp, then the band weights zero those entries
        p = z.sub_(row_lse[..., None]).clamp_max_(0.0).exp_()
        # the WAAD band is the W keys t - W < s <= t: window keys i + back - W + 1 .. i + back of row i, a diagonal
        # strip of the contiguous block, read as a strided (c, W) view
        first = p.storage_offset() + back - waad_window + 1
        strip = p.as_strided((*p.shape[:-2], c, waad_window), (*p.stride()[:-2], span + 1, 1), first)
        near_sum = (strip * near[j0:j1, None]).sum(-1)  # (m, H_kv, jb, G, c)
        if sink is None:
            waad[:m, :, j0:j1] = near_sum.add_(waad_window)
        else:  # rows sum to 1 - exp(sink - lse): the far keys weigh W times that
            waad[:m, :, j0:j1] = near_sum.add_((1.0 - (sink - row_lse).exp()) * waad_window)
        if any(grid.block_has_response[j0:j1]):
            weight = far[j0:j1] * resp[:m, j0:j1, :, None]  # (m, jb, c, span): response rows only
            contrib = p.mul_(weight[:, None, :, None]).sum(-2).view(m, hkv, j1 - j0, g, segments, c)
            for seg in range(segments):  # window segment seg of block j is key block j - (segments - 1) + seg
                fai_ext[:m, :, j0 + seg : j1 + seg] += contrib[:, :, :, :, seg]
    fai_num = fai_ext[:, :, segments - 1 :]
    return tuple(x.permute(0, 1, 3, 2, 4).reshape(n, h, nb * c)[..., :big] for x in (waad, fai_num))


def layer_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    batch: BatchLayout,
    kernels: Kernels,
    *,
    waad_window: int,
    fai_horizon_lo: int,
    fai_horizon_hi: int,
    chunk_size: int,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    dist: torch.Tensor | None = None,
) -> LayerStats:
    """The per-head vectors of every sequence for the H query heads of one layer, grid by grid.

    Args:
        query: ``(B, H, S, D)`` post-RoPE queries (any float dtype; logits in fp32).
        key: ``(B, H_kv, S, D)`` post-RoPE keys; query head h reads kv head h // (H / H_kv).
        scaling: the layer's logit scale.
        batch: where the sequences lie, on ``query.device``.
        kernels: the device's :class:`Kernels` (grid dtype, full-row kernel, band schedule).
        waad_window, fai_horizon_lo, fai_horizon_hi: W, H_lo, H_hi.
        chunk_size: query rows per chunk of the full-row pass.
        window, softcap, sinks: the layer's attention variant (see the module docstring).
        lse, dist: optional ``(B, H, S)`` full-row statistics from the layer's own kernel (then no full-row pass).

    Returns:
        :class:`LayerStats` in the batch's token order.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if (lse is None) != (dist is None):
        raise ValueError("pass lse and dist together (both from the attention kernel) or neither")
    check_qk(query, key, batch)
    h, tokens = query.shape[1], batch.tokens
    out = LayerStats(*(query.new_empty(h, tokens, dtype=torch.float32) for _ in range(3)),
                     span=query.new_empty(len(batch.order), h, dtype=torch.float32))  # fmt: skip
    plain = window is None and softcap is None and sinks is None
    for grid in batch.grids:
        q, k = padded_qk(query, key, grid, kernels.grid_dtype(query))
        with exact_fp32(q.device):
            if lse is not None:  # from the layer's own kernel, in the (B, H, S) columns: into the grid
                rows = (grid.rows, grid.cols)
                grid_lse, grid_dist = (x.float().transpose(1, 2)[rows].transpose(1, 2) for x in (lse, dist))
            else:  # one kernel call where it applies, explicit logits in query chunks otherwise
                from_kernel = kernel_row_stats(q, k, scaling, kernels) if plain else None
                grid_lse, grid_dist = from_kernel or row_stats(
                    q, k, grid, scaling, chunk_size, kernels, window=window, softcap=softcap, sinks=sinks
                )
            waad, fai_num = band_stats(q, k, grid, scaling, grid_lse, waad_window, fai_horizon_lo, fai_horizon_hi,
                                       kernels, window=window, softcap=softcap, sinks=sinks)  # fmt: skip
        del q, k
        tok = slice(grid.offset, grid.offset + grid.tokens)
        for dst, src in ((out.dist, grid_dist), (out.waad, waad), (out.fai_num, fai_num)):
            dst[:, tok] = src[grid.token_seq, :, grid.token_pos].T  # (tokens, H) -> (H, tokens)
        resp = grid.resp[:, None].float()
        n_resp = batch.n_resp[grid.first : grid.stop].clamp_min(1.0)[:, None]
        out.span[grid.first : grid.stop] = (grid_dist * resp).sum(-1) / n_resp
    return out


def mask_mismatch(attention_mask: torch.Tensor, batch: BatchLayout, window: int | None) -> torch.Tensor | None:
    """Whether the model's attention mask disagrees with the layouts, as a device bool (read after the forward).

    Checks the first and last row of every sequence: each must see exactly the keys [max(start, t - w + 1), t] of
    its own row (a layout cut in two, or two sequences merged, changes one of those rows). A 2-D ``(B, S)`` padding
    mask (FlashAttention-2) must be set on exactly the layouts' columns of a row with one sequence. Reads no device
    memory on the host: the answer stays on the device until :meth:`RhythmCapture.finalize`.

    Args:
        attention_mask: ``(B, S)``, or ``(B, 1 | H, S, S)`` bool or additive float.
        batch: the layouts, on the mask's device.
        window: the layer's sliding window, or ``None``.

    Returns:
        the device bool, or ``None`` for a mask of another shape (nothing to compare).
    """
    if not batch.order:
        return None
    mask = attention_mask
    allowed = (lambda x: x) if mask.dtype == torch.bool else (lambda x: x > torch.finfo(mask.dtype).min / 2)
    first, last, rows = batch.first_cols, batch.last_cols, batch.seq_rows
    cols = torch.arange(mask.shape[-1], device=mask.device)
    if mask.dim() == 2:
        if mask.shape[-1] < batch.max_end:
            return None
        got = allowed(mask[rows])  # (n, S)
        want = (cols[None] >= first[:, None]) & (cols[None] <= last[:, None])
        return ((got != want) & batch.alone[:, None]).any()  # a mask, not an index: no host sync
    if mask.dim() != 4 or mask.shape[-1] != mask.shape[-2]:
        return None
    r = torch.cat([rows, rows])
    t = torch.cat([first, last])
    start = torch.cat([first, first])
    got = allowed(mask[r, 0, t])  # (2n, S)
    lo = start if not window else torch.maximum(start, t - window + 1)
    want = (cols[None] >= lo[:, None]) & (cols[None] <= t[:, None])
    return (got != want).any()


def segment_mismatch(
    batch: BatchLayout,
    position_ids: torch.Tensor | None = None,
    cu_seq_lens: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Whether a call without a mask attends over other sequences than the layouts, as a device bool (or ``None``).

    Without a mask the kernel's sequences ("segments") are, as transformers 5.10 runs FlashAttention-2
    (``modeling_flash_attention_utils._flash_attention_forward``):

    - ``cu_seq_lens`` given (precomputed varlen arguments): segments start at ``cu_seq_lens[:-1]``;
    - ``position_ids`` given, batch 1, and not one increasing run (``_is_packed_sequence``): segments start where
      ``position_ids == 0`` (``prepare_fa_kwargs_from_position_ids``), as verl's packed rows (remove-padding) give;
    - otherwise (SDPA ``is_causal``, eager, FA2 on plain rows): every batch row is one causal segment from column 0.

    Each layout must be exactly one segment: a segment starts at its first column and at none of its other columns
    (a later sequence's start only affects later rows, which causal attention never reads back). The packed test is
    computed on the device (no host sync); the plain case is host metadata.

    Args:
        batch: the layouts, on the device of ``position_ids``.
        position_ids: ``(1, S)`` of a FlashAttention call (pass only for a flash implementation), or ``None``.
        cu_seq_lens: ``(k + 1,)`` int cumulative lengths a model passed to FlashAttention, or ``None``.
    """
    if not batch.order:
        return None
    own_start = batch.flat_pos == 0
    if cu_seq_lens is not None:
        is_start = batch.flat_cols.new_zeros(batch.max_end + 1, dtype=torch.bool)
        is_start = is_start.index_fill_(0, cu_seq_lens[:-1].long().clamp(0, batch.max_end), True)[batch.flat_cols]
        return (is_start != own_start).any()
    plain_start = batch.flat_cols == 0
    if position_ids is None or position_ids.shape[0] != 1:
        return None if batch.plain_causal else torch.ones((), dtype=torch.bool, device=batch.flat_cols.device)
    pos = position_ids.reshape(-1)
    packed = (torch.arange(pos.numel(), device=pos.device) + pos.min() - pos).abs().sum().bool()
    is_start = torch.where(packed, pos[batch.flat_cols] == 0, plain_start)
    return (is_start != own_start).any()
