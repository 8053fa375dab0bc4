# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A second implementation, for tests: exact rhythm statistics of one sequence from post-RoPE q/k, in query chunks.

Readable and sequence by sequence; the capture's path (:mod:`verl_rhythm.measure.batched`) computes the same numbers
for a whole micro-batch at once. Not a reference: it reuses the product's :class:`HeadStats`, |T(s)| and head
grouping, so it is tested, like the capture, against the dense reference (:mod:`.dense`), which shares no code with
the product. Not part of the capture.

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

import torch

from verl_rhythm.measure.batched import BAND_ROWS
from verl_rhythm.measure.capture import RhythmCapture
from verl_rhythm.measure.heads import HeadStats, SequenceRhythm, fai_count, rhythm_for_sequences
from verl_rhythm.measure.layout import SequenceLayout
from verl_rhythm.measure.logits import exact_fp32
from verl_rhythm.measure.settings import CaptureSettings

DEFAULT = CaptureSettings()
"""The capture's defaults (one source: :class:`CaptureSettings`)."""


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
    waad_window: int = DEFAULT.waad_window,
    fai_horizon_lo: int = DEFAULT.fai_horizon_lo,
    fai_horizon_hi: int = DEFAULT.fai_horizon_hi,
    chunk_size: int = DEFAULT.chunk_size,
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
    waad_window: int = DEFAULT.waad_window,
    fai_horizon_lo: int = DEFAULT.fai_horizon_lo,
    fai_horizon_hi: int = DEFAULT.fai_horizon_hi,
    chunk_size: int = DEFAULT.chunk_size,
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


class ChunkedCapture(RhythmCapture):
    """A :class:`~verl_rhythm.measure.capture.RhythmCapture` that records with this module's reference, sequence by
    sequence (``paths`` say ``chunked``): what the tests run beside the capture's own paths. Plain causal softmax
    attention only; no layout check."""

    def record(self, layer_idx, query: torch.Tensor, key: torch.Tensor, scaling, **kwargs) -> None:
        if not self.wants(layer_idx):
            return
        if self.layouts is None:
            raise RuntimeError("ChunkedCapture.record called before set_layouts()")
        variant = sorted(k for k in ("sliding_window", "softcap", "s_aux") if kwargs.get(k) is not None)
        if variant:
            raise ValueError(f"layer {layer_idx} uses {variant}: the per-sequence path handles plain attention")
        scaling = float(query.shape[-1] ** -0.5 if scaling is None else scaling)
        lse, dist = kwargs.get("lse"), kwargs.get("dist")
        cfg = self.cfg
        out = []
        with torch.no_grad():
            for lay in self.layouts:
                cols = slice(lay.start, lay.start + lay.length)
                out.append(
                    layer_head_stats(
                        query,
                        key,
                        scaling,
                        lay,
                        layer_idx,
                        waad_window=cfg.waad_window,
                        fai_horizon_lo=cfg.fai_horizon_lo,
                        fai_horizon_hi=cfg.fai_horizon_hi,
                        chunk_size=cfg.chunk_size,
                        lse=None if lse is None else lse[lay.row, :, cols],
                        dist=None if dist is None else dist[lay.row, :, cols],
                    )  # fmt: skip
                )
        self._stats[layer_idx] = out
        self.paths[layer_idx] = "chunked"

    def head_stats(self) -> list[HeadStats]:
        self._missing()
        return [HeadStats.concat([self._stats[layer][i] for layer in self.layers]) for i in range(len(self.layouts))]

    def finalize(self) -> list[SequenceRhythm]:
        return rhythm_for_sequences(self.head_stats(), self.cfg.head_quantile, self.cfg.head_group_scope)
