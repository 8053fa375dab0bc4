# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Route transformers' attention calls through :class:`~verl_rhythm.measure.capture.RhythmCapture`.

Seam: ``transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS`` (transformers 5.x). Every decoder attention module
calls ``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)`` with the
post-RoPE ``query (B, H, S, D)``, ``key (B, H_kv, S, D)``, ``value``, ``attention_mask`` and ``scaling=...``. verl
0.9.1 patches the same seam (``verl/models/transformers/monkey_patch.py:apply_prefix_grouper_patch`` wraps the
entries; ``apply_monkey_patch`` swaps ``transformers.integrations.flash_attention._flash_attention_forward`` for
Ulysses), so wrappers stack in either order.

:func:`install_attention_hook` wraps the existing entries in place (no new name is registered: a new
``_attn_implementation`` would change how transformers builds masks) and wraps ``get_interface`` so that the eager
default, and any entry replaced after installation, is wrapped at call time too. Outside :func:`capture_active`
the wrappers call straight through. Inside, a selected layer's q/k, what decides the sequences its kernel attends
over (the attention mask; for FlashAttention without a mask, the position ids; checked against the layouts after
the forward) and its attention-variant keywords (:data:`VARIANT_KWARGS`) go to :meth:`RhythmCapture.record`.
Only text-decoder self-attention is read (:func:`is_decoder_attention`, decided by the calling module): a
vision-language model's vision tower calls the same functions, and those calls run untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

from verl_rhythm.measure import fused
from verl_rhythm.measure.capture import RhythmCapture

_ACTIVE: contextvars.ContextVar[RhythmCapture | None] = contextvars.ContextVar("verl_rhythm_capture", default=None)
_HANDLED: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("verl_rhythm_handled", default=None)
"""Innermost-wins: a wrapper tells the wrapper around it (if any) that it captured the call, so a function wrapped
twice (our wrapper around another wrapper that calls our wrapped entry) is captured once, as close to the stock
kernel as possible (where the fused path applies)."""
_PASSING: contextvars.ContextVar[bool] = contextvars.ContextVar("verl_rhythm_passing", default=False)
"""Set while the attention call of a module that is not a text-decoder attention runs (see
:func:`is_decoder_attention`): every capturing wrapper it reaches calls straight through."""
_WRAPPED_FLAG = "__verl_rhythm_wrapped__"
VARIANT_KWARGS = ("sliding_window", "softcap", "s_aux")
"""Attention-variant keywords transformers' attention modules pass to the attention function (Mistral/Qwen2/Gemma
``sliding_window``, Gemma 2 ``softcap``, gpt-oss ``s_aux`` sinks); handed on to :meth:`RhythmCapture.record`."""
_wrappers: dict[tuple[Callable, Callable], Callable] = {}
_installed = False


def is_decoder_attention(module, kwargs: dict) -> bool:
    """Whether an attention call comes from a text decoder's causal self-attention, the only calls the capture reads.

    Decided by the calling module, not by its layer index: transformers' decoder attention modules carry
    ``layer_idx`` (their decoder layer) and set ``is_causal = True`` (Gemma 2/3: ``not use_bidirectional_attention``),
    while vision-tower attention (``Qwen2_5_VLVisionAttention``, ``Qwen3VLVisionAttention``, SigLIP, ...) and encoder
    attention set ``is_causal = False`` and pass ``is_causal=False`` to the attention function. A module without a
    true ``is_causal`` (cross-attention modules often declare none), a call passing ``is_causal=False``, or a module
    without an integer ``layer_idx`` is not a decoder attention: its call runs untouched and is counted
    (:meth:`RhythmCapture.pass_through`).

    Args:
        module: the attention module transformers passes as the attention function's first argument.
        kwargs: the keywords of that call.
    """
    if kwargs.get("is_causal") is False or not getattr(module, "is_causal", False):
        return False
    layer_idx = getattr(module, "layer_idx", None)
    return isinstance(layer_idx, int) and not isinstance(layer_idx, bool)


def active_capture() -> RhythmCapture | None:
    """The capture of the innermost :func:`capture_active` block of this context, or ``None``."""
    return _ACTIVE.get()


@contextlib.contextmanager
def capture_active(capture: RhythmCapture) -> Iterator[RhythmCapture]:
    """Within this block, wrapped attention functions hand each selected layer's q/k to ``capture.record``.

    Uses a :mod:`contextvars` variable, so concurrent threads / tasks do not see each other's capture.
    """
    if not isinstance(capture, RhythmCapture):
        raise TypeError(f"capture_active needs a RhythmCapture, got {type(capture).__name__}")
    token = _ACTIVE.set(capture)
    try:
        yield capture
    finally:
        _ACTIVE.reset(token)


def _cached(make: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    """A wrapper factory that wraps each function once: a wrapper is returned as is, a function wrapped before gets
    the same wrapper again, and every wrapper carries the mark and ``__wrapped__``."""

    @functools.wraps(make)
    def wrap(fn: Callable) -> Callable:
        if getattr(fn, _WRAPPED_FLAG, False):
            return fn
        key = (make, fn)
        if key not in _wrappers:
            wrapper = make(fn)
            setattr(wrapper, _WRAPPED_FLAG, True)
            wrapper.__wrapped__ = fn
            _wrappers[key] = wrapper
        return _wrappers[key]

    return wrap


@_cached
def wrap_attention_function(fn: Callable) -> Callable:
    """The capturing wrapper of one attention function (cached: wrapping twice returns the same wrapper)."""

    @functools.wraps(fn)
    def wrapper(module, query, key, value, attention_mask, *args, **kwargs):
        capture = _ACTIVE.get()
        if capture is None or _PASSING.get():
            return fn(module, query, key, value, attention_mask, *args, **kwargs)
        if not is_decoder_attention(module, kwargs):
            capture.pass_through(module)
            token = _PASSING.set(True)  # a wrapper further in (verl's Ulysses inner call) passes it through too
            try:
                return fn(module, query, key, value, attention_mask, *args, **kwargs)
            finally:
                _PASSING.reset(token)
        layer_idx = module.layer_idx
        if not capture.wants(layer_idx):
            return fn(module, query, key, value, attention_mask, *args, **kwargs)
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", None)
        outer = _HANDLED.get()  # set when another of our wrappers encloses this call (an entry wrapped twice)
        handled = [False]
        token = _HANDLED.set(handled)
        try:
            variant = {name: kwargs.get(name) for name in VARIANT_KWARGS}
            result = fused.attention_with_stats(fn, capture, module, query, key, value, attention_mask, *args, **kwargs)
            if result is not None:
                output, lse, dist, leak = result
                capture.record(layer_idx, query, key, scaling, lse=lse, dist=dist, leak=leak)
            else:
                output = fn(module, query, key, value, attention_mask, *args, **kwargs)
                if not handled[0]:  # no wrapper further in captured this call
                    if capture.sequence_parallel:
                        raise RuntimeError(
                            f"rhythm capture: layer {layer_idx}'s attention ran on a sequence shard outside verl's "
                            "Ulysses FlashAttention-2 path, so no rank saw whole rows; sequence parallelism needs "
                            "actor_rollout_ref.model.override_config.attn_implementation=flash_attention_2"
                        )
                    segments = _segment_kwargs(module, kwargs)
                    capture.record(layer_idx, query, key, scaling, attention_mask=attention_mask, **variant, **segments)
        finally:
            _HANDLED.reset(token)
        if outer is not None:
            outer[0] = True
        return output

    return wrapper


@_cached
def wrap_flash_attention_forward(fn: Callable) -> Callable:
    """The capturing wrapper of transformers' ``modeling_flash_attention_utils._flash_attention_forward`` (or a
    function with its signature), for where it is called below a sequence-parallel all-to-all.

    verl's Ulysses (``verl/models/transformers/monkey_patch.py:_ulysses_flash_attention_forward``) gathers each
    sequence-sharded q/k/v into whole sequences for H / sp heads with an all-to-all, then calls this function: a
    selected layer recorded here reads whole attention rows of its rank's heads, with no communication of its own.
    The attention-function wrapper around it then records nothing (innermost wins). Cached like
    :func:`wrap_attention_function`.

    The wrapped function receives ``query_states (B, S, H, D)``, ``key_states (B, S, H_kv, D)``, ``attention_mask``,
    ``query_length`` and, in keywords, ``position_ids``, ``softmax_scale``, ``layer_idx`` and the variant keywords.
    """

    @functools.wraps(fn)
    def wrapper(query_states, key_states, value_states, attention_mask, *args, **kwargs):
        capture = _ACTIVE.get()
        layer_idx = kwargs.get("layer_idx")
        output = fn(query_states, key_states, value_states, attention_mask, *args, **kwargs)
        if capture is None or _PASSING.get() or kwargs.get("is_causal") is False or not capture.wants(layer_idx):
            return output
        variant = {name: kwargs.get(name) for name in VARIANT_KWARGS}
        query, key = query_states.transpose(1, 2), key_states.transpose(1, 2)  # (B, heads, S, D) views
        capture.record(layer_idx, query, key, kwargs.get("softmax_scale"), attention_mask=attention_mask,
                       **variant, **_flash_segments(kwargs))  # fmt: skip
        outer = _HANDLED.get()
        if outer is not None:
            outer[0] = True
        return output

    return wrapper


def _segment_kwargs(module, kwargs: dict) -> dict:
    """What decides a FlashAttention call's sequences when it gets no mask: ``position_ids`` (packed rows restart at
    0) and precomputed ``cu_seq_lens_q``; handed to :meth:`RhythmCapture.record` for the layout check. SDPA and eager
    calls derive their sequences from the mask alone (transformers builds the mask from the position ids)."""
    implementation = str(getattr(getattr(module, "config", None), "_attn_implementation", "") or "")
    return _flash_segments(kwargs) if "flash" in implementation else {}


def _flash_segments(kwargs: dict) -> dict:
    """The keywords of a FlashAttention call that decide its sequences without a mask."""
    return {"position_ids": kwargs.get("position_ids"), "cu_seq_lens_q": kwargs.get("cu_seq_lens_q")}


def install_attention_hook() -> None:
    """Wrap every entry of ``ALL_ATTENTION_FUNCTIONS`` and the eager default; idempotent.

    Entries of the class-wide mapping (``AttentionInterface._global_mapping``, seen by every interface instance)
    and of the shared instance's local overrides are replaced by their wrappers under the same names.
    ``AttentionInterface.get_interface`` is wrapped once so that the eager function a model passes as default, and
    any entry set later (e.g. by verl's prefix-grouper patch), come back wrapped.
    """
    global _installed
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    for mapping in (AttentionInterface._global_mapping, ALL_ATTENTION_FUNCTIONS._local_mapping):
        for name, fn in list(mapping.items()):
            if callable(fn):
                mapping[name] = wrap_attention_function(fn)
    if _installed:
        return
    stock_get_interface = AttentionInterface.get_interface

    @functools.wraps(stock_get_interface)
    def get_interface(self, attn_implementation, default):
        fn = stock_get_interface(self, attn_implementation, default)
        return wrap_attention_function(fn) if callable(fn) else fn

    AttentionInterface.get_interface = get_interface
    _installed = True


def uninstall_attention_hook() -> None:
    """Undo :func:`install_attention_hook`: every wrapped entry and ``AttentionInterface.get_interface`` go back to
    the very objects they were; idempotent. Entries registered since are left as they are."""
    global _installed
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    for mapping in (AttentionInterface._global_mapping, ALL_ATTENTION_FUNCTIONS._local_mapping):
        for name, fn in list(mapping.items()):
            if getattr(fn, _WRAPPED_FLAG, False):
                mapping[name] = fn.__wrapped__
    if _installed:
        AttentionInterface.get_interface = AttentionInterface.get_interface.__wrapped__
        _installed = False
    _wrappers.clear()


def is_installed() -> bool:
    """Whether :func:`install_attention_hook` has run in this process."""
    return _installed
