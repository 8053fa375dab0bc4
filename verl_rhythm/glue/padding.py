# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/workers/utils/padding.py`` (verl 0.9.1) — nested full-sequence tensors ↔ the response layout.

verl's :func:`verl.workers.utils.padding.response_from_nested` takes ``values[end - r - 1 : end - 1]`` of each
sequence: the logits at position p predict token p + 1, so a log-prob or value is read one position to the left.
A rhythm statistic of token t is read at t's **own** position (spec Sec. 1), so :func:`response_from_nested_unshifted`
takes ``values[end - r : end]``. Everything else (jagged layout, one row per sequence) is verl's own format.
"""

from __future__ import annotations

import torch


def response_from_nested_unshifted(tensor: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """The response positions of a nested full-sequence tensor, each token at its own position.

    Args:
        tensor: nested jagged ``(bsz, prompt_len_i + response_len_i)``, e.g. the engine's ``rhythm_waad_full``.
        response_mask: nested jagged ``(bsz, response_len_i)`` (verl's ``response_mask`` in TransferQueue).

    Returns:
        nested jagged ``(bsz, response_len_i)``: row i is ``tensor[i][-response_len_i:]``.

    Raises:
        ValueError: either input is not nested, the batch sizes differ, or a response is longer than its sequence.
    """
    if not (tensor.is_nested and response_mask.is_nested):
        raise ValueError("response_from_nested_unshifted needs nested (jagged) tensors for both arguments")
    values, offsets = tensor.values(), tensor.offsets()
    response_lens = response_mask.offsets().diff()
    seq_lens = offsets.diff()
    if seq_lens.numel() != response_lens.numel():
        raise ValueError(f"{seq_lens.numel()} sequences but {response_lens.numel()} response masks")
    if bool((response_lens > seq_lens).any()):
        raise ValueError("a response is longer than its full sequence: the tensor is not (bsz, prompt + response)")
    rows = [values[end - r : end] for r, end in zip(response_lens.tolist(), offsets[1:].tolist(), strict=True)]
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def nested_from_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """A nested jagged ``(len(rows), j)`` tensor from 1-D rows, the layout verl's engines return per micro-batch."""
    if not rows:
        raise ValueError("nested_from_rows needs at least one row")
    lengths = torch.tensor([r.numel() for r in rows], device=rows[0].device)
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    return torch.nested.nested_tensor_from_jagged(torch.cat(rows), offsets)
