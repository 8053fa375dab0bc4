# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Make ``import flash_attn`` and transformers' ``attn_implementation="flash_attention_2"`` use the CPU flash-attn.

:func:`install` (idempotent) refuses, touching nothing, when another ``flash_attn`` is importable (the real package
must never be shadowed), then:

a. registers :mod:`verl_rhythm.backends.cpu.flash_attn` and its ``bert_padding`` in ``sys.modules`` as
   ``flash_attn`` and ``flash_attn.bert_padding`` (any other ``flash_attn.*``, e.g. verl's optional
   ``flash_attn.ops.triton.cross_entropy``, still raises :class:`ModuleNotFoundError`);
b. replaces ``transformers.modeling_flash_attention_utils.is_flash_attn_2_available`` (its module global; the
   original in ``transformers.utils.import_utils`` is ``lru_cache``-d and needs CUDA) by a function answering
   ``True``, so that ``_lazy_imports`` imports ``flash_attn``;
c. replaces ``FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]["general_availability_check"]`` likewise, so that
   ``PreTrainedModel._check_and_adjust_attn_implementation`` neither falls back to a hub kernel nor raises
   "the package for FlashAttention2 doesn't seem to be installed";
d. wraps ``PreTrainedModel._flash_attn_can_dispatch`` so that for version 2 it runs the stock check with
   ``is_init_check=True``, which skips only its "model not initialized on GPU" device check (the
   ``_supports_flash_attn`` and import checks still run; other versions pass through unchanged);
e. resets ``modeling_flash_attention_utils._loaded_implementation`` to ``None`` so that the lazily cached function
   table is rebuilt from ``flash_attn``;
f. where transformers' ``integrations.flash_attention.get_target_dtype`` reads only CUDA's autocast (transformers
   5.5 to 5.9: ``torch.is_autocast_enabled("cuda")``; 5.10 asks the query's own device), wraps it so that fp32 q/k
   under the query device's autocast are cast to the autocast dtype, as transformers 5.10 and later do, and as
   5.9 does on CUDA. Without it, under 5.9 an fp32 model in ``torch.autocast("cpu", dtype=torch.bfloat16)`` hands
   fp32 q/k to the kernel (which strict mode rejects, as the CUDA kernels would), while the same forward on CUDA
   runs in bf16. Decided by probing the stock function (an fp32 CPU query under CPU autocast), not by version.

:func:`uninstall` (idempotent) puts every replaced object back (the very same objects), removes the
``sys.modules`` entries it added, resets ``_loaded_implementation`` again and switches strict mode off. The saved
originals live in :data:`_saved`.

Strict mode (reject what flash-attn's CUDA kernels reject, with their messages; see
:mod:`verl_rhythm.backends.cpu.flash_attn`) is off by default. Switch it with ``install(strict=True)``,
:func:`set_strict` (returns the previous setting) or the :func:`strict_mode` context manager; :func:`is_strict`
reads it. It is process-wide and independent of installation.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType

import torch

from verl_rhythm.backends.cpu import flash_attn as _cpu_flash_attn
from verl_rhythm.backends.cpu.flash_attn import bert_padding as _cpu_bert_padding
from verl_rhythm.backends.cpu.flash_attn import is_strict, set_strict
from verl_rhythm.wrapping import mark

__all__ = ["install", "is_installed", "is_strict", "set_strict", "strict_mode", "uninstall"]

MODULES: dict[str, ModuleType] = {"flash_attn": _cpu_flash_attn, "flash_attn.bert_padding": _cpu_bert_padding}
"""The ``sys.modules`` names :func:`install` registers, and the modules behind them."""

_saved: dict[str, object] = {}
"""The originals :func:`install` replaced, by name; empty when not installed."""


def _flash_attn_2_available() -> bool:
    """Stands in for transformers' ``is_flash_attn_2_available`` while installed: the CPU flash-attn is there."""
    return True


def _reads_only_cuda_autocast(get_target_dtype) -> bool:
    """Whether transformers' ``get_target_dtype`` misses the autocast of a CPU query (it reads only CUDA's)."""
    probe = torch.nn.Linear(1, 1)  # an fp32 module: without autocast the answer is its weight's dtype
    probe.config = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return get_target_dtype(torch.zeros(1, dtype=torch.float32), probe) != torch.bfloat16


def _device_autocast_target_dtype(stock):
    """``get_target_dtype`` that also honours the autocast of the query's own (non-CUDA) device, as transformers
    5.10 does; everything else (CUDA, quantized models, no autocast) goes to the stock function."""

    @functools.wraps(stock)
    def get_target_dtype(query: torch.Tensor, module: torch.nn.Module) -> torch.dtype | None:
        device_type = query.device.type
        if query.dtype == torch.float32 and device_type != "cuda" and torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return stock(query, module)

    mark(get_target_dtype, stock)
    return get_target_dtype


def _foreign_flash_attn() -> str | None:
    """A description of a ``flash_attn`` other than this one that Python would import, or ``None``."""
    module = sys.modules.get("flash_attn")
    if module is not None:
        if module is _cpu_flash_attn:
            return None
        return f"module {module!r} is already imported as flash_attn"
    try:
        spec = importlib.util.find_spec("flash_attn")
    except (ImportError, ValueError) as exc:  # a broken flash_attn install is still someone else's
        return f"importlib.util.find_spec('flash_attn') failed: {exc!r}"
    if spec is not None:
        return f"a flash_attn package is importable ({spec.origin or spec.submodule_search_locations})"
    return None


def install(strict: bool = False) -> None:
    """Route ``import flash_attn`` and transformers' ``flash_attention_2`` to the CPU flash-attn; idempotent.

    Args:
        strict: strict mode for the CPU kernels (set on every call, also when already installed).

    Raises:
        RuntimeError: another ``flash_attn`` is importable or imported (nothing is changed then).
    """
    set_strict(strict)
    if _saved:
        return
    foreign = _foreign_flash_attn()
    if foreign is not None:
        raise RuntimeError(
            f"refusing to install the CPU flash-attn: {foreign}. The CPU implementation never shadows a real "
            "flash-attn; use that one (on a GPU) or uninstall it."
        )
    import transformers.integrations.flash_attention as fa_integration
    import transformers.modeling_flash_attention_utils as mfa
    from transformers.modeling_utils import PreTrainedModel

    matrix_entry = mfa.FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]
    stock_dispatch = PreTrainedModel.__dict__["_flash_attn_can_dispatch"]

    @functools.wraps(stock_dispatch)
    def _flash_attn_can_dispatch(self, flash_attn_version: int, is_init_check: bool = False) -> bool:
        if flash_attn_version == 2:  # the CPU flash-attn runs where the weights are: skip only the GPU check
            is_init_check = True
        return stock_dispatch(self, flash_attn_version, is_init_check=is_init_check)

    mark(_flash_attn_can_dispatch, stock_dispatch)
    _saved.update(
        is_flash_attn_2_available=mfa.is_flash_attn_2_available,
        general_availability_check=matrix_entry["general_availability_check"],
        _flash_attn_can_dispatch=stock_dispatch,
    )
    for name, module in MODULES.items():
        sys.modules[name] = module
    mfa.is_flash_attn_2_available = _flash_attn_2_available
    matrix_entry["general_availability_check"] = _flash_attn_2_available
    PreTrainedModel._flash_attn_can_dispatch = _flash_attn_can_dispatch
    target_dtype = getattr(fa_integration, "get_target_dtype", None)  # absent: the cast is elsewhere
    if target_dtype is not None and _reads_only_cuda_autocast(target_dtype):
        _saved["get_target_dtype"] = target_dtype
        fa_integration.get_target_dtype = _device_autocast_target_dtype(target_dtype)
    mfa._loaded_implementation = None


def uninstall() -> None:
    """Undo :func:`install`: every replaced object back as it was (same objects), the ``sys.modules`` entries
    removed, the lazily cached flash function table reset, strict mode off; idempotent."""
    set_strict(False)
    if not _saved:
        return
    import transformers.integrations.flash_attention as fa_integration
    import transformers.modeling_flash_attention_utils as mfa
    from transformers.modeling_utils import PreTrainedModel

    if "get_target_dtype" in _saved:
        fa_integration.get_target_dtype = _saved["get_target_dtype"]
    mfa.is_flash_attn_2_available = _saved["is_flash_attn_2_available"]
    mfa.FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]["general_availability_check"] = _saved["general_availability_check"]
    PreTrainedModel._flash_attn_can_dispatch = _saved["_flash_attn_can_dispatch"]
    mfa._loaded_implementation = None
    for name, module in MODULES.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
    _saved.clear()


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_saved)


@contextlib.contextmanager
def strict_mode(flag: bool = True) -> Iterator[None]:
    """Within this block strict mode is ``flag``; the previous setting comes back afterwards."""
    previous = set_strict(flag)
    try:
        yield
    finally:
        set_strict(previous)
