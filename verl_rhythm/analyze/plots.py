# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The report's PNG figures (matplotlib, Agg backend): WAAD/FAI traces, head-span distribution, local heatmap.

Each function reads the JSON-ready dicts of :mod:`verl_rhythm.analyze.summary`, so every plotted number is in
``summary.json``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

COLORS = {"preplan": "#f59f00", "anchor": "#1c7ed6", "dominated": "#7048e8", "intro": "#e8590c", "peak": "#2b8a3e"}


def plot_traces(seq: dict, path: Path) -> None:
    """WAAD, FAI and entropy of one response over its tokens, with the selected tokens marked.

    Args:
        seq: one entry of ``summary["sequences"]``.
        path: PNG to write.
    """
    x = np.arange(seq["response_tokens"])
    waad, fai, ent = (np.asarray(seq[k], dtype=float) for k in ("waad", "fai", "entropy"))
    pre, anc, dom = (np.asarray(seq[k], dtype=bool) for k in ("preplan", "anchor", "dominated"))
    intro = np.asarray(seq["intro"]) > 0
    fig, axes = plt.subplots(3, 1, figsize=(10, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 3, 2]})
    ax = axes[0]
    ax.plot(x, waad, color="#495057", lw=1)
    ax.scatter(x[pre], waad[pre], s=14, color=COLORS["preplan"], label="preplan (top-q ΔWAAD)", zorder=3)
    ax.scatter(
        x[intro],
        waad[intro],
        s=40,
        marker="^",
        facecolors="none",
        edgecolors=COLORS["intro"],
        label="introductory token",
        zorder=4,
    )
    ax.set_ylabel("WAAD")
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    ax = axes[1]
    ax.plot(x, fai, color="#495057", lw=1)
    ax.scatter(x[anc & ~dom], fai[anc & ~dom], s=14, color=COLORS["anchor"], label="anchor (top-q FAI)", zorder=3)
    ax.scatter(x[dom], fai[dom], s=30, marker="x", color=COLORS["dominated"], label="dominated anchor", zorder=4)
    ax.set_ylabel("FAI")
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    ax = axes[2]
    ax.plot(x, ent, color="#495057", lw=1)
    peaks = np.asarray(seq["coupling"]["waad_peaks"], dtype=int)
    ax.scatter(peaks, ent[peaks], s=14, color=COLORS["peak"], label="at a WAAD peak", zorder=3)
    ax.set_ylabel("entropy")
    ax.set_xlabel("response token")
    ax.legend(loc="upper right", fontsize=7)
    fig.suptitle(f"response {seq['index']} ({seq['id']}): {seq['response_tokens']} tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def plot_spans(spans: dict, path: Path) -> None:
    """Head-span distribution with the local/global split.

    Args:
        spans: ``summary["heads"]``: ``labels`` (K), ``span`` (responses × K), ``local`` and ``global``
            (responses × K bools), ``mean_span`` (K).
        path: PNG to write.
    """
    span = np.asarray(spans["span"], dtype=float)
    loc = np.asarray(spans["local"], dtype=bool)
    glob = np.asarray(spans["global"], dtype=bool)
    mid = ~(loc | glob)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2, 3]})
    ax = axes[0]
    bins = np.linspace(0, max(float(span.max()), 1.0), 30)
    ax.hist(
        [span[loc], span[mid], span[glob]],
        bins=bins,
        stacked=True,
        color=["#f59f00", "#ced4da", "#1c7ed6"],
        label=["local (bottom share)", "middle", "global (top share)"],
    )
    ax.set_xlabel("head span d (tokens)")
    ax.set_ylabel("heads × responses")
    ax.legend(fontsize=7)
    ax = axes[1]
    mean = np.asarray(spans["mean_span"], dtype=float)
    order = np.argsort(mean, kind="stable")
    share_loc, share_glob = loc.mean(0)[order], glob.mean(0)[order]
    colors = [_mix(a, b) for a, b in zip(share_loc, share_glob, strict=True)]
    ax.bar(np.arange(mean.size), mean[order], color=colors)
    ax.set_xticks(np.arange(mean.size))
    ax.set_xticklabels([spans["labels"][i] for i in order], rotation=90, fontsize=6)
    ax.set_ylabel("mean span over responses")
    ax.set_title("selected heads by mean span (orange: mostly local, blue: mostly global)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def plot_heatmap(heat: dict, path: Path) -> None:
    """Exact attention of the most local head and of the local-group mean over a short window.

    Args:
        heat: ``summary["heatmap"]``: ``map`` and ``local_mean_map`` (w × w), ``tokens`` (w), ``head`` label.
        path: PNG to write.
    """
    maps = [np.asarray(heat["map"], dtype=float), np.asarray(heat["local_mean_map"], dtype=float)]
    titles = [f"most local head {heat['head']} (span {heat['span']:.1f})", "mean of the local group (A_loc)"]
    labels = [_label(t) for t in heat["tokens"]]
    w = len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.2))
    for ax, m, title in zip(axes, maps, titles, strict=True):
        lower = np.where(np.tril(np.ones((w, w))) > 0, m, np.nan)  # blank above the diagonal (causal)
        # square-root colour scale: a few sink entries near 1 would otherwise wash out the band structure
        ax.imshow(lower, cmap="magma_r", norm=PowerNorm(0.5, vmin=0.0, vmax=max(float(m.max()), 1e-6)))
        ax.set_title(title, fontsize=9)
        ax.set_xticks(np.arange(w))
        ax.set_yticks(np.arange(w))
        ax.set_xticklabels(labels, rotation=90, fontsize=5)
        ax.set_yticklabels(labels, fontsize=5)
        ax.set_xlabel("key s")
        ax.set_ylabel("query t")
    fig.suptitle(
        f"response {heat['sequence']}, tokens {heat['response_start']}-{heat['response_stop'] - 1}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _mix(share_local: float, share_global: float) -> tuple[float, float, float]:
    orange, blue, grey = np.array([0.96, 0.62, 0.0]), np.array([0.11, 0.49, 0.84]), np.array([0.81, 0.83, 0.85])
    rest = max(0.0, 1.0 - share_local - share_global)
    return tuple(float(c) for c in share_local * orange + share_global * blue + rest * grey)


def _label(piece: str) -> str:
    text = piece.replace("\n", "⏎").replace("$", r"\$")
    return text if text.strip() else "␣" * max(1, len(text))
