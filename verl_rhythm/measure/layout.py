# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Where the sequences of one forward lie in the attention inputs, and everything derived from that, built on the host.

- :class:`SequenceLayout`: one sequence (batch row, first column, length, response positions).
- :func:`layouts_from_position_ids` (a packed row, verl ``use_remove_padding``) and
  :func:`layouts_from_attention_mask` (a padded batch, padding on either side) build them.
- :class:`BatchLayout`: the layouts of one forward as index tensors for the batched path
  (:mod:`verl_rhythm.measure.batched`): sequences sorted by length and cut into :class:`Grid` s of similar lengths
  (``(n, L)`` gather indices into the ``(B, S)`` columns, response masks), per-token indices, FAI counts. Built once
  per forward from host metadata and moved to the device before the forward (:meth:`BatchLayout.to`), so that
  nothing inside the forward reads device memory.
"""

from __future__ import annotations

import itertools
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


KERNEL_TILE = 64
"""Rows (and columns) per program of the fused statistics kernels (:mod:`verl_rhythm.measure.triton_stats`)."""
GRID_FLOOR = 4096
"""Padded positions a grid may hold whatever its tokens (small micro-batches stay one grid: fewer ops)."""


def canonical_device(device: torch.device | str) -> torch.device:
    """``device`` with its index: ``cuda`` means the current CUDA device, so ``cuda`` and ``cuda:0`` compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _move(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device``; host tensors bound for CUDA go through pinned memory (an async copy)."""
    if x.device == device:
        return x
    pin = x.device.type == "cpu" and device.type == "cuda"
    return (x.pin_memory() if pin else x).to(device, non_blocking=pin)


class _Moveable:
    """Index tensors built on the host (:attr:`_TENSORS`) and moved to a device once, before the forward."""

    _TENSORS: tuple[str, ...] = ()
    device = torch.device("cpu")

    def to(self, device: torch.device | str):
        """Move the index tensors to ``device``; call it before the forward (an in-forward copy would wait on it)."""
        device = canonical_device(device)
        if device != self.device:
            for name in self._TENSORS:
                setattr(self, name, _move(getattr(self, name), device))
            for grid in getattr(self, "grids", ()):
                grid.to(device)
            self.device = device
        return self


class Grid(_Moveable):
    """Sequences of similar length on one padded ``(n, L)`` grid: the unit of work of the batched path.

    Position t of every sequence sits in grid column t, so the causal mask (and a sliding window) of query rows
    [t0, t1) is one mask shared by all of them. The sequences are sorted longest first, so the ones still running at
    position t are a prefix (:meth:`count_from`): a slice, never a gather. A grid's tokens are a contiguous range of
    the batch's token order (:class:`BatchLayout`), ``[offset, offset + tokens)``.

    Attributes:
        first, stop: the grid's sequences are the batch's sorted sequences ``[first, stop)``.
        lengths: their lengths (host ints, non-increasing); max_len: L.
        offset, tokens: the grid's range of the batch's token order.
        rows, cols: ``(n, L)`` long, batch row and column of grid position (i, t); positions past N_i point at the
            sequence's own last column (any valid column: their results are never read).
        resp: ``(n, L)`` bool, response positions (False past N_i).
        token_seq, token_pos: ``(tokens,)`` long, the grid position (i, t) of each of the grid's tokens, in order.
        rows_per_block: query rows per band block; block_has_response: per block, whether a response row is in it.
    """

    _TENSORS = ("rows", "cols", "resp", "token_seq", "token_pos")

    def __init__(self, layouts: list[SequenceLayout], first: int, offset: int, rows_per_block: int):
        self.first, self.stop = first, first + len(layouts)
        self.lengths = [x.length for x in layouts]
        self.max_len = big = self.lengths[0]
        self.offset, self.tokens = offset, sum(self.lengths)
        n = len(layouts)
        t = torch.arange(big)
        self.rows = torch.tensor([x.row for x in layouts], dtype=torch.long)[:, None].expand(n, big).contiguous()
        self.cols = torch.stack([x.start + t.clamp(max=x.length - 1) for x in layouts])
        self.resp = torch.zeros(n, big, dtype=torch.bool)
        for i, x in enumerate(layouts):
            self.resp[i, : x.length] = x.response_mask.detach().to("cpu")
        self.token_seq = torch.cat([torch.full((x.length,), i) for i, x in enumerate(layouts)])
        self.token_pos = torch.cat([torch.arange(x.length) for x in layouts])
        self.rows_per_block = rows_per_block
        any_row = self.resp.any(0)
        self.block_has_response = [
            bool(any_row[t0 : t0 + rows_per_block].any()) for t0 in range(0, big, rows_per_block)
        ]
        self.device = torch.device("cpu")

    def count_from(self, t0: int) -> int:
        """How many of the grid's sequences are longer than ``t0`` (they form the prefix ``[:count]``)."""
        return sum(n > t0 for n in self.lengths)


def _grid_bounds(lengths: list[int]) -> list[tuple[int, int]]:
    """Cut non-increasing lengths into grids: a grid takes the next sequence while its padded positions stay within
    twice its tokens, or within :data:`GRID_FLOOR`."""
    bounds, first = [], 0
    while first < len(lengths):
        stop, tokens = first + 1, lengths[first]
        while stop < len(lengths):
            padded = (stop + 1 - first) * lengths[first]
            if padded > max(2 * (tokens + lengths[stop]), GRID_FLOOR):
                break
            tokens += lengths[stop]
            stop += 1
        bounds.append((first, stop))
        first = stop
    return bounds


class BatchLayout(_Moveable):
    """The layouts of one forward as host-built index tensors for the batched path.

    The ``n`` non-empty sequences are sorted by length, longest first (``order``), and cut into :class:`Grid` s of
    similar lengths (a grid pads to at most twice its tokens, or :data:`GRID_FLOOR` positions), so that the batched
    path's memory follows the micro-batch's tokens, not its longest sequence times its number of sequences. Results
    are kept per token in the *token order*: the sorted sequences' positions back to back (sequence j's tokens are
    ``[offsets[j], offsets[j] + lengths[j])``), each grid a contiguous range of it.

    Args:
        layouts: the sequences of the forward.
        horizon_lo, horizon_hi: H_lo, H_hi (for the FAI counts).
        rows_per_block: query rows per band block (for the response-row flags of the blocks).

    Attributes:
        layouts: the :class:`SequenceLayout` list, in the caller's order.
        order: indices into ``layouts`` of the non-empty sequences, longest first (Python ints).
        lengths, offsets: their lengths and first tokens in the token order (Python ints); tokens: T = sum N_i.
        grids: the :class:`Grid` s, covering the sorted sequences in order.
        has_response: per sorted sequence, whether it has a response position (host bools).
        flat_rows, flat_cols, flat_pos, flat_seq: ``(T,)`` long in the token order: batch row, column, position
            within the sequence, index of the sequence in ``layouts``.
        token_seq: ``(T,)`` long, the sorted index of each token's sequence.
        resp: ``(T,)`` bool, response positions; counts: ``(T,)`` fp32, |T(s)| of every position.
        seq_rows, first_cols, last_cols: ``(n,)`` long per sorted sequence: its batch row, first and last column.
        alone: ``(n,)`` bool, the sequence is the only one in its batch row.
        plain_causal: every sequence starts its own batch row at column 0 (host bool): what a causal kernel without
            a mask computes.
        n_resp: ``(n,)`` fp32, the number of response positions of each sorted sequence.
        kernel_tiles: for the fused kernels, ``(tiles (P, 5) int32, tile_index (n, max tiles) long)``: per tile of
            :data:`KERNEL_TILE` positions its batch row, first column, sequence length, first position and the
            sequence's first token in the token order; per sorted sequence its tiles' rows (padded with P).
        kernel_resp: ``(T,)`` int8, ``resp`` for the kernels.
        max_row, max_end: the largest row and ``start + length`` (to check the forward's shapes without a sync).
    """

    _TENSORS = (
        "flat_rows",
        "flat_cols",
        "flat_pos",
        "flat_seq",
        "token_seq",
        "resp",
        "counts",
        "seq_rows",
        "first_cols",
        "last_cols",
        "alone",
        "n_resp",
        "kernel_resp",
        "_tiles",
        "_tile_index",
    )

    def __init__(self, layouts: list[SequenceLayout], horizon_lo: int, horizon_hi: int, rows_per_block: int):
        if not all(isinstance(x, SequenceLayout) for x in layouts):
            raise TypeError("layouts must be a list of SequenceLayout")
        self.layouts = list(layouts)
        self.order = sorted((i for i, x in enumerate(self.layouts) if x.length), key=lambda i: -self.layouts[i].length)
        seqs = [self.layouts[i] for i in self.order]
        self.lengths = [x.length for x in seqs]
        self.offsets = [0, *itertools.accumulate(self.lengths)][:-1]
        self.tokens = sum(self.lengths)
        self.grids = [Grid(seqs[a:b], a, self.offsets[a], rows_per_block) for a, b in _grid_bounds(self.lengths)]
        empty = torch.zeros(0, dtype=torch.long)

        def per_token(fn) -> torch.Tensor:
            return torch.cat([fn(j, x) for j, x in enumerate(seqs)]) if seqs else empty

        self.flat_rows = per_token(lambda j, x: torch.full((x.length,), x.row))
        self.flat_cols = per_token(lambda j, x: torch.arange(x.start, x.start + x.length))
        self.flat_pos = per_token(lambda j, x: torch.arange(x.length))
        self.flat_seq = per_token(lambda j, x: torch.full((x.length,), self.order[j]))
        self.token_seq = per_token(lambda j, x: torch.full((x.length,), j))
        self.resp = per_token(lambda j, x: x.response_mask.detach().to("cpu")).bool()
        self.counts = per_token(lambda j, x: fai_count(x.response_mask.detach().to("cpu"), horizon_lo, horizon_hi))
        self.counts = self.counts.float()
        self.has_response = [bool(x.response_mask.any()) for x in seqs]
        self.seq_rows = torch.tensor([x.row for x in seqs], dtype=torch.long)
        self.first_cols = torch.tensor([x.start for x in seqs], dtype=torch.long)
        self.last_cols = torch.tensor([x.start + x.length - 1 for x in seqs], dtype=torch.long)
        per_row = Counter(x.row for x in seqs)
        self.alone = torch.tensor([per_row[x.row] == 1 for x in seqs], dtype=torch.bool)
        self.plain_causal = all(x.start == 0 and per_row[x.row] == 1 for x in seqs)
        self.n_resp = torch.tensor([float(x.response_mask.sum()) for x in seqs], dtype=torch.float32)
        self.kernel_resp = self.resp.to(torch.int8)
        tiles, index = [], []
        for x, offset in zip(seqs, self.offsets, strict=True):
            index.append(list(range(len(tiles), len(tiles) + -(-x.length // KERNEL_TILE))))
            tiles += [(x.row, x.start, x.length, r0, offset) for r0 in range(0, x.length, KERNEL_TILE)]
        width = max((len(i) for i in index), default=0)
        self._tiles = torch.tensor(tiles, dtype=torch.int32).reshape(-1, 5)
        padded = [ids + [len(tiles)] * (width - len(ids)) for ids in index]
        self._tile_index = torch.tensor(padded, dtype=torch.long).reshape(len(seqs), width)
        self.max_row = max((x.row for x in self.layouts), default=-1)
        self.max_end = max((x.start + x.length for x in self.layouts), default=0)
        self.device = torch.device("cpu")

    @property
    def kernel_tiles(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tiles, tile_index)`` for the fused kernels (see the class attributes)."""
        return self._tiles, self._tile_index

    def check_shape(self, batch: int, seq_len: int) -> None:
        """Raise if a layout lies outside a ``(batch, seq_len)`` forward (host ints only, no device read)."""
        if self.max_row >= batch or self.max_end > seq_len:
            for i, lay in enumerate(self.layouts):
                if lay.row >= batch or lay.start + lay.length > seq_len:
                    raise ValueError(
                        f"SequenceLayout {i} (row={lay.row}, start={lay.start}, length={lay.length}) lies outside "
                        f"the ({batch}, {seq_len}) batch of the forward"
                    )
