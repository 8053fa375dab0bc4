# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``report.html``: one self-contained page (inline CSS, PNGs as data URIs) built from the summary dict alone.

Every number on the page is read from the summary dict, i.e. from ``summary.json``; the page only rounds them.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

ROLE_COLORS = {"preplan": "#ffd43b", "intro": "#ff922b", "anchor": "#74c0fc", "dominated": "#b197fc"}
"""Background colour of each token role (the screenshot test looks for these pixels)."""

ROLE_TEXT = {
    "preplan": "preplan token: top-q ΔWAAD, where the local attention pattern breaks (a new chunk is planned)",
    "intro": "introductory token: the preplan token a dominated anchor hands part of its bonus to",
    "anchor": "anchor token: top-q FAI, attended to by many later tokens",
    "dominated": "dominated anchor: an anchor with low WAAD right after a large ΔWAAD (the coupled rule's D)",
}

_ROLE_CSS = "".join(
    f".{c} {{ background: {ROLE_COLORS[r]}; }} "
    for c, r in (("p", "preplan"), ("i", "intro"), ("a", "anchor"), ("d", "dominated"))
)

CSS = (
    """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #212529; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; } h3 { font-size: 15px; margin-bottom: 4px; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #dee2e6; padding: 3px 7px; text-align: right; }
th { background: #f1f3f5; } td.l, th.l { text-align: left; }
.resp { font-family: ui-monospace, monospace; font-size: 13px; line-height: 1.9; white-space: pre-wrap;
        border: 1px solid #dee2e6; padding: 8px; border-radius: 4px; }
.prompt { color: #868e96; font-size: 12px; white-space: pre-wrap; }
.t { border-radius: 2px; } .t:hover { outline: 2px solid #212529; }
.p.i, .p.a, .p.d { box-shadow: inset 0 -4px 0 #f08c00; }
.g { font-weight: bold; }
.chip { display: inline-block; padding: 1px 8px; margin-right: 8px; border-radius: 3px; font-size: 12px; }
.note { font-size: 12px; color: #495057; max-width: 1000px; }
img { max-width: 100%; border: 1px solid #e9ecef; }
"""
    + _ROLE_CSS
)
"""Inline stylesheet; the role rules come last, in the order preplan < intro < anchor < dominated (later wins)."""


def render(summary: dict, image_dir: Path) -> str:
    """The report page.

    Args:
        summary: the dict written as ``summary.json``.
        image_dir: folder holding the PNGs named in ``summary["artefacts"]`` (embedded as data URIs).
    """
    cfg, model = summary["config"], summary["model"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>verl-rhythm attention report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Attention rhythm report</h1>",
        f"<p class='note'>Model <b>{_e(model['name'])}</b>: {model['num_layers']} layers, {model['num_heads']} "
        f"heads ({model['num_kv_heads']} KV), {_e(model['attn_implementation'])}, {_e(model['dtype'])} on "
        f"{_e(model['device'])}, torch threads: {model['threads']}. Captured layers {summary['layers']}. "
        f"Strategy <b>{_e(cfg['strategy'])}</b>, "
        f"q = {cfg['top_q']}, γ<sub>amp</sub> = {cfg['gamma_amp']}, α = {cfg['alpha']}, k = {cfg['intro_window']}, "
        f"W = {cfg['waad_window']}, H<sub>lo</sub> = {cfg['fai_horizon_lo']}, H<sub>hi</sub> = "
        f"{cfg['fai_horizon_hi']}, head share {cfg['head_quantile']} ({_e(cfg['head_group_scope'])} scope). "
        f"{_timings(summary['timings'])}</p>",
        _legend(),
        "<h2>Summary</h2>",
        _summary_table(summary),
        "<h2>Coupling statistics (paper Table 2 style)</h2>",
        _coupling_table(summary["coupling"]),
        "<h2>Responses</h2>",
        "<p class='note'>Hover a token for its WAAD, ΔWAAD, FAI, entropy and γ under each strategy. Bold: γ &gt; 1 "
        "under the configured strategy. A yellow underline marks a preplan token that also has another role.</p>",
    ]
    for seq in summary["sequences"]:
        parts.append(_response(seq, summary["strategies"], cfg["strategy"]))
        parts.append(_img(image_dir, f"trace_{seq['index']:02d}.png", "WAAD, FAI and entropy traces"))
    parts += [
        "<h2>Head spans</h2>",
        "<p class='note'>Span d of a head = mean over response rows of the expected backward distance of its "
        "attention. Per response, the bottom share of the selected heads by span form the local group (WAAD), "
        "the top share the global group (FAI).</p>",
        _img(image_dir, "head_spans.png", "head span distribution"),
        "<h2>Local attention heatmap</h2>",
        f"<p class='note'>{_heat_note(summary['heatmap'])}</p>",
        _img(image_dir, "heatmap.png", "local head attention heatmap"),
        "</body></html>",
    ]
    return "\n".join(parts)


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _f(x, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``–`` for a value that is undefined (``null`` in summary.json)."""
    return "–" if x is None else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _timings(t: dict) -> str:
    return (
        f"Load {t['load']:.1f} s, generation {t['generate']:.1f} s, capture forward {t['forward']:.1f} s "
        f"(of which capture {t['capture']:.2f} s)."
    )


def _legend() -> str:
    chips = [
        f"<span class='chip t {c}' title='{_e(ROLE_TEXT[r])}'>{r if r != 'dominated' else 'dominated anchor'}</span>"
        for r, c in (("preplan", "p"), ("intro", "i"), ("anchor", "a"), ("dominated", "d"))
    ]
    return "<p>" + "".join(chips) + "</p>"


def _summary_table(summary: dict) -> str:
    names = summary["strategies"]
    head = (
        "<tr><th class='l'>response</th><th>tokens</th><th>preplan</th><th>anchors</th><th>dominated</th>"
        "<th>intro</th>"
        + "".join(f"<th>mean γ {_e(n)}</th><th>γ&gt;1 {_e(n)}</th>" for n in names)
        + "<th>mean WAAD</th><th>mean FAI</th><th>mean entropy</th></tr>"
    )
    rows = [_row(f"{s['index']}: {s['id']}", s["response_tokens"], s["counts"], names) for s in summary["sequences"]]
    rows.append(_row("all", summary["totals"]["response_tokens"], summary["totals"], names))
    return f"<table>{head}{''.join(rows)}</table>"


def _row(label: str, n: int, c: dict, names: list[str]) -> str:
    """One summary-table row from a ``counts`` dict (or the totals, which have the same keys)."""
    counts = (n, c["preplan"], c["anchor"], c["dominated"], c["intro_tokens"])
    cells = [f"<td class='l'>{_e(label)}</td>"] + [f"<td>{v}</td>" for v in counts]
    for name in names:
        cells.append(f"<td>{_f(c['gamma_mean'][name])}</td><td>{_pct(c['amplified_share'][name])}</td>")
    cells += [f"<td>{_f(c['waad_mean'])}</td><td>{_f(c['fai_mean'], 4)}</td><td>{_f(c['entropy_mean'])}</td>"]
    return "<tr>" + "".join(cells) + "</tr>"


def _coupling_table(c: dict) -> str:
    gain = "–" if c["entropy_gain_pct"] is None else f"{c['entropy_gain_pct']:+.1f} %"
    paper = c["paper"]
    return (
        "<table><tr><th class='l'>statistic</th><th>this model</th><th>random baseline</th>"
        "<th>paper (Qwen3-4B-Base, 70 GSM8K)</th></tr>"
        f"<tr><td class='l'>entropy at WAAD peaks vs average (nats: {_f(c['entropy_at_waad_peaks'])} vs "
        f"{_f(c['entropy_mean'])})</td><td>{gain}</td><td>–</td><td>+{paper['entropy_gain_pct']:.0f} %</td></tr>"
        f"<tr><td class='l'>FAI peak follows or coincides with a WAAD peak ({c['fai_follows_waad_hits']} of "
        f"{c['fai_peaks']} FAI peaks)</td><td>{_pct(c['fai_follows_waad'])}</td>"
        f"<td>{_pct(c['fai_follows_waad_random'])}</td><td>{_pct(paper['fai_follows_waad'])} vs "
        f"{_pct(paper['fai_follows_waad_random'])}</td></tr></table>"
        f"<p class='note'>Over {c['responses']} responses, {c['tokens']} tokens, {c['waad_peaks']} WAAD peaks and "
        f"{c['fai_peaks']} FAI peaks. <b>Peak</b>: {_e(c['definition'])}</p>"
    )


def _response(seq: dict, names: list[str], strategy: str) -> str:
    answer = "" if seq["answer"] is None else f" — reference answer {_e(seq['answer'])}"
    spans = []
    for j, piece in enumerate(seq["tokens"]):
        cls = ["t"]
        roles = []
        for key, c in (("preplan", "p"), ("anchor", "a"), ("dominated", "d")):
            if seq[key][j]:
                cls.append(c)
                roles.append(key if key != "dominated" else "dominated anchor")
        if seq["intro"][j] > 0:
            cls.append("i")
            roles.append(f"introductory token of {seq['intro'][j]} dominated anchor(s)")
        if seq["gamma"][strategy][j] > 1.0:
            cls.append("g")
        gammas = ", ".join(f"{n} {seq['gamma'][n][j]:.2f}" for n in names)
        tip = (
            f"token {j} {piece!r}\nWAAD {_f(seq['waad'][j])}  ΔWAAD {_f(seq['delta'][j])}\n"
            f"FAI {_f(seq['fai'][j], 4)}\nentropy {_f(seq['entropy'][j])}\nγ: {gammas}\n"
            f"roles: {', '.join(roles) or 'none'}"
        )
        spans.append(f"<span class='{' '.join(cls)}' title='{_e(tip)}'>{_e(piece)}</span>")
    return (
        f"<h3>Response {seq['index']}: {_e(seq['id'])} ({seq['response_tokens']} tokens){answer}</h3>"
        f"<div class='prompt'>{_e(seq['prompt'])}</div>"
        f"<div class='resp'>{''.join(spans)}</div>"
    )


def _heat_note(h: dict) -> str:
    return (
        f"Exact attention A[t, s] of response {h['sequence']}'s tokens {h['response_start']}–"
        f"{h['response_stop'] - 1}, computed from the captured layer's post-RoPE query and key rows of this window "
        f"(softmax over the full causal prefix, then cut to the window). Left: the most local head {_e(h['head'])} "
        f"(span {h['span']:.2f}); right: the mean over the local group. Mass on and just below the diagonal that "
        "resets at chunk starts is the sawtooth WAAD measures."
    )


def _img(image_dir: Path, name: str, alt: str) -> str:
    data = base64.b64encode((Path(image_dir) / name).read_bytes()).decode("ascii")
    return f"<p><img alt='{_e(alt)}' src='data:image/png;base64,{data}'></p>"
