# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The measurement pass: one forward over prompt + response with the trainer's own capture.

This is the code path of training (spec Sec. 1): :class:`verl_rhythm.measure.capture.RhythmCapture` records the
post-RoPE query/key of the selected layers through :func:`verl_rhythm.measure.hook.capture_active` while the model
runs its ordinary attention function (``sdpa`` by default), exactly as the old-log-prob pass does. The same
forward's logits give each response token's entropy, and :class:`WindowCapture` (the trainer's capture plus a tap)
keeps the query rows and key prefix of one short window so the report can draw a small exact attention heatmap.
No N×N map, no second forward.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass

import torch

from verl_rhythm.analyze.progress import Progress
from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure.capture import RhythmCapture, layouts_from_attention_mask
from verl_rhythm.measure.heads import SequenceRhythm
from verl_rhythm.measure.hook import capture_active, install_attention_hook
from verl_rhythm.measure.logits import attention_probs


@dataclass
class Measured:
    """The signals of one prompt + response.

    Attributes:
        rhythm: WAAD/FAI over all N positions, head spans and groups, from the capture.
        prompt_len: P; response token j sits at position P + j.
        entropy: ``(n,)`` fp32, entropy (nats) of the next-token distribution that produced each response token,
            i.e. of the logits at position P + j - 1 (verl's entropy layout).
    """

    rhythm: SequenceRhythm
    prompt_len: int
    entropy: torch.Tensor


class WindowCapture(RhythmCapture):
    """The trainer's :class:`RhythmCapture`, plus one window's query rows and key prefix for the heatmap.

    After :meth:`set_window`, each selected layer's :meth:`record` also keeps, for the sequence in batch row
    ``row`` starting at column ``start``, the query rows of positions ``[lo, hi)`` and the keys of positions
    ``[0, hi)``: enough for those rows of the exact attention map, which under a causal mask do not depend on later
    positions. Memory: O(H · hi · D) per layer, never a map of the whole sequence.
    """

    def __init__(self, cfg: RhythmConfig, num_layers: int, **kwargs):
        super().__init__(cfg, num_layers, **kwargs)
        self.window: tuple[int, int, int, int] | None = None
        self.tapped: tuple[int, int, int, int] | None = None
        self.taps: dict[int, tuple[torch.Tensor, torch.Tensor, float, dict]] = {}

    def set_window(self, window: tuple[int, int, int, int] | None) -> None:
        """Tap ``(row, start, lo, hi)`` in the next forward, or nothing (``None``); kept taps stay."""
        if window is not None and not 0 <= window[2] < window[3]:
            raise ValueError(f"heatmap window [{window[2]}, {window[3]}) is empty")
        self.window = window

    def record(self, layer_idx, query: torch.Tensor, key: torch.Tensor, scaling, **kwargs) -> None:
        """Hook entry: ``query (B, H, S, D)``, ``key (B, H_kv, S, D)`` post-RoPE; ``scaling`` None = 1/sqrt(D)."""
        super().record(layer_idx, query, key, scaling, **kwargs)
        if self.window is None or not self.wants(layer_idx):
            return
        row, start, lo, hi = self.window
        q = query[row, :, start + lo : start + hi].detach().float().cpu()
        k = key[row, :, start : start + hi].detach().float().cpu()
        scale = float(scaling) if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        sinks = kwargs.get("s_aux")
        variant = {
            "window": int(kwargs["sliding_window"]) if kwargs.get("sliding_window") else None,
            "softcap": float(kwargs["softcap"]) if kwargs.get("softcap") else None,
            "sinks": None if sinks is None else sinks.detach().float().cpu(),
        }
        self.taps[layer_idx] = (q, k, scale, variant)
        self.tapped = self.window

    def window_maps(self, heads: list[tuple[int, int]]) -> torch.Tensor:
        """Exact attention of the tapped window for the given ``(layer, head)`` pairs.

        Returns:
            ``(len(heads), w, w)`` fp32 with w = hi - lo: A[t, s] for t, s in the window, under the layer's own
            attention rule (:func:`verl_rhythm.measure.logits.attention_probs`: sliding window, soft-cap, sinks); a
            row sums to at most 1, the rest of its mass lying before the window or on a sink.
        """
        if self.tapped is None:
            raise RuntimeError("no heatmap window was tapped (set_window before the forward)")
        _, _, lo, hi = self.tapped
        maps: dict[int, torch.Tensor] = {}
        out = []
        for layer, head in heads:
            if layer not in self.taps:
                raise RuntimeError(f"layer {layer} was not recorded for the heatmap window")
            if layer not in maps:  # all heads of the layer at once, with the layer's variant (window, cap, sinks)
                q, k, scale, variant = self.taps[layer]
                maps[layer] = attention_probs(q, k, torch.arange(lo, hi), scale, **variant)[..., lo:hi]
            out.append(maps[layer][head])
        return torch.stack(out)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row's softmax: ``logits (n, V)`` → ``(n,)`` fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def measure(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    cfg: RhythmConfig,
    pad_id: int,
    batch_size: int = 8,
    window: tuple[int, int] | None = None,
    progress: Progress | None = None,
) -> tuple[list[Measured], WindowCapture, dict[str, float]]:
    """Run the capture over prompt + response sequences in right-padded micro-batches.

    Args:
        model: a transformers causal LM (eval mode), loaded with the attention implementation to capture from.
        prompts: each sequence's prompt ids.
        responses: each sequence's response ids (at least one token each).
        cfg: the rhythm settings (layers, W, H_lo, H_hi, head groups, chunk size).
        pad_id: id used for padding (masked out).
        batch_size: sequences per forward (the micro-batch of ``head_group_scope=micro_batch``).
        window: ``(lo, hi)`` positions of sequence 0 to tap for the heatmap, or ``None``.
        progress: progress reporter.

    Returns:
        ``(measured, capture, seconds)``: one :class:`Measured` per sequence, the capture holding the heatmap
        window's taps, and the forward/capture wall times.
    """
    progress = progress or Progress(quiet=True)
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(r) == 0 for r in responses) or any(len(p) == 0 for p in prompts):
        raise ValueError(
            "every prompt and response needs at least one token (entropy of response token 0 is read "
            "at the last prompt position)"
        )
    trims_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    install_attention_hook()
    device = next(model.parameters()).device
    capture = WindowCapture(cfg, model.config.num_hidden_layers)
    measured: list[Measured] = []
    seconds = {"forward": 0.0, "capture": 0.0}
    for b0 in range(0, len(prompts), batch_size):
        seqs = [p + r for p, r in zip(prompts[b0 : b0 + batch_size], responses[b0 : b0 + batch_size], strict=True)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        resp_masks = []
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
            p = len(prompts[b0 + i])
            resp_masks.append(torch.arange(len(s)) >= p)
        capture.reset()
        capture.set_layouts(layouts_from_attention_mask(mask, resp_masks))
        capture.set_window((0, 0, window[0], window[1]) if window is not None and b0 == 0 else None)
        # logits only from the first position that predicts a response token (min P_i - 1) on, when supported
        lo = min(len(p) for p in prompts[b0 : b0 + batch_size]) - 1 if trims_logits else 0
        extra = {"logits_to_keep": torch.arange(lo, width, device=device)} if trims_logits else {}
        t0 = time.perf_counter()
        with capture_active(capture):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra).logits
        rhythms = capture.finalize()
        seconds["forward"] += time.perf_counter() - t0
        seconds["capture"] += capture.seconds
        for i, (s, rhythm) in enumerate(zip(seqs, rhythms, strict=True)):
            p = len(prompts[b0 + i])
            ent = token_entropy(logits[i, p - 1 - lo : len(s) - 1 - lo]).cpu()
            measured.append(Measured(rhythm=_to_cpu(rhythm), prompt_len=p, entropy=ent))
        del logits
        progress(
            f"capture sequences {b0 + 1}-{b0 + len(seqs)}/{len(prompts)}: {int(mask.sum())} tokens, "
            f"forward {time.perf_counter() - t0:.1f}s of which capture {capture.seconds:.2f}s"
        )
    return measured, capture, seconds


def _to_cpu(r: SequenceRhythm) -> SequenceRhythm:
    return SequenceRhythm(
        waad=r.waad.float().cpu(),
        fai=r.fai.float().cpu(),
        span=r.span.float().cpu(),
        local_heads=r.local_heads.cpu(),
        global_heads=r.global_heads.cpu(),
        heads=list(r.heads),
    )
