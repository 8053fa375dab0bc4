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

from types import ModuleType

from verl_rhythm.measure.hook import wrap_flash_attention_forward
from verl_rhythm.wrapping import is_wrapped, mark

ATTRIBUTE = "_flash_attention_forward"
"""The module global of ``verl.models.transformers.monkey_patch`` that ``_ulysses_flash_attention_forward`` calls."""


def install(module: ModuleType | None = None) -> bool:
    """Wrap ``module._flash_attention_forward`` (default: verl's monkey-patch module); idempotent. Returns whether
    the wrapper is in place."""
    if module is None:
        from verl.models.transformers import monkey_patch as module
    stock = getattr(module, ATTRIBUTE)
    if not is_wrapped(stock):
        setattr(module, ATTRIBUTE, mark(wrap_flash_attention_forward(stock), stock))
    return is_installed(module)


def is_installed(module: ModuleType | None = None) -> bool:
    """Whether verl's Ulysses path calls the capturing wrapper."""
    if module is None:
        from verl.models.transformers import monkey_patch as module
    return is_wrapped(getattr(module, ATTRIBUTE))
