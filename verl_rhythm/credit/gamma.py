# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Per-token statistics → preplan/anchor sets → per-token γ (spec Sec. 4). Pure torch; no verl import.

Every function works on a batch in verl's response layout: ``(B, T)`` tensors where ``response_mask`` marks the
valid response tokens of each row. Rows are first *compacted* (valid tokens moved to the front, in order), so the
same response gets the same γ wherever padding or masked-out tokens put it; results are scattered back.

A multi-turn response (verl's agent loop: tool-output tokens inside the response with ``response_mask`` = 0) is cut
into *assistant segments*, the maximal runs of consecutive ``response_mask`` = 1 positions in the original layout.
Compaction closes the holes, so each compacted token carries its segment id (:func:`segment_ids`): ΔWAAD and the
coupled look-back window stay inside one segment, while TopQ shares and the WAAD median stay per response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from verl_rhythm.credit.settings import CreditSettings

_EPS_Q = 1e-9  # q * n computed in float64; 0.7 * 10 = 7.000000000000001 must still give k = 7


@dataclass
class Credit:
    """γ and the token sets it came from, all ``(B, T)`` in the input layout.

    Attributes:
        gamma: fp32, multiplies the advantage; 1 off the response mask and for responses with < 2 tokens.
        selected: bool, the tokens the strategy ranked into its top q (T_loc for ``local``, T_glob for ``global``
            and ``coupled``, the control's pick otherwise; all valid tokens for ``uniform``).
        preplan: bool, TopQ(ΔWAAD, q) when WAAD was given, else all False.
        anchor: bool, TopQ(FAI, q) when FAI was given, else all False.
        dominated: bool, the coupled rule's D (anchors whose bonus moves to a preplan token).
        intro: int64, how many dominated anchors name this token as their introductory token (I(D) counts).
        delta: fp32, ΔWAAD_t = |WAAD_t - WAAD_{t+1}| where t+1 is the next position of t's assistant segment (a
            maximal run of ``response_mask`` = 1); 0 for the last token of every segment (the token before a tool-output
            hole and the response's last token), off the mask, and without WAAD.
    """

    gamma: torch.Tensor
    selected: torch.Tensor
    preplan: torch.Tensor
    anchor: torch.Tensor
    dominated: torch.Tensor
    intro: torch.Tensor
    delta: torch.Tensor


@dataclass
class Tokens:
    """What a strategy's ``select`` sees: one batch on *compacted* rows (each row's valid tokens first, in order).

    Attributes:
        valid: ``(B, T)`` bool, a prefix of each row.
        n_valid: ``(B,)`` int64, valid tokens per row.
        waad: ``(B, T)`` fp32 compacted WAAD (0 beyond ``valid``), or ``None`` when not given (or, for a strategy
            that does not need it, not finite).
        fai: ``(B, T)`` fp32 compacted FAI, or ``None`` likewise.
        entropy: ``(B, T)`` fp32 compacted token entropy, or ``None`` likewise.
        delta: ``(B, T)`` fp32 ΔWAAD within a segment: 0 for the last token of each segment (the token before a
            tool-output hole, the response's last token) and beyond ``valid``; 0 without WAAD.
        preplan: ``(B, T)`` bool, TopQ(ΔWAAD, q) over the whole response (all False without WAAD).
        anchor: ``(B, T)`` bool, TopQ(FAI, q) over the whole response (all False without FAI).
        segment: ``(B, T)`` int64 assistant segment of each compacted token (0, 1, ... in order: a new segment starts
            after every run of ``response_mask`` = 0 inside the response, e.g. tool output); -1 beyond ``valid``.
            A single-turn response is one segment.
        settings: the run's :class:`~verl_rhythm.credit.settings.CreditSettings` (``top_q``, ``gamma_amp``, ``alpha``,
            ``intro_window``, ``bottom_score``).
        generator: the torch generator to draw random scores from (``None``: torch's default one).
    """

    valid: torch.Tensor
    n_valid: torch.Tensor
    waad: torch.Tensor | None
    fai: torch.Tensor | None
    entropy: torch.Tensor | None
    delta: torch.Tensor
    preplan: torch.Tensor
    anchor: torch.Tensor
    segment: torch.Tensor
    settings: CreditSettings
    generator: torch.Generator | None = None

    @property
    def position(self) -> torch.Tensor:
        """``(1, T)`` int64 position of each compacted token in its response (0 = first response token)."""
        return torch.arange(self.valid.shape[-1], device=self.valid.device)[None, :]

    def none(self) -> torch.Tensor:
        """``(B, T)`` bool, all False."""
        return torch.zeros_like(self.valid)

    def top(self, score: torch.Tensor) -> torch.Tensor:
        """TopQ(score, q) on the valid tokens: ``(B, T)`` bool."""
        return top_q_mask(score, self.valid, self.settings.top_q)

    def rand(self) -> torch.Tensor:
        """``(B, T)`` fp32 uniform scores from :attr:`generator` (drawn on the CPU, so any device draws the same)."""
        return torch.rand(self.valid.shape, generator=self.generator).to(self.valid.device)


@dataclass
class Selection:
    """What a strategy that shapes γ itself returns (compacted rows, ``(B, T)`` each).

    Attributes:
        selected: bool, the tokens it ranked into its top q.
        gamma: fp32 γ, or ``None`` for 1 + (γ_amp - 1) on ``selected``.
        dominated: bool, or ``None`` (no dominated anchors).
        intro: int64 introductory-token counts, or ``None``.
    """

    selected: torch.Tensor
    gamma: torch.Tensor | None = None
    dominated: torch.Tensor | None = None
    intro: torch.Tensor | None = None


def compute_gamma(
    strategy: str,
    response_mask: torch.Tensor,
    waad: torch.Tensor | None = None,
    fai: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    **knobs: Any,
) -> Credit:
    """γ for a batch of responses under one registered strategy (:mod:`verl_rhythm.credit.registry`).

    Args:
        strategy: a registered name: ``coupled``, ``local``, ``global``, ``none``, ``random``, ``entropy``,
            ``bottom``, ``uniform`` or one registered with :func:`~verl_rhythm.credit.registry.register_strategy`.
        response_mask: ``(B, T)`` bool/int, valid response tokens.
        waad: ``(B, T)`` WAAD of each response token (needed by ``local``, ``coupled``, ``bottom``+``local``).
        fai: ``(B, T)`` FAI of each response token (needed by ``global``, ``coupled``, ``bottom``+``global``).
        entropy: ``(B, T)`` token entropy (needed by ``entropy``).
        generator: the torch generator random scores are drawn from (``random``; reproducible from its seed).
        **knobs: other :class:`~verl_rhythm.credit.settings.CreditSettings` keys (``top_q``: TopQ selects
            k = ceil(q * n_valid) tokens per response, ties to the earlier position; ``gamma_amp``, ``alpha``,
            ``intro_window``, ``bottom_score``), their defaults where absent.

    Returns:
        a :class:`Credit`.

    Raises:
        ValueError: an unknown strategy, a missing or misshapen statistic (named), or NaN/inf on valid tokens of a
            statistic the strategy ranks by. A statistic it does not rank by (WAAD under ``global``, say) only fills
            the ``preplan``/``anchor``/``delta`` roles, and is dropped (roles all False/0) when it is not finite.
    """
    return gamma_for(CreditSettings(strategy=strategy, **knobs), response_mask, waad, fai, entropy, generator=generator)


def gamma_for(
    settings: CreditSettings,
    response_mask: torch.Tensor,
    waad: torch.Tensor | None = None,
    fai: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> Credit:
    """:func:`compute_gamma` under validated settings (``settings.strategy``, its knobs; ``seed`` is not read: the
    caller seeds ``generator``)."""
    strategy = settings.strategy
    spec = settings.strategy_spec
    needs = spec.needs_for(settings)
    mask = _check_mask(response_mask)
    b, t = mask.shape
    n_valid = mask.sum(-1)
    order = torch.sort((~mask).to(torch.uint8), dim=-1, stable=True).indices  # valid tokens first, in order
    cmask = torch.arange(t, device=mask.device)[None, :] < n_valid[:, None]
    segment = torch.where(cmask, segment_ids(mask).gather(1, order), torch.full_like(order, -1))

    def compact(x: torch.Tensor | None, name: str) -> torch.Tensor | None:
        """Compacted, 0 beyond the valid tokens; a needed statistic must be there and finite, another is dropped
        (``None``) when it is not finite."""
        if x is None:
            if name in needs:
                raise ValueError(
                    f"algorithm.rhythm.strategy={strategy!r} needs the per-token '{name}' tensor and got None"
                )
            return None
        if x.shape != mask.shape:
            raise ValueError(f"'{name}' must have the response_mask shape {tuple(mask.shape)}, got {tuple(x.shape)}")
        xc = x.float().gather(1, order)
        if not bool(torch.isfinite(xc[cmask]).all()):
            if name in needs:
                raise ValueError(f"'{name}' has NaN or inf on valid response tokens")
            return None
        return torch.where(cmask, xc, torch.zeros_like(xc))

    stats = {name: compact(x, name) for name, x in (("waad", waad), ("fai", fai), ("entropy", entropy))}
    zeros_b = torch.zeros(b, t, dtype=torch.bool, device=mask.device)
    preplan, anchor = zeros_b, zeros_b
    delta = torch.zeros(b, t, dtype=torch.float32, device=mask.device)
    if stats["waad"] is not None:
        delta = waad_delta(stats["waad"], n_valid, segment)
        preplan = top_q_mask(delta, cmask, settings.top_q)
    if stats["fai"] is not None:
        anchor = top_q_mask(stats["fai"], cmask, settings.top_q)
    tokens = Tokens(
        valid=cmask,
        n_valid=n_valid,
        waad=stats["waad"],
        fai=stats["fai"],
        entropy=stats["entropy"],
        delta=delta,
        preplan=preplan,
        anchor=anchor,
        segment=segment,
        settings=settings,
        generator=generator,
    )

    picked = spec.select(tokens)
    if not isinstance(picked, Selection):
        picked = Selection(selected=picked)
    selected = picked.selected.to(device=mask.device, dtype=torch.bool) & cmask
    if picked.gamma is None:
        gamma_c = 1.0 + (settings.gamma_amp - 1.0) * selected.float()
    else:
        gamma_c = picked.gamma.float()
    dominated = zeros_b if picked.dominated is None else picked.dominated.bool()
    intro = torch.zeros(b, t, dtype=torch.long, device=mask.device) if picked.intro is None else picked.intro.long()
    rankable = (n_valid >= 2)[:, None] & cmask
    gamma_c = torch.where(rankable, gamma_c, torch.ones_like(gamma_c))

    def scatter(xc: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full_like(xc, fill)
        return out.scatter(1, order, torch.where(cmask, xc, torch.full_like(xc, fill)))

    return Credit(
        gamma=scatter(gamma_c.float(), 1.0),
        selected=scatter(selected & rankable, False),
        preplan=scatter(preplan & rankable, False),
        anchor=scatter(anchor & rankable, False),
        dominated=scatter(dominated & rankable, False),
        intro=scatter(torch.where(rankable, intro, torch.zeros_like(intro)), 0),
        delta=scatter(delta, 0.0),
    )


def apply_gamma(advantages: torch.Tensor, gamma: torch.Tensor, sign: str = "both") -> torch.Tensor:
    """Ã = A · γ on the tokens whose advantage sign the mode selects; A unchanged elsewhere.

    Args:
        advantages: ``(B, T)`` advantages (e.g. GRPO's, broadcast over the response).
        gamma: ``(B, T)`` from :func:`compute_gamma`.
        sign: ``both`` (v2 default), ``positive`` (A > 0, v1 scaled only non-negative advantages; A = 0 is
            unchanged by any γ) or ``negative`` (A < 0).

    Returns:
        ``(B, T)`` scaled advantages, same dtype as ``advantages``.
    """
    if sign == "both":
        scale = gamma
    elif sign == "positive":
        scale = torch.where(advantages > 0, gamma, torch.ones_like(gamma))
    elif sign == "negative":
        scale = torch.where(advantages < 0, gamma, torch.ones_like(gamma))
    else:
        raise ValueError(f"algorithm.rhythm.sign={sign!r}: allowed values are both, positive, negative")
    return advantages * scale.to(advantages.dtype)


def top_q_mask(score: torch.Tensor, valid: torch.Tensor, q: float) -> torch.Tensor:
    """TopQ: per row, the k = ceil(q * n_valid) valid tokens with the largest score; ties to the earlier position.

    Args:
        score: ``(B, T)`` float.
        valid: ``(B, T)`` bool.
        q: share in (0, 1].

    Returns:
        ``(B, T)`` bool.
    """
    n = valid.sum(-1, keepdim=True)
    k = torch.ceil(q * n.double() - _EPS_Q).long()
    s = torch.where(valid, score.float(), torch.full_like(score, float("-inf"), dtype=torch.float32))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(s.shape[-1], device=s.device).expand_as(order))
    return (rank < k) & valid


def segment_ids(response_mask: torch.Tensor) -> torch.Tensor:
    """The assistant segment of every position: segments are the maximal runs of consecutive valid positions.

    In verl's multi-turn agent loop (``verl/experimental/agent_loop/agent_loop.py``, ``AgentLoopOutput.response_mask``:
    1 for LLM-generated tokens, 0 for tool-response tokens) each run of 1s between tool outputs is one assistant turn.

    Args:
        response_mask: ``(B, T)`` bool, in the original (uncompacted) layout.

    Returns:
        ``(B, T)`` int64: 0 for the first segment of a row, 1 for the next, ...; -1 where the mask is not set.
    """
    mask = response_mask.bool()
    before = torch.zeros_like(mask)
    before[:, 1:] = mask[:, :-1]
    starts = (mask & ~before).long().cumsum(-1) - 1
    return torch.where(mask, starts, torch.full_like(starts, -1))


def waad_delta(waad: torch.Tensor, n_valid: torch.Tensor, segment: torch.Tensor | None = None) -> torch.Tensor:
    """ΔWAAD_t = |WAAD_t - WAAD_{t+1}| on compacted rows, never across a segment boundary.

    Δ is 0 for each row's last valid token and beyond, and for the last token of every segment: the token before a
    tool-output hole is treated like a response's last token (its successor in the compacted row lies after the hole).

    Args:
        waad: ``(B, T)`` compacted WAAD (valid tokens first).
        n_valid: ``(B,)`` valid counts.
        segment: ``(B, T)`` int64 segment id of each compacted token (:func:`segment_ids` gathered into the compacted
            order), or ``None``: each row's valid tokens are one segment.

    Returns:
        ``(B, T)`` ΔWAAD, the dtype of ``waad``.
    """
    d = torch.zeros_like(waad)
    d[:, :-1] = (waad[:, 1:] - waad[:, :-1]).abs()
    keep = torch.arange(waad.shape[-1], device=waad.device)[None, :] < (n_valid[:, None] - 1)
    if segment is not None:
        same = torch.zeros_like(keep)
        same[:, :-1] = segment[:, 1:] == segment[:, :-1]
        keep = keep & same
    return torch.where(keep, d, torch.zeros_like(d))


def coupled_sets(
    waad: torch.Tensor,
    delta: torch.Tensor,
    preplan: torch.Tensor,
    anchor: torch.Tensor,
    valid: torch.Tensor,
    k: int,
    segment: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The coupled rule's dominated anchors D and introductory-token counts I(D), on compacted rows.

    An anchor t is locally dominated when WAAD_t <= τ_waad (the response's lower median WAAD) and
    max_{u in [t-k, t-1]} Δ_u >= τ_Δ (the smallest Δ that TopQ(Δ, q) selected). Its introductory token is
    argmax_{u in [t-k, t-1]} Δ_u, ties to the earliest. The window is clipped at the start of t's segment (the
    response start, or the first token after a tool-output hole), so it never reaches into an earlier assistant
    turn; an anchor at the first token of a segment (empty window) is never dominated. τ_waad and τ_Δ are per
    response, over all its valid tokens.

    Args:
        waad: ``(B, T)`` compacted WAAD.
        delta: ``(B, T)`` compacted ΔWAAD.
        preplan: ``(B, T)`` bool, TopQ(Δ, q).
        anchor: ``(B, T)`` bool, TopQ(FAI, q).
        valid: ``(B, T)`` bool, compacted validity (a prefix of each row).
        k: look-back window.
        segment: ``(B, T)`` int64 segment id of each compacted token (-1 beyond ``valid``), or ``None``: each row's
            valid tokens are one segment.

    Returns:
        ``(dominated, intro)``: bool ``(B, T)`` and int64 ``(B, T)`` counts.
    """
    b, t = waad.shape
    n = valid.sum(-1)
    inf = torch.tensor(float("inf"), device=waad.device)
    med_idx = ((n - 1).clamp_min(0) // 2)[:, None]
    tau_waad = torch.sort(torch.where(valid, waad, inf), dim=-1).values.gather(1, med_idx)  # lower median
    tau_delta = torch.where(preplan, delta, inf).min(-1, keepdim=True).values
    if segment is None:
        segment = torch.where(valid, 0, -1)
    # windows[:, t, j] = Δ_{t-k+j}, j = 0..k-1 (earliest first); -inf outside t's segment (before the response start
    # or before a tool-output hole)
    padded = torch.cat([torch.full((b, k), float("-inf"), device=waad.device), delta.float()], dim=-1)
    seg_padded = torch.cat([torch.full((b, k), -2, dtype=segment.dtype, device=waad.device), segment], dim=-1)
    in_segment = seg_padded.unfold(1, k, 1)[:, :t, :] == segment[:, :, None]
    windows = padded.unfold(1, k, 1)[:, :t, :].masked_fill(~in_segment, float("-inf"))
    win_max = windows.max(-1).values
    win_arg = windows.argmax(-1)  # torch.argmax returns the first maximal index: ties to the earliest
    has_window = in_segment.any(-1)
    dominated = anchor & valid & has_window & (waad <= tau_waad) & (win_max >= tau_delta)
    intro_pos = torch.arange(t, device=waad.device)[None, :] - k + win_arg
    intro = torch.zeros(b, t, dtype=torch.long, device=waad.device)
    intro.scatter_add_(1, intro_pos.clamp_min(0), dominated.long())
    return dominated, intro


def _check_mask(response_mask: torch.Tensor) -> torch.Tensor:
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be (B, T), got shape {tuple(response_mask.shape)}")
    return response_mask.bool()
