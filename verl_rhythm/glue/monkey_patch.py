# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/models/transformers/monkey_patch.py:_ulysses_flash_attention_forward`` (verl 0.9.1).

With Ulysses sequence parallelism (``ulysses_sequence_parallel_size`` = sp > 1) verl replaces transformers'
``integrations.flash_attention._flash_attention_forward`` by ``_ulysses_flash_attention_forward``: an all-to-all turns
each rank's shard of the packed row (all heads) into the whole row for H / sp heads (kv heads repeated up to sp
where there are fewer), then it calls the module global ``_flash_attention_forward`` (transformers' own), then a
second all-to-all returns the output. The attention-function entry the capture's hook wraps sees only shards; this
module wraps that inner call (:func:`verl_rhythm.measure.hook.wrap_flash_attention_forward`), so a selected layer is
recorded where its rank holds whole rows, with no communication of the capture's own during the forward. The
wrapper calls straight through outside a capture, and at sp = 1 (verl's function then passes its inputs through)
it records what the entry would have. The engine's first capturing micro-batch under Ulysses installs it
(:mod:`verl_rhythm.glue.transformer_impl`); a process that never captures keeps verl's function.
"""

from __future__ import annotations

import inspect
from types import ModuleType

from verl_rhythm.glue import seams
from verl_rhythm.measure.hook import wrap_flash_attention_forward
from verl_rhythm.wrapping import is_wrapped, mark

MODULE = "verl.models.transformers.monkey_patch"
ATTRIBUTE = "_flash_attention_forward"
"""The module global of ``verl.models.transformers.monkey_patch`` that ``_ulysses_flash_attention_forward`` calls."""
READS = ("query_states", "key_states", "value_states", "attention_mask")
"""Its leading parameters, which :func:`verl_rhythm.measure.hook.wrap_flash_attention_forward` takes by position; the
rest (``layer_idx``, ``softmax_scale``, ``position_ids``...) it reads from the keywords and passes through."""


def check(module: ModuleType) -> bool:
    """Whether ``module._flash_attention_forward`` can be wrapped; records the seam as disabled when not.

    The wrapped object is transformers' function as verl's module imported it: present, with the four leading
    parameters in that order (a parameter transformers added later is passed through).
    """
    seam = f"{module.__name__}.{ATTRIBUTE}"
    fn = getattr(module, ATTRIBUTE, None)
    if is_wrapped(fn):
        return True
    why = seams.mismatch(fn, reads=READS, known=_parameters(fn))
    if why is None:
        leading = tuple(_parameters(fn)[: len(READS)])
        why = None if leading == READS else f"leading parameters now {list(leading)}"
    if why is not None:
        seams.record_disabled(seam, why)
        return False
    return True


def _parameters(fn) -> list[str]:
    """The parameter names of ``fn`` (transformers' own: every one past :data:`READS` is passed through as called)."""
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def install(module: ModuleType | None = None) -> bool:
    """Wrap ``module._flash_attention_forward`` (default: verl's monkey-patch module); idempotent. Returns whether
    the wrapper is in place.

    Raises:
        RhythmDisabled: the function moved (installed only by a rhythm capture, which cannot run without it).
    """
    if module is None:
        from verl.models.transformers import monkey_patch as module
    if not check(module):
        seams.refuse()
    stock = getattr(module, ATTRIBUTE)
    if not is_wrapped(stock):
        setattr(module, ATTRIBUTE, mark(wrap_flash_attention_forward(stock), stock))
    return is_installed(module)


def is_installed(module: ModuleType | None = None) -> bool:
    """Whether verl's Ulysses path calls the capturing wrapper."""
    if module is None:
        from verl.models.transformers import monkey_patch as module
    return is_wrapped(getattr(module, ATTRIBUTE, None))
