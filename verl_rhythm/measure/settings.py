# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The capture's ``algorithm.rhythm.*`` settings: what the actor workers need to measure WAAD and FAI.

This is all a worker receives from the trainer (:data:`verl_rhythm.glue.tq_fields.CAPTURE_KEY`), so a worker never
reads the credit settings (strategy names included). No torch or verl import.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from verl_rhythm.keys import PREFIX, RhythmConfigError, choice, document, ints, is_int, knob, kwargs_from_mapping
from verl_rhythm.keys import number as _number
from verl_rhythm.keys import show as _show

GROUP_SCOPES = ("sequence", "micro_batch")
POSITION_MAX = 1 << 20
"""Largest W, H_lo, H_hi and chunk_size: a distance beyond any context, still exact in fp32 (the capture adds W to
fp32 sums)."""
SOFTMAX_LAYER_TYPES = ("full_attention", "sliding_attention")
"""``config.layer_types`` entries whose layers run softmax attention the capture reads exactly (a sliding window is
handled per layer). Any other type (``linear_attention``, ``chunked_attention``, ...) is never read."""


@document
@dataclasses.dataclass(frozen=True)
class CaptureSettings:
    """Validated capture settings; field names are their ``algorithm.rhythm.<field>`` keys."""

    waad_window: int = knob(10, "W of WAAD (Eq. 9): distances are clipped at W")
    fai_horizon_lo: int = knob(10, "H_lo of FAI (Eq. 10): the nearest future row counted")
    fai_horizon_hi: int = knob(100, "H_hi of FAI (Eq. 10): the farthest future row counted")
    head_quantile: float = knob(
        0.3, "share of the selected heads in each group (bottom share by span = local, top = global)"
    )
    head_group_scope: str = knob(
        "sequence",
        "sequence (spans and groups per sequence, default) or micro_batch (one grouping from spans averaged over "
        "the sequences of a capture micro-batch)",
    )
    layers: tuple[int, ...] | None = knob(
        None, "decoder layer indices to read; null = five evenly spaced layers of the middle third"
    )
    chunk_size: int = knob(256, "query rows per chunk in the capture (memory: chunk_size × N fp32 logits per head)")

    def __post_init__(self):
        choice("head_group_scope", self.head_group_scope, GROUP_SCOPES)
        _number("waad_window", self.waad_window, int, lo=1, hi=POSITION_MAX, allowed=ints(1, POSITION_MAX))
        _number("fai_horizon_lo", self.fai_horizon_lo, int, lo=1, hi=POSITION_MAX, allowed=ints(1, POSITION_MAX))
        _number(
            "fai_horizon_hi",
            self.fai_horizon_hi,
            int,
            lo=1,
            hi=POSITION_MAX,
            allowed=ints("fai_horizon_lo", POSITION_MAX),
        )
        if self.fai_horizon_hi < self.fai_horizon_lo:
            raise RhythmConfigError(
                f"{PREFIX}.fai_horizon_hi={self.fai_horizon_hi} must be >= "
                f"{PREFIX}.fai_horizon_lo={self.fai_horizon_lo}",
                "fai_horizon_hi",
            )
        _number("head_quantile", self.head_quantile, float, lo=0.0, hi=0.5, lo_open=True, allowed="(0, 0.5]")
        _number("chunk_size", self.chunk_size, int, lo=1, hi=POSITION_MAX, allowed=ints(1, POSITION_MAX))
        if self.layers is not None:
            if not isinstance(self.layers, (tuple, list)) or not all(is_int(x) for x in self.layers):
                raise RhythmConfigError(
                    f"{PREFIX}.layers={_show(self.layers)}: expected null or a list of decoder layer indices", "layers"
                )
            if not self.layers:
                raise RhythmConfigError(f"{PREFIX}.layers=[]: give at least one layer index, or null", "layers")
            if any(not 0 <= x < POSITION_MAX for x in self.layers):
                raise RhythmConfigError(
                    f"{PREFIX}.layers={_show(list(self.layers))}: layer indices must be in [0, {POSITION_MAX})",
                    "layers",
                )
            object.__setattr__(self, "layers", tuple(sorted(set(self.layers))))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> CaptureSettings:
        """From a mapping of capture keys (``None``: defaults). Raises :class:`RhythmConfigError` by key."""
        return cls(**kwargs_from_mapping(values, [f.name for f in dataclasses.fields(cls)]))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (lists, not tuples)."""
        out = dataclasses.asdict(self)
        out["layers"] = None if self.layers is None else list(self.layers)
        return out

    def to_json(self) -> str:
        """What the trainer sends the actor workers (:data:`verl_rhythm.glue.tq_fields.CAPTURE_KEY`)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CaptureSettings:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def select_layers(
    num_layers: int, layers: tuple[int, ...] | list[int] | None = None, layer_types: list[str] | None = None
) -> list[int]:
    """The decoder layers whose attention the method reads.

    Default (spec Sec. 1, project decision): five evenly spaced layers of the middle third,
    ``round(linspace(M // 3, 2 * M // 3, 5))`` over the M softmax-attention layers (all L layers unless
    ``layer_types`` says otherwise, e.g. a hybrid model with linear-attention layers), de-duplicated and sorted.

    Args:
        num_layers: L, the model's number of decoder layers.
        layers: explicit indices (``algorithm.rhythm.layers``), or ``None`` for the default.
        layer_types: the model's ``config.layer_types`` (one entry per decoder layer), or ``None``.

    Raises:
        RhythmConfigError: an explicit index is outside ``[0, num_layers)`` or is not a softmax-attention layer, or
            the model has no softmax-attention layer.
    """
    if num_layers < 1:
        raise RhythmConfigError(f"the model has num_layers={num_layers}; need at least one decoder layer", None)
    if layer_types is not None and len(layer_types) != num_layers:
        raise RhythmConfigError(
            f"the model config lists {len(layer_types)} layer_types for num_hidden_layers={num_layers}", None
        )
    softmax = list(range(num_layers))
    if layer_types is not None:
        softmax = [i for i, kind in enumerate(layer_types) if kind in SOFTMAX_LAYER_TYPES]
    if layers is not None:
        bad = [x for x in layers if not 0 <= int(x) < num_layers]
        if bad:
            raise RhythmConfigError(
                f"{PREFIX}.layers={list(layers)}: indices {bad} are outside the model's decoder layers "
                f"[0, {num_layers - 1}]",
                "layers",
            )
        other = [int(x) for x in layers if int(x) not in softmax]
        if other:
            kinds = {x: layer_types[x] for x in other}
            raise RhythmConfigError(
                f"{PREFIX}.layers={list(layers)}: layers {kinds} are not softmax-attention layers (the capture reads "
                f"{', '.join(SOFTMAX_LAYER_TYPES)} only); choose among {softmax}",
                "layers",
            )
        return sorted({int(x) for x in layers})
    if not softmax:
        raise RhythmConfigError(
            f"the model's layer_types hold no softmax-attention layer ({sorted(set(layer_types))}); the capture reads "
            f"{', '.join(SOFTMAX_LAYER_TYPES)} layers only",
            None,
        )
    m = len(softmax)
    lo, hi = m // 3, (2 * m) // 3
    # round-half-to-even like numpy.round / torch.round, so the choice matches a linspace in either library
    return sorted({softmax[round(lo + (hi - lo) * i / 4)] for i in range(5)})
