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

Used only where it is exact and equal to the stock output (checked by ``tests/test_capture_on_cpu.py`` and
``tests/test_hook_on_cpu.py``): transformers' own ``sdpa_attention_forward``, fp32 query, no autocast, causal attention
without a mask (``is_causal``; one sequence per batch row from column 0) or with a 4-D mask that costs no more memory
than the stock call: an additive mask already in the query's dtype, or, on CPU, a bool mask, which stock SDPA turns
into an additive S×S mask itself (elsewhere bool masks take the batched path); no sliding window, soft-capping or
sinks, no dropout. Kernels: CPU ``aten._scaled_dot_product_flash_attention_for_cpu``; CUDA
``aten._scaled_dot_product_efficient_attention`` (fp32 uses the memory-efficient kernel in stock SDPA too). In bf16
the kernel's output, and so the expected position, is rounded to bf16 (about 3 significant digits), so bf16 layers
take the batched fp32 path instead. Any kernel error falls back to that path as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

_PAD = 16
_failed_devices: set[str] = set()


def _stock_sdpa() -> Callable | None:
    try:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
    except ImportError:  # pragma: no cover - transformers without SDPA integration
        return None
    return sdpa_attention_forward


def eligible(fn: Callable, capture, module, query: torch.Tensor, key: torch.Tensor, attention_mask, kwargs) -> bool:
    """Whether :func:`attention_with_stats` may replace this call of ``fn``."""
    if not getattr(capture, "fused", True) or fn is not _stock_sdpa():
        return False
    if query.dtype != torch.float32 or query.device.type not in ("cpu", "cuda"):
        return False
    if query.device.type in _failed_devices or query.shape[2] < 2 or kwargs.get("dropout", 0.0):
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


def _kernel(q, k, v, mask, is_causal: bool, scaling: float):
    """``(out (B, H, S, Dv), lse (B, H, S))`` from the device's flash-style kernel with log-sum-exp."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, is_causal, attn_mask=mask, scale=scaling
        )
        return out, lse
    b, h, s, _ = q.shape
    if k.shape[1] != h:  # the memory-efficient kernel wants H_kv == H
        k, v = k.repeat_interleave(h // k.shape[1], 1), v.repeat_interleave(h // k.shape[1], 1)
    if mask is not None:  # heads broadcast (a view); eligible() admits only last dims that are multiples of 16
        mask = mask.expand(b, h, s, mask.shape[-1])
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, mask, True, 0.0, is_causal, scale=scaling
    )[:2]
    return out, lse[..., :s]


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
    try:
        out, lse = _kernel(
            torch.cat([query, zeros], -1),
            torch.cat([key, zeros[:, :hkv]], -1),
            torch.cat([value, extra], -1),
            mask,
            mask is None,
            scaling,
        )
    except RuntimeError as err:  # unsupported shape/dtype on this build: use the chunked path from now on
        logger.warning("rhythm fused attention unavailable on %s (%s); using the chunked path", query.device, err)
        _failed_devices.add(query.device.type)
        return None
    gap = (out[..., d + 1] - seq[:, None]).abs().amax(1)  # (B, S)
    leak = ~(torch.where(seq >= 0, gap, 0.0) <= 1e-3).all()  # NaN counts as a mismatch too
    dist = pos[:, None] - out[..., d]
    attn_output = out[..., :d].transpose(1, 2).contiguous()
    return (attn_output, None), lse.float(), dist.float(), leak


def _causal_is_enough(layouts) -> bool:
    """Without a mask the kernel is plainly causal: exact only if every layout starts its row at column 0."""
    rows = [lay.row for lay in layouts]
    return all(lay.start == 0 for lay in layouts) and len(rows) == len(set(rows))
