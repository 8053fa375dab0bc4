# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The fused statistics kernels (Triton): every per-head vector of a selected layer from q/k, no logit in memory.

Two kernels over the varlen micro-batch, reading the layer's q ``(B, H, S, D)`` and k ``(B, H_kv, S, D)`` in place
(any strides; query head h reads kv head h // (H / H_kv), no repeated keys) and writing in the batch's token order:

- :func:`_rows` (program = one tile of ``BLOCK_M`` query rows of one sequence × one head): one pass over the causal
  keys with an online softmax in fp32 (flash-attention style), carrying besides the running max m and sum l two
  more running sums under the same rescaling: Σ p·s (the expected key position, hence dist_t = t - E_t[s]) and
  Σ_{t-s<W} p·(t - s - W) (the WAAD band). Out: lse_t, dist_t = t·(row sum) - E_t[s], WAAD_t = W·(row sum) +
  band / l (the row sum is 1, or 1 - exp(sink - lse) with sinks), and per tile the sum of dist over its response rows
  (the head span's numerator).
- :func:`_columns` (program = one tile of ``BLOCK_N`` key columns × one head): the FAI column numerators, Σ over
  response rows t with H_lo ≤ t - s ≤ H_hi of exp(z[t, s] - lse_t), over the row blocks of that band only. Each
  column is owned by one program: no atomics, deterministic.

Logits are ``tl.dot`` with fp32 accumulation: tensor cores for bf16/fp16 inputs (exact products), IEEE fp32 for fp32
inputs (no TF32). ``UPCAST`` converts bf16 tiles to fp32 before the dot (the same products), for Triton's CPU
interpreter, whose bf16 ``tl.dot`` is wrong in 3.9. Sliding windows, soft-capping and sinks are computed exactly.

Loops over a runtime range (``for c0 in range(lo, hi, BLOCK_N)``) are what the compiled kernels need (Triton
pipelines ``scf.for`` loops only), but Triton 3.6's interpreter cannot run them with NumPy 2.4: it turns the bounds,
scalars stored as one-element arrays, into Python ints with ``int(array)``, which NumPy 2.4 refuses ("only
0-dimensional arrays can be converted to Python scalars"; Triton 3.9 squeezes first). So each loop body is one
``@triton.jit`` step function (:func:`_rows_step`, :func:`_columns_step`), driven by that ``for`` loop when compiled
and by an equivalent ``while`` loop (``WHILE_LOOP``, a constexpr set in the interpreter; its condition reads the
scalar with ``bool``, which works there) when interpreted: the interpreter tests run the same steps.

Extra memory: four ``(H, T)`` fp32 vectors and ``(tiles, H)`` partial spans: O(tokens × heads). On CPU tensors the
kernels run in Triton's interpreter (tests), which ``TRITON_INTERPRET=1`` selects for the whole process.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from verl_rhythm.measure.heads import LayerStats
from verl_rhythm.measure.layout import KERNEL_TILE as BLOCK_M  # rows (columns) per program

BLOCK_N = 64
"""Keys per step of :func:`_rows`' loop; query rows per step of :func:`_columns`' loop."""
NUM_WARPS = 4


@triton.jit
def _tile(tiles_ptr, tile):
    """One tile's metadata: batch row, first column, sequence length, first position, first token."""
    base = tiles_ptr + tile * 5
    return tl.load(base), tl.load(base + 1), tl.load(base + 2), tl.load(base + 3), tl.load(base + 4)


@triton.jit
def _block(ptr, b, head, start, idx, n, s_b, s_h, s_s, s_d,
           D: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """Rows ``idx`` (positions of a sequence starting at column ``start`` of batch row ``b``) of one head of q or
    k, ``(len(idx), BLOCK_D)``, zero past the sequence and the head dim; upcast to fp32 with ``UPCAST``."""
    dims = tl.arange(0, BLOCK_D)
    x = tl.load(
        ptr + b * s_b + head * s_h + (start + idx)[:, None] * s_s + dims[None, :] * s_d,
        mask=(idx < n)[:, None] & (dims[None, :] < D), other=0.0,
    )  # fmt: skip
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _logits(q, k, scale, softcap, SOFTCAP: tl.constexpr, IEEE: tl.constexpr):
    """fp32 ``q kᵀ · scale`` (IEEE products for fp32 inputs), soft-capped with ``SOFTCAP``."""
    if IEEE:
        z = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    else:
        z = tl.dot(q, tl.trans(k)) * scale
    if SOFTCAP:
        z = softcap * (1.0 - 2.0 / (tl.exp(2.0 * z / softcap) + 1.0))  # softcap · tanh(z / softcap)
    return z


@triton.jit
def _rows_step(c0, q, rows, m, l_sum, e_sum, w_sum, k_ptr, b, kh, start, n, sk_b, sk_h, sk_s, sk_d,
               scale, softcap, window, W: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, UPCAST: tl.constexpr,
               IEEE: tl.constexpr):  # fmt: skip
    """One key block (columns ``c0 ...``) of :func:`_rows`' online softmax: the running max and the three running
    sums, rescaled."""
    cols = c0 + tl.arange(0, BLOCK_N)
    k = _block(k_ptr, b, kh, start, cols, n, sk_b, sk_h, sk_s, sk_d, D, BLOCK_D, UPCAST)
    z = _logits(q, k, scale, softcap, SOFTCAP, IEEE)
    delta = rows[:, None] - cols[None, :]
    ok = (delta >= 0) & (cols[None, :] < n)
    if WINDOW:
        ok = ok & (delta < window)
    z = tl.where(ok, z, float("-inf"))
    m_new = tl.maximum(m, tl.max(z, 1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(z - m_new[:, None])
    near = tl.where(delta < W, delta - W, 0).to(tl.float32)
    l_sum = l_sum * alpha + tl.sum(p, 1)
    e_sum = e_sum * alpha + tl.sum(p * cols[None, :].to(tl.float32), 1)
    w_sum = w_sum * alpha + tl.sum(p * near, 1)
    return m_new, l_sum, e_sum, w_sum


def _rows(
    q_ptr, k_ptr, tiles_ptr, resp_ptr, sinks_ptr,
    lse_ptr, dist_ptr, waad_ptr, span_ptr,
    sq_b, sq_h, sq_s, sq_d, sk_b, sk_h, sk_s, sk_d,
    tokens, num_heads, scale, softcap, window,
    W: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, SINKS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    WHILE_LOOP: tl.constexpr = False,
):  # fmt: skip
    tile = tl.program_id(0)
    h = tl.program_id(1)
    b, start, n, row0, tok = _tile(tiles_ptr, tile)
    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    q = _block(q_ptr, b, h, start, rows, n, sq_b, sq_h, sq_s, sq_d, D, BLOCK_D, UPCAST)
    kh = h // G
    m = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_sum = tl.zeros([BLOCK_M], tl.float32)
    e_sum = tl.zeros([BLOCK_M], tl.float32)
    w_sum = tl.zeros([BLOCK_M], tl.float32)
    lo = 0
    if WINDOW:
        lo = tl.maximum(row0 - window + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum(row0 + BLOCK_M, n)
    if WHILE_LOOP:  # Triton's interpreter (see the module docstring): the same step, a while loop
        c0 = lo
        while c0 < hi:
            m, l_sum, e_sum, w_sum = _rows_step(
                c0, q, rows, m, l_sum, e_sum, w_sum, k_ptr, b, kh, start, n, sk_b, sk_h, sk_s, sk_d,
                scale, softcap, window, W, D, BLOCK_D, BLOCK_N, SOFTCAP, WINDOW, UPCAST, IEEE,
            )  # fmt: skip
            c0 += BLOCK_N
    else:
        for c0 in range(lo, hi, BLOCK_N):
            m, l_sum, e_sum, w_sum = _rows_step(
                c0, q, rows, m, l_sum, e_sum, w_sum, k_ptr, b, kh, start, n, sk_b, sk_h, sk_s, sk_d,
                scale, softcap, window, W, D, BLOCK_D, BLOCK_N, SOFTCAP, WINDOW, UPCAST, IEEE,
            )  # fmt: skip
    row_sum = 1.0
    if SINKS:
        sink = tl.load(sinks_ptr + h)
        m_f = tl.maximum(m, sink)
        shrink = tl.exp(m - m_f)
        l_sum = l_sum * shrink + tl.exp(sink - m_f)
        e_sum = e_sum * shrink
        w_sum = w_sum * shrink
        m = m_f
    l_safe = tl.where(l_sum > 0, l_sum, 1.0)
    lse = m + tl.log(l_safe)
    if SINKS:
        row_sum = 1.0 - tl.exp(sink - lse)
    dist = rows.to(tl.float32) * row_sum - e_sum / l_safe  # Σ_s A (t - s); rows sum to row_sum with sinks
    waad = W * row_sum + w_sum / l_safe
    out = h * tokens + tok + rows
    tl.store(lse_ptr + out, lse, mask=row_ok)
    tl.store(dist_ptr + out, dist, mask=row_ok)
    tl.store(waad_ptr + out, waad, mask=row_ok)
    resp = tl.load(resp_ptr + tok + rows, mask=row_ok, other=0)
    tl.store(span_ptr + tile * num_heads + h, tl.sum(tl.where(resp != 0, dist, 0.0), 0))


@triton.jit
def _columns_step(r0, k, cols, col_ok, q_ptr, lse_ptr, resp_ptr, b, h, start, n, tok, tokens, sq_b, sq_h, sq_s, sq_d,
                  scale, softcap, window, horizon_lo, horizon_hi, D: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, UPCAST: tl.constexpr,
                  IEEE: tl.constexpr):  # fmt: skip
    """One query block (rows ``r0 ...``) of :func:`_columns`: its contribution to the FAI column numerators."""
    rows = r0 + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    q = _block(q_ptr, b, h, start, rows, n, sq_b, sq_h, sq_s, sq_d, D, BLOCK_D, UPCAST)
    z = _logits(q, k, scale, softcap, SOFTCAP, IEEE)  # (rows, cols)
    lse = tl.load(lse_ptr + h * tokens + tok + rows, mask=row_ok, other=0.0)
    resp = tl.load(resp_ptr + tok + rows, mask=row_ok, other=0)
    delta = rows[:, None] - cols[None, :]
    ok = (delta >= horizon_lo) & (delta <= horizon_hi) & row_ok[:, None] & col_ok[None, :] & (resp != 0)[:, None]
    if WINDOW:
        ok = ok & (delta < window)
    p = tl.exp(tl.minimum(z - lse[:, None], 0.0))
    return tl.sum(tl.where(ok, p, 0.0), 0)


def _columns(
    q_ptr, k_ptr, tiles_ptr, resp_ptr, lse_ptr, fai_ptr,
    sq_b, sq_h, sq_s, sq_d, sk_b, sk_h, sk_s, sk_d,
    tokens, scale, softcap, window, horizon_lo, horizon_hi,
    G: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    WHILE_LOOP: tl.constexpr = False,
):  # fmt: skip
    tile = tl.program_id(0)
    h = tl.program_id(1)
    b, start, n, col0, tok = _tile(tiles_ptr, tile)
    cols = col0 + tl.arange(0, BLOCK_M)
    col_ok = cols < n
    k = _block(k_ptr, b, h // G, start, cols, n, sk_b, sk_h, sk_s, sk_d, D, BLOCK_D, UPCAST)
    fai = tl.zeros([BLOCK_M], tl.float32)
    r_lo = (col0 + horizon_lo) // BLOCK_N * BLOCK_N
    r_hi = tl.minimum(col0 + BLOCK_M + horizon_hi, n)
    if WHILE_LOOP:  # Triton's interpreter (see the module docstring): the same step, a while loop
        r0 = r_lo
        while r0 < r_hi:
            fai += _columns_step(
                r0, k, cols, col_ok, q_ptr, lse_ptr, resp_ptr, b, h, start, n, tok, tokens, sq_b, sq_h, sq_s, sq_d,
                scale, softcap, window, horizon_lo, horizon_hi, D, BLOCK_D, BLOCK_N, SOFTCAP, WINDOW, UPCAST, IEEE,
            )  # fmt: skip
            r0 += BLOCK_N
    else:
        for r0 in range(r_lo, r_hi, BLOCK_N):
            fai += _columns_step(
                r0, k, cols, col_ok, q_ptr, lse_ptr, resp_ptr, b, h, start, n, tok, tokens, sq_b, sq_h, sq_s, sq_d,
                scale, softcap, window, horizon_lo, horizon_hi, D, BLOCK_D, BLOCK_N, SOFTCAP, WINDOW, UPCAST, IEEE,
            )  # fmt: skip
    tl.store(fai_ptr + h * tokens + tok + cols, fai, mask=col_ok)


KERNELS = {"rows": _rows, "columns": _columns}


@functools.cache
def kernel(name: str):
    """The kernel ``name`` (``rows`` or ``columns``) jitted: a ``JITFunction`` for GPUs, or Triton's interpreter
    where ``TRITON_INTERPRET=1`` was set before Triton was imported (Triton decides that when it decorates its own
    library functions, so it is a process setting)."""
    return triton.jit(KERNELS[name])


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter in this process (``TRITON_INTERPRET=1``)."""
    return bool(triton.knobs.runtime.interpret)


def block_d(head_dim: int) -> int:
    """The head-dim block: a power of two, at least 16 (``tl.dot``'s smallest K)."""
    return max(16, triton.next_power_of_2(head_dim))


def layer_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    batch,
    *,
    waad_window: int,
    fai_horizon_lo: int,
    fai_horizon_hi: int,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
):
    """:func:`verl_rhythm.measure.batched.layer_stats`' result from the two kernels (same arguments and result).

    Args:
        query: ``(B, H, S, D)``; key: ``(B, H_kv, S, D)``, bf16, fp16 or fp32, any strides, on one device.
        scaling: the logit scale; batch: the :class:`~verl_rhythm.measure.layout.BatchLayout`, on that device.
        waad_window, fai_horizon_lo, fai_horizon_hi: W, H_lo, H_hi; window, softcap, sinks: the layer's variant.

    Returns:
        a :class:`~verl_rhythm.measure.heads.LayerStats` in the batch's token order.
    """

    h, d = query.shape[1], query.shape[3]
    tokens = batch.tokens
    tiles, tile_index = batch.kernel_tiles
    resp = batch.kernel_resp
    if query.device.type == "cpu" and not interpreting():
        raise RuntimeError(
            "the fused statistics kernels run on CPU tensors only in Triton's interpreter: set TRITON_INTERPRET=1 "
            "before Triton is imported (or give the capture kernels with triton=False)"
        )
    upcast = interpreting() and query.dtype == torch.bfloat16  # the interpreter's bf16 dot is wrong; fp32 agrees
    ieee = query.dtype == torch.float32
    f32 = dict(device=query.device, dtype=torch.float32)
    lse, dist, waad, fai = (torch.empty(h, tokens, **f32) for _ in range(4))
    partial = torch.zeros(tiles.shape[0] + 1, h, **f32)  # + a zero row for the padded tile index
    sink_values = sinks.float().contiguous() if sinks is not None else lse  # never read without SINKS
    common = dict(G=h // key.shape[1], D=d, BLOCK_D=block_d(d), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                  SOFTCAP=bool(softcap), WINDOW=bool(window), UPCAST=upcast, IEEE=ieee,
                  WHILE_LOOP=interpreting())  # fmt: skip
    strides = (*query.stride(), *key.stride())
    grid = (tiles.shape[0], h)
    if tiles.shape[0]:
        kernel("rows")[grid](
            query, key, tiles, resp, sink_values, lse, dist, waad, partial,
            *strides, tokens, h, float(scaling), float(softcap or 0.0), int(window or 0),
            W=waad_window, SINKS=sinks is not None, num_warps=NUM_WARPS, **common,
        )  # fmt: skip
        kernel("columns")[grid](
            query, key, tiles, resp, lse, fai,
            *strides, tokens, float(scaling), float(softcap or 0.0), int(window or 0), fai_horizon_lo, fai_horizon_hi,
            num_warps=NUM_WARPS, **common,
        )  # fmt: skip
    span = partial[tile_index].sum(1) / batch.n_resp.clamp_min(1.0)[:, None]  # (n, H): a sequence's tiles, in order
    return LayerStats(dist, waad, fai, span)
