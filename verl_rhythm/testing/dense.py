# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Dense reference: rhythm statistics straight from full attention maps, written from the spec alone.

``docs/method.md`` Sec. 1-3 and its project decisions, applied to materialised maps (eager attention with
``output_attentions=True``, or maps computed from q/k in float64). This is the ground truth the capture is tested
against (like FlashAttention's ``attention_ref``), and it shares no code with the product: it imports torch and the
standard library only, never ``verl_rhythm`` (a test parses this file and fails on any such import). Layer choice,
head spans, head groups, |T(s)|, WAAD and FAI are each written again here from their definitions, for clarity, not
speed: O(K N^2) memory, float64 arithmetic. Never call it in training.

Conventions (spec Sec. 1): positions 0..N-1 run over the whole sequence (prompt + response); row t is a query, column
s a key; a statistic "of token t" sits at t's own position (no log-prob shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

WAAD_WINDOW = 10
"""W of Eq. 9 (spec Sec. 3)."""
FAI_HORIZON_LO = 10
"""H_lo of Eq. 10 (spec Sec. 3)."""
FAI_HORIZON_HI = 100
"""H_hi of Eq. 10 (spec Sec. 3, paper v2)."""
HEAD_QUANTILE = 0.3
"""Share of the selected heads in each group (spec Sec. 2)."""
SOFTMAX_TYPES = ("full_attention", "sliding_attention")
"""``config.layer_types`` entries of softmax-attention layers (the only ones whose maps the method reads)."""


# --------------------------------------------------------------------------------------------------- containers
@dataclass
class DenseHeadStats:
    """Per-head statistics of one sequence, from its maps.

    Attributes:
        dist: ``(K, N)`` fp32, sum_s A[t, s] (t - s) of each query row t (full row, unclipped).
        waad: ``(K, N)`` fp32, sum_s A[t, s] min(t - s, W) of each query row t.
        fai_num: ``(K, N)`` fp32, sum over t in T(s) of A[t, s], for each key column s.
        fai_count: ``(N,)`` fp32, |T(s)|.
        response_mask: ``(N,)`` bool, R.
        heads: the K ``(layer, head)`` pairs.
    """

    dist: torch.Tensor
    waad: torch.Tensor
    fai_num: torch.Tensor
    fai_count: torch.Tensor
    response_mask: torch.Tensor
    heads: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class DenseRhythm:
    """Per-token rhythm of one sequence, from its maps.

    Attributes:
        waad: ``(N,)`` fp32, Eq. 9 on the local group's mean map A_loc.
        fai: ``(N,)`` fp32, Eq. 10 on the global group's mean map A_glob; 0 where T(s) is empty.
        span: ``(K,)`` fp32 head spans d (0 without a response row).
        local_heads: ``(G,)`` long row indices of H_loc, in ascending (span, layer, head) order.
        global_heads: ``(G,)`` long row indices of H_glob, same order.
        heads: the K ``(layer, head)`` pairs.
    """

    waad: torch.Tensor
    fai: torch.Tensor
    span: torch.Tensor
    local_heads: torch.Tensor
    global_heads: torch.Tensor
    heads: list[tuple[int, int]]


# ------------------------------------------------------------------------------------------------- definitions
def select_layers(num_layers: int, layers=None, layer_types: list[str] | None = None) -> list[int]:
    """Spec Sec. 1: ``round(linspace(L // 3, 2 L // 3, 5))``, de-duplicated, over the softmax-attention layers.

    Args:
        num_layers: L.
        layers: explicit indices, or ``None`` for the default choice.
        layer_types: the model's ``config.layer_types`` (a hybrid model counts only its softmax layers), or ``None``.

    Returns:
        sorted layer indices.
    """
    if layers is not None:
        return sorted({int(x) for x in layers})
    softmax = list(range(num_layers))
    if layer_types is not None:
        softmax = [i for i in range(num_layers) if layer_types[i] in SOFTMAX_TYPES]
    m = len(softmax)
    picks = torch.linspace(m // 3, 2 * m // 3, 5, dtype=torch.float64).round()  # torch.round: half to even (numpy)
    return sorted({softmax[int(x)] for x in picks.tolist()})


def model_layers(model_config: Any, layers=None) -> list[int]:
    """:func:`select_layers` for a transformers config (its ``text_config`` for a multimodal model)."""
    cfg = getattr(model_config, "text_config", None) or model_config
    if getattr(cfg, "num_hidden_layers", None) is None:
        cfg = model_config
    types = getattr(cfg, "layer_types", None)
    return select_layers(int(cfg.num_hidden_layers), layers, None if types is None else list(types))


def group_size(num_heads: int, quantile: float) -> int:
    """Spec Sec. 2: ``max(1, floor(quantile · K))``, in exact rational arithmetic on the decimal ``quantile``."""
    return max(1, math.floor(Fraction(repr(float(quantile))) * num_heads))


def fai_rows(response_mask: torch.Tensor, horizon_lo: int, horizon_hi: int) -> torch.Tensor:
    """The membership matrix of T(s): ``(N, N)`` bool, ``[t, s]`` true iff t in R and s + H_lo <= t <= s + H_hi.

    (The spec's upper bound min(N, s + H_hi) only says that t is a position of the sequence: t <= N - 1 always.)
    """
    n = response_mask.numel()
    t = torch.arange(n, device=response_mask.device)[:, None]
    s = torch.arange(n, device=response_mask.device)[None, :]
    return response_mask.bool()[:, None] & (s + horizon_lo <= t) & (t <= (s + horizon_hi).clamp(max=n - 1))


def fai_count(response_mask: torch.Tensor, horizon_lo: int, horizon_hi: int) -> torch.Tensor:
    """|T(s)| for every key position s: ``(N,)`` fp32."""
    return fai_rows(response_mask.bool(), horizon_lo, horizon_hi).sum(0).float()


def _offsets(n: int, device=None) -> torch.Tensor:
    """``(N, N)`` float64 ``t - s`` with the future (s > t) set to 0."""
    pos = torch.arange(n, dtype=torch.float64, device=device)
    return (pos[:, None] - pos[None, :]).clamp_min(0)


def _check(attn: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if attn.dim() != 3 or attn.shape[1] != attn.shape[2]:
        raise ValueError(f"attn must be (K, N, N), got {tuple(attn.shape)}")
    n = attn.shape[-1]
    if response_mask.shape != (n,):
        raise ValueError(f"response_mask must be ({n},) to match attn, got {tuple(response_mask.shape)}")
    return attn.detach().double(), response_mask.detach().to(attn.device).bool()


def head_spans(attn: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Spec Sec. 2: d = mean over t in R of sum_s A[t, s] (t - s), full row; ``(K,)`` float64, 0 without R."""
    a, resp = _check(attn, response_mask)
    dist = (a * _offsets(a.shape[-1], a.device)).sum(-1)  # (K, N)
    rows = int(resp.sum())
    if rows == 0:
        return torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
    return dist[:, resp].sum(-1) / rows


def group_heads(span: torch.Tensor, heads: list[tuple[int, int]], quantile: float) -> tuple[list[int], list[int]]:
    """Spec Sec. 2: sort by (span, layer, head); the first G are local, the last G global (G = :func:`group_size`).

    Returns:
        ``(local, global)`` lists of row indices, each in ascending sort order.
    """
    if span.numel() != len(heads):
        raise ValueError(f"span has {span.numel()} heads but heads lists {len(heads)}")
    order = sorted(range(len(heads)), key=lambda i: (float(span[i]), heads[i][0], heads[i][1]))
    g = group_size(len(heads), quantile)
    return order[:g], order[len(order) - g :]


def waad_of_map(a: torch.Tensor, window: int) -> torch.Tensor:
    """Eq. 9 on one map ``(N, N)``: WAAD_t = sum_{s <= t} A[t, s] min(t - s, W); ``(N,)`` float64."""
    a = a.detach().double()
    return (a * _offsets(a.shape[-1], a.device).clamp_max(window)).sum(-1)


def fai_of_map(a: torch.Tensor, response_mask: torch.Tensor, horizon_lo: int, horizon_hi: int) -> torch.Tensor:
    """Eq. 10 on one map ``(N, N)``: FAI_s = mean over t in T(s) of A[t, s], 0 where T(s) is empty; ``(N,)`` f64."""
    a = a.detach().double()
    member = fai_rows(response_mask.detach().to(a.device).bool(), horizon_lo, horizon_hi)
    count = member.sum(0)
    total = (a * member).sum(0)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


# ------------------------------------------------------------------------------------------------ entry points
def head_stats_dense(
    attn: torch.Tensor,
    response_mask: torch.Tensor,
    heads: list[tuple[int, int]],
    waad_window: int = WAAD_WINDOW,
    fai_horizon_lo: int = FAI_HORIZON_LO,
    fai_horizon_hi: int = FAI_HORIZON_HI,
) -> DenseHeadStats:
    """Per-head statistics of one sequence from its maps (what the capture records per head, by definition).

    Args:
        attn: ``(K, N, N)`` attention probabilities A[t, s] of the K heads over this sequence's own N positions.
        response_mask: ``(N,)`` bool, the response positions R.
        heads: the K ``(layer, head)`` pairs.
        waad_window, fai_horizon_lo, fai_horizon_hi: W, H_lo, H_hi.

    Returns:
        :class:`DenseHeadStats` (fp32 tensors on the maps' device).
    """
    a, resp = _check(attn, response_mask)
    if len(heads) != a.shape[0]:
        raise ValueError(f"attn has {a.shape[0]} heads but heads lists {len(heads)}")
    member = fai_rows(resp, fai_horizon_lo, fai_horizon_hi).double()
    offsets = _offsets(a.shape[-1], a.device)
    return DenseHeadStats(
        dist=(a * offsets).sum(-1).float(),
        waad=(a * offsets.clamp_max(waad_window)).sum(-1).float(),
        fai_num=(a * member).sum(-2).float(),
        fai_count=member.sum(0).float(),
        response_mask=resp,
        heads=list(heads),
    )


def rhythm_dense(
    attn: torch.Tensor,
    response_mask: torch.Tensor,
    heads: list[tuple[int, int]],
    waad_window: int = WAAD_WINDOW,
    fai_horizon_lo: int = FAI_HORIZON_LO,
    fai_horizon_hi: int = FAI_HORIZON_HI,
    head_quantile: float = HEAD_QUANTILE,
    span: torch.Tensor | None = None,
) -> DenseRhythm:
    """WAAD and FAI of one sequence: spans, groups, then Eq. 9 / Eq. 10 on the group-averaged maps.

    Args:
        attn: ``(K, N, N)`` maps; response_mask: ``(N,)`` bool; heads: the K ``(layer, head)`` pairs.
        waad_window, fai_horizon_lo, fai_horizon_hi, head_quantile: W, H_lo, H_hi, the group share.
        span: ``(K,)`` spans to group by (``head_group_scope=micro_batch``); default this sequence's own.

    Returns:
        a :class:`DenseRhythm`.
    """
    own = head_spans(attn, response_mask)
    local, glob = group_heads(own if span is None else span, heads, head_quantile)
    local_t, glob_t = (torch.tensor(x, dtype=torch.long, device=attn.device) for x in (local, glob))
    bands = (waad_window, fai_horizon_lo, fai_horizon_hi)
    waad, fai = rhythm_dense_group_maps(attn, response_mask, local_t, glob_t, *bands)
    return DenseRhythm(waad, fai, own.float(), local_t, glob_t, list(heads))


def rhythm_dense_group_maps(
    attn: torch.Tensor,
    response_mask: torch.Tensor,
    local_heads: torch.Tensor,
    global_heads: torch.Tensor,
    waad_window: int = WAAD_WINDOW,
    fai_horizon_lo: int = FAI_HORIZON_LO,
    fai_horizon_hi: int = FAI_HORIZON_HI,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9 and Eq. 10 on A_loc and A_glob, the mean maps of the two groups.

    Args:
        attn: ``(K, N, N)`` maps; response_mask: ``(N,)`` bool.
        local_heads, global_heads: ``(G,)`` row indices of H_loc and H_glob.

    Returns:
        ``(waad, fai)``, each ``(N,)`` fp32.
    """
    a, resp = _check(attn, response_mask)
    a_loc = a.index_select(0, local_heads.to(a.device).long()).mean(0)
    a_glob = a.index_select(0, global_heads.to(a.device).long()).mean(0)
    return waad_of_map(a_loc, waad_window).float(), fai_of_map(a_glob, resp, fai_horizon_lo, fai_horizon_hi).float()


def rhythm_for_sequences(
    maps: list[torch.Tensor],
    response_masks: list[torch.Tensor],
    heads: list[tuple[int, int]],
    settings: Any,
) -> list[DenseRhythm]:
    """:func:`rhythm_dense` for several sequences under one set of settings, honouring the grouping scope.

    Args:
        maps: per sequence ``(K, N_i, N_i)`` maps; response_masks: per sequence ``(N_i,)`` bool.
        heads: the K ``(layer, head)`` pairs (the same for every sequence).
        settings: any object with ``waad_window``, ``fai_horizon_lo``, ``fai_horizon_hi``, ``head_quantile`` and
            ``head_group_scope`` attributes (``sequence``: groups per sequence; ``micro_batch``: one grouping from the
            spans averaged over the sequences that have a response row).
    """
    bands = (settings.waad_window, settings.fai_horizon_lo, settings.fai_horizon_hi, settings.head_quantile)
    scope = getattr(settings, "head_group_scope", "sequence")
    shared = None
    if scope == "micro_batch":
        spans = [head_spans(m, r) for m, r in zip(maps, response_masks, strict=True) if bool(r.any())]
        shared = torch.stack(spans).mean(0) if spans else None
    elif scope != "sequence":
        raise ValueError(f"head_group_scope={scope!r}: the spec's scopes are sequence and micro_batch")
    return [rhythm_dense(m, r, heads, *bands, span=shared) for m, r in zip(maps, response_masks, strict=True)]


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
