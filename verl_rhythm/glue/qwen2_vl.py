# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/models/transformers/qwen2_vl.py`` (verl 0.9.1), verl's own attention forward of Qwen2-VL/Qwen2.5-VL.

With ``use_remove_padding`` or Ulysses (sp > 1), ``verl/models/transformers/monkey_patch.py:apply_monkey_patch``
sets ``Qwen2_5_VLAttention.forward`` and ``Qwen2VLAttention.forward`` (the text decoder's attention) to
``qwen2_vl_attn_forward``. That forward never calls transformers' attention functions (the seam of
:mod:`verl_rhythm.measure.hook`): it computes the post-mRoPE q/k itself, repeats the kv heads, and calls the module
global ``_custom_flash_attention_forward``, which runs the Ulysses all-to-all (whole rows for H / sp heads), then one
of two module globals on the gathered q/k: ``flash_attn_varlen_func`` when the text positions (``position_ids[0]``,
all-gathered) are not one increasing run (a packed row: segments start where they are 0, ``prepare_fa2_from_
position_ids``), else transformers' ``_flash_attention_forward`` (one sequence per row, no position ids).

:func:`install` wraps the two kernels' module globals (below the all-to-all, like
:mod:`verl_rhythm.glue.monkey_patch` for text models) and the attention classes' forward when it is verl's, only so
that the kernels know which module calls them (a context variable; the calling module decides, as in
:func:`verl_rhythm.measure.hook.is_decoder_attention`). Outside a capture every wrapper calls straight through.
Installed by the engine's capturing micro-batches (:mod:`verl_rhythm.glue.transformer_impl`); a process that never
captures, or whose model verl did not patch so, keeps verl's functions.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys

from verl_rhythm.measure import hook
from verl_rhythm.wrapping import is_wrapped, mark, stock

MODULE = "verl.models.transformers.qwen2_vl"
FORWARD = "qwen2_vl_attn_forward"
"""verl's attention forward, set on the classes of :data:`ATTENTION_CLASSES`."""
ATTENTION_CLASSES = (
    ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLAttention"),
    ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLAttention"),
)
VARLEN = "flash_attn_varlen_func"
FLASH = "_flash_attention_forward"

_CALLER: contextvars.ContextVar[object | None] = contextvars.ContextVar("verl_rhythm_qwen2_vl_caller", default=None)


MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")
"""``model_type`` of the models whose attention classes verl gives ``qwen2_vl_attn_forward``."""


def install(model_type: str) -> bool:
    """Wrap verl's Qwen2-VL attention path where verl put it on the attention classes; idempotent. Nothing for
    another ``model_type`` (the classes may still carry verl's forward from another model of the process).

    Returns:
        whether a class's forward is verl's ``qwen2_vl_attn_forward`` (now wrapped, with its kernels).
    """
    if model_type not in MODEL_TYPES:
        return False
    verl_module = sys.modules.get(MODULE)
    verl_forward = getattr(verl_module, FORWARD, None)
    if verl_forward is None:  # verl never imported it: no model of this process was patched so
        return False
    found = False
    for module_name, class_name in ATTENTION_CLASSES:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        forward = inspect.getattr_static(cls, "forward", None) if isinstance(cls, type) else None
        if forward is None or stock(forward) is not verl_forward:
            continue
        found = True
        if not is_wrapped(forward):
            cls.forward = mark(_with_caller(forward), forward)
    if found:
        for name, make in ((VARLEN, _wrap_varlen), (FLASH, _wrap_flash)):
            fn = getattr(verl_module, name, None)  # verl binds flash-attn's only where it is available
            if fn is not None and not is_wrapped(fn):
                setattr(verl_module, name, mark(make(fn), fn))
    return found


def is_installed() -> bool:
    """Whether verl's Qwen2-VL kernels are wrapped in this process."""
    verl_module = sys.modules.get(MODULE)
    return verl_module is not None and is_wrapped(getattr(verl_module, VARLEN, None))


def _with_caller(forward):
    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if hook.active_capture() is None:
            return forward(self, *args, **kwargs)
        token = _CALLER.set(self)
        try:
            return forward(self, *args, **kwargs)
        finally:
            _CALLER.reset(token)

    return wrapper


def _caller_layer(causal) -> tuple[object, int] | None:
    """The active capture and the calling decoder layer's index when that layer is to be recorded, else ``None``."""
    capture, module = hook.active_capture(), _CALLER.get()
    if capture is None or module is None:
        return None
    if not hook.is_decoder_attention(module, {"is_causal": causal}):
        capture.pass_through(module)
        return None
    return (capture, module.layer_idx) if capture.wants(module.layer_idx) else None


def _wrap_varlen(fn):
    """``flash_attn_varlen_func(q=(T, H, D), k=(T, H, D), v, cu_seqlens_q=(k + 1,), ..., softmax_scale, causal)`` as
    ``_custom_flash_attention_forward`` calls it (keywords only): records q/k as ``(1, H, T, D)`` views, with
    ``cu_seqlens_q`` for the layout check."""
    names = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        call = dict(zip(names, args, strict=False)) | kwargs
        found = _caller_layer(call.get("causal", False))
        if found is None:
            return out
        capture, layer = found
        window = call.get("window_size")
        if window is not None and tuple(window) != (-1, -1):
            raise RuntimeError(
                f"rhythm capture: layer {layer} of a Qwen2-VL model runs verl's sliding-window FlashAttention "
                f"(window_size={tuple(window)}); set use_sliding_window=false in the model config"
            )
        query, key = call["q"].transpose(0, 1).unsqueeze(0), call["k"].transpose(0, 1).unsqueeze(0)
        capture.record(layer, query, key, call.get("softmax_scale"), attention_mask=None,
                       cu_seq_lens_q=call["cu_seqlens_q"], softcap=call.get("softcap"))  # fmt: skip
        return out

    return wrapper


def _wrap_flash(fn):
    """transformers' ``_flash_attention_forward(query (B, S, H, D), key, value, attention_mask, query_length, ...)``
    as ``_custom_flash_attention_forward`` calls it for rows that each hold one sequence: records q/k with the mask
    it got (``None``: every row one causal sequence from column 0)."""

    @functools.wraps(fn)
    def wrapper(query_states, key_states, value_states, attention_mask, *args, **kwargs):
        out = fn(query_states, key_states, value_states, attention_mask, *args, **kwargs)
        found = _caller_layer(kwargs.get("is_causal", True))
        if found is None:
            return out
        capture, layer = found
        capture.record(layer, query_states.transpose(1, 2), key_states.transpose(1, 2), kwargs.get("softmax_scale"),
                       attention_mask=attention_mask, sliding_window=kwargs.get("sliding_window"),
                       softcap=kwargs.get("softcap"), position_ids=None, cu_seq_lens_q=None)  # fmt: skip
        return out

    return wrapper
