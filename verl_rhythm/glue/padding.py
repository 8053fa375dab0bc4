# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/workers/utils/padding.py`` (verl 0.9.1) — full-sequence statistics → the response layout.

verl's :func:`verl.workers.utils.padding.response_from_nested` takes ``values[end - r - 1 : end - 1]`` of each
sequence: the logits at position p predict token p + 1, so a log-prob or value is read one position to the left.
A rhythm statistic of token t is read at t's **own** position (spec Sec. 1), so :func:`response_own_positions`
takes ``values[end - r : end]`` (the engine slices there, before the outputs leave the worker). Everything else
(jagged layout, one row per sequence) is verl's own format.
"""

from __future__ import annotations

import torch


def response_own_positions(rows: list[torch.Tensor], response_lens: list[int]) -> torch.Tensor:
    """The response positions of full-sequence rows, each token at its own position.

    Args:
        rows: per sequence a ``(prompt_len_i + response_len_i,)`` tensor, e.g. a captured WAAD.
        response_lens: ``response_len_i`` of each sequence (its response is its last ``response_len_i`` positions).

    Returns:
        nested jagged ``(bsz, response_len_i)``: row i is ``rows[i][-response_len_i:]`` (empty for 0), the layout of
        verl's ``old_log_probs`` without their one-position shift.

    Raises:
        ValueError: the lists differ in length, or a response is longer than its sequence.
    """
    if len(rows) != len(response_lens):
        raise ValueError(f"{len(rows)} sequences but {len(response_lens)} response lengths")
    for i, (row, r) in enumerate(zip(rows, response_lens, strict=True)):
        if not 0 <= r <= row.numel():
            raise ValueError(f"sequence {i}: a response of {r} tokens in a sequence of {row.numel()}")
    return nested_from_rows([row[row.numel() - r :] for row, r in zip(rows, response_lens, strict=True)])


def nested_from_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """A nested jagged ``(len(rows), j)`` tensor from 1-D rows, the layout verl's engines return per micro-batch."""
    if not rows:
        raise ValueError("nested_from_rows needs at least one row")
    lengths = torch.tensor([r.numel() for r in rows], device=rows[0].device)
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    return torch.nested.nested_tensor_from_jagged(torch.cat(rows), offsets)
