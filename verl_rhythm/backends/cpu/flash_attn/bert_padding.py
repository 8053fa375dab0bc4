# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""flash-attn 2.8.3's ``flash_attn.bert_padding`` in plain torch: move between padded ``(batch, seqlen, ...)``
tensors and the packed ``(total_nnz, ...)`` layout that :func:`~verl_rhythm.backends.cpu.flash_attn.
flash_attn_varlen_func` takes.

Importers: verl's ``verl/utils/attention_utils.py`` (``index_first_axis, pad_input, rearrange, unpad_input``),
``verl/utils/torch_functional.py`` and transformers' ``modeling_flash_attention_utils`` (``pad_input,
unpad_input``). All functions are differentiable through torch's indexing ops. ``rearrange`` is
``einops.rearrange`` when einops is installed (as in flash-attn); otherwise calling it raises
:class:`ModuleNotFoundError`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from einops import rearrange
except ImportError:  # einops is not a dependency of verl-rhythm; flash-attn's bert_padding re-exports it

    def rearrange(tensor, pattern: str, **axes_lengths):
        """``einops.rearrange``, which needs the ``einops`` package (not installed here)."""
        raise ModuleNotFoundError(
            "flash_attn.bert_padding.rearrange is einops.rearrange, and einops is not installed: pip install einops"
        )


__all__ = ["index_first_axis", "pad_input", "rearrange", "unpad_input"]


def index_first_axis(input: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``indices`` of ``input`` along its first axis.

    Args:
        input: ``(first_axis_dim, ...)``, at least 2-D.
        indices: ``(n,)`` integer.

    Returns:
        ``(n, ...)``.
    """
    if input.dim() < 2:
        raise ValueError(f"index_first_axis needs a tensor of at least 2 dimensions, got shape {tuple(input.shape)}")
    return input[indices]


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask: torch.Tensor | None = None):
    """Pack the valid tokens of a padded batch.

    Args:
        hidden_states: ``(batch, seqlen, ...)``.
        attention_mask: ``(batch, seqlen)`` bool / int, 1 = valid token.
        unused_mask: ``(batch, seqlen)`` bool / int, 1 = allocated but unused token (packed too, not counted in
            ``seqused``), or ``None``.

    Returns:
        ``hidden_states (total_nnz, ...)`` (the tokens selected by ``attention_mask + unused_mask``, row-major),
        ``indices (total_nnz,)`` int64 into the flattened ``batch * seqlen`` tokens, ``cu_seqlens (batch + 1,)``
        int32, ``max_seqlen_in_batch`` (a Python int) and ``seqused (batch,)`` int32 (tokens selected by
        ``attention_mask`` alone).
    """
    all_masks = (attention_mask + unused_mask) if unused_mask is not None else attention_mask
    seqlens_in_batch = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens_in_batch = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens_in_batch.max().item())
    cu_seqlens = F.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, max_seqlen_in_batch, used_seqlens_in_batch


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Scatter packed tokens back into a zero-padded batch (inverse of :func:`unpad_input`).

    Args:
        hidden_states: ``(total_nnz, ...)``.
        indices: ``(total_nnz,)`` positions in the flattened ``batch * seqlen`` tokens.
        batch: batch size of the padded result.
        seqlen: sequence length of the padded result.

    Returns:
        ``(batch, seqlen, ...)``, zeros where no token was scattered.
    """
    output = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    output = output.index_put((indices,), hidden_states)
    return output.reshape(batch, seqlen, *hidden_states.shape[1:])
