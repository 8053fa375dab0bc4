# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``summary.json``: every number of the report, as plain JSON.

Floats are written with Python's shortest round-trip repr of the fp32 values, so reading a vector back into an
fp32 tensor gives the exact tensor the report was computed from (the end-to-end test relies on it).
"""

from __future__ import annotations

import torch

from verl_rhythm.analyze.coupling import (
    PEAK_DEFINITION,
    SequenceCoupling,
    as_dict,
    pooled_coupling,
    sequence_coupling,
)
from verl_rhythm.analyze.measure import Measured
from verl_rhythm.analyze.prompts import Problem
from verl_rhythm.analyze.roles import ResponseCredit
from verl_rhythm.config import RhythmConfig

SCHEMA_VERSION = 1


def head_label(layer: int, head: int) -> str:
    """``L12H3``-style name of a (layer, head) pair."""
    return f"L{layer}H{head}"


def response_signals(m: Measured, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """WAAD and FAI of the n response tokens (positions P .. P + n - 1 of the sequence): each ``(n,)`` fp32."""
    p = m.prompt_len
    return m.rhythm.waad[p : p + n].float(), m.rhythm.fai[p : p + n].float()


def sequence_entry(
    index: int,
    problem: Problem,
    prompt_ids: list[int],
    response_ids: list[int],
    pieces: list[str],
    response_text: str,
    m: Measured,
    credit: ResponseCredit,
    cfg: RhythmConfig,
    radius: int,
    top_q: float,
) -> dict:
    """The ``summary["sequences"][i]`` entry of one prompt + response."""
    n = len(response_ids)
    waad, fai = response_signals(m, n)
    coupling = sequence_coupling(waad, fai, m.entropy, cfg.intro_window, radius, top_q)
    heads = m.rhythm.heads
    return {
        "index": index,
        "id": problem.id,
        "prompt": problem.text,
        "answer": problem.answer,
        "response": response_text,
        "prompt_tokens": m.prompt_len,
        "prompt_token_ids": list(prompt_ids),
        "response_tokens": n,
        "token_ids": list(response_ids),
        "tokens": pieces,
        "waad": _floats(waad),
        "fai": _floats(fai),
        "delta": _floats(credit.delta),
        "entropy": _floats(m.entropy),
        "gamma": {name: _floats(g) for name, g in credit.gamma.items()},
        "selected": credit.selected.tolist(),
        "preplan": credit.preplan.tolist(),
        "anchor": credit.anchor.tolist(),
        "dominated": credit.dominated.tolist(),
        "intro": credit.intro.tolist(),
        "head_span": _floats(m.rhythm.span),
        "local_heads": [head_label(*heads[i]) for i in m.rhythm.local_heads.tolist()],
        "global_heads": [head_label(*heads[i]) for i in m.rhythm.global_heads.tolist()],
        "counts": _counts(waad, fai, m.entropy, credit),
        "coupling": as_dict(coupling),
    }


def heads_entry(measured: list[Measured]) -> dict:
    """``summary["heads"]``: span of every selected head in every response and the group memberships.

    Returns:
        ``labels`` (K), ``span`` (responses × K), ``local`` / ``global`` (responses × K bools), ``mean_span`` (K).
    """
    heads = measured[0].rhythm.heads
    k = len(heads)
    span = torch.stack([m.rhythm.span for m in measured])
    loc = torch.zeros(len(measured), k, dtype=torch.bool)
    glob = torch.zeros(len(measured), k, dtype=torch.bool)
    for i, m in enumerate(measured):
        loc[i, m.rhythm.local_heads] = True
        glob[i, m.rhythm.global_heads] = True
    return {
        "labels": [head_label(*h) for h in heads],
        "span": [_floats(row) for row in span],
        "local": loc.tolist(),
        "global": glob.tolist(),
        "mean_span": _floats(span.mean(0)),
    }


def totals_entry(sequences: list[dict]) -> dict:
    """Pooled counts and token-weighted means over all responses (the summary table's last row)."""
    n = sum(s["response_tokens"] for s in sequences)
    keys = ("preplan", "anchor", "dominated", "intro_tokens")
    out = {"responses": len(sequences), "response_tokens": n}
    out.update({k: sum(s["counts"][k] for s in sequences) for k in keys})
    names = list(sequences[0]["gamma"]) if sequences else []
    out["gamma_mean"] = {g: sum(sum(s["gamma"][g]) for s in sequences) / n for g in names}
    out["amplified_share"] = {g: sum(sum(x > 1.0 for x in s["gamma"][g]) for s in sequences) / n for g in names}
    for key in ("waad", "fai", "entropy"):
        out[f"{key}_mean"] = sum(sum(s[key]) for s in sequences) / n
    return out


def coupling_entry(sequences: list[dict], cfg: RhythmConfig, radius: int, top_q: float) -> dict:
    """``summary["coupling"]``: the pooled Table-2 statistics plus the peak definition text."""
    parts = [SequenceCoupling(**s["coupling"]) for s in sequences]
    out = pooled_coupling(parts, cfg.intro_window, radius, top_q)
    out["definition"] = PEAK_DEFINITION.format(radius=radius, top_q=top_q, window=cfg.intro_window)
    out["paper"] = {"entropy_gain_pct": 52.0, "fai_follows_waad": 0.525, "fai_follows_waad_random": 0.369}
    return out


def _counts(waad: torch.Tensor, fai: torch.Tensor, entropy: torch.Tensor, credit: ResponseCredit) -> dict:
    n = max(waad.numel(), 1)
    return {
        "preplan": int(credit.preplan.sum()),
        "anchor": int(credit.anchor.sum()),
        "dominated": int(credit.dominated.sum()),
        "intro_tokens": int((credit.intro > 0).sum()),
        "gamma_mean": {name: float(g.double().sum()) / n for name, g in credit.gamma.items()},
        "amplified_share": {name: int((g > 1.0).sum()) / n for name, g in credit.gamma.items()},
        "waad_mean": float(waad.double().sum()) / n,
        "fai_mean": float(fai.double().sum()) / n,
        "entropy_mean": float(entropy.double().sum()) / n,
    }


def _floats(x: torch.Tensor) -> list[float]:
    return [float(v) for v in x.float().tolist()]
