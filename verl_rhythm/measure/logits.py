# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""What every statistic path shares about attention logits: the exact fp32 context, the logit rule, the visibility rule.

For query position t and key position s of one sequence, a layer's attention is A[t, s] = exp(z[t, s] - lse_t) with

- z[t, s] = scaling · q_t · k_s, or ``softcap · tanh(scaling · q_t · k_s / softcap)`` with soft-capping (Gemma 2);
- keys visible when 0 <= t - s (causal), and t - s < w with a sliding window w (transformers' ``sliding_window``);
- lse_t = log(sum over visible s of exp z[t, s] (+ exp sink)), a per-head sink logit (gpt-oss ``s_aux``) being part
  of the normaliser and not a key.

:mod:`.batched` applies these rules chunk by chunk, :mod:`.triton_stats` inside its kernels, and
:func:`attention_probs` writes them out for a few rows (the report's heatmap). No verl import.
"""

from __future__ import annotations

import contextlib

import torch


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


def finish_logits_(z: torch.Tensor, scaling: float, softcap: float | None) -> torch.Tensor:
    """In place: raw products q · k → logits, ``scaling · z`` or ``softcap · tanh(scaling · z / softcap)``."""
    if softcap:
        return z.mul_(scaling / softcap).tanh_().mul_(softcap)
    return z.mul_(scaling)


def visible(delta: torch.Tensor, window: int | None) -> torch.Tensor:
    """Bool, whether a key at backward distance ``delta`` = t - s is attended: causal, and within a sliding window."""
    return delta >= 0 if not window else (delta >= 0) & (delta < window)


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    rows: torch.Tensor,
    scaling: float,
    *,
    window: int | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact attention probabilities of a few query rows against all keys before them, in fp32.

    Dense in the keys: for a handful of rows only (the report's heatmap), never a whole sequence.

    Args:
        q: ``(H, c, D)`` queries of the rows; k: ``(H_kv, n, D)`` keys of positions ``[0, n)`` (H_kv | H).
        rows: ``(c,)`` long, the position of each query row (< n).
        scaling: logit scale; window, softcap, sinks (``(H,)``): the layer's attention variant.

    Returns:
        ``(H, c, n)`` fp32 A[t, s]; a row sums to 1 minus its sink's share.
    """
    h, c, d = q.shape
    hkv, n = k.shape[0], k.shape[1]
    with exact_fp32(q.device):
        z = torch.bmm(q.float().reshape(hkv, (h // hkv) * c, d), k.float().transpose(1, 2)).view(h, c, n)
    z = finish_logits_(z, scaling, softcap)
    delta = rows.to(q.device)[:, None] - torch.arange(n, device=q.device)[None, :]
    z = z.masked_fill(~visible(delta, window), float("-inf"))
    if sinks is not None:
        sink = sinks.float().to(q.device)[:, None, None].expand(h, c, 1)
        return torch.softmax(torch.cat([z, sink], -1), -1)[..., :n]
    return torch.softmax(z, -1)
