# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The full-row statistics out of the layer's own attention call (no second QKᵀ).

A flash-style kernel already computes each row's log-sum-exp, and attention with a value column holding the key
positions returns each row's expected key position, so ``dist_t = t - sum_s A[t, s] s``. This module replaces the
stock SDPA call of a *selected* layer during capture by one kernel call on

    q' = [q, 0],  k' = [k, 0],  v' = [v, pos, seq, 0]      (zero columns pad the head dim to a multiple of 16)

which leaves the logits unchanged (scale passed explicitly), returns the stock output in ``out[..., :D]``, the
expected position within the sequence in ``out[..., D]`` and, as a check of the layouts, the expected sequence index
in ``out[..., D + 1]``. The two diagonal bands are then computed by
:func:`verl_rhythm.measure.batched.band_stats` in O(N · H_hi) per head.

Opt-in on CUDA (:attr:`verl_rhythm.measure.capture.RhythmCapture.fused`); used only where it is exact and equal to
the stock output (checked by ``tests/test_capture_on_cpu.py`` and
``tests/test_hook_on_cpu.py``): transformers' own ``sdpa_attention_forward``, fp32 query, no autocast, causal attention
without a mask (``is_causal``; one sequence per batch row from column 0) or with a 4-D mask that costs no more memory
than the stock call: an additive mask already in the query's dtype, or, on CPU, a bool mask, which stock SDPA turns
into an additive S×S mask itself (elsewhere bool masks take the batched path); no sliding window, soft-capping or
sinks, no dropout; and only where the capture's :class:`~verl_rhythm.measure.kernels.Kernels` has such a kernel
and it takes the call (:meth:`~verl_rhythm.measure.kernels.Kernels.attention_lse`: CPU
``aten._scaled_dot_product_flash_attention_for_cpu``; CUDA ``aten._scaled_dot_product_efficient_attention``, which
stock SDPA uses for fp32 too); a call it does not take goes to the stock function and the batched path, noted in
``capture.fallbacks``. In bf16 the kernel's output, and so the expected position, is rounded to bf16 (about 3
significant digits), so bf16 layers take the batched fp32 path instead. Errors of the kernel call reach the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_PAD = 16


def _stock_sdpa() -> Callable:
    """transformers' own ``sdpa_attention_forward`` (imported on first use: the measure package loads without it)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def eligible(fn: Callable, capture, module, query: torch.Tensor, key: torch.Tensor, attention_mask, kwargs) -> bool:
    """Whether :func:`attention_with_stats` may replace this call of ``fn``."""
    if not capture.fuses_on(query.device) or fn is not _stock_sdpa() or query.dtype != torch.float32:
        return False
    if not capture.kernels_on(query.device).lse_attention or query.shape[2] < 2 or kwargs.get("dropout", 0.0):
        return False
    if torch.is_autocast_enabled(query.device.type):  # stock SDPA would run in the autocast dtype
        return False
    if any(kwargs.get(name) is not None for name in ("sliding_window", "softcap", "s_aux")):
        return False
    if getattr(module, "training", False) and getattr(module, "attention_dropout", 0.0):
        return False
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if attention_mask is None:
        return bool(is_causal)
    if attention_mask.dim() != 4:
        return False
    if attention_mask.dtype != query.dtype and not _converts_like_stock(attention_mask, query):
        return False
    if query.device.type == "cuda" and attention_mask.shape[-1] % 16:  # the kernel would want a padded copy
        return False
    return tuple(attention_mask.shape[-2:]) == (query.shape[2], key.shape[2])


def _converts_like_stock(attention_mask: torch.Tensor, query: torch.Tensor) -> bool:
    """Whether stock SDPA would itself turn this mask into an S×S float mask of the query's dtype.

    On CPU ``torch.nn.functional.scaled_dot_product_attention`` converts a bool mask to an additive one before its
    flash kernel (``convert_boolean_attn_mask`` in ATen's ``attention.cpp``; at S = 4,096 the stock call's peak is
    the 64 MiB float mask): replacing that call by one conversion and the kernel costs no memory the stock call
    does not. Elsewhere a bool mask takes the batched path.
    """
    return attention_mask.dtype == torch.bool and query.device.type == "cpu"


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The kernels' additive form of a bool mask (0 where allowed, -inf elsewhere), as stock SDPA builds it."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.full(mask.shape, float("-inf"), dtype=dtype, device=mask.device).masked_fill_(mask, 0.0)


def attention_with_stats(fn, capture, module, query, key, value, attention_mask, *args, **kwargs):
    """Stock SDPA output plus per-row log-sum-exp and expected distance, or ``None`` if not applicable.

    The padded value carries two extra columns per key s: its position within its sequence (``pos``) and the index
    of its sequence among the capture's layouts (``seq``, -1 outside every layout). A row of layout i that attends
    only inside its own sequence gets exactly ``E[seq] = i``; anything else means the attention mask disagrees
    with the layouts, and is an error.

    Args:
        fn: the attention function being wrapped (only transformers' ``sdpa_attention_forward`` is replaced).
        capture: the active :class:`~verl_rhythm.measure.capture.RhythmCapture` (``capture.fused = False`` opts
            out); its layouts give ``pos`` and ``seq``.
        module: the attention module (``is_causal``, ``training``).
        query: ``(B, H, S, D)``; key, value: ``(B, H_kv, S, D)``.
        attention_mask: ``None`` (causal) or the 4-D mask transformers built for SDPA (bool or additive).

    Returns:
        ``((attn_output (B, S, H, D), None), lse (B, H, S), dist (B, H, S), leak)`` with fp32 statistics and
        ``leak`` a device bool, True when a layout's rows attend outside the layout's own columns (read by
        :meth:`RhythmCapture.finalize`, after the forward: no host sync here); or ``None``.
    """
    if args or not eligible(fn, capture, module, query, key, attention_mask, kwargs):
        return None
    b, h, s, d = query.shape
    if attention_mask is None and not _causal_is_enough(capture.layouts):
        return None
    pos, seq = capture.layout_columns(b, s, query.device)  # (B, S) fp32 each
    scaling = kwargs.get("scaling")
    scaling = float(d**-0.5 if scaling is None else scaling)
    pad = _PAD - d % _PAD if d % _PAD else _PAD
    mask = _additive(attention_mask, query.dtype)
    hkv = key.shape[1]
    zeros = query.new_zeros(b, h, s, pad)
    extra = value.new_zeros(b, hkv, s, pad)
    extra[..., 0] = pos[:, None]
    extra[..., 1] = seq[:, None]
    result = capture.kernels.attention_lse(
        torch.cat([query, zeros], -1),
        torch.cat([key, zeros[:, :hkv]], -1),
        torch.cat([value, extra], -1),
        mask,
        mask is None,
        scaling,
    )
    if result is None:  # the kernel does not take these shapes: the stock call and the batched path
        capture.fall_back(f"fp32 SDPA of shape {tuple(query.shape)} on {query.device.type}: no fused statistics")
        return None
    out, lse = result
    gap = (out[..., d + 1] - seq[:, None]).abs().amax(1)  # (B, S)
    leak = ~(torch.where(seq >= 0, gap, 0.0) <= 1e-3).all()  # NaN counts as a mismatch too
    dist = pos[:, None] - out[..., d]
    attn_output = out[..., :d].transpose(1, 2).contiguous()
    return (attn_output, None), lse.float(), dist.float(), leak


def _causal_is_enough(layouts) -> bool:
    """Without a mask the kernel is plainly causal: exact only if every layout starts its row at column 0."""
    rows = [lay.row for lay in layouts]
    return all(lay.start == 0 for lay in layouts) and len(rows) == len(set(rows))
