# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A one-process gloo group with verl's platform set to the CPU platform: verl's engine outside a Ray worker."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from verl.plugin.platform import platform_manager

from verl_rhythm.backends.cpu.platform import PlatformCPU


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous; parallel runs never clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def single_process_group(backend: str, port: int | None = None) -> Iterator[None]:
    """A one-process ``torch.distributed`` group (``gloo`` or ``nccl``) on 127.0.0.1, destroyed on exit.

    Args:
        backend: the process-group backend.
        port: the rendezvous port; default :func:`free_port`.

    Raises:
        RuntimeError: a default process group already exists in this process.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group already exists in this process")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port or free_port()), "RANK": "0", "WORLD_SIZE": "1"}
    env["LOCAL_RANK"] = "0"
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        dist.init_process_group(backend, rank=0, world_size=1)
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def cpu_process_group(port: int | None = None) -> Iterator[None]:
    """verl's platform set to :class:`PlatformCPU` and a one-process gloo group, both restored on exit.

    Args:
        port: the rendezvous port on 127.0.0.1; default a free one (so parallel runs never clash).

    Raises:
        RuntimeError: a default process group already exists in this process.
    """
    previous = platform_manager._current_platform
    platform_manager.set_platform(PlatformCPU())
    try:
        with single_process_group("gloo", port):
            yield
    finally:
        platform_manager._current_platform = previous
