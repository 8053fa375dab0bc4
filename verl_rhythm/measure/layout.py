# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Where the sequences of one forward lie in the attention inputs, and everything derived from that, built on the host.

- :class:`SequenceLayout`: one sequence (batch row, first column, length, response positions).
- :func:`layouts_from_position_ids` (a packed row, verl ``use_remove_padding``) and
  :func:`layouts_from_attention_mask` (a padded batch, padding on either side) build them.
- :class:`BatchLayout`: the layouts of one forward as index tensors for the batched path
  (:mod:`verl_rhythm.measure.batched`): sequences sorted by length, a ``(n, L)`` gather index into the
  ``(B, S)`` columns, the padded response mask and FAI counts. Built once per forward from host metadata and moved to
  the device before the forward (:meth:`BatchLayout.to`), so that nothing inside the forward reads device memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from verl_rhythm.measure.heads import fai_count


@dataclass(frozen=True)
class SequenceLayout:
    """Where one sequence lies in the query/key tensors of an attention call.

    Attributes:
        row: the batch row of ``query (B, H, S, D)`` holding the sequence.
        start: its first column in that row.
        length: N, its number of positions; it occupies columns ``[start, start + length)``.
        response_mask: ``(length,)`` bool over those positions, the response positions R.
    """

    row: int
    start: int
    length: int
    response_mask: torch.Tensor

    def __post_init__(self):
        if self.row < 0 or self.start < 0 or self.length < 0:
            raise ValueError(
                f"SequenceLayout needs row, start, length >= 0, got {self.row}, {self.start}, {self.length}"
            )
        mask = self.response_mask
        if not isinstance(mask, torch.Tensor) or mask.shape != (self.length,):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(
                f"response_mask must be a ({self.length},) tensor for a sequence of length {self.length}, got {shape}"
            )
        object.__setattr__(self, "response_mask", mask.bool())


def layouts_from_position_ids(position_ids: torch.Tensor, response_masks: list[torch.Tensor]) -> list[SequenceLayout]:
    """Layouts of a packed row (verl ``use_remove_padding``): sequences back to back, ``position_ids`` restart.

    A new sequence starts wherever ``position_ids`` does not continue the previous position by one. Segments after
    the last of ``response_masks`` (the pad verl appends to a packed row) are ignored. Runs on the host, before the
    forward.

    Args:
        position_ids: ``(1, S)`` or ``(S,)`` long.
        response_masks: one ``(N_i,)`` bool per sequence, in packing order; N_i must equal the i-th segment's length.

    Raises:
        ValueError: a batch dimension other than 1, fewer segments than masks, or a length mismatch.
    """
    pos = position_ids
    if pos.dim() == 2:
        if pos.shape[0] != 1:
            raise ValueError(f"position_ids of a packed batch must be (1, S), got {tuple(pos.shape)}")
        pos = pos[0]
    if pos.dim() != 1:
        raise ValueError(f"position_ids must be (1, S) or (S,), got {tuple(position_ids.shape)}")
    pos = pos.detach().to("cpu", torch.long)
    if pos.numel() == 0:
        bounds = []
    else:
        breaks = torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1
        bounds = [0, *breaks.tolist(), pos.numel()]
    segments = list(zip(bounds[:-1], bounds[1:], strict=True)) if bounds else []
    if len(segments) < len(response_masks):
        raise ValueError(
            f"position_ids hold {len(segments)} packed sequences but response_masks has {len(response_masks)} entries"
        )
    layouts = []
    for i, (mask, (lo, hi)) in enumerate(zip(response_masks, segments, strict=False)):
        if mask.shape != (hi - lo,):
            raise ValueError(
                f"response_masks[{i}] has shape {tuple(mask.shape)} but packed sequence {i} in position_ids has "
                f"length {hi - lo}"
            )
        layouts.append(SequenceLayout(row=0, start=lo, length=hi - lo, response_mask=mask))
    return layouts


def layouts_from_attention_mask(
    attention_mask: torch.Tensor, response_masks: list[torch.Tensor]
) -> list[SequenceLayout]:
    """Layouts of a padded batch, one sequence per row, padding on the left or the right. Runs on the host.

    Args:
        attention_mask: ``(B, S)``, 1/True on the sequence's positions; they must be contiguous in each row.
        response_masks: one ``(N_b,)`` bool per row, N_b = that row's number of unmasked positions (a fully masked
            row is an empty sequence: N_b = 0).

    Raises:
        ValueError: wrong shapes, a row whose positions are not contiguous, or a length mismatch.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, S), got {tuple(attention_mask.shape)}")
    if len(response_masks) != attention_mask.shape[0]:
        raise ValueError(
            f"attention_mask has {attention_mask.shape[0]} rows but response_masks has {len(response_masks)} entries"
        )
    valid = attention_mask.detach().to("cpu").bool()
    layouts = []
    for b, mask in enumerate(response_masks):
        cols = torch.nonzero(valid[b]).flatten()
        n = cols.numel()
        start = int(cols[0]) if n else 0
        if n and int(cols[-1]) - start + 1 != n:
            raise ValueError(f"attention_mask row {b} is not one contiguous run of positions (holes inside)")
        if mask.shape != (n,):
            raise ValueError(
                f"response_masks[{b}] has shape {tuple(mask.shape)} but attention_mask row {b} has {n} positions"
            )
        layouts.append(SequenceLayout(row=b, start=start, length=n, response_mask=mask))
    return layouts


class BatchLayout:
    """The layouts of one forward as host-built index tensors for the batched path.

    The ``n`` non-empty sequences are sorted by length, longest first (``order``), so that the sequences still
    running at position t are a prefix: query chunk [t0, t1) of the padded ``(n, L)`` grid touches sequences
    ``[:count_from(t0)]`` only, a slice, never a gather. ``L`` is the longest length.

    Args:
        layouts: the sequences of the forward.
        horizon_lo, horizon_hi: H_lo, H_hi (for the FAI counts).
        rows_per_block: query rows per band block (for the response-row flags of the blocks).

    Attributes:
        layouts: the :class:`SequenceLayout` list, in the caller's order.
        order: indices into ``layouts`` of the non-empty sequences, longest first (Python ints).
        lengths: their lengths, in that order (Python ints, non-increasing).
        max_len: L (0 when every sequence is empty).
        rows, cols: ``(n, L)`` long, the batch row and column of padded position (i, t); positions past N_i point
            at the sequence's own last column (any valid column: their results are never read).
        resp: ``(n, L)`` bool, response positions (False past N_i).
        counts: ``(n, L)`` fp32, |T(s)| of every position (0 past N_i).
        has_response: per sorted sequence, whether it has a response position (host bools).
        last: ``(n,)`` long, N_i - 1; alone: ``(n,)`` bool, the sequence is the only one in its batch row.
        flat_rows, flat_cols, flat_pos, flat_seq: ``(T,)`` long over the T = sum N_i real positions: batch row,
            column, position within the sequence, index of the sequence in ``layouts``.
        block_has_response: per band block [t0, t0 + rows_per_block): whether any sequence has a response row there.
        max_row, max_end: the largest row and ``start + length`` (to check the forward's shapes without a sync).
    """

    _TENSORS = ("rows", "cols", "resp", "counts", "last", "alone", "flat_rows", "flat_cols", "flat_pos", "flat_seq")

    def __init__(self, layouts: list[SequenceLayout], horizon_lo: int, horizon_hi: int, rows_per_block: int):
        if not all(isinstance(x, SequenceLayout) for x in layouts):
            raise TypeError("layouts must be a list of SequenceLayout")
        self.layouts = list(layouts)
        self.order = sorted((i for i, x in enumerate(self.layouts) if x.length), key=lambda i: -self.layouts[i].length)
        self.lengths = [self.layouts[i].length for i in self.order]
        self.max_len = self.lengths[0] if self.order else 0
        n, big = len(self.order), self.max_len
        t = torch.arange(big)
        self.rows = torch.zeros(n, big, dtype=torch.long)
        self.cols = torch.zeros(n, big, dtype=torch.long)
        self.resp = torch.zeros(n, big, dtype=torch.bool)
        self.counts = torch.zeros(n, big)
        for j, i in enumerate(self.order):
            lay = self.layouts[i]
            mask = lay.response_mask.detach().to("cpu")
            self.rows[j] = lay.row
            self.cols[j] = lay.start + t.clamp(max=lay.length - 1)
            self.resp[j, : lay.length] = mask
            self.counts[j, : lay.length] = fai_count(mask, horizon_lo, horizon_hi)
        self.last = torch.tensor([n - 1 for n in self.lengths], dtype=torch.long)
        per_row = Counter(x.row for x in self.layouts if x.length)
        self.alone = torch.tensor([per_row[self.layouts[i].row] == 1 for i in self.order], dtype=torch.bool)
        self.has_response = self.resp.any(1).tolist()
        any_row = self.resp.any(0)
        self.rows_per_block = rows_per_block
        starts = range(0, big, rows_per_block)
        self.block_has_response = [bool(any_row[t0 : t0 + rows_per_block].any()) for t0 in starts]
        real = [(i, x) for i, x in enumerate(self.layouts) if x.length]
        empty = torch.zeros(0, dtype=torch.long)
        self.flat_rows = torch.cat([torch.full((x.length,), x.row) for _, x in real]) if real else empty
        self.flat_cols = torch.cat([torch.arange(x.start, x.start + x.length) for _, x in real]) if real else empty
        self.flat_pos = torch.cat([torch.arange(x.length) for _, x in real]) if real else empty
        self.flat_seq = torch.cat([torch.full((x.length,), i) for i, x in real]) if real else empty
        self.max_row = max((x.row for x in self.layouts), default=-1)
        self.max_end = max((x.start + x.length for x in self.layouts), default=0)
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> BatchLayout:
        """Move the index tensors to ``device``; call it before the forward (an in-forward copy would wait on it)."""
        device = torch.device(device)
        if device != self.device:
            pin = device.type == "cuda" and torch.cuda.is_available()
            for name in self._TENSORS:
                x = getattr(self, name)
                setattr(self, name, (x.pin_memory() if pin else x).to(device, non_blocking=pin))
            self.device = device
        return self

    def count_from(self, t0: int) -> int:
        """How many sorted sequences are longer than ``t0`` (they form the prefix ``[:count]``)."""
        return sum(n > t0 for n in self.lengths)

    def check_shape(self, batch: int, seq_len: int) -> None:
        """Raise if a layout lies outside a ``(batch, seq_len)`` forward (host ints only, no device read)."""
        if self.max_row >= batch or self.max_end > seq_len:
            for i, lay in enumerate(self.layouts):
                if lay.row >= batch or lay.start + lay.length > seq_len:
                    raise ValueError(
                        f"SequenceLayout {i} (row={lay.row}, start={lay.start}, length={lay.length}) lies outside "
                        f"the ({batch}, {seq_len}) batch of the forward"
                    )
