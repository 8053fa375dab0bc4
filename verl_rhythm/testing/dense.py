# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Dense reference: rhythm statistics straight from full attention maps (spec Sec. 1-3).

This is the ground truth every faster path is tested against (like FlashAttention's ``attention_ref``). It
takes materialised maps, e.g. eager attention with ``output_attentions=True``, and is written for clarity, not
speed: O(K N^2) memory. Never call it in training.
"""

from __future__ import annotations

import torch

from verl_rhythm.measure.heads import HeadStats, SequenceRhythm, fai_count, rhythm_from_head_stats
from verl_rhythm.measure.settings import CaptureSettings

DEFAULT = CaptureSettings()
"""The capture's defaults (one source: :class:`CaptureSettings`)."""


def head_stats_dense(
    attn: torch.Tensor,
    response_mask: torch.Tensor,
    heads: list[tuple[int, int]],
    waad_window: int = DEFAULT.waad_window,
    fai_horizon_lo: int = DEFAULT.fai_horizon_lo,
    fai_horizon_hi: int = DEFAULT.fai_horizon_hi,
) -> HeadStats:
    """Per-head statistics of one sequence from its attention maps.

    Args:
        attn: ``(K, N, N)`` attention probabilities A[t, s] of the K selected heads over this sequence's own N
            positions (row t = query, column s = key; rows sum to 1 over s <= t).
        response_mask: ``(N,)`` bool, the response positions R.
        heads: the K ``(layer, head)`` pairs.
        waad_window: W.
        fai_horizon_lo: H_lo.
        fai_horizon_hi: H_hi.

    Returns:
        :class:`HeadStats` computed by the definitions (full-row sums, explicit masks).
    """
    if attn.dim() != 3 or attn.shape[1] != attn.shape[2]:
        raise ValueError(f"attn must be (K, N, N), got {tuple(attn.shape)}")
    k, n, _ = attn.shape
    if response_mask.shape != (n,):
        raise ValueError(f"response_mask must be ({n},) to match attn, got {tuple(response_mask.shape)}")
    a = attn.double()
    pos = torch.arange(n, device=attn.device)
    delta = (pos[:, None] - pos[None, :]).double()  # (t, s) -> t - s
    causal = delta >= 0
    dist = (a * delta.clamp_min(0)).sum(-1)
    waad = (a * delta.clamp(0, waad_window)).sum(-1)
    resp = response_mask.bool()
    in_horizon = causal & (delta >= fai_horizon_lo) & (delta <= fai_horizon_hi) & resp[:, None]
    fai_num = (a * in_horizon).sum(-2)  # sum over rows t: column statistic
    return HeadStats(
        dist=dist.float(),
        waad=waad.float(),
        fai_num=fai_num.float(),
        fai_count=fai_count(resp, fai_horizon_lo, fai_horizon_hi),
        response_mask=resp,
        heads=list(heads),
    )


def attention_maps_for_sequence(
    attentions: tuple[torch.Tensor, ...] | list[torch.Tensor],
    layers: list[int],
    row: int,
    positions: torch.Tensor,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Cut one sequence's ``(K, N, N)`` maps out of a transformers ``output_attentions`` result.

    Args:
        attentions: per-layer ``(B, H, S, S)`` maps as returned by ``model(..., output_attentions=True)``.
        layers: the selected layer indices.
        row: the batch row holding the sequence.
        positions: ``(N,)`` long, the columns of that row the sequence occupies, in order (skips padding; for a
            packed row, the sequence's slice).

    Returns:
        ``(maps, heads)``: maps ``(K, N, N)`` with K = len(layers) * H, the rows and columns of the sequence's own
        positions as the model computed them (not renormalised: a wrong mask shows as rows that do not sum to 1), and
        the ``(layer, head)`` pairs.
    """
    maps, heads = [], []
    for layer in layers:
        a = attentions[layer][row]  # (H, S, S)
        a = a.index_select(1, positions).index_select(2, positions)
        maps.append(a)
        heads.extend((layer, h) for h in range(a.shape[0]))
    return torch.cat(maps), heads


def rhythm_dense(
    attn: torch.Tensor,
    response_mask: torch.Tensor,
    heads: list[tuple[int, int]],
    waad_window: int = DEFAULT.waad_window,
    fai_horizon_lo: int = DEFAULT.fai_horizon_lo,
    fai_horizon_hi: int = DEFAULT.fai_horizon_hi,
    head_quantile: float = DEFAULT.head_quantile,
) -> SequenceRhythm:
    """WAAD and FAI of one sequence from dense maps: :func:`head_stats_dense` then the shared grouping.

    As an independent check of the linearity argument, see :func:`rhythm_dense_group_maps`, which averages the
    maps of each group first and applies Eq. 9 / Eq. 10 to the averaged map.
    """
    stats = head_stats_dense(attn, response_mask, heads, waad_window, fai_horizon_lo, fai_horizon_hi)
    return rhythm_from_head_stats(stats, head_quantile)


def rhythm_dense_group_maps(
    attn: torch.Tensor,
    response_mask: torch.Tensor,
    local_heads: torch.Tensor,
    global_heads: torch.Tensor,
    waad_window: int = DEFAULT.waad_window,
    fai_horizon_lo: int = DEFAULT.fai_horizon_lo,
    fai_horizon_hi: int = DEFAULT.fai_horizon_hi,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9 and Eq. 10 written literally on the group-averaged maps A_loc and A_glob.

    Args:
        attn: ``(K, N, N)`` maps.
        response_mask: ``(N,)`` bool.
        local_heads: ``(G,)`` row indices of H_loc.
        global_heads: ``(G,)`` row indices of H_glob.

    Returns:
        ``(waad, fai)``, each ``(N,)`` fp32. FAI is 0 where T(s) is empty.
    """
    n = attn.shape[-1]
    a_loc = attn.double().index_select(0, local_heads).mean(0)
    a_glob = attn.double().index_select(0, global_heads).mean(0)
    resp = response_mask.bool().tolist()
    waad = torch.zeros(n, dtype=torch.float64)
    fai = torch.zeros(n, dtype=torch.float64)
    for t in range(n):
        waad[t] = sum(a_loc[t, s] * min(t - s, waad_window) for s in range(t + 1))
    for s in range(n):
        rows = [t for t in range(s + fai_horizon_lo, min(n - 1, s + fai_horizon_hi) + 1) if resp[t]]
        if rows:
            fai[s] = sum(a_glob[t, s] for t in rows) / len(rows)
    return waad.float(), fai.float()
