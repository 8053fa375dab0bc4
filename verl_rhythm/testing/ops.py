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
    (:data:`SYNC_OPS`) and copies between devices."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        name = func.__name__.split(".")[0]
        if name in SYNC_OPS:
            self.syncs.append(name)
        if name in ("_to_copy", "copy_", "to"):
            devices = {x.device for x in (*args, *kwargs.values(), out) if isinstance(x, torch.Tensor)}
            if kwargs.get("device") is not None:
                devices.add(torch.device(kwargs["device"]))
            if len(devices) > 1:
                self.syncs.append(f"{name} {sorted(map(str, devices))}")
        return out
