# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Counting aten ops and host syncs around a forward (tests and benchmarks of the capture)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = ("_local_scalar_dense", "nonzero", "item", "is_nonzero", "equal", "allclose")
"""aten ops that read device memory on the host (``.item()``, ``.tolist()`` of a device tensor, ``nonzero``, ...)."""


class OpCounter(TorchDispatchMode):
    """Counts aten ops, and the ones that would make the host wait for a device (listed in ``syncs``): host reads
    (:data:`SYNC_OPS`) and copies between devices; and the collectives (``c10d`` ops, listed in ``collectives`` with
    the bytes this process contributes)."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs: list[str] = []
        self.collectives: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        name = func.__name__.split(".")[0]
        if func.namespace == "c10d":
            self.collectives.append((name, _contributed_bytes(name, args)))
        if name in SYNC_OPS:
            self.syncs.append(name)
        if name in ("_to_copy", "copy_", "to"):
            devices = {x.device for x in (*args, *kwargs.values(), out) if isinstance(x, torch.Tensor)}
            if kwargs.get("device") is not None:
                devices.add(torch.device(kwargs["device"]))
            if len(devices) > 1:
                self.syncs.append(f"{name} {sorted(map(str, devices))}")
        return out


def _contributed_bytes(name: str, args: tuple) -> int:
    """Bytes this process puts into a c10d op: its input tensors (the second argument of a gather, the first else)."""
    data = args[1] if name.startswith(("allgather", "all_gather", "_allgather")) and len(args) > 1 else args[0]
    tensors = data if isinstance(data, (list, tuple)) else [data]
    flat = [t for x in tensors for t in (x if isinstance(x, (list, tuple)) else [x]) if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in flat)


class AllocationCounter(OpCounter):
    """:class:`OpCounter` that also records the bytes of every tensor an op returns (on ``meta`` tensors too, so
    allocations at real shapes are listed without memory). Views (outputs sharing an input's storage) are not
    allocations and are skipped.

    Attributes:
        largest: bytes of the largest tensor allocated; largest_float: elements of the largest floating-point one.
        sizes: bytes of every allocation, in order.
    """

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []
        self.largest = 0
        self.largest_float = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        inputs = {_storage(x) for x in (*args, *(kwargs or {}).values()) if isinstance(x, torch.Tensor)}
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(x, torch.Tensor) or _storage(x) in inputs:
                continue
            size = x.numel() * x.element_size()
            self.sizes.append(size)
            self.largest = max(self.largest, size)
            if x.is_floating_point():
                self.largest_float = max(self.largest_float, x.numel())
        return out


def _storage(x: torch.Tensor) -> tuple:
    return (x.device.type, x.untyped_storage().data_ptr()) if x.device.type != "meta" else (id(x.untyped_storage()),)
