# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``algorithm.rhythm.*``: every knob of the method, its paper default and its allowed range.

This module imports neither torch nor verl at import time, so the launcher, the TaskRunner and the workers can all
validate a config cheaply; the allowed strategies come from the registry (:mod:`verl_rhythm.credit.registry`),
read when a config is first validated. :meth:`RhythmConfig.from_dict` is the single entry point: it accepts a plain
mapping or an OmegaConf ``DictConfig`` (anything with ``items()``), rejects unknown keys and out-of-range values
with an error that names the key, and fills in the defaults of ``../shared/notes/method.md`` (arXiv 2510.13554 v2).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

SIGN_MODES = ("both", "positive", "negative")
BOTTOM_SCORES = ("local", "global")
GROUP_SCOPES = ("sequence", "micro_batch")

GAMMA_AMP_MAX = 100.0
"""Largest ``gamma_amp``. With ``intro_window`` <= :data:`INTRO_WINDOW_MAX` a token's γ is at most
``1 + (gamma_amp - 1) * (1 + alpha * intro_window)`` (an anchor that also introduces up to k dominated anchors),
about 1e5: advantages stay finite in fp32 and bf16 (max ~3.4e38) for any reward a scorer returns."""
INTRO_WINDOW_MAX = 1024
"""Largest coupled look-back k; the rule keeps a ``(B, T + k)`` window tensor."""
POSITION_MAX = 1 << 20
"""Largest W, H_lo, H_hi and chunk_size: a distance beyond any context, still exact in fp32 (the capture adds W to
fp32 sums)."""
SEED_MAX = (1 << 63) - 1
"""Largest seed: ``torch.Generator.manual_seed`` takes seeds below 2**64, and training step i draws from
``seed + i``."""


def __getattr__(name: str):
    """``STRATEGIES`` and ``ATTENTION_STRATEGIES``: views of the strategy registry, read when first asked for."""
    if name in ("STRATEGIES", "ATTENTION_STRATEGIES"):
        from verl_rhythm.credit.registry import strategies

        known = strategies()
        if name == "STRATEGIES":
            return tuple(known)
        return tuple(n for n, s in known.items() if s.needs_attention(RhythmConfig()))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RhythmConfigError(ValueError):
    """A bad ``algorithm.rhythm.*`` key or value. The message always names the full key.

    Attributes:
        key: the ``algorithm.rhythm`` key at fault (``"top_q"``), or ``None`` for the mapping as a whole.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        if key is None:  # raised with the message only: the first key it names
            found = re.search(r"algorithm\.rhythm\.(\w+)", message)
            key = found.group(1) if found else None
        self.key = key


def _knob(default: Any, help: str) -> Any:
    """A :class:`RhythmConfig` field with its default and its one-line ``help`` (metadata)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class RhythmConfig:
    """Validated rhythm settings. Field names are the ``algorithm.rhythm.<field>`` keys; each field's ``help``
    metadata says what it does (the ``Attributes`` below and the ``verl-rhythm analyze`` flags are built from it).
    """

    strategy: str = _knob("coupled", "which tokens get amplified; a registered strategy (verl_rhythm.credit.registry)")
    sign: str = _knob("both", "which advantages γ scales: both (v2 default), positive (A > 0, v1) or negative (A < 0)")
    top_q: float = _knob(0.4, "the share q of a response's valid tokens selected by TopQ (k = ceil(q * n_valid))")
    gamma_amp: float = _knob(1.5, "the amplification γ_amp given to a selected token (γ = 1 elsewhere)")
    alpha: float = _knob(0.5, "coupled rule: share of a dominated anchor's bonus moved to its introductory token")
    intro_window: int = _knob(
        3, "coupled rule: k, the look-back window [t-k, t-1] for a dominated anchor's preplan token"
    )
    waad_window: int = _knob(10, "W of WAAD (Eq. 9): distances are clipped at W")
    fai_horizon_lo: int = _knob(10, "H_lo of FAI (Eq. 10): the nearest future row counted")
    fai_horizon_hi: int = _knob(100, "H_hi of FAI (Eq. 10): the farthest future row counted")
    head_quantile: float = _knob(
        0.3, "share of the selected heads in each group (bottom share by span = local, top = global)"
    )
    head_group_scope: str = _knob(
        "sequence",
        "sequence (spans and groups per sequence, default) or micro_batch (one grouping from spans averaged over "
        "the sequences of a capture micro-batch)",
    )
    layers: tuple[int, ...] | None = _knob(
        None, "decoder layer indices to read; null = five evenly spaced layers of the middle third"
    )
    bottom_score: str = _knob(
        "global", "the bottom control ranks the bottom q of this strategy's score (local: ΔWAAD, global: FAI)"
    )
    seed: int = _knob(0, "seed of random draws (the random control): training step i draws from seed + i")
    chunk_size: int = _knob(256, "query rows per chunk in the capture (memory: chunk_size × N fp32 logits per head)")

    def __post_init__(self):
        from verl_rhythm.credit.registry import strategy_names

        _choice("strategy", self.strategy, strategy_names())
        _choice("sign", self.sign, SIGN_MODES)
        _choice("bottom_score", self.bottom_score, BOTTOM_SCORES)
        _choice("head_group_scope", self.head_group_scope, GROUP_SCOPES)
        _number("top_q", self.top_q, float, lo=0.0, hi=1.0, lo_open=True, allowed="(0, 1]")
        _number("gamma_amp", self.gamma_amp, float, lo=1.0, hi=GAMMA_AMP_MAX, allowed=f"[1, {GAMMA_AMP_MAX:g}]")
        _number("alpha", self.alpha, float, lo=0.0, hi=1.0, allowed="[0, 1]")
        _number("intro_window", self.intro_window, int, lo=1, hi=INTRO_WINDOW_MAX, allowed=_ints(1, INTRO_WINDOW_MAX))
        _number("waad_window", self.waad_window, int, lo=1, hi=POSITION_MAX, allowed=_ints(1, POSITION_MAX))
        _number("fai_horizon_lo", self.fai_horizon_lo, int, lo=1, hi=POSITION_MAX, allowed=_ints(1, POSITION_MAX))
        _number(
            "fai_horizon_hi",
            self.fai_horizon_hi,
            int,
            lo=1,
            hi=POSITION_MAX,
            allowed=_ints("fai_horizon_lo", POSITION_MAX),
        )
        if self.fai_horizon_hi < self.fai_horizon_lo:
            raise RhythmConfigError(
                f"algorithm.rhythm.fai_horizon_hi={self.fai_horizon_hi} must be >= "
                f"algorithm.rhythm.fai_horizon_lo={self.fai_horizon_lo}",
                key="fai_horizon_hi",
            )
        _number("head_quantile", self.head_quantile, float, lo=0.0, hi=0.5, lo_open=True, allowed="(0, 0.5]")
        _number("seed", self.seed, int, lo=0, hi=SEED_MAX, allowed="integer in [0, 2**63 - 1]")
        _number("chunk_size", self.chunk_size, int, lo=1, hi=POSITION_MAX, allowed=_ints(1, POSITION_MAX))
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)) or not all(_is_int(x) for x in self.layers):
                raise RhythmConfigError(
                    f"algorithm.rhythm.layers={_show(self.layers)}: expected null or a list of decoder layer indices"
                )
            layers = tuple(int(x) for x in self.layers)
            if not layers:
                raise RhythmConfigError("algorithm.rhythm.layers=[]: give at least one layer index, or null")
            if any(not 0 <= x < POSITION_MAX for x in layers):
                raise RhythmConfigError(
                    f"algorithm.rhythm.layers={_show(list(layers))}: layer indices must be in [0, {POSITION_MAX})"
                )
            object.__setattr__(self, "layers", tuple(sorted(set(layers))))

    @property
    def needs_attention(self) -> bool:
        """Whether this strategy reads WAAD/FAI, i.e. whether the old-log-prob pass must capture attention."""
        return self.strategy_spec.needs_attention(self)

    @property
    def needs_entropy(self) -> bool:
        """Whether this strategy reads the per-token entropy of the old-log-prob pass."""
        return self.strategy_spec.needs_entropy(self)

    @property
    def needs(self) -> tuple[str, ...]:
        """The statistics this strategy ranks by (``waad``, ``fai``, ``entropy``), from its registration."""
        return self.strategy_spec.needs_for(self)

    @property
    def strategy_spec(self):
        """The registered :class:`verl_rhythm.credit.registry.Strategy` of :attr:`strategy`."""
        from verl_rhythm.credit.registry import get_strategy

        return get_strategy(self.strategy)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> RhythmConfig:
        """Build from the ``algorithm.rhythm`` mapping (``None`` or empty = all defaults).

        Raises:
            RhythmConfigError: on an unknown key (with the list of known keys) or a value out of range.
        """
        if values is None:
            return cls()
        if not hasattr(values, "items"):
            raise RhythmConfigError(
                f"algorithm.rhythm must be a mapping of keys to values, got {type(values).__name__}", key=None
            )
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                raise RhythmConfigError(
                    f"unknown key algorithm.rhythm.{key}; known keys: {', '.join(sorted(known))}", key=str(key)
                )
            if key == "layers" and value is not None:
                value = tuple(value) if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") else value
            kwargs[key] = value
        if "layers" in kwargs and kwargs["layers"] is not None and not isinstance(kwargs["layers"], tuple):
            raise RhythmConfigError(
                f"algorithm.rhythm.layers={_show(kwargs['layers'])}: expected null or a list of ints"
            )
        return cls(**kwargs)

    @classmethod
    def from_algorithm_config(cls, algorithm_config: Any) -> RhythmConfig:
        """Read ``rhythm`` from verl's ``algorithm`` config (DictConfig, dict or dataclass); absent = defaults."""
        if algorithm_config is None:
            return cls()
        if hasattr(algorithm_config, "get"):
            return cls.from_dict(algorithm_config.get("rhythm", None))
        return cls.from_dict(getattr(algorithm_config, "rhythm", None))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (lists, not tuples), e.g. for YAML or ``summary.json``."""
        out = dataclasses.asdict(self)
        out["layers"] = None if self.layers is None else list(self.layers)
        return out


if RhythmConfig.__doc__:  # None under python -OO
    RhythmConfig.__doc__ += "\n    Attributes:\n" + "".join(
        f"        {f.name}: {f.metadata['help']}.\n" for f in dataclasses.fields(RhythmConfig)
    )


SOFTMAX_LAYER_TYPES = ("full_attention", "sliding_attention")
"""``config.layer_types`` entries whose layers run softmax attention the capture reads exactly (a sliding window is
handled per layer). Any other type (``linear_attention``, ``chunked_attention``, ...) is never read."""


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
        raise RhythmConfigError(f"the model has num_layers={num_layers}; need at least one decoder layer")
    if layer_types is not None and len(layer_types) != num_layers:
        raise RhythmConfigError(
            f"the model config lists {len(layer_types)} layer_types for num_hidden_layers={num_layers}"
        )
    softmax = list(range(num_layers))
    if layer_types is not None:
        softmax = [i for i, kind in enumerate(layer_types) if kind in SOFTMAX_LAYER_TYPES]
    if layers is not None:
        bad = [x for x in layers if not 0 <= int(x) < num_layers]
        if bad:
            raise RhythmConfigError(
                f"algorithm.rhythm.layers={list(layers)}: indices {bad} are outside the model's "
                f"decoder layers [0, {num_layers - 1}]"
            )
        other = [int(x) for x in layers if int(x) not in softmax]
        if other:
            kinds = {x: layer_types[x] for x in other}
            raise RhythmConfigError(
                f"algorithm.rhythm.layers={list(layers)}: layers {kinds} are not softmax-attention layers (the "
                f"capture reads {', '.join(SOFTMAX_LAYER_TYPES)} only); choose among {softmax}"
            )
        return sorted({int(x) for x in layers})
    if not softmax:
        raise RhythmConfigError(
            f"the model's layer_types hold no softmax-attention layer ({sorted(set(layer_types))}); the capture reads "
            f"{', '.join(SOFTMAX_LAYER_TYPES)} layers only"
        )
    m = len(softmax)
    lo, hi = m // 3, (2 * m) // 3
    # round-half-to-even like numpy.round / torch.round, so the choice matches a linspace in either library
    return sorted({softmax[round(lo + (hi - lo) * i / 4)] for i in range(5)})


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise RhythmConfigError(
            f"algorithm.rhythm.{key}={_show(value)}: allowed values are {', '.join(allowed)}", key=key
        )


def _ints(lo, hi) -> str:
    return f"integer in [{lo}, {hi}]"


def _number(key, value, kind, lo=None, hi=None, lo_open=False, allowed=""):
    ok_type = _is_int(value) if kind is int else (isinstance(value, (int, float)) and not isinstance(value, bool))
    if ok_type and kind is float:
        try:
            ok_type = math.isfinite(float(value))
        except OverflowError:  # an int beyond the float range
            ok_type = False
    if not ok_type:
        raise RhythmConfigError(f"algorithm.rhythm.{key}={_show(value)}: expected {allowed}", key=key)
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        raise RhythmConfigError(f"algorithm.rhythm.{key}={_show(value)}: allowed range is {allowed}", key=key)


def _show(value: Any) -> str:
    """``repr`` for an error message, short for a huge integer (whose repr may even be refused)."""
    if _is_int(value) and abs(value) >= 10**30:
        return f"{'-' if value < 0 else ''}<integer of about 10**{int(abs(value).bit_length() * 0.30103)}>"
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_show(v) for v in value[:8]) + (", ...]" if len(value) > 8 else "]")
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
