# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
""":class:`RhythmCapture`: collects the per-head statistics of the selected layers during one forward pass.

Each selected layer's call (routed here by :mod:`verl_rhythm.measure.hook`) takes one of three paths, all computing
the same statistics for every sequence of the micro-batch at once, with no host sync:

- ``triton`` (default on CUDA with Triton): the fused kernels (:mod:`.triton_stats`), one pass over the keys;
- ``batched`` (default elsewhere): grids of similar lengths (:mod:`.batched`);
- ``fused`` (opt-in, see :attr:`RhythmCapture.fused`): the full-row statistics come from the layer's own SDPA call
  (:mod:`.fused`: fp32, and no memory beyond what the stock call allocates), so only the two bands are computed
  here.

Layout metadata (:class:`~verl_rhythm.measure.layout.BatchLayout`) is built on the host by :meth:`set_layouts` and
moved to the device with :meth:`RhythmCapture.to`, before the forward; so are the device's kernel choices
(:class:`~verl_rhythm.measure.kernels.Kernels`, kept on the capture). :meth:`RhythmCapture.finalize`, after the
forward, copies the spans (and the deferred layout checks) to the host once.
"""

from __future__ import annotations

import time

import torch

from verl_rhythm.measure import batched
from verl_rhythm.measure.heads import HeadStats, SequenceRhythm, group_size, rhythm_for_tokens
from verl_rhythm.measure.kernels import Kernels, kernels_for, warn_once
from verl_rhythm.measure.layout import (
    BatchLayout,
    SequenceLayout,
    canonical_device,
    layouts_from_attention_mask,
    layouts_from_position_ids,
)
from verl_rhythm.measure.settings import CaptureSettings, select_layers

__all__ = [
    "BatchLayout",
    "EventTimer",
    "Kernels",
    "RhythmCapture",
    "WallTimer",
    "SequenceLayout",
    "layouts_from_attention_mask",
    "layouts_from_position_ids",
]


class WallTimer:
    """Host wall time of the timed spans: the capture's own time where the work runs synchronously (CPU)."""

    def __init__(self):
        self._seconds = 0.0

    def start(self) -> float:
        return time.perf_counter()

    def stop(self, token: float) -> None:
        self._seconds += time.perf_counter() - token

    def seconds(self) -> float:
        return self._seconds


class EventTimer:
    """Device time of the timed spans, from events recorded on the current stream (CUDA).

    On a GPU the host only launches the capture's kernels, so host wall time would measure launches. Each span is
    bracketed by two timing events recorded on the stream the forward runs on (no wait); :meth:`seconds` reads their
    elapsed times. It waits (``Event.synchronize``) for the last event only: :meth:`RhythmCapture.finalize` calls it
    after its own copy of the spans to the host, which already waited for everything queued before it on that
    stream, so only the few kernels that finalize launched after that copy can still be running.

    Args:
        event: the event class (``torch.cuda.Event``; anything with ``record()``, ``synchronize()`` and
            ``elapsed_time(end)`` in milliseconds).
    """

    def __init__(self, event=None):
        self._event = event if event is not None else torch.cuda.Event
        self._spans: list = []

    def start(self):
        begin = self._event(enable_timing=True)
        begin.record()
        return begin

    def stop(self, token) -> None:
        end = self._event(enable_timing=True)
        end.record()
        self._spans.append((token, end))

    def seconds(self) -> float:
        if not self._spans:
            return 0.0
        self._spans[-1][1].synchronize()
        return sum(begin.elapsed_time(end) for begin, end in self._spans) / 1000.0


def timer_for(device_type: str):
    """The timer of a capture on ``device_type``: :class:`EventTimer` on CUDA, :class:`WallTimer` elsewhere."""
    return EventTimer() if device_type == "cuda" else WallTimer()


class RhythmCapture:
    """Collects per-head statistics of the selected layers during one forward pass.

    Usage (the hook in :mod:`verl_rhythm.measure.hook` calls :meth:`record`)::

        capture = RhythmCapture(cfg, model.config.num_hidden_layers, layouts, layer_types=model.config.layer_types)
        capture.to(device)                      # before the forward
        with torch.no_grad(), capture_active(capture):
            model(input_ids, ...)
        rhythms = capture.finalize()

    Attributes:
        cfg: the :class:`~verl_rhythm.measure.settings.CaptureSettings` (W, H_lo, H_hi, head_quantile,
            head_group_scope, layers, chunk_size); given a ``RhythmConfig``, its ``capture`` part.
        layers: the selected decoder layers, ``select_layers(num_layers, cfg.layers, layer_types)``.
        layouts: the sequences of the current forward, or ``None`` until :meth:`set_layouts`.
        seconds: time spent inside :meth:`record` and :meth:`finalize` since the last :meth:`reset`: host wall time
            on CPU; on CUDA the device time between events recorded around each call (:class:`EventTimer`), read
            once :meth:`finalize` has run (reading it waits for the last event).
        timer: what times the calls since the last :meth:`reset` (``None`` before the first): made by the ``timer``
            argument, a callable of the device type (default :func:`timer_for`) returning an object with
            ``start()``, ``stop(token)`` and ``seconds()``, at the first :meth:`record` / :meth:`finalize`.
        paths: per recorded layer, ``"triton"`` (the fused kernels), ``"batched"`` or ``"fused"``.
        fused: let the hook replace a selected layer's SDPA call by one that also returns the full-row statistics
            (:mod:`.fused`). ``None`` (the default) decides per device: on CPU, where the replacement's parity with
            transformers' call is tested; not on CUDA, until a GPU run shows the same parity
            (``benchmarks/gpu_check.sh`` measures it). The SDPA output is the layer's output, so the forward's
            log-probs come from the replacement.
        kernels: the :class:`Kernels` in use: the ``kernels`` argument, else :func:`kernels_for` the device of the
            first :meth:`to` / :meth:`record` (``None`` until then).
        fallbacks: why a selected layer took a slower path than the kernels promised (each reason once, also logged
            once per process).
        group: the sequence-parallel process group whose ranks each record whole sequences for their share of the
            heads (verl's Ulysses: :func:`verl_rhythm.measure.hook.wrap_flash_attention_forward`), or ``None``.
        sequence_parallel: ``group`` has more than one rank; then :meth:`finalize` gathers the head spans (a few
            floats per head) and sums the local heads' WAAD/FAI over the group, so every rank returns the statistics
            of all heads, as with one rank.
    """

    def __init__(
        self,
        cfg: CaptureSettings,
        num_layers: int,
        layouts: list[SequenceLayout] | None = None,
        *,
        fused: bool | None = None,
        layer_types: list[str] | None = None,
        kernels: Kernels | None = None,
        group=None,
        timer=None,
    ):
        self.cfg = getattr(cfg, "capture", cfg)  # a whole RhythmConfig also does: its capture part is read
        self.group = group
        self.sequence_parallel = group is not None and torch.distributed.get_world_size(group) > 1
        self.fused = fused
        self.kernels = kernels
        self._fixed_kernels = kernels is not None
        self.fallbacks: list[str] = []
        self.layers = select_layers(num_layers, self.cfg.layers, layer_types)
        self._selected = frozenset(self.layers)
        self.layouts: list[SequenceLayout] | None = None
        self.batch: BatchLayout | None = None
        self._stats: dict[int, object] = {}
        self._columns: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._checks: list[tuple[int, torch.Tensor]] = []
        self.paths: dict[int, str] = {}
        self.passed_through: dict[str, int] = {}
        self._make_timer = timer if timer is not None else timer_for
        self.timer = None
        if layouts is not None:
            self.set_layouts(layouts)

    def wants(self, layer_idx: int | None) -> bool:
        """Whether :meth:`record` would use this layer (lets the hook skip work for other layers)."""
        return layer_idx in self._selected

    def pass_through(self, module) -> None:
        """Count one attention call of a module that is not a text-decoder attention (a vision tower's, an
        encoder's, a cross-attention's): called untouched, never recorded. :attr:`passed_through` maps the module's
        class name to its calls since :meth:`reset`."""
        name = type(module).__name__
        self.passed_through[name] = self.passed_through.get(name, 0) + 1

    def set_layouts(self, layouts: list[SequenceLayout], device: torch.device | str | None = None) -> None:
        """Set the sequences of the next forward (host metadata built here) and drop anything recorded before.

        Args:
            layouts: one :class:`SequenceLayout` per sequence.
            device: move the metadata there now (else :meth:`to`, or lazily at the first :meth:`record`).
        """
        if not all(isinstance(x, SequenceLayout) for x in layouts):
            raise TypeError("layouts must be a list of SequenceLayout")
        self.layouts = list(layouts)
        cfg = self.cfg
        self.batch = BatchLayout(
            self.layouts, cfg.fai_horizon_lo, cfg.fai_horizon_hi, min(cfg.chunk_size, batched.BAND_ROWS)
        )
        self._columns = {}  # the fused path's per-column positions belong to the old layouts
        self.reset()
        if device is not None:
            self.to(device)

    def to(self, device: torch.device | str) -> RhythmCapture:
        """Move the layout metadata to ``device`` (the device of the model's tensors) and choose its kernels; call
        before the forward."""
        if self.batch is None:
            raise RuntimeError("RhythmCapture.to: set_layouts() first")
        self.batch.to(device)
        self.kernels_on(device)
        return self

    def kernels_on(self, device: torch.device | str) -> Kernels:
        """The :class:`Kernels` for ``device``: the ones given to the constructor, else :func:`kernels_for` it."""
        kind = torch.device(device).type
        if self.kernels is None or (not self._fixed_kernels and self.kernels.device_type != kind):
            self.kernels = kernels_for(kind)
        return self.kernels

    def fuses_on(self, device: torch.device | str) -> bool:
        """Whether the hook may take the ``fused`` path on ``device`` (:attr:`fused`; ``None``: on CPU only)."""
        return self.fused if self.fused is not None else torch.device(device).type == "cpu"

    def fall_back(self, reason: str) -> None:
        """Note (once on this capture, and in the log once per process) that a layer took a slower path."""
        if reason not in self.fallbacks:
            self.fallbacks.append(reason)
            warn_once(f"rhythm capture: {reason}")

    def layout_columns(self, batch: int, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per column of a ``(batch, seq_len)`` query: its position within its layout and the layout's index.

        Built on the device from the layout's index tensors (no host read). Cached until :meth:`set_layouts`.

        Returns:
            ``(pos, seq)``, each ``(batch, seq_len)`` fp32; columns outside every layout have pos 0 and seq -1.
        """
        if self.batch is None:
            raise RuntimeError("RhythmCapture: set_layouts() must be called before the forward")
        key = (batch, seq_len, str(canonical_device(device)))
        if key not in self._columns:
            self.batch.check_shape(batch, seq_len)
            lay = self.batch.to(device)
            index = (lay.flat_rows, lay.flat_cols)
            pos = torch.zeros(batch, seq_len, device=device).index_put_(index, lay.flat_pos.float())
            seq = torch.full((batch, seq_len), -1.0, device=device).index_put_(index, lay.flat_seq.float())
            self._columns[key] = (pos, seq)
        return self._columns[key]

    def reset(self) -> None:
        """Drop recorded statistics and zero :attr:`seconds` (layouts are kept)."""
        self._stats = {}
        self._checks = []
        self.paths = {}
        self.passed_through = {}
        self.timer = None

    @property
    def seconds(self) -> float:
        """See the class attributes: 0 before anything was timed."""
        return self.timer.seconds() if self.timer is not None else 0.0

    def _start_timer(self, device: torch.device):
        if self.timer is None:
            self.timer = self._make_timer(torch.device(device).type)
        return self.timer.start()

    def record(self, layer_idx: int | None, query: torch.Tensor, key: torch.Tensor, scaling: float | None, **kwargs):
        """Compute and keep the statistics of every layout for one layer; ignores layers not selected.

        Args:
            layer_idx: the decoder layer (``module.layer_idx``).
            query: ``(B, H, S, D)``; key: ``(B, H_kv, S, D)``, post-RoPE.
            scaling: logit scale; ``None`` means D ** -0.5 (the SDPA default).
            **kwargs: optional ``lse`` and ``dist`` (each ``(B, H, S)`` fp32, from the layer's kernel,
                :mod:`verl_rhythm.measure.fused`), ``leak`` (the fused path's deferred layout check), the layer's
                attention variant as transformers passes it to attention functions (``sliding_window``,
                ``softcap``, ``s_aux``), and what decides which keys the layer's kernel attended over, checked
                against the layouts after the forward: ``attention_mask`` (the mask the kernel got; ``None`` for
                none, then the kernel's own rule: ``position_ids`` / ``cu_seq_lens_q`` of a FlashAttention call, see
                :func:`~verl_rhythm.measure.batched.segment_mismatch`; the hook always passes it; without the key
                nothing is checked). Other keys are ignored. A layer recorded twice keeps the last call.
        """
        if not self.wants(layer_idx):
            return
        if self.layouts is None:
            raise RuntimeError("RhythmCapture.record called before set_layouts(): the sequence layout is unknown")
        t = self._start_timer(query.device)
        scaling = float(query.shape[-1] ** -0.5 if scaling is None else scaling)
        lse, dist = kwargs.get("lse"), kwargs.get("dist")
        window, softcap, sinks = kwargs.get("sliding_window"), kwargs.get("softcap"), kwargs.get("s_aux")
        kernels = self.kernels_on(query.device)
        variant = {
            "window": int(window) if window else None,
            "softcap": float(softcap) if softcap else None,
            "sinks": sinks.detach() if sinks is not None else None,
        }
        with torch.no_grad():
            lay = self.batch.to(query.device)
            cfg = self.cfg
            bands = {"waad_window": cfg.waad_window, "fai_horizon_lo": cfg.fai_horizon_lo,
                     "fai_horizon_hi": cfg.fai_horizon_hi}  # fmt: skip
            if kernels.triton and lse is None:  # the fused kernels: no grid, no logit in memory
                from verl_rhythm.measure import triton_stats

                batched.check_qk(query, key, lay)
                stats = triton_stats.layer_stats(query, key, scaling, lay, **bands, **variant)
            else:
                stats = batched.layer_stats(query, key, scaling, lay, kernels, **bands, chunk_size=cfg.chunk_size,
                                            **variant, lse=lse, dist=dist)  # fmt: skip
            self._stats[layer_idx] = stats
            if lse is None and "attention_mask" in kwargs:  # the fused path checks its own call (``leak``)
                self._check_segments(layer_idx, query.device, window, kwargs)
        if kwargs.get("leak") is not None:
            self._checks.append((layer_idx, kwargs["leak"]))
        if lse is not None:
            self.paths[layer_idx] = "fused"
        else:
            self.paths[layer_idx] = "triton" if kernels.triton else "batched"
        self.timer.stop(t)

    def _check_segments(self, layer_idx: int, device: torch.device, window, kwargs) -> None:
        """Queue the device check that the layer's kernel attended over the layouts' sequences (read in finalize)."""
        lay = self.batch.to(device)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            check = batched.mask_mismatch(mask, lay, int(window) if window else None)
        else:
            check = batched.segment_mismatch(lay, kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q"))
        if check is not None:
            self._checks.append((layer_idx, check))

    def _missing(self) -> None:
        missing = [layer for layer in self.layers if layer not in self._stats]
        if missing:
            raise RuntimeError(
                f"RhythmCapture: selected layers {missing} were never recorded (recorded: {sorted(self._stats)}); "
                "is the attention hook installed (install_attention_hook) and capture_active around the forward?"
            )
        if self.layouts is None:
            raise RuntimeError("RhythmCapture.finalize called before set_layouts()")

    def _packed(self, name: str) -> torch.Tensor:
        """One recorded statistic over all selected layers, layer-major heads: ``(K, T)`` per-token vectors in the
        batch's token order (``dist``, ``waad``, ``fai_num``), or the ``(n, K)`` spans (``span``)."""
        parts = [getattr(self._stats[layer], name) for layer in self.layers]
        return torch.cat(parts, 1 if name == "span" else 0)

    def _heads(self) -> list[tuple[int, int]]:
        """The ``(layer, head)`` pairs of this rank's rows, layer-major: under sequence parallelism rank r holds a
        layer's query heads [r · H_r, (r + 1) · H_r) (verl's all-to-all scatters heads in rank order)."""
        rank = torch.distributed.get_rank(self.group) if self.sequence_parallel else 0
        out = []
        for layer in self.layers:
            local = self._stats[layer].span.shape[1]
            out += [(layer, rank * local + h) for h in range(local)]
        return out

    def _all_heads(self, span: torch.Tensor, flags) -> tuple[torch.Tensor, torch.Tensor | None, list, torch.Tensor]:
        """The spans of every head of the selected layers, in (layer, head) order, and the checks of every rank.

        One rank: as recorded. Sequence parallelism: one all-gather of each rank's ``(n, K_r)`` spans and its check
        flag (so that a failed check raises on every rank alike, never leaving the others in a collective).

        Returns:
            ``(span (n, K), flags, heads, rows)``: ``rows`` ``(K_r,)`` long, the column of each local row.
        """
        heads = self._heads()
        if not self.sequence_parallel:
            return span, flags, heads, torch.arange(len(heads), device=span.device)
        size = torch.distributed.get_world_size(self.group)
        flag = (flags if flags is not None else span.new_zeros((), dtype=torch.bool)).float().reshape(1)
        mine = torch.cat([span.flatten(), flag])
        parts = [torch.empty_like(mine) for _ in range(size)]
        torch.distributed.all_gather(parts, mine, group=self.group)
        n = span.shape[0]
        spans = [p[:-1].view(n, -1) for p in parts]  # rank r's (n, K_r) columns, layer-major
        rank = torch.distributed.get_rank(self.group)
        heads, columns, rows, start = [], [], [], 0
        for layer, width in self._layer_widths():  # per layer, the ranks' heads in turn: (layer, head) order
            for r in range(size):
                if r == rank:
                    rows += range(len(heads), len(heads) + width)
                heads += [(layer, r * width + h) for h in range(width)]
                columns += [spans[r][:, start + h] for h in range(width)]
            start += width
        flags = torch.stack(parts)[:, -1].bool().any()
        return torch.stack(columns, 1), flags, heads, torch.tensor(rows, device=span.device)

    def _layer_widths(self) -> list[tuple[int, int]]:
        """``(layer, heads recorded for it on this rank)`` per selected layer."""
        return [(layer, self._stats[layer].span.shape[1]) for layer in self.layers]

    def _sum_over_group(self, partial: torch.Tensor) -> torch.Tensor:
        """Sum a ``(2, T)`` tensor of partial group sums over the sequence-parallel group (one all-reduce)."""
        partial = partial.contiguous()
        torch.distributed.all_reduce(partial, group=self.group)
        return partial

    def _failed_checks(self) -> list[int]:
        if not self._checks:
            return []
        flags = torch.stack([c.to(self._checks[0][1].device).reshape(()) for _, c in self._checks]).cpu()
        return [layer for (layer, _), bad in zip(self._checks, flags.tolist(), strict=True) if bad]

    def _raise_mismatch(self, layers: list[int]) -> None:
        raise RuntimeError(
            f"rhythm capture: layers {sorted(set(layers))}: the model's attention mask lets rows of a sequence attend "
            "outside that sequence's SequenceLayout columns (or hides some of them): the layouts do not match the "
            "model inputs (check position_ids / attention_mask against the layouts)"
        )

    def head_stats(self) -> list[HeadStats]:
        """Per-layout :class:`HeadStats` over all selected layers (layer-major head rows).

        Raises:
            RuntimeError: a selected layer was never recorded (names it), no layouts were set, or the attention
                mask disagreed with the layouts.
        """
        self._missing()
        bad = self._failed_checks()
        if bad:
            self._raise_mismatch(bad)
        dist, waad, fai_num = (self._packed(name) for name in ("dist", "waad", "fai_num"))
        heads = self._heads()
        where = {i: j for j, i in enumerate(self.batch.order)}
        out = []
        for i, lay in enumerate(self.layouts):
            j = where.get(i)
            tok = slice(self.batch.offsets[j], self.batch.offsets[j] + lay.length) if j is not None else slice(0, 0)
            resp = lay.response_mask.to(dist.device)
            vec = (dist[:, tok], waad[:, tok], fai_num[:, tok], self.batch.counts[tok])
            out.append(HeadStats(*vec, response_mask=resp, heads=list(heads)))
        return out

    def finalize(self) -> list[SequenceRhythm]:
        """Per-token WAAD and FAI of every layout, in order (grouping scope from ``cfg.head_group_scope``).

        One copy to the host (the spans, for the head groups, and the deferred layout checks).
        """
        self._missing()
        waad, fai_num, span = (self._packed(name) for name in ("waad", "fai_num", "span"))
        t = self._start_timer(span.device)
        checks = [c.to(span.device).reshape(()) for _, c in self._checks]
        flags = torch.stack(checks).any() if checks else None
        span, flags, heads, rows = self._all_heads(span, flags)
        lay = self.batch
        cfg = self.cfg
        reduce = self._sum_over_group if self.sequence_parallel else None
        waad_tok, fai_tok, local, glob, failed = rhythm_for_tokens(
            waad, fai_num, span, lay.counts, lay.token_seq, cfg.head_quantile, cfg.head_group_scope, flags,
            lay.has_response, rows=rows, reduce=reduce,
        )  # fmt: skip
        if failed:
            self._raise_mismatch(self._failed_checks())
        where = {i: j for j, i in enumerate(lay.order)}
        empty = None
        out = []
        for i, x in enumerate(self.layouts):
            if x.length:
                j = where[i]
                tok = slice(lay.offsets[j], lay.offsets[j] + x.length)
                out.append(
                    SequenceRhythm(
                        waad=waad_tok[tok],
                        fai=fai_tok[tok],
                        span=span[j],
                        local_heads=local[j],
                        global_heads=glob[j],
                        heads=list(heads),
                    )
                )
                continue
            if empty is None:  # a sequence with no position: span 0, groups as group_heads gives them for ties
                k = len(heads)
                g = group_size(k, cfg.head_quantile)
                idx = torch.arange(k, device=span.device)
                empty = (span.new_zeros(0), span.new_zeros(k), idx[:g], idx[k - g :])
            out.append(SequenceRhythm(empty[0], empty[0], empty[1], empty[2], empty[3], list(heads)))
        self.timer.stop(t)
        return out
