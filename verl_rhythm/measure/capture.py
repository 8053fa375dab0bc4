"""Exact rhythm statistics from post-RoPE q/k, in query chunks, never an N×N map (spec Sec. 1-3).

For one sequence and one query head with logits z[t, s] = scaling * q_t · k_s (s <= t), everything the method
needs is

- the row log-sum-exp ``lse_t`` and the expected backward distance ``dist_t = sum_s A[t, s] (t - s)``: full-row
  parts, one pass over the causal keys of each query chunk (:func:`row_stats`), or taken from the layer's own
  attention call (:mod:`verl_rhythm.measure.fused`);
- two diagonal bands of A[t, t - d] = exp(z[t, t - d] - lse_t): offsets d < W give WAAD
  (``sum_{d<W} d A + W (1 - sum_{d<W} A)``), offsets H_lo <= d <= H_hi on response rows give the FAI numerator
  (:func:`band_stats`, O(N · H_hi) work per head).

All arithmetic is fp32 whatever the input dtype; at most ``chunk_size × N`` logits per head exist at any time.
:class:`RhythmCapture` collects those per-head vectors over the selected layers of one forward pass and hands them
to the aggregation shared with the dense reference (:func:`verl_rhythm.measure.heads.rhythm_for_sequences`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from verl_rhythm.config import RhythmConfig, select_layers
from verl_rhythm.measure.heads import HeadStats, SequenceRhythm, fai_count, rhythm_for_sequences

BAND_ROWS = 64
"""Query rows per block of :func:`band_stats`: small blocks waste little of the c × (c + B) logits outside the bands
(B = H_hi = 100 by default), large ones cost Python overhead; 64 is the fastest on CPU at N = 4096."""


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
    the last of ``response_masks`` (the pad verl appends to a packed row) are ignored.

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
    """Layouts of a padded batch, one sequence per row, padding on the left or the right.

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


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """fp32 matmuls really in fp32 inside: autocast off (verl runs the forward under bf16 autocast, which would
    round the capture's logits to bf16) and, on CUDA, TF32 off (10-bit mantissa), restored afterwards."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _sequence_qk(query, key, layout: SequenceLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(H, N, D)`` queries and ``(H_kv, N, D)`` keys of one sequence."""
    if query.dim() != 4 or key.dim() != 4:
        raise ValueError(f"query and key must be (B, H, S, D), got {tuple(query.shape)} and {tuple(key.shape)}")
    b, h, s, d = query.shape
    if key.shape[0] != b or key.shape[2] != s or key.shape[3] != d or h % key.shape[1]:
        raise ValueError(
            f"key {tuple(key.shape)} does not match query {tuple(query.shape)}: need (B, H_kv, S, D) with H_kv | H"
        )
    if layout.row >= b or layout.start + layout.length > s:
        raise ValueError(
            f"SequenceLayout(row={layout.row}, start={layout.start}, length={layout.length}) lies outside the "
            f"query of shape {tuple(query.shape)}"
        )
    cols = slice(layout.start, layout.start + layout.length)
    q = query[layout.row, :, cols].float()
    k = key[layout.row, :, cols].float()
    return q, k


def chunk_logits(q: torch.Tensor, k: torch.Tensor, rows: slice, keys: slice, scaling: float) -> torch.Tensor:
    """fp32 logits ``(H, c, w)`` of query rows ``rows`` against keys ``keys``, all heads in one batched matmul.

    Query head h reads kv head h // (H / H_kv): the G = H / H_kv heads of a kv head are stacked as G * c rows.
    """
    h, hkv = q.shape[0], k.shape[0]
    qc = q[:, rows]
    c = qc.shape[1]
    z = torch.bmm(qc.reshape(hkv, (h // hkv) * c, q.shape[2]), k[:, keys].transpose(1, 2))
    return z.view(h, c, -1).mul_(scaling)


def row_stats(q: torch.Tensor, k: torch.Tensor, scaling: float, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp and expected backward distance of every query row, in query chunks.

    Causal: query chunk [t0, t1) only meets keys [0, t1), ``H × (t1 - t0) × t1`` logits at a time.

    Args:
        q: ``(H, N, D)`` fp32 queries of one sequence.
        k: ``(H_kv, N, D)`` fp32 keys; query head h reads kv head h // (H / H_kv).
        scaling: the logit scale.
        chunk_size: query rows per chunk.

    Returns:
        ``(lse, dist)``, each ``(H, N)`` fp32: lse_t = log sum_{s<=t} exp(z[t, s]) and
        dist_t = sum_{s<=t} A[t, s] (t - s).
    """
    h, n, _ = q.shape
    lse = q.new_empty(h, n)
    dist = q.new_empty(h, n)
    pos = torch.arange(n, device=q.device)
    for t0 in range(0, n, chunk_size):
        t1 = min(n, t0 + chunk_size)
        delta = (pos[t0:t1, None] - pos[None, :t1]).to(q.dtype)  # (c, t1): t - s
        z = chunk_logits(q, k, slice(t0, t1), slice(0, t1), scaling)
        z[..., t0:].masked_fill_(delta[:, t0:] < 0, float("-inf"))  # only the diagonal block has future keys
        row_max = z.amax(-1, keepdim=True)  # finite: the diagonal key is always there
        p = z.sub_(row_max).exp_()  # one exp pass: unnormalised probabilities, max entry 1
        total = p.sum(-1)  # (H, c), >= 1
        lse[:, t0:t1] = row_max.squeeze(-1) + total.log()
        dist[:, t0:t1] = p.mul_(delta).sum(-1).div_(total)
    return lse, dist


def band_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    scaling: float,
    lse: torch.Tensor,
    response_mask: torch.Tensor,
    waad_window: int,
    fai_horizon_lo: int,
    fai_horizon_hi: int,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """WAAD of every row and the FAI numerator of every column from the two diagonal bands of A.

    WAAD_t = W + sum_{d < W} A[t, t - d] (d - W) (the band form of spec Eq. 9: the rest of the row weighs W). Query
    block [t0, t1) of c = min(chunk_size, :data:`BAND_ROWS`) rows meets keys [t0 - B, t1) with B = max(W - 1, H_hi)
    (B = W - 1 for a block without response rows): ``H × c × (c + B)`` logits at a time, O(N · (c + B)) per head.

    Args:
        q: ``(H, N, D)`` fp32; k: ``(H_kv, N, D)`` fp32; scaling: as in :func:`row_stats`.
        lse: ``(H, N)`` fp32 row log-sum-exp (from :func:`row_stats` or the layer's attention kernel).
        response_mask: ``(N,)`` bool, the response rows R.
        waad_window, fai_horizon_lo, fai_horizon_hi: W, H_lo, H_hi.
        chunk_size: caps the query rows per block.

    Returns:
        ``(waad, fai_num)``, each ``(H, N)`` fp32: waad_t = sum_s A[t, s] min(t - s, W) and
        fai_num_s = sum over t in R with H_lo <= t - s <= H_hi of A[t, s].
    """
    h, n, _ = q.shape
    reach = max(waad_window - 1, fai_horizon_hi)
    waad = q.new_empty(h, n)
    fai_num = q.new_zeros(h, n)
    pos = torch.arange(n, device=q.device)
    resp = response_mask.to(q.device).bool()
    resp_rows = torch.cumsum(response_mask.detach().to("cpu", torch.long), 0).tolist()  # host copy: no device sync
    rows_per_block = min(chunk_size, BAND_ROWS)
    for t0 in range(0, n, rows_per_block):
        t1 = min(n, t0 + rows_per_block)
        # a block without response rows needs only the WAAD band
        has_resp = resp_rows[t1 - 1] > (resp_rows[t0 - 1] if t0 else 0)
        s0 = max(0, t0 - (reach if has_resp else waad_window - 1))
        delta = pos[t0:t1, None] - pos[None, s0:t1]  # (c, w)
        near = (delta >= 0) & (delta < waad_window)
        near_weight = torch.where(near, (delta - waad_window).to(q.dtype), 0.0)
        far = ((delta >= fai_horizon_lo) & (delta <= fai_horizon_hi) & resp[t0:t1, None]).to(q.dtype)
        z = chunk_logits(q, k, slice(t0, t1), slice(s0, t1), scaling)  # (H, c, w)
        # outside the bands (e.g. future keys) exp may overflow: clamp, then the band weights zero those entries
        p = z.sub_(lse[:, t0:t1, None]).clamp_max_(0.0).exp_()
        waad[:, t0:t1] = (p * near_weight).sum(-1).add_(waad_window)
        fai_num[:, s0:t1] += p.mul_(far).sum(-2)
    return waad, fai_num


def layer_head_stats(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    layout: SequenceLayout,
    layer: int,
    *,
    waad_window: int = 10,
    fai_horizon_lo: int = 10,
    fai_horizon_hi: int = 100,
    chunk_size: int = 256,
    lse: torch.Tensor | None = None,
    dist: torch.Tensor | None = None,
) -> HeadStats:
    """Exact :class:`HeadStats` of one sequence for the H query heads of one layer.

    Args:
        query: ``(B, H, S, D)`` post-RoPE queries as transformers hands them to an attention function (any float
            dtype; computed in fp32).
        key: ``(B, H_kv, S, D)`` post-RoPE keys; query head h reads kv head h // (H / H_kv).
        scaling: the logit scale of the layer (``module.scaling``, usually D ** -0.5).
        layout: where the sequence lies and its response positions.
        layer: the decoder layer index (recorded in ``HeadStats.heads``).
        waad_window, fai_horizon_lo, fai_horizon_hi: W, H_lo, H_hi of the spec.
        chunk_size: query rows per chunk.
        lse: optional ``(H, N)`` row log-sum-exp of this sequence, e.g. from the layer's own attention kernel.
        dist: optional ``(H, N)`` expected backward distance, given together with ``lse``.

    Returns:
        :class:`HeadStats` with K = H rows, heads ``(layer, 0..H-1)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    q, k = _sequence_qk(query, key, layout)
    h, n = q.shape[0], q.shape[1]
    if (lse is None) != (dist is None):
        raise ValueError("pass lse and dist together (both from the attention kernel) or neither")
    if lse is not None and (lse.shape != (h, n) or dist.shape != (h, n)):
        raise ValueError(f"lse and dist must be ({h}, {n}), got {tuple(lse.shape)} and {tuple(dist.shape)}")
    resp = layout.response_mask.to(q.device)
    with exact_fp32(q.device):
        if lse is None:
            lse, dist = row_stats(q, k, scaling, chunk_size)
        waad, fai_num = band_stats(
            q, k, scaling, lse.float(), resp, waad_window, fai_horizon_lo, fai_horizon_hi, chunk_size
        )
    return HeadStats(
        dist=dist.float(),
        waad=waad,
        fai_num=fai_num,
        fai_count=fai_count(resp, fai_horizon_lo, fai_horizon_hi),
        response_mask=resp,
        heads=[(layer, i) for i in range(h)],
    )


class RhythmCapture:
    """Collects per-head statistics of the selected layers during one forward pass.

    Usage (the hook in :mod:`verl_rhythm.measure.hook` calls :meth:`record`)::

        capture = RhythmCapture(cfg, model.config.num_hidden_layers, layouts)
        with torch.no_grad(), capture_active(capture):
            model(input_ids, ...)
        rhythms = capture.finalize()

    Attributes:
        cfg: the :class:`RhythmConfig` (W, H_lo, H_hi, head_quantile, head_group_scope, chunk_size, layers).
        layers: the selected decoder layers, ``select_layers(num_layers, cfg.layers)``.
        layouts: the sequences of the current forward, or ``None`` until :meth:`set_layouts`.
        seconds: wall time spent inside :meth:`record` since the last :meth:`reset`.
        paths: per recorded layer, ``"fused"`` or ``"chunked"``: where the full-row statistics came from.
        fused: let the hook take the full-row statistics from the layer's own SDPA call where that is exact
            (:mod:`verl_rhythm.measure.fused`); ``False`` forces the chunked path everywhere.
    """

    def __init__(
        self, cfg: RhythmConfig, num_layers: int, layouts: list[SequenceLayout] | None = None, *, fused: bool = True
    ):
        self.cfg = cfg
        self.fused = fused
        self.layers = select_layers(num_layers, cfg.layers)
        self._selected = frozenset(self.layers)
        self.layouts: list[SequenceLayout] | None = None
        self._stats: dict[int, list[HeadStats]] = {}
        self._columns: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.paths: dict[int, str] = {}
        self.seconds = 0.0
        if layouts is not None:
            self.set_layouts(layouts)

    def wants(self, layer_idx: int | None) -> bool:
        """Whether :meth:`record` would use this layer (lets the hook skip work for other layers)."""
        return layer_idx in self._selected

    def set_layouts(self, layouts: list[SequenceLayout]) -> None:
        """Set the sequences of the next forward and drop anything recorded for the previous ones."""
        if not all(isinstance(x, SequenceLayout) for x in layouts):
            raise TypeError("layouts must be a list of SequenceLayout")
        self.layouts = list(layouts)
        self._stats = {}
        self._columns = {}
        self.paths = {}

    def layout_columns(self, batch: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per column of a ``(batch, seq_len)`` query: its position within its layout and the layout's index.

        Returns:
            ``(pos, seq)``, each ``(batch, seq_len)`` fp32; columns outside every layout have pos 0 and seq -1.
            Cached until :meth:`set_layouts`.
        """
        key = (batch, seq_len, str(device))
        if key not in self._columns:
            if self.layouts is None:
                raise RuntimeError("RhythmCapture: set_layouts() must be called before the forward")
            pos = torch.zeros(batch, seq_len)
            seq = torch.full((batch, seq_len), -1.0)
            for i, lay in enumerate(self.layouts):
                if lay.row >= batch or lay.start + lay.length > seq_len:
                    raise ValueError(
                        f"SequenceLayout {i} (row={lay.row}, start={lay.start}, length={lay.length}) lies outside "
                        f"the ({batch}, {seq_len}) batch of the forward"
                    )
                pos[lay.row, lay.start : lay.start + lay.length] = torch.arange(lay.length, dtype=pos.dtype)
                seq[lay.row, lay.start : lay.start + lay.length] = i
            self._columns[key] = (pos.to(device), seq.to(device))
        return self._columns[key]

    def reset(self) -> None:
        """Drop recorded statistics and zero :attr:`seconds` (layouts are kept)."""
        self._stats = {}
        self.paths = {}
        self.seconds = 0.0

    def record(self, layer_idx: int | None, query: torch.Tensor, key: torch.Tensor, scaling: float | None, **kwargs):
        """Compute and keep the statistics of every layout for one layer; ignores layers not selected.

        Args:
            layer_idx: the decoder layer (``module.layer_idx``).
            query: ``(B, H, S, D)``; key: ``(B, H_kv, S, D)``, post-RoPE.
            scaling: logit scale; ``None`` means D ** -0.5 (the SDPA default).
            **kwargs: ``lse`` and ``dist``, each ``(B, H, S)`` fp32, when the layer's attention kernel produced
                them (:mod:`verl_rhythm.measure.fused`); other keys are ignored. A layer recorded twice keeps the
                last call.
        """
        if not self.wants(layer_idx):
            return
        if self.layouts is None:
            raise RuntimeError("RhythmCapture.record called before set_layouts(): the sequence layout is unknown")
        t = time.perf_counter()
        scaling = float(query.shape[-1] ** -0.5 if scaling is None else scaling)
        lse, dist = kwargs.get("lse"), kwargs.get("dist")
        cfg = self.cfg
        out = []
        with torch.no_grad():
            for lay in self.layouts:
                cols = slice(lay.start, lay.start + lay.length)
                out.append(
                    layer_head_stats(
                        query,
                        key,
                        scaling,
                        lay,
                        layer_idx,
                        waad_window=cfg.waad_window,
                        fai_horizon_lo=cfg.fai_horizon_lo,
                        fai_horizon_hi=cfg.fai_horizon_hi,
                        chunk_size=cfg.chunk_size,
                        lse=None if lse is None else lse[lay.row, :, cols],
                        dist=None if dist is None else dist[lay.row, :, cols],
                    )
                )
        self._stats[layer_idx] = out
        self.paths[layer_idx] = "chunked" if lse is None else "fused"
        self.seconds += time.perf_counter() - t

    def head_stats(self) -> list[HeadStats]:
        """Per-layout :class:`HeadStats` over all selected layers (layer-major head rows).

        Raises:
            RuntimeError: a selected layer was never recorded (names it), or no layouts were set.
        """
        missing = [layer for layer in self.layers if layer not in self._stats]
        if missing:
            raise RuntimeError(
                f"RhythmCapture: selected layers {missing} were never recorded (recorded: {sorted(self._stats)}); "
                "is the attention hook installed (install_attention_hook) and capture_active around the forward?"
            )
        if self.layouts is None:
            raise RuntimeError("RhythmCapture.finalize called before set_layouts()")
        return [HeadStats.concat([self._stats[layer][i] for layer in self.layers]) for i in range(len(self.layouts))]

    def finalize(self) -> list[SequenceRhythm]:
        """Per-token WAAD and FAI of every layout, in order (grouping scope from ``cfg.head_group_scope``)."""
        t = time.perf_counter()
        out = rhythm_for_sequences(self.head_stats(), self.cfg.head_quantile, self.cfg.head_group_scope)
        self.seconds += time.perf_counter() - t
        return out
