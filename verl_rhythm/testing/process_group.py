# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A one-process gloo group with verl's platform set to the CPU platform: verl's engine outside a Ray worker."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator

from verl.plugin.platform import platform_manager

from verl_rhythm.backends.cpu.platform import PlatformCPU


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous; parallel runs never clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def single_process_group(backend: str, port: int | None = None, rank: int = 0, world_size: int = 1) -> Iterator[None]:
    """A ``torch.distributed`` group (``gloo`` or ``nccl``) on 127.0.0.1 (this process is ``rank`` of
    ``world_size``; one process by default), destroyed on exit.

    Args:
        backend: the process-group backend.
        port: the rendezvous port; default :func:`free_port` (give every rank the same one when world_size > 1).
        rank, world_size: this process's rank and the group's size.

    Raises:
        RuntimeError: a default process group already exists in this process.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("a torch.distributed process group already exists in this process")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port or free_port()), "RANK": str(rank)}
    env.update(WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size)
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
def cpu_process_group(port: int | None = None, rank: int = 0, world_size: int = 1) -> Iterator[None]:
    """verl's platform set to :class:`PlatformCPU` and a gloo group (one process by default), both restored on exit.

    Args:
        port: the rendezvous port on 127.0.0.1; default a free one (so parallel runs never clash).
        rank, world_size: this process's rank and the group's size (:func:`spawn_cpu_group` starts the ranks).

    Raises:
        RuntimeError: a default process group already exists in this process.
    """
    previous = platform_manager._current_platform
    platform_manager.set_platform(PlatformCPU())
    try:
        with single_process_group("gloo", port, rank, world_size):
            yield
    finally:
        platform_manager._current_platform = previous


def spawn_cpu_group(world_size: int, fn: Callable, *args) -> list:
    """Run ``fn(rank, *args)`` in ``world_size`` fresh processes joined in one gloo group (:func:`cpu_process_group`)
    and return what each rank returned, in rank order (results travel through ``torch.save`` files).

    ``fn`` must be importable by name (a module-level function). An exception in a rank is raised here, with the
    rank's traceback.
    """
    import tempfile

    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_main, args=(world_size, free_port(), tmp, fn, args), nprocs=world_size, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


def _rank_main(rank: int, world_size: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    import torch

    with cpu_process_group(port, rank, world_size):
        result = fn(rank, *args)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
