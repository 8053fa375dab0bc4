# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The per-sequence reference path: exact rhythm statistics of one sequence from post-RoPE q/k, in query chunks.

Readable and sequence by sequence; the batched path (:mod:`verl_rhythm.measure.batched`) computes the same numbers
for a whole micro-batch at once and is tested against this one and the dense reference (:mod:`.dense`).

For one sequence and one query head with logits z[t, s] = scaling * q_t · k_s (s <= t), everything the method
needs is

- the row log-sum-exp ``lse_t`` and the expected backward distance ``dist_t = sum_s A[t, s] (t - s)``: full-row
  parts, one pass over the causal keys of each query chunk (:func:`row_stats`), or taken from the layer's own
  attention call (:mod:`verl_rhythm.measure.fused`);
- two diagonal bands of A[t, t - d] = exp(z[t, t - d] - lse_t): offsets d < W give WAAD
  (``sum_{d<W} d A + W (1 - sum_{d<W} A)``), offsets H_lo <= d <= H_hi on response rows give the FAI numerator
  (:func:`band_stats`, O(N · H_hi) work per head).

All arithmetic is fp32 whatever the input dtype; at most ``chunk_size × N`` logits per head exist at any time. Plain
causal softmax attention only: sliding windows, soft-capping and sinks are handled by the batched path.
"""

from __future__ import annotations

import contextlib

import torch

from verl_rhythm.measure.heads import HeadStats, fai_count
from verl_rhythm.measure.layout import SequenceLayout

BAND_ROWS = 64
"""Query rows per block of :func:`band_stats`: small blocks waste little of the c × (c + B) logits outside the bands
(B = H_hi = 100 by default), large ones cost Python overhead; 64 is the fastest on CPU at N = 4096."""


def _precision_backend(device: torch.device):
    """The backend whose ``fp32_precision`` governs fp32 matmuls on ``device`` (TF32 on CUDA, bf16 in oneDNN)."""
    if device.type == "cuda":
        return torch.backends.cuda.matmul
    if device.type == "cpu":
        return getattr(torch.backends, "mkldnn", None) and torch.backends.mkldnn.matmul
    return None


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """fp32 matmuls really in fp32 inside, whatever the process set; restored afterwards.

    Turns off autocast (verl runs the forward under bf16 autocast, which would round the capture's logits to bf16)
    and sets the device's matmul ``fp32_precision`` to ``"ieee"`` (no TF32 on CUDA, no bf16 in oneDNN, as
    ``torch.set_float32_matmul_precision("medium")`` would give). Only torch's newer ``fp32_precision`` API is read
    and written where it exists: reading the legacy ``allow_tf32`` after a process set the new API raises, while
    setting and restoring the new API leaves a legacy setting readable. Older torch: the legacy ``allow_tf32``.
    """
    backend = _precision_backend(device)
    attr = "fp32_precision" if backend is not None and hasattr(backend, "fp32_precision") else None
    if attr is None and device.type == "cuda":
        attr = "allow_tf32"
    saved = getattr(backend, attr) if attr else None
    # bf16/fp16 gemms with fp32 output (the batched path on CUDA) must not reduce in the low precision either
    reduced = [f"allow_{x}_reduced_precision_reduction" for x in ("bf16", "fp16")] if device.type == "cuda" else []
    reduced = [(x, getattr(backend, x)) for x in reduced if hasattr(backend, x)]
    try:
        if attr == "fp32_precision":
            backend.fp32_precision = "ieee"
        elif attr == "allow_tf32":
            backend.allow_tf32 = False
        for name, _ in reduced:
            setattr(backend, name, False)
        if torch.amp.is_autocast_available(device.type):
            with torch.autocast(device_type=device.type, enabled=False):
                yield
        else:
            yield
    finally:
        if attr:
            setattr(backend, attr, saved)
        for name, value in reduced:
            setattr(backend, name, value)


def _sequence_qk(query, key, layout: SequenceLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(H, N, D)`` queries and ``(H_kv, N, D)`` keys of one sequence."""
    if query.dim() != 4 or key.dim() != 4:
        raise ValueError(f"query and key must be (B, H, S, D), got {tuple(query.shape)} and {tuple(key.shape)}")
    b, h, s, d = query.shape
    if key.shape[0] != b or key.shape[2] != s or key.shape[3] != d or h % key.shape[1]:
        raise ValueError(
            f"key {tuple(key.shape)} does not match query {tuple(query.shape)}: need (B, H_kv, S, D) with H_kv | H"
        )
    if layout.row >= b or layout.start + layout.length > s:
        raise ValueError(
            f"SequenceLayout(row={layout.row}, start={layout.start}, length={layout.length}) lies outside the "
            f"query of shape {tuple(query.shape)}"
        )
    cols = slice(layout.start, layout.start + layout.length)
    q = query[layout.row, :, cols].float()
    k = key[layout.row, :, cols].float()
    return q, k


def chunk_logits(q: torch.Tensor, k: torch.Tensor, rows: slice, keys: slice, scaling: float) -> torch.Tensor:
    """fp32 logits ``(H, c, w)`` of query rows ``rows`` against keys ``keys``, all heads in one batched matmul.

    Query head h reads kv head h // (H / H_kv): the G = H / H_kv heads of a kv head are stacked as G * c rows.
    """
    h, hkv = q.shape[0], k.shape[0]
    qc = q[:, rows]
    c = qc.shape[1]
    z = torch.bmm(qc.reshape(hkv, (h // hkv) * c, q.shape[2]), k[:, keys].transpose(1, 2))
    return z.view(h, c, -1).mul_(scaling)


def row_stats(q: torch.Tensor, k: torch.Tensor, scaling: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp and expected backward distance of every query row, in query chunks.

    Causal: query chunk [t0, t1) only meets keys [0, t1), ``H × (t1 - t0) × t1`` logits at a time.

    Args:
        q: ``(H, N, D)`` fp32 queries of one sequence.
        k: ``(H_kv, N, D)`` fp32 keys; query head h reads kv head h // (H / H_kv).
        scaling: the logit scale.
        chunk_size: query rows per chunk.

    Returns:
        ``(lse, dist)``, each ``(H, N)`` fp32: lse_t = log sum_{s<=t} exp(z[t, s]) and
        dist_t = sum_{s<=t} A[t, s] (t - s).
    """
    h, n, _ = q.shape
    lse = q.new_empty(h, n)
    dist = q.new_empty(h, n)
    pos = torch.arange(n, device=q.device)
    for t0 in range(0, n, chunk_size):
        t1 = min(n, t0 + chunk_size)
        delta = (pos[t0:t1, None] - pos[None, :t1]).to(q.dtype)  # (c, t1): t - s
        z = chunk_logits(q, k, slice(t0, t1), slice(0, t1), scaling)
        z[..., t0:].masked_fill_(delta[:, t0:] < 0, float("-inf"))  # only the diagonal block has future keys
        row_max = z.amax(-1, keepdim=True)  # finite: the diagonal key is always there
        p = z.sub_(row_max).exp_()  # one exp pass: unnormalised probabilities, max entry 1
        total = p.sum(-1)  # (H, c), >= 1
        lse[:, t0:t1] = row_max.squeeze(-1) + total.log()
        dist[:, t0:t1] = p.mul_(delta).sum(-1).div_(total)
    return lse, dist


def band_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    scaling: float,
    lse: torch.Tensor,
    response_mask: torch.Tensor,
    waad_window: int,
    fai_horizon_lo: int,
    fai_horizon_hi: int,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WAAD of every row and the FAI numerator of every column from the two diagonal bands of A.

    WAAD_t = W + sum_{d < W} A[t, t - d] (d - W) (the band form of spec Eq. 9: the rest of the row weighs W). Query
    block [t0, t1) of c = min(chunk_size, :data:`BAND_ROWS`) rows meets keys [t0 - B, t1) with B = max(W - 1, H_hi)
    (B = W - 1 for a block without response rows): ``H × c × (c + B)`` logits at a time, O(N · (c + B)) per head.

    Args:
        q: ``(H, N, D)`` fp32; k: ``(H_kv, N, D)`` fp32; scaling: as in :func:`row_stats`.
        lse: ``(H, N)`` fp32 row log-sum-exp (from :func:`row_stats` or the layer's attention kernel).
        response_mask: ``(N,)`` bool, the response rows R.
        waad_window, fai_horizon_lo, fai_horizon_hi: W, H_lo, H_hi.
        chunk_size: caps the query rows per block.

    Returns:
        ``(waad, fai_num)``, each ``(H, N)`` fp32: waad_t = sum_s A[t, s] min(t - s, W) and
        fai_num_s = sum over t in R with H_lo <= t - s <= H_hi of A[t, s].
    """
    h, n, _ = q.shape
    reach = max(waad_window - 1, fai_horizon_hi)
    waad = q.new_empty(h, n)
    fai_num = q.new_zeros(h, n)
    pos = torch.arange(n, device=q.device)
    resp = response_mask.to(q.device).bool()
    resp_rows = torch.cumsum(response_mask.detach().to("cpu", torch.long), 0).tolist()  # host copy: no device sync
    rows_per_block = min(chunk_size, BAND_ROWS)
    for t0 in range(0, n, rows_per_block):
        t1 = min(n, t0 + rows_per_block)
        # a block without response rows needs only the WAAD band
        has_resp = resp_rows[t1 - 1] > (resp_rows[t0 - 1] if t0 else 0)
        s0 = max(0, t0 - (reach if has_resp else waad_window - 1))
        delta = pos[t0:t1, None] - pos[None, s0:t1]  # (c, w)
        near = (delta >= 0) & (delta < waad_window)
        near_weight = torch.where(near, (delta - waad_window).to(q.dtype), 0.0)
        far = ((delta >= fai_horizon_lo) & (delta <= fai_horizon_hi) & resp[t0:t1, None]).to(q.dtype)
        z = chunk_logits(q, k, slice(t0, t1), slice(s0, t1), scaling)  # (H, c, w)
        # outside the bands (e.g. future keys) exp may overflow: clamp, then the band weights zero those entries
        p = z.sub_(lse[:, t0:t1, None]).clamp_max_(0.0).exp_()
        waad[:, t0:t1] = (p * near_weight).sum(-1).add_(waad_window)
        fai_num[:, s0:t1] += p.mul_(far).sum(-2)
    return waad, fai_num


def layer_head_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    layout: SequenceLayout,
    layer: int,
    *,
    waad_window: int = 10,
    fai_horizon_lo: int = 10,
    fai_horizon_hi: int = 100,
    chunk_size: int = 256,
    lse: torch.Tensor | None = None,
    dist: torch.Tensor | None = None,
) -> HeadStats:
    """Exact :class:`HeadStats` of one sequence for the H query heads of one layer.

    Args:
        query: ``(B, H, S, D)`` post-RoPE queries as transformers hands them to an attention function (any float
            dtype; computed in fp32).
        key: ``(B, H_kv, S, D)`` post-RoPE keys; query head h reads kv head h // (H / H_kv).
        scaling: the logit scale of the layer (``module.scaling``, usually D ** -0.5).
        layout: where the sequence lies and its response positions.
        layer: the decoder layer index (recorded in ``HeadStats.heads``).
        waad_window, fai_horizon_lo, fai_horizon_hi: W, H_lo, H_hi of the spec.
        chunk_size: query rows per chunk.
        lse: optional ``(H, N)`` row log-sum-exp of this sequence, e.g. from the layer's own attention kernel.
        dist: optional ``(H, N)`` expected backward distance, given together with ``lse``.

    Returns:
        :class:`HeadStats` with K = H rows, heads ``(layer, 0..H-1)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    q, k = _sequence_qk(query, key, layout)
    h, n = q.shape[0], q.shape[1]
    if (lse is None) != (dist is None):
        raise ValueError("pass lse and dist together (both from the attention kernel) or neither")
    if lse is not None and (lse.shape != (h, n) or dist.shape != (h, n)):
        raise ValueError(f"lse and dist must be ({h}, {n}), got {tuple(lse.shape)} and {tuple(dist.shape)}")
    resp = layout.response_mask.to(q.device)
    with exact_fp32(q.device):
        if lse is None:
            lse, dist = row_stats(q, k, scaling, chunk_size)
        waad, fai_num = band_stats(
            q, k, scaling, lse.float(), resp, waad_window, fai_horizon_lo, fai_horizon_hi, chunk_size
        )
    return HeadStats(
        dist=dist.float(),
        waad=waad,
        fai_num=fai_num,
        fai_count=fai_count(resp, fai_horizon_lo, fai_horizon_hi),
        response_mask=resp,
        heads=[(layer, i) for i in range(h)],
    )
