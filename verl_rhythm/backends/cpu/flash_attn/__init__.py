# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A pure-torch CPU implementation of the flash-attn 2.8.3 forward API.

:func:`flash_attn_func`, :func:`flash_attn_varlen_func` and :func:`flash_attn_with_kvcache` (the last one a stub)
take flash-attn's own signatures and follow the semantics of its CUDA kernels (``csrc/flash_attn/flash_api.cpp``
and ``src/mask.h`` at tag ``v2.8.3``):

- GQA / MQA: query head ``h`` reads key/value head ``h // (H / H_kv)``.
- Causal masks are aligned to the bottom-right corner: query ``i`` of a sequence with ``Sq`` queries and ``Sk``
  keys sees key ``j`` iff ``j <= i + Sk - Sq``.
- ``window_size=(left, right)`` (negative = unbounded) keeps key ``j`` iff
  ``i + Sk - Sq - left <= j <= i + Sk - Sq + right``, intersected with the causal mask. As in the kernels, a window
  side ``>= Sk`` (varlen: ``>= max_seqlen_k``) counts as unbounded.
- ``softcap > 0``: ``logit = softcap * tanh(scale * q.k / softcap)``; ``alibi_slopes`` ``(H,)`` or ``(B, H)`` add
  ``-slope * |i + Sk - Sq - j|`` to the (capped) logit.
- A query row that sees no key outputs zeros and has ``softmax_lse = +inf``, as the kernels write it (so that a
  backward pass's ``exp(s - lse)`` is 0).

Arithmetic runs in float32 whatever the input dtype (float64 inputs in float64); the output has ``q``'s dtype. The
query rows are processed in chunks of at most :data:`QUERY_CHUNK_ROWS` rows (fewer when
``B * H * Sk * rows`` would pass :data:`MAX_CHUNK_ELEMENTS`), so a long sequence never holds more than one chunk's
logits; with autograd on, each chunk is recomputed in the backward pass (:func:`torch.utils.checkpoint.checkpoint`),
so training memory stays bounded the same way. The computation is deterministic (``deterministic`` is accepted and
ignored), except for the dropout mask drawn from torch's RNG when ``dropout_p > 0``.

**Strict mode** (off by default; :func:`set_strict`, :func:`is_strict`, or
:func:`verl_rhythm.backends.cpu.flash_attn.install.strict_mode`) rejects what flash-attn 2.8.3 rejects on a GPU,
with its error texts, as :class:`RuntimeError`: a dtype other than fp16/bf16, q/k/v of different dtypes, a head
dimension above 256 (after flash-attn's rounding up to a multiple of 8), a value head dimension different from the
query's, ``cu_seqlens`` that are not contiguous int32, ALiBi slopes that are not fp32, and softcap with dropout.
Outside strict mode float32 and float64 inputs (and ``Dv != D``) are accepted. A last dimension with a stride other
than 1 is accepted in both modes: flash-attn's Python layer makes such tensors contiguous (``maybe_contiguous``)
before its kernel's check could fire.

Use :func:`verl_rhythm.backends.cpu.flash_attn.install.install` to make ``import flash_attn`` (and transformers'
``attn_implementation="flash_attention_2"``) resolve to this module on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__version__ = "2.8.3"

__all__ = [
    "MAX_CHUNK_ELEMENTS",
    "QUERY_CHUNK_ROWS",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "is_strict",
    "set_strict",
]

QUERY_CHUNK_ROWS = 256
"""Most query rows whose logits are materialised at once (per sequence, all heads)."""
MAX_CHUNK_ELEMENTS = 1 << 25
"""Most logits one chunk may hold (``B * H * rows * Sk``); the chunk shrinks below :data:`QUERY_CHUNK_ROWS` rows to
stay under it (never below one row)."""

_strict = False


def set_strict(flag: bool) -> bool:
    """Switch strict mode on or off for the whole process; returns the previous setting."""
    global _strict
    previous, _strict = _strict, bool(flag)
    return previous


def is_strict() -> bool:
    """Whether strict mode (reject what the CUDA kernels reject) is on."""
    return _strict


# ---------------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------------


def _round8(x: int) -> int:
    return (x + 7) // 8 * 8


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    shape_names: str,
    softcap: float,
    dropout_p: float,
    alibi_slopes: torch.Tensor | None,
    batch_size: int,
) -> None:
    """Shape checks (always) and flash-attn's kernel checks (strict mode).

    Args:
        q: ``(B, Sq, H, D)`` or ``(total_q, H, D)``.
        k: ``(B, Sk, H_kv, D)`` or ``(total_k, H_kv, D)``.
        v: ``(B, Sk, H_kv, Dv)`` or ``(total_k, H_kv, Dv)``.
        shape_names: how flash-attn names the leading dimensions of k/v in its shape errors.
        softcap: the softcap argument.
        dropout_p: the dropout probability.
        alibi_slopes: ``(H,)`` or ``(B, H)``, or ``None``.
        batch_size: ``B`` (varlen: ``len(cu_seqlens_q) - 1``).
    """
    lead = q.dim() - 3
    if q.dim() not in (3, 4) or k.dim() != q.dim() or v.dim() != q.dim():
        raise RuntimeError(
            f"q, k, v must all be {q.dim()}-D, got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    num_heads, head_size = q.shape[-2], q.shape[-1]
    num_heads_k = k.shape[-2]
    if k.shape[-1] != head_size or (lead and k.shape[0] != q.shape[0]):
        raise RuntimeError(
            f"k must have shape ({shape_names}, num_heads_k, head_size); got {tuple(k.shape)} for q {tuple(q.shape)}"
        )
    if v.shape[:-1] != k.shape[:-1]:
        raise RuntimeError(
            f"v must have shape ({shape_names}, num_heads_k, head_size); got {tuple(v.shape)} for k {tuple(k.shape)}"
        )
    if num_heads_k == 0 or num_heads % num_heads_k != 0:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    if alibi_slopes is not None and tuple(alibi_slopes.shape) not in ((num_heads,), (batch_size, num_heads)):
        raise RuntimeError(
            f"alibi_slopes must have shape (num_heads,) or (batch_size, num_heads) = ({num_heads},) or "
            f"({batch_size}, {num_heads}); got {tuple(alibi_slopes.shape)}"
        )
    if not _strict:
        if not (q.dtype.is_floating_point and k.dtype.is_floating_point and v.dtype.is_floating_point):
            raise RuntimeError(f"q, k, v must be floating point, got {q.dtype}, {k.dtype}, {v.dtype}")
        return
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if k.dtype != q.dtype:
        raise RuntimeError("query and key must have the same dtype")
    if v.dtype != q.dtype:
        raise RuntimeError("query and value must have the same dtype")
    if _round8(head_size) > 256:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if v.shape[-1] != head_size:
        raise RuntimeError(f"v must have shape ({shape_names}, num_heads_k, head_size)")
    if softcap > 0.0 and dropout_p > 0.0:
        raise RuntimeError("Softcapping does not support dropout for now")
    if alibi_slopes is not None:
        if alibi_slopes.dtype != torch.float32:
            raise RuntimeError("ALiBi slopes must have dtype fp32")
        if alibi_slopes.stride(-1) != 1:
            raise RuntimeError("ALiBi slopes tensor must have contiguous last dimension")


def _check_cu_seqlens(cu_seqlens: torch.Tensor, name: str) -> None:
    """Varlen boundaries: a 1-D integer tensor ``(batch + 1,)``; int32 and contiguous in strict mode."""
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise RuntimeError(f"{name} must have shape (batch_size + 1,), got {tuple(cu_seqlens.shape)}")
    if _strict:
        if cu_seqlens.dtype != torch.int32:
            raise RuntimeError(f"{name} must have dtype int32")
        if not cu_seqlens.is_contiguous():
            raise RuntimeError(f"{name} must be contiguous")
    elif cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
        raise RuntimeError(f"{name} must have an integer dtype (int32 on the GPU), got {cu_seqlens.dtype}")


# ---------------------------------------------------------------------------------------------------------------
# the computation
# ---------------------------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _window(window_size, causal: bool, seqlen_k: int) -> tuple[int, int]:
    """flash-attn's normalisation of ``(left, right)``: negative or ``>= seqlen_k`` means unbounded (-1); causal
    means ``right = 0``."""
    left, right = (int(w) for w in window_size)
    left = -1 if left < 0 or left >= seqlen_k else left
    right = -1 if right < 0 or right >= seqlen_k else right
    if causal:
        right = 0
    return left, right


def _attend_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor | None,
    row0: int,
    seqlen_q: int,
    scale: float,
    left: int,
    right: int,
    softcap: float,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one chunk of query rows against all keys, in the compute dtype.

    Args:
        q: ``(B, C, H, D)``, rows ``row0 .. row0 + C - 1`` of ``seqlen_q`` query rows.
        k: ``(B, Sk, H_kv, D)``.
        v: ``(B, Sk, H_kv, Dv)``.
        slopes: ALiBi slopes ``(B, H)`` in the compute dtype, or ``None``.
        row0: index of the chunk's first row among the ``seqlen_q`` rows.
        seqlen_q: number of query rows of the sequence (for the bottom-right alignment).
        scale: the softmax scale.
        left: normalised left window (-1 = unbounded).
        right: normalised right window (-1 = unbounded; 0 when causal).
        softcap: softcap (0 = off).
        dropout_p: dropout probability on the normalised probabilities.

    Returns:
        ``out (B, C, H, Dv)`` and ``lse (B, H, C)`` (``+inf`` for a row that sees no key).
    """
    batch, rows, num_heads, head_dim = q.shape
    seqlen_k, num_heads_k = k.shape[1], k.shape[2]
    groups = num_heads // num_heads_k
    qg = q.reshape(batch, rows, num_heads_k, groups, head_dim)
    s = torch.einsum("bchgd,bkhd->bhgck", qg, k) * scale  # (B, H_kv, G, C, Sk)
    if softcap > 0.0:
        s = torch.tanh(s / softcap) * softcap
    i = torch.arange(row0, row0 + rows, device=q.device)
    j = torch.arange(seqlen_k, device=q.device)
    dist = (i[:, None] + (seqlen_k - seqlen_q)) - j[None, :]  # (C, Sk): i + Sk - Sq - j
    if slopes is not None:
        s = s - slopes.reshape(batch, num_heads_k, groups, 1, 1) * dist.abs().to(s.dtype)
    allowed = None
    if right >= 0:
        allowed = dist >= -right
    if left >= 0:
        allowed = dist <= left if allowed is None else allowed & (dist <= left)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    row_max = s.detach().amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(s - row_max)
    denom = p.sum(dim=-1, keepdim=True)
    empty = denom == 0
    denom = torch.where(empty, torch.ones_like(denom), denom)
    lse = torch.where(empty, torch.full_like(denom, float("inf")), row_max + torch.log(denom))
    p = p / denom
    if dropout_p > 0.0:
        p = F.dropout(p, p=dropout_p, training=True)
    out = torch.einsum("bhgck,bkhe->bchge", p, v).reshape(batch, rows, num_heads, v.shape[-1])
    return out, lse.reshape(batch, num_heads, rows)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    slopes: torch.Tensor | None,
    scale: float,
    left: int,
    right: int,
    softcap: float,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of whole sequences, query rows chunked.

    Args:
        q: ``(B, Sq, H, D)`` in the compute dtype.
        k: ``(B, Sk, H_kv, D)`` in the compute dtype.
        v: ``(B, Sk, H_kv, Dv)`` in the compute dtype.
        slopes: ``(B, H)`` in the compute dtype, or ``None``.
        scale, left, right, softcap, dropout_p: as in :func:`_attend_rows`.

    Returns:
        ``out (B, Sq, H, Dv)`` and ``lse (B, H, Sq)``, in the compute dtype.
    """
    batch, seqlen_q, num_heads, _ = q.shape
    seqlen_k = k.shape[1]
    if seqlen_q == 0 or seqlen_k == 0 or batch == 0:
        out = q.new_zeros(batch, seqlen_q, num_heads, v.shape[-1])
        return out, q.new_full((batch, num_heads, seqlen_q), float("inf"))
    rows = max(1, min(int(QUERY_CHUNK_ROWS), int(MAX_CHUNK_ELEMENTS) // max(1, batch * num_heads * seqlen_k)))
    recompute = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, slopes))
    outs, lses = [], []
    for row0 in range(0, seqlen_q, rows):
        args = (q[:, row0 : row0 + rows], k, v, slopes, row0, seqlen_q, scale, left, right, softcap, dropout_p)
        if recompute:
            out, lse = checkpoint(_attend_rows, *args, use_reentrant=False, preserve_rng_state=True)
        else:
            out, lse = _attend_rows(*args)
        outs.append(out)
        lses.append(lse)
    if len(outs) == 1:
        return outs[0], lses[0]
    return torch.cat(outs, dim=1), torch.cat(lses, dim=-1)


def _slopes(alibi_slopes: torch.Tensor | None, batch: int, num_heads: int, dtype: torch.dtype):
    """ALiBi slopes as ``(B, H)`` in ``dtype``, or ``None``."""
    if alibi_slopes is None:
        return None
    return alibi_slopes.to(dtype).reshape(-1, num_heads).expand(batch, num_heads)


def _scale(softmax_scale: float | None, head_dim: int) -> float:
    return head_dim ** (-0.5) if softmax_scale is None else float(softmax_scale)


# ---------------------------------------------------------------------------------------------------------------
# the flash-attn API
# ---------------------------------------------------------------------------------------------------------------


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Attention over a padded batch of equal-length sequences (flash-attn 2.8.3 ``flash_attn_func``).

    Args:
        q: ``(B, Sq, H, D)``.
        k: ``(B, Sk, H_kv, D)``; ``H % H_kv == 0``.
        v: ``(B, Sk, H_kv, Dv)`` (``Dv == D`` on the GPU and in strict mode).
        dropout_p: dropout probability on the attention probabilities (torch's RNG).
        softmax_scale: scale of ``q.k``; default ``D ** -0.5``.
        causal: bottom-right aligned causal mask.
        window_size: ``(left, right)`` sliding window; -1 = unbounded.
        softcap: ``> 0`` caps the logits at ``softcap * tanh(logit / softcap)``.
        alibi_slopes: ``(H,)`` or ``(B, H)`` fp32; adds ``-slope * |i + Sk - Sq - j|``.
        deterministic: accepted and ignored (this implementation is deterministic).
        return_attn_probs: also return ``softmax_lse`` and ``None`` in place of flash-attn's debugging
            probabilities.

    Returns:
        ``out (B, Sq, H, Dv)`` in ``q``'s dtype; with ``return_attn_probs``, ``(out, softmax_lse (B, H, Sq), None)``
        with ``softmax_lse`` float32 (float64 for float64 inputs).
    """
    del deterministic
    if q.dim() != 4:
        raise RuntimeError(f"q must have shape (batch_size, seqlen_q, num_heads, head_size), got {tuple(q.shape)}")
    _check_inputs(
        q,
        k,
        v,
        shape_names="batch_size, seqlen_k",
        softcap=softcap,
        dropout_p=dropout_p,
        alibi_slopes=alibi_slopes,
        batch_size=q.shape[0],
    )
    batch, _, num_heads, head_dim = q.shape
    dtype = _compute_dtype(q, k, v)
    left, right = _window(window_size, causal, k.shape[1])
    out, lse = _attend(
        q.to(dtype),
        k.to(dtype),
        v.to(dtype),
        _slopes(alibi_slopes, batch, num_heads, dtype),
        _scale(softmax_scale, head_dim),
        left,
        right,
        float(softcap),
        float(dropout_p),
    )
    out = out.to(q.dtype)
    if return_attn_probs:
        return out, lse.to(torch.float64 if dtype == torch.float64 else torch.float32), None
    return out


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """Attention over sequences of different lengths packed along one axis (flash-attn 2.8.3
    ``flash_attn_varlen_func``).

    Sequence ``b`` holds query rows ``cu_seqlens_q[b] : cu_seqlens_q[b + 1]`` and key rows
    ``cu_seqlens_k[b] : cu_seqlens_k[b + 1]``; masks and ALiBi use each sequence's own ``Sq_b`` and ``Sk_b``.

    Args:
        q: ``(total_q, H, D)``.
        k: ``(total_k, H_kv, D)``; ``H % H_kv == 0``.
        v: ``(total_k, H_kv, Dv)``.
        cu_seqlens_q: ``(batch + 1,)`` int32 (any integer dtype outside strict mode), cumulative query lengths.
        cu_seqlens_k: ``(batch + 1,)`` int32, cumulative key lengths.
        max_seqlen_q: int or 0-d tensor, the longest query sequence (unused but for flash-attn's checks).
        max_seqlen_k: int or 0-d tensor, the longest key sequence (a window side ``>=`` it is unbounded).
        dropout_p, softmax_scale, causal, window_size, softcap, deterministic: as in :func:`flash_attn_func`.
        alibi_slopes: ``(H,)`` or ``(batch, H)`` fp32.
        return_attn_probs: also return ``softmax_lse (H, total_q)`` and ``None``.
        block_table: paged KV cache; not supported (:class:`NotImplementedError`).

    Returns:
        ``out (total_q, H, Dv)`` in ``q``'s dtype; with ``return_attn_probs``,
        ``(out, softmax_lse (H, total_q), None)``. Rows outside ``cu_seqlens_q[0] : cu_seqlens_q[-1]`` are zeros
        with ``lse = +inf``.
    """
    del deterministic
    if block_table is not None:
        raise NotImplementedError(
            "flash_attn_varlen_func(block_table=...) (a paged KV cache) is not implemented by the CPU flash-attn; "
            "pass contiguous k/v of shape (total_k, num_heads_k, head_size)"
        )
    if q.dim() != 3:
        raise RuntimeError(f"q must have shape (total_q, num_heads, head_size), got {tuple(q.shape)}")
    _check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q")
    _check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise RuntimeError(
            f"cu_seqlens_q and cu_seqlens_k must have the same length (batch_size + 1), got "
            f"{cu_seqlens_q.numel()} and {cu_seqlens_k.numel()}"
        )
    batch = cu_seqlens_q.numel() - 1
    _check_inputs(
        q,
        k,
        v,
        shape_names="total_k",
        softcap=softcap,
        dropout_p=dropout_p,
        alibi_slopes=alibi_slopes,
        batch_size=batch,
    )
    starts_q = [int(x) for x in cu_seqlens_q.tolist()]
    starts_k = [int(x) for x in cu_seqlens_k.tolist()]
    for name, starts, total in (("cu_seqlens_q", starts_q, q.shape[0]), ("cu_seqlens_k", starts_k, k.shape[0])):
        if starts[0] < 0 or starts[-1] > total or any(b < a for a, b in zip(starts, starts[1:], strict=False)):
            raise RuntimeError(f"{name} must be non-decreasing within [0, {total}], got {starts}")
    total_q, num_heads, head_dim = q.shape
    dtype = _compute_dtype(q, k, v)
    lengths_k = [b - a for a, b in zip(starts_k, starts_k[1:], strict=False)]
    max_k = int(max_seqlen_k) if max_seqlen_k is not None else max(lengths_k)
    left, right = _window(window_size, causal, max_k)
    scale = _scale(softmax_scale, head_dim)
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    slopes = _slopes(alibi_slopes, batch, num_heads, dtype)
    outs, lses = [], []
    if starts_q[0] > 0:
        outs.append(qc.new_zeros(starts_q[0], num_heads, v.shape[-1]))
        lses.append(qc.new_full((num_heads, starts_q[0]), float("inf")))
    for b in range(batch):
        out, lse = _attend(
            qc[starts_q[b] : starts_q[b + 1]].unsqueeze(0),
            kc[starts_k[b] : starts_k[b + 1]].unsqueeze(0),
            vc[starts_k[b] : starts_k[b + 1]].unsqueeze(0),
            None if slopes is None else slopes[b : b + 1],
            scale,
            left,
            right,
            float(softcap),
            float(dropout_p),
        )
        outs.append(out[0])
        lses.append(lse[0])
    if starts_q[-1] < total_q:
        outs.append(qc.new_zeros(total_q - starts_q[-1], num_heads, v.shape[-1]))
        lses.append(qc.new_full((num_heads, total_q - starts_q[-1]), float("inf")))
    out = (torch.cat(outs, dim=0) if outs else qc.new_zeros(total_q, num_heads, v.shape[-1])).to(q.dtype)
    if return_attn_probs:
        lse = torch.cat(lses, dim=-1) if lses else qc.new_full((num_heads, total_q), float("inf"))
        return out, lse.to(torch.float64 if dtype == torch.float64 else torch.float32), None
    return out


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens: int | torch.Tensor | None = None,
    cache_batch_idx: torch.Tensor | None = None,
    cache_leftpad: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    rotary_interleaved=True,
    alibi_slopes=None,
    num_splits=0,
    return_softmax_lse=False,
):
    """flash-attn 2.8.3's ``flash_attn_with_kvcache`` signature; not implemented on CPU.

    Args:
        q: ``(B, Sq, H, D)``.
        k_cache: ``(B_cache, S_cache, H_kv, D)``, or ``(num_blocks, block_size, H_kv, D)`` with ``block_table``.
        v_cache: like ``k_cache``.
        k, v: ``(B, S_new, H_kv, D)`` appended to the caches in place at ``cache_seqlens``.
        rotary_cos, rotary_sin: ``(S_ro, rotary_dim / 2)``.
        cache_seqlens: int or ``(B,)`` int32.
        cache_batch_idx, cache_leftpad: ``(B,)`` int32.
        block_table: ``(B, max_blocks)`` int32.
        softmax_scale, causal, window_size, softcap, alibi_slopes: as in :func:`flash_attn_func`.
        rotary_interleaved, num_splits, return_softmax_lse: as in flash-attn.

    Raises:
        NotImplementedError: always. transformers calls it only for paged attention / continuous batching
            (``attn_implementation="paged|flash_attention_2"``); its ordinary forward and ``generate`` use
            :func:`flash_attn_func` and :func:`flash_attn_varlen_func`, and so does verl.
    """
    raise NotImplementedError(
        "flash_attn_with_kvcache is not implemented by the CPU flash-attn (verl_rhythm.backends.cpu.flash_attn): "
        "the in-place KV-cache append (k/v with cache_seqlens, cache_batch_idx, cache_leftpad), rotary embedding "
        "(rotary_cos/rotary_sin), paged caches (block_table) and split-KV (num_splits) are missing. It serves "
        "transformers' paged attention / continuous batching only; use attn_implementation='flash_attention_2' "
        "(not 'paged|flash_attention_2') or flash_attn_func / flash_attn_varlen_func."
    )
