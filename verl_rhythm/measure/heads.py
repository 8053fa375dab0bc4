# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Per-head statistics → head spans, local/global groups, per-token WAAD and FAI (spec Sec. 2-3).

Every attention path (the capture's :mod:`.batched` and :mod:`.triton_stats`, and the references of
:mod:`verl_rhythm.testing`) reduces a sequence's attention to the same per-head vectors (:class:`HeadStats` per
sequence, :class:`LayerStats` for a micro-batch in token order). WAAD and FAI are linear in the attention
map, so averaging per-head WAAD/FAI vectors over a head group equals WAAD/FAI of the group-averaged map: this module
never needs a map, only those vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass
class HeadStats:
    """Attention statistics of one sequence for the K selected (layer, head) pairs.

    Positions run over the whole sequence (prompt + response), N of them. Row t is a query position, column s a
    key position; a statistic "of token t" is indexed at t's own position (no log-prob shift).

    Attributes:
        dist: ``(K, N)`` fp32, expected backward distance of query row t: sum_s A[t, s] * (t - s).
        waad: ``(K, N)`` fp32, WAAD term of query row t: sum_s A[t, s] * min(t - s, W).
        fai_num: ``(K, N)`` fp32, FAI numerator of key column s: sum over t in T(s) of A[t, s], with
            T(s) = {t in R : s + H_lo <= t <= s + H_hi}.
        fai_count: ``(N,)`` fp32, |T(s)| (the same for every head).
        response_mask: ``(N,)`` bool, the response positions R.
        heads: the K ``(layer, head)`` pairs in row order (layer-major).
    """

    dist: torch.Tensor
    waad: torch.Tensor
    fai_num: torch.Tensor
    fai_count: torch.Tensor
    response_mask: torch.Tensor
    heads: list[tuple[int, int]]

    @staticmethod
    def concat(parts: list[HeadStats]) -> HeadStats:
        """Stack the head rows of several layers' stats of the same sequence."""
        if not parts:
            raise ValueError("HeadStats.concat needs at least one part")
        return HeadStats(
            dist=torch.cat([p.dist for p in parts]),
            waad=torch.cat([p.waad for p in parts]),
            fai_num=torch.cat([p.fai_num for p in parts]),
            fai_count=parts[0].fai_count,
            response_mask=parts[0].response_mask,
            heads=[h for p in parts for h in p.heads],
        )


class LayerStats(NamedTuple):
    """Per-head vectors of one layer for every sequence of a :class:`BatchLayout`, in its token order.

    Attributes:
        dist, waad, fai_num: ``(H, T)`` fp32 (see :class:`~verl_rhythm.measure.heads.HeadStats`); sequence j (sorted
            order) owns tokens ``[batch.offsets[j], batch.offsets[j] + batch.lengths[j])``.
        span: ``(n, H)`` fp32, the span of each head for each sorted sequence (mean of ``dist`` over its response
            rows; 0 without one).
    """

    dist: torch.Tensor
    waad: torch.Tensor
    fai_num: torch.Tensor
    span: torch.Tensor


def group_size(num_heads: int, quantile: float) -> int:
    """G, the heads in each group: ``max(1, floor(quantile · K))`` (the epsilon absorbs 0.3 · 10 = 2.9999...)."""
    return max(1, int(quantile * num_heads + 1e-9))


@dataclass
class SequenceRhythm:
    """Per-token rhythm signals of one sequence.

    Attributes:
        waad: ``(N,)`` fp32, WAAD_t from the local group, in [0, W].
        fai: ``(N,)`` fp32, FAI_s from the global group; 0 where T(s) is empty.
        span: ``(K,)`` fp32, the span d of each selected head (mean over R of its expected distance); NaN-free,
            0 for a sequence with no response row.
        local_heads: ``(G,)`` long, row indices into ``heads`` of the local group.
        global_heads: ``(G,)`` long, row indices of the global group.
        heads: the K ``(layer, head)`` pairs.
    """

    waad: torch.Tensor
    fai: torch.Tensor
    span: torch.Tensor
    local_heads: torch.Tensor
    global_heads: torch.Tensor
    heads: list[tuple[int, int]]


def head_spans(stats: HeadStats) -> torch.Tensor:
    """Span of each head, d = mean over response rows t of sum_s A[t, s] (t - s) (spec Sec. 2).

    Returns:
        ``(K,)`` fp32; zeros when the sequence has no response position.
    """
    rows = stats.response_mask.to(stats.dist.dtype)
    n = rows.sum().clamp_min(1.0)
    return (stats.dist * rows).sum(-1) / n


def group_heads(span: torch.Tensor, heads: list[tuple[int, int]], quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split heads by span: the bottom ``quantile`` are local, the top ``quantile`` are global.

    Group size is :func:`group_size`; heads are ordered by (span, layer, head) so ties are
    deterministic (spec Sec. 2, project decision).

    Args:
        span: ``(K,)`` head spans.
        heads: the K ``(layer, head)`` pairs, same order as ``span``.
        quantile: the group share, in (0, 0.5].

    Returns:
        ``(local, global)`` row indices, each ``(G,)`` long, in ascending order of the sort key.
    """
    k = span.numel()
    if k != len(heads):
        raise ValueError(f"span has {k} heads but heads lists {len(heads)}")
    g = group_size(k, quantile)
    order = sorted(range(k), key=lambda i: (float(span[i]), heads[i][0], heads[i][1]))
    order = torch.tensor(order, dtype=torch.long, device=span.device)
    return order[:g], order[k - g :]


def rhythm_from_head_stats(stats: HeadStats, head_quantile: float, span: torch.Tensor | None = None) -> SequenceRhythm:
    """Per-token WAAD and FAI of one sequence from its per-head statistics (spec Eq. 9, Eq. 10).

    Args:
        stats: the sequence's :class:`HeadStats`.
        head_quantile: group share (``algorithm.rhythm.head_quantile``).
        span: ``(K,)`` spans to group by; default: this sequence's own (``head_group_scope=sequence``). Pass the
            micro-batch mean for ``head_group_scope=micro_batch``.

    Returns:
        the sequence's :class:`SequenceRhythm`.
    """
    own_span = head_spans(stats)
    local, glob = group_heads(own_span if span is None else span, stats.heads, head_quantile)
    waad = stats.waad.index_select(0, local).mean(0)
    fai_num = stats.fai_num.index_select(0, glob).mean(0)
    count = stats.fai_count
    fai = torch.where(count > 0, fai_num / count.clamp_min(1.0), torch.zeros_like(fai_num))
    return SequenceRhythm(
        waad=waad, fai=fai, span=own_span, local_heads=local, global_heads=glob, heads=list(stats.heads)
    )


def rhythm_for_sequences(stats: list[HeadStats], head_quantile: float, scope: str = "sequence") -> list[SequenceRhythm]:
    """:func:`rhythm_from_head_stats` for a micro-batch of sequences, honouring ``head_group_scope``.

    Args:
        stats: one :class:`HeadStats` per sequence (same heads in the same order).
        head_quantile: group share.
        scope: ``sequence`` (group per sequence) or ``micro_batch`` (group once by the mean span over the sequences
            that have a response).
    """
    if scope == "sequence":
        return [rhythm_from_head_stats(s, head_quantile) for s in stats]
    if scope != "micro_batch":
        raise ValueError(f"algorithm.rhythm.head_group_scope={scope!r}: allowed values are sequence, micro_batch")
    spans = [head_spans(s) for s in stats if bool(s.response_mask.any())]
    mean_span = torch.stack(spans).mean(0) if spans else None
    return [rhythm_from_head_stats(s, head_quantile, span=mean_span) for s in stats]


def fai_count(response_mask: torch.Tensor, horizon_lo: int, horizon_hi: int) -> torch.Tensor:
    """|T(s)| for every key position s: response rows t with s + H_lo <= t <= s + H_hi.

    Args:
        response_mask: ``(N,)`` bool.

    Returns:
        ``(N,)`` fp32.
    """
    r = torch.cat([response_mask.new_zeros(1, dtype=torch.float64), response_mask.double().cumsum(0)])
    n = response_mask.numel()
    s = torch.arange(n, device=response_mask.device)
    lo = (s + horizon_lo).clamp(max=n)
    hi = (s + horizon_hi + 1).clamp(max=n)
    return (r[hi] - r[lo]).clamp_min(0).float()


def rhythm_for_tokens(
    waad: torch.Tensor,
    fai_num: torch.Tensor,
    span: torch.Tensor,
    counts: torch.Tensor,
    token_seq: torch.Tensor,
    head_quantile: float,
    scope: str = "sequence",
    flags: torch.Tensor | None = None,
    has_response: list[bool] | None = None,
    rows: torch.Tensor | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """:func:`rhythm_for_sequences` for n sequences whose tokens lie back to back, with one device-to-host copy in all.

    Heads must be in ascending (layer, head) order, so that a stable sort by span breaks ties as :func:`group_heads`.
    The per-head vectors may hold a subset of the K heads (``rows``: a sequence-parallel rank's heads); their group
    sums are then completed by ``reduce`` (a sum over the ranks), so every rank gets the statistics of all heads.

    Args:
        waad, fai_num: ``(K_r, T)`` fp32 per-head vectors of the T tokens of all sequences, for the heads ``rows``.
        span: ``(n, K)`` fp32 span of every head for every sequence (0 for a sequence without a response row).
        counts: ``(T,)`` fp32, |T(s)|.
        token_seq: ``(T,)`` long, the sequence (row of ``span``) of each token.
        head_quantile: group share; scope: ``sequence`` or ``micro_batch``.
        flags: optional device bool scalar copied to the host with the spans (a deferred check).
        has_response: per sequence, whether it has a response position (host; default: every sequence).
        rows: ``(K_r,)`` long, the head (column of ``span``) of each row of ``waad`` / ``fai_num``; default all K.
        reduce: completes a ``(2, T)`` tensor of partial group sums over the heads held elsewhere (e.g. an
            all-reduce over a sequence-parallel group); default none (every head is here).

    Returns:
        ``(waad (T,), fai (T,), local (n, G), global (n, G), flag)``: the token statistics on the input device, the
        groups as long indices on that device, ``flag`` the host value of ``flags``.
    """
    if scope not in ("sequence", "micro_batch"):
        raise ValueError(f"algorithm.rhythm.head_group_scope={scope!r}: allowed values are sequence, micro_batch")
    n, k = span.shape
    host = torch.cat([span.flatten(), (flags if flags is not None else span.new_zeros(())).float().reshape(1)]).cpu()
    flag = bool(host[-1])
    by = host[:-1].view(n, k)
    if scope == "micro_batch":
        has = torch.tensor(has_response if has_response is not None else [True] * n, dtype=torch.bool)
        if bool(has.any()):
            by = by[has].mean(0, keepdim=True).expand(n, k)
    g = group_size(k, head_quantile)
    order = torch.sort(by, dim=1, stable=True).indices.to(span.device)
    local, glob = order[:, :g], order[:, k - g :]
    sums = []
    for group, vectors in ((local, waad), (glob, fai_num)):
        member = span.new_zeros(n, k).scatter_(1, group, 1.0)  # (n, K): the group's heads of each sequence
        if rows is not None:
            member = member[:, rows]
        sums.append((vectors * member.T[:, token_seq]).sum(0))  # (T,): each token's sum over its group's heads
    sums = torch.stack(sums)
    if reduce is not None:
        sums = reduce(sums)
    waad_tok, fai_tok = sums / g
    fai_tok = torch.where(counts > 0, fai_tok / counts.clamp_min(1.0), torch.zeros_like(fai_tok))
    return waad_tok, fai_tok, local, glob, flag
